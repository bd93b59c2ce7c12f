"""The fixed vocabularies of zsdeploy's options, each defined once: CLI choices, API checks and artifact contracts
(ONNX metadata, bundle manifest, engine sidecar) all read them from here."""
from __future__ import annotations

__all__ = ["BACKENDS", "GRAPH_PRECISIONS", "RUNTIME_PRECISIONS", "TASKS"]

#: what post-processing can produce (upstream's three outputs), in the order results are reported
TASKS = ("semantic", "panoptic", "instance")

#: what a graph or engine computes in (export-model --precision, build-engine --precision, artifact records)
GRAPH_PRECISIONS = ("fp32", "fp16", "int8")

#: how a CPU runtime computes an f32 graph (trt-infer --precision; OpenVINO's inference precision hint)
RUNTIME_PRECISIONS = ("f32", "bf16")

#: trt-infer --backend; `auto` picks one per artifact (runtime.backends.resolve_backend)
BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt")
