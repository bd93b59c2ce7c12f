"""The fixed vocabularies of zsdeploy's options, each defined once: CLI choices, API checks and artifact contracts
(ONNX metadata, bundle manifest, engine sidecar) all read them from here."""
from __future__ import annotations

from .errors import ZsdError

__all__ = ["BACKENDS", "GRAPH_PRECISIONS", "RUNTIME_PRECISIONS", "RUNTIME_PRECISION_ALIASES", "TASKS",
           "runtime_precision"]

#: what post-processing can produce (upstream's three outputs), in the order results are reported
TASKS = ("semantic", "panoptic", "instance")

#: what a graph or engine computes in (export-model --precision, build-engine --precision, artifact records)
GRAPH_PRECISIONS = ("fp32", "fp16", "int8")

#: how a runtime computes an fp32 graph (trt-infer / zsd-bench video --precision, load_backend, open_pipeline):
#: fp32 = as the graph (or engine) says; bf16 = OpenVINO's bf16 inference precision. The same spelling as
#: GRAPH_PRECISIONS; OpenVINO's own hint strings are translated where OpenVINO is called (openvino_backend.py).
RUNTIME_PRECISIONS = ("fp32", "bf16")

#: old spellings still accepted wherever a runtime precision is taken (trt-infer --precision f32 before fp32 was
#: the one spelling; reports written then); normalised by `runtime_precision`
RUNTIME_PRECISION_ALIASES = {"f32": "fp32"}


def runtime_precision(value: str) -> str:
    """`value` as one of RUNTIME_PRECISIONS (`f32`, the old spelling, -> `fp32`); anything else is a user error that
    lists the choices. Every CLI and API that takes a runtime precision normalises it here, once, at its boundary."""
    if value in RUNTIME_PRECISIONS:
        return value
    if value in RUNTIME_PRECISION_ALIASES:
        return RUNTIME_PRECISION_ALIASES[value]
    fix = f"pass {' or '.join(RUNTIME_PRECISIONS)} (f32, the old spelling of fp32, is still accepted)"
    if value in GRAPH_PRECISIONS:
        fix += (f"; {value} is a graph precision: convert the graph (export-model --from-onnx M.onnx --precision "
                f"{value}) or build the engine with it (build-engine --precision {value}), then run that file")
    raise ZsdError(f"precision {value!r} is not one of {', '.join(RUNTIME_PRECISIONS)}.", fix + ".")


def __getattr__(name: str) -> tuple[str, ...]:
    """BACKENDS (trt-infer / zsd-bench --backend choices): `auto` and every registered backend, read from the one
    table, runtime/backends/registry.py (`auto` picks one per artifact: runtime.backends.resolve_backend). Computed
    on access, so that this module imports nothing from the backends package (which imports this one)."""
    if name == "BACKENDS":
        from .backends.registry import backend_names

        return backend_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
