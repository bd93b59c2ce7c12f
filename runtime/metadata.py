"""Compatibility names: the ONNX metadata contract lives in `zsdeploy.runtime.artifacts.onnx_metadata`."""
from .artifacts.onnx_metadata import REQUIRED_KEYS, ModelInfo, standin_variant_of

__all__ = ["REQUIRED_KEYS", "ModelInfo", "standin_variant_of"]
