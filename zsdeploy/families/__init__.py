"""The model families: every model-specific decision of zsdeploy (see base.py). Importing the package registers
PADing, the demo PADing and ZegFormer; a new family is one module here with one `@register_family` class."""
from . import pading, zegformer  # noqa: F401 (registration)
from .base import MODELS, BundleFamily, ExportRequest, ModelFamily, OpenOptions, artifact_info, build_engines, \
    bundle_family, convert_precision, describe_triton_repository, family_for, family_of, open_pipeline, register_family, write_triton_repository

__all__ = ["MODELS", "BundleFamily", "ExportRequest", "ModelFamily", "OpenOptions", "artifact_info", "build_engines",
           "bundle_family", "convert_precision", "describe_triton_repository", "family_for", "family_of", "open_pipeline", "register_family",
           "write_triton_repository"]
