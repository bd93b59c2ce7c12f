"""Inference backends behind one `infer()` (Polygraphy-style runners): ONNX Runtime and TensorRT."""
from __future__ import annotations

from pathlib import Path

from ..errors import ZsdError
from .base import Backend

ENGINE_SUFFIXES = (".plan", ".engine", ".trt")


def load_backend(path: str | Path, *, plugin_lib: str | None = None, threads: int | None = None) -> Backend:
    """Open a model file: `.onnx` with ONNX Runtime, `.plan`/`.engine` with TensorRT."""
    path = Path(path)
    if not path.exists():
        raise ZsdError(f"model file {path} does not exist.", "pass an .onnx from export-model or a .plan from build-engine.")
    if path.suffix == ".onnx":
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, threads=threads)
    if path.suffix in ENGINE_SUFFIXES:
        from .tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path, plugin_lib=plugin_lib)
    raise ZsdError(f"{path} is neither an ONNX model (.onnx) nor a TensorRT engine ({', '.join(ENGINE_SUFFIXES)}).",
                   "pass the file export-model or build-engine wrote.")


__all__ = ["Backend", "load_backend"]
