"""Which network and builder precision `build-engine` uses: decided from the graph and the installed TensorRT.

Two ways to a reduced-precision engine:
- **the precision is in the graph** (export-model --precision fp16|int8: fp16 tensors, or Q/DQ nodes; recorded in
  metadata_props "precision"): the network is created STRONGLY_TYPED, TensorRT follows the graph's types. This is
  the only way on TensorRT 11 (weakly typed networks, BuilderFlag.FP16/INT8 and the int8 calibrators are gone) and
  works from TensorRT 9.1/10 on.
- **builder flags** (an fp32 graph + `--precision fp16|int8`): the weakly typed network of TensorRT <= 10 with
  BuilderFlag.FP16 / INT8 and an entropy calibrator. Only where the installed TensorRT still has them (JetPack 6:
  TensorRT 10.3); elsewhere refused with the export-model command that puts the precision into the graph.

Everything here but `tensorrt_caps` is plain Python, so the decisions are tested without TensorRT.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx

from ..errors import ZsdError
from ..options import GRAPH_PRECISIONS

PRECISIONS = GRAPH_PRECISIONS
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
LOW_FLOAT = frozenset({onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})

STRONGLY_TYPED = "strongly_typed"
BUILDER_FLAGS = "builder_flags"
PLAIN_FP32 = "fp32"


# Every TensorRT attribute that some supported version lacks, probed here and nowhere else: capability -> the
# attribute paths it needs (all present = capable). The code uses these attributes only where `check_caps` /
# `network_flags` let it; scripts/check_tensorrt_bindings.py reads this table as the list of guarded attributes and
# fails on a used attribute that a version lacks and no capability here covers.
CAPABILITY_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "fp16_flag": ("BuilderFlag.FP16",),  # gone in TensorRT 11
    "int8_flag": ("BuilderFlag.INT8",),  # gone in TensorRT 11
    "int8_calibrator": ("IInt8EntropyCalibrator2", "IBuilderConfig.int8_calibrator",
                        "IBuilderConfig.set_calibration_profile"),  # gone in TensorRT 11
    "strongly_typed": ("NetworkDefinitionCreationFlag.STRONGLY_TYPED",),  # TensorRT >= 9.1
    "tf32_flag": ("BuilderFlag.TF32",),
    "progress_monitor": ("IProgressMonitor", "IBuilderConfig.progress_monitor"),  # TensorRT >= 10.0
}


def has_attribute_path(module: Any, path: str) -> bool:
    """`module.A.B` exists (e.g. "BuilderFlag.FP16")."""
    obj = module
    for part in path.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


@dataclass(frozen=True)
class TensorRTCaps:
    """What the installed TensorRT Python API offers (read with hasattr, never assumed from the version)."""

    version: str
    fp16_flag: bool  # BuilderFlag.FP16 (gone in TensorRT 11)
    int8_flag: bool  # BuilderFlag.INT8 (gone in TensorRT 11)
    int8_calibrator: bool  # IInt8EntropyCalibrator2 and the config's calibrator slots (gone in TensorRT 11)
    strongly_typed: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED (TensorRT >= 9.1)
    tf32_flag: bool  # BuilderFlag.TF32
    progress_monitor: bool = False  # IProgressMonitor (TensorRT >= 10.0)

    @property
    def weakly_typed(self) -> bool:
        """Networks whose precision the builder chooses: TensorRT <= 10 (they have BuilderFlag.FP16)."""
        return self.fp16_flag


def tensorrt_caps(trt: Any) -> TensorRTCaps:
    """Capabilities of the imported `tensorrt` module."""
    return TensorRTCaps(version=str(getattr(trt, "__version__", "?")),
                        **{cap: all(has_attribute_path(trt, p) for p in paths)
                           for cap, paths in CAPABILITY_ATTRIBUTES.items()})


def graph_precision(proto: onnx.ModelProto, metadata: dict[str, str]) -> str:
    """fp32 / fp16 / int8 as the graph states it (metadata), else as its nodes show it (Q/DQ, fp16 tensors)."""
    stated = metadata.get("precision", "")
    if stated in PRECISIONS:
        return stated
    if any(n.op_type in QDQ_OPS for n in proto.graph.node):
        return "int8"
    if any(t.data_type in LOW_FLOAT for t in proto.graph.initializer) or any(
            n.op_type == "Cast" and any(a.name == "to" and a.i in LOW_FLOAT for a in n.attribute)
            for n in proto.graph.node):
        return "fp16"
    return "fp32"


@dataclass(frozen=True)
class PrecisionPlan:
    precision: str  # what the engine computes in: fp32 / fp16 / int8
    mode: str  # STRONGLY_TYPED, BUILDER_FLAGS or PLAIN_FP32

    @property
    def explicit(self) -> bool:
        return self.mode == STRONGLY_TYPED


def resolve_precision(requested: str | None, graph: str, *, calibration_given: bool, onnx_name: str) -> PrecisionPlan:
    """The precision plan from `--precision` (None = as the graph says) and the graph's own precision."""
    if requested is not None and requested not in PRECISIONS:
        raise ZsdError(f"--precision {requested} is unknown.", f"choose one of {', '.join(PRECISIONS)}.")
    if graph != "fp32":
        if requested not in (None, graph):
            raise ZsdError(f"{onnx_name} is an explicit {graph} graph (its precision is in the graph: "
                           f"{'Q/DQ nodes' if graph == 'int8' else 'fp16 tensors'}), so --precision {requested} "
                           "cannot apply; TensorRT builds it as a strongly typed network.",
                           f"drop --precision (or pass --precision {graph}); for another precision convert the fp32 "
                           f"export: export-model --from-onnx FP32.onnx --precision {requested} --output M.onnx.")
        if calibration_given:
            raise ZsdError(f"{onnx_name} is an explicit {graph} graph: its quantization scales are in the graph, so "
                           "--calib-images / --calib-cache have nothing to calibrate.", "drop them.")
        return PrecisionPlan(graph, STRONGLY_TYPED)
    precision = requested or "fp32"
    return PrecisionPlan(precision, PLAIN_FP32 if precision == "fp32" else BUILDER_FLAGS)


def check_caps(plan: PrecisionPlan, caps: TensorRTCaps, onnx_name: str) -> None:
    """Refuse, with the way out, what the installed TensorRT cannot build."""
    convert = (f"put the precision into the graph and build that: export-model --from-onnx {onnx_name} --precision "
               f"{plan.precision} --output {onnx_name.rsplit('.', 1)[0]}_{plan.precision}.onnx, then build-engine "
               f"--onnx on it (strongly typed)")
    if plan.mode == STRONGLY_TYPED and not caps.strongly_typed:
        raise ZsdError(f"TensorRT {caps.version} cannot build strongly typed networks "
                       "(no NetworkDefinitionCreationFlag.STRONGLY_TYPED), which explicit fp16/int8 graphs need.",
                       "install TensorRT 10 or newer.")
    if plan.mode == BUILDER_FLAGS:
        missing = []
        if not caps.fp16_flag:
            missing.append("BuilderFlag.FP16")
        if plan.precision == "int8":
            missing += [n for n, ok in (("BuilderFlag.INT8", caps.int8_flag),
                                        ("IInt8EntropyCalibrator2", caps.int8_calibrator)) if not ok]
        if missing:
            raise ZsdError(f"--precision {plan.precision} on an fp32 graph needs {' and '.join(missing)}, which "
                           f"TensorRT {caps.version} does not have (TensorRT 11 removed builder-chosen precision; "
                           "networks are strongly typed).", convert + ".")


def network_flags(plan: PrecisionPlan, caps: TensorRTCaps) -> tuple[bool, str]:
    """(create the network strongly typed?, the network kind recorded in the sidecar)."""
    if plan.mode == STRONGLY_TYPED:
        return True, STRONGLY_TYPED
    if plan.mode == PLAIN_FP32 and not caps.weakly_typed:
        # TensorRT 11: every network is strongly typed; an fp32 graph gives an fp32 engine.
        return caps.strongly_typed, STRONGLY_TYPED
    return False, "weakly_typed"
