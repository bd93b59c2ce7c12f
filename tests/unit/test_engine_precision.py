"""build-engine's precision decisions (runtime/tensorrt/precision.py), without TensorRT: which network (strongly
typed / builder flags / plain fp32) for which graph and TensorRT API, and which clear error otherwise."""
from __future__ import annotations

import onnx
import pytest
from helpers import explicit_copy, run_cli, write_tiny_onnx

from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.tensorrt.onnx_inspect import inspect_onnx
from zsdeploy.runtime.tensorrt.precision import BUILDER_FLAGS, PLAIN_FP32, STRONGLY_TYPED, PrecisionPlan, \
    TensorRTCaps, check_caps, graph_precision, network_flags, resolve_precision
from zsdeploy.runtime.tensorrt.preflight import BuildOptions, preflight

# The Python APIs as documented: TensorRT 10.3 (JetPack 6) keeps the builder flags and calibrators; TensorRT 11
# removed BuilderFlag.FP16/INT8 and IInt8EntropyCalibrator2 (networks are strongly typed).
TRT10 = TensorRTCaps("10.3.0", fp16_flag=True, int8_flag=True, int8_calibrator=True, strongly_typed=True,
                     tf32_flag=True)
TRT11 = TensorRTCaps("11.1.0", fp16_flag=False, int8_flag=False, int8_calibrator=False, strongly_typed=True,
                     tf32_flag=True)
TRT8 = TensorRTCaps("8.6.1", fp16_flag=True, int8_flag=True, int8_calibrator=True, strongly_typed=False,
                    tf32_flag=True)


def test_graph_precision_from_metadata_and_nodes(tmp_path):
    tiny = write_tiny_onnx(tmp_path / "t.onnx")
    assert inspect_onnx(tiny).precision == "fp32"
    assert inspect_onnx(explicit_copy(tiny, tmp_path / "i8.onnx", "int8")).precision == "int8"
    assert inspect_onnx(explicit_copy(tiny, tmp_path / "f16.onnx", "fp16")).precision == "fp16"
    model = onnx.load(str(tiny))
    assert graph_precision(model, {"precision": "fp16"}) == "fp16"  # the metadata's word wins


def test_resolve_precision():
    assert resolve_precision(None, "fp32", calibration_given=False, onnx_name="m.onnx") == \
        PrecisionPlan("fp32", PLAIN_FP32)
    assert resolve_precision("fp16", "fp32", calibration_given=False, onnx_name="m.onnx") == \
        PrecisionPlan("fp16", BUILDER_FLAGS)
    for requested in (None, "int8"):
        plan = resolve_precision(requested, "int8", calibration_given=False, onnx_name="m.onnx")
        assert plan == PrecisionPlan("int8", STRONGLY_TYPED) and plan.explicit
    with pytest.raises(ZsdError, match="explicit int8 graph.*--precision fp16 cannot apply") as e:
        resolve_precision("fp16", "int8", calibration_given=False, onnx_name="m.onnx")
    assert "export-model --from-onnx" in e.value.fix
    with pytest.raises(ZsdError, match="nothing to calibrate"):
        resolve_precision(None, "int8", calibration_given=True, onnx_name="m.onnx")
    with pytest.raises(ZsdError, match="unknown"):
        resolve_precision("bf8", "fp32", calibration_given=False, onnx_name="m.onnx")


@pytest.mark.parametrize("plan,caps,flags", [
    (PrecisionPlan("fp16", STRONGLY_TYPED), TRT10, (True, STRONGLY_TYPED)),
    (PrecisionPlan("int8", STRONGLY_TYPED), TRT11, (True, STRONGLY_TYPED)),
    (PrecisionPlan("fp16", BUILDER_FLAGS), TRT10, (False, "weakly_typed")),
    (PrecisionPlan("int8", BUILDER_FLAGS), TRT10, (False, "weakly_typed")),
    (PrecisionPlan("fp32", PLAIN_FP32), TRT10, (False, "weakly_typed")),
    (PrecisionPlan("fp32", PLAIN_FP32), TRT11, (True, STRONGLY_TYPED)),  # TensorRT 11: all networks strongly typed
])
def test_supported_combinations(plan, caps, flags):
    check_caps(plan, caps, "m.onnx")
    assert network_flags(plan, caps) == flags


@pytest.mark.parametrize("precision,missing", [("fp16", "BuilderFlag.FP16"),
                                               ("int8", "BuilderFlag.FP16 and BuilderFlag.INT8 and "
                                                        "IInt8EntropyCalibrator2")])
def test_builder_flags_refused_on_tensorrt_11(precision, missing):
    with pytest.raises(ZsdError) as e:
        check_caps(PrecisionPlan(precision, BUILDER_FLAGS), TRT11, "pading.onnx")
    assert missing in e.value.problem and "TensorRT 11.1.0" in e.value.problem
    assert f"export-model --from-onnx pading.onnx --precision {precision} --output pading_{precision}.onnx" \
        in e.value.fix


def test_strongly_typed_needs_the_creation_flag():
    with pytest.raises(ZsdError, match="TensorRT 8.6.1 cannot build strongly typed"):
        check_caps(PrecisionPlan("int8", STRONGLY_TYPED), TRT8, "m.onnx")


def test_preflight_of_explicit_graphs(tmp_path):
    tiny = write_tiny_onnx(tmp_path / "t.onnx")
    i8 = explicit_copy(tiny, tmp_path / "i8.onnx", "int8")
    assert preflight(BuildOptions(i8, tmp_path / "m.plan")).precision == PrecisionPlan("int8", STRONGLY_TYPED)
    with pytest.raises(ZsdError, match="cannot apply"):
        preflight(BuildOptions(i8, tmp_path / "m.plan", precision="fp16"))
    with pytest.raises(ZsdError, match="nothing to calibrate"):
        preflight(BuildOptions(i8, tmp_path / "m.plan", calib_images=tmp_path))
    assert preflight(BuildOptions(tiny, tmp_path / "m.plan")).precision == PrecisionPlan("fp32", PLAIN_FP32)


def test_cli_refuses_a_second_precision_on_an_explicit_graph(tmp_path):
    i8 = explicit_copy(write_tiny_onnx(tmp_path / "t.onnx"), tmp_path / "i8.onnx", "int8")
    proc = run_cli("--onnx", str(i8), "--output", str(tmp_path / "m.plan"), "--precision", "fp16")
    assert proc.returncode == 2 and "explicit int8 graph" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m.plan").exists()


@pytest.mark.parametrize("kind", ["int8", "fp16"])
def test_explicit_graph_builds_strongly_typed(tmp_path, kind):
    """Where TensorRT and a GPU exist: the explicit graph builds, and the sidecar says how."""
    import json

    from helpers import require_tensorrt_gpu

    from zsdeploy.runtime.artifacts.sidecar import read_sidecar
    from zsdeploy.cli.build_engine import main as build_main

    require_tensorrt_gpu()
    graph = explicit_copy(write_tiny_onnx(tmp_path / "t.onnx"), tmp_path / f"{kind}.onnx", kind)
    assert build_main(["--onnx", str(graph), "--output", str(tmp_path / "m.plan")]) == 0
    side = json.loads((tmp_path / "m.plan.json").read_text())
    assert side["precision"] == kind and side["network"] == STRONGLY_TYPED and side["graph_precision"] == kind
    read = read_sidecar(tmp_path / "m.plan")  # the typed reader agrees with the JSON
    assert (read.precision, read.network, read.graph_precision) == (kind, STRONGLY_TYPED, kind)
