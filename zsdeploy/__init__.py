"""zsdeploy: deploy zero-shot segmentation models (PADing, ZegFormer) — ONNX export, TensorRT engines, runtime,
benchmarks, serving.

The Python API mirrors the CLIs (each CLI is a thin layer over it; see zsdeploy.api):

    import zsdeploy
    zsdeploy.export_model("pading-demo", "demo.onnx")
    pipeline = zsdeploy.open_pipeline("demo.onnx")
    [seg] = pipeline([rgb_uint8_image])          # seg.results: upstream's output dicts
"""
from .api import build_engine, export_model, export_triton, open_pipeline, segment_files

__version__ = "0.1.0"
__all__ = ["build_engine", "export_model", "export_triton", "open_pipeline", "segment_files", "__version__"]
