"""zsdeploy: deploy zero-shot segmentation models (PADing, ZegFormer) — ONNX export, TensorRT engines, runtime,
benchmarks, serving.

The Python API mirrors the CLIs (each CLI is a thin layer over it; see zsdeploy.api):

    import zsdeploy
    zsdeploy.export_model("pading-demo", "demo.onnx")
    pipeline = zsdeploy.open_pipeline("demo.onnx")
    [seg] = pipeline([rgb_uint8_image])          # seg.results: upstream's output dicts

The API is imported on first use (PEP 562), so `import zsdeploy.runtime...` loads only the runtime.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zsdeploy.runtime.version import VERSION as __version__

if TYPE_CHECKING:
    from .api import build_engine, export_model, export_triton, open_pipeline, segment_files

__all__ = ["build_engine", "export_model", "export_triton", "open_pipeline", "segment_files", "__version__"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'zsdeploy' has no attribute {name!r}")
