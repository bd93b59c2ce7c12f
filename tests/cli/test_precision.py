"""Explicit-precision graphs (export-model --precision / --from-onnx): fp16 and int8 Q/DQ conversions of a real
PADing export, run in ONNX Runtime on the CPU against the fp32 graph; metadata; fp32 islands; bad input."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import REPO, rel_l2

from zsdeploy.export.precision import PrecisionOptions, calibration_data, convert, has_qdq
from zsdeploy.export.precision_islands import BY_NAME, island_nodes
from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.artifacts.onnx_metadata import ModelInfo


def export_model(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zsdeploy.cli.export_model", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def fp32_onnx(diverse_export) -> Path:
    """export-model as a user runs it: the diverse stand-in at 128x160, --precision fp32 said explicitly (the
    session's run, conftest.diverse_export)."""
    return diverse_export


def meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def run_ort(path: Path | bytes, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    src = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]).run(None, {"images": x})


@pytest.fixture(scope="module")
def scene_input(fp32_onnx) -> np.ndarray:
    """A generated small-target scene pre-processed for the graph (not one of the calibration scenes)."""
    from zsdeploy.runtime.scenes import generate_scene
    from zsdeploy.export.precision import _to_input

    info = ModelInfo.from_metadata(meta(fp32_onnx), "fp32")
    return _to_input(generate_scene(7, 128, 160, n_objects=20, size_range=(6, 40)).image, info)


def test_fp32_export_states_its_precision(fp32_onnx):
    m = meta(fp32_onnx)
    assert m["precision"] == "fp32" and m["standin_variant"] == "diverse" and m["model"] == "pading"


def test_fp16_graph_runs_in_onnxruntime_close_to_fp32(fp32_onnx, tmp_path, scene_input):
    out = tmp_path / "fp16.onnx"
    proc = export_model("--from-onnx", str(fp32_onnx), "--precision", "fp16", "--fp32-islands", "msda_sampling",
                        "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = onnx.load(str(out))
    # the graph contract is unchanged: float32 images in, float32 logits out
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer) > 50
    m, m32 = meta(out), meta(fp32_onnx)
    assert {k: v for k, v in m.items() if not k.startswith("precision")} == \
        {k: v for k, v in m32.items() if not k.startswith("precision")}  # every existing key kept
    assert m["precision"] == "fp16" and "onnxconverter-common" in m["precision_converter"]
    assert json.loads(m["precision_fp32_islands"]) == ["msda_sampling"]
    assert json.loads(m["precision_fp32_island_nodes"])["msda_sampling"] > 100
    # inside the island no fp16 round trip: GridSample's grid comes straight from fp32 arithmetic
    producer = {o: n for n in model.graph.node for o in n.output}
    grids = [n for n in model.graph.node if n.op_type == "GridSample"]
    assert grids and all(producer[g.input[1]].op_type != "Cast" for g in grids)
    ref = run_ort(fp32_onnx, scene_input)
    got = run_ort(out, scene_input)
    for g, r in zip(got, ref):
        assert g.dtype == np.float32 and g.shape == r.shape
        assert rel_l2(g, r) < 1e-2  # measured 2e-3 (fp16 storage between ops)
        assert rel_l2(g, r) > 1e-5  # it did change precision


def test_int8_qdq_graph_from_a_calibration_folder(fp32_onnx, tmp_path, scene_input):
    from PIL import Image

    from zsdeploy.runtime.scenes import generate_scene

    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(2):
        Image.fromarray(generate_scene(100 + i, 160, 200, n_objects=20).image).save(calib / f"s{i}.png")
    (calib / "broken.jpg").write_bytes(b"this is not a jpeg")
    out = tmp_path / "int8.onnx"
    proc = export_model("--from-onnx", str(fp32_onnx), "--precision", "int8", "--calib", str(calib),
                        "--fp32-islands", "msda_sampling,mask_product", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "broken.jpg" in proc.stdout  # listed and skipped
    model = onnx.load(str(out))
    assert has_qdq(model)
    m = meta(out)
    assert m["precision"] == "int8" and "QDQ" in m["precision_converter"]
    cal = json.loads(m["precision_calibration"])
    assert cal["method"] == "minmax" and cal["source"] == "folder" and cal["skipped"] == [str(calib / "broken.jpg")]
    inits = {t.name: t for t in model.graph.initializer}
    # symmetric (zero points 0) and per-channel weights, as TensorRT's explicit quantization needs
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits:
            assert not onnx.numpy_helper.to_array(inits[n.input[2]]).any()
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                   and onnx.numpy_helper.to_array(inits[n.input[1]]).size > 1]
    assert len(per_channel) > 20
    # the islands' Convs/MatMuls/Gemms take no dequantized input
    island = set().union(*island_nodes(onnx.load(str(fp32_onnx)), ["msda_sampling", "mask_product"]).values())
    producer = {o: n for n in model.graph.node for o in n.output}
    linear = [n for n in model.graph.node if n.name in island and n.op_type in ("Conv", "Gemm", "MatMul")]
    assert linear and all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear"
                          for n in linear for i in n.input)
    ref = run_ort(fp32_onnx, scene_input)
    got = run_ort(out, scene_input)
    for g, r in zip(got, ref):
        assert g.dtype == np.float32 and g.shape == r.shape
        assert 1e-4 < rel_l2(g, r) < 0.2  # measured ~0.05-0.08 at 128x160

    # OpenVINO compiles and runs the Q/DQ graph (it refused one whose constant-operand MatMul was quantised
    # "per channel" on the heads axis: such MatMuls stay fp32) and agrees with ONNX Runtime on it
    if importlib.util.find_spec("openvino") is not None:
        from zsdeploy.export.precision import constant_operand_matmuls
        from zsdeploy.runtime.backends import load_backend

        fp32_model = onnx.load(str(fp32_onnx))
        assert constant_operand_matmuls(fp32_model)  # the stand-in's learned queries fold into one
        dq_inputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        assert not [n.name for n in model.graph.node if n.name in constant_operand_matmuls(fp32_model)
                    and any(i in dq_inputs for i in n.input)]
        ov = load_backend(out, backend="openvino", precision="f32", cache_dir=False)
        for a, g in zip(ov.infer({ov.input_names[0]: scene_input}).values(), got):
            assert rel_l2(a, g) < 0.05  # the same int8 graph in two runtimes: measured ~0.03 (requantisation rounding)

    # converting the int8 graph again is refused, and nothing is written
    again = tmp_path / "again.onnx"
    proc = export_model("--from-onnx", str(out), "--precision", "fp16", "--output", str(again))
    assert proc.returncode == 2 and "QuantizeLinear/DequantizeLinear" in proc.stderr and "Fix:" in proc.stderr
    assert "Traceback" not in proc.stderr and not again.exists()


def test_thin_or_clipped_calibration_is_warned(fp32_onnx, tmp_path):
    """Was: int8 calibration on one 1x1 image exited 0 without a word, and a 16-bit PNG was clipped to white
    without the note trt-infer gives for the same file."""
    from PIL import Image

    calib = tmp_path / "calib"
    calib.mkdir()
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(calib / "dot.png")
    Image.fromarray(np.full((64, 64), 60000, np.uint16)).save(calib / "deep.png")
    out = tmp_path / "int8.onnx"
    proc = export_model("--from-onnx", str(fp32_onnx), "--precision", "int8", "--calib", str(calib), "--output",
                        str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "deep.png is a 16-bit" in proc.stdout and "clips values above 255 to white" in proc.stdout
    assert "warning: calibrating on 2 image(s), the smallest 1x1" in proc.stdout


def test_default_calibration_is_generated_small_target_scenes(fp32_onnx):
    info = ModelInfo.from_metadata(meta(fp32_onnx), "fp32")
    data = calibration_data(info, calib_dir=None, scenes=3)
    assert data.source == "synthetic" and len(data.feeds) == 3
    x = data.feeds[0]["images"]
    assert x.shape == (1, 3, 128, 160) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 255
    assert not np.array_equal(data.feeds[0]["images"], data.feeds[1]["images"])
    model = convert(onnx.load(str(fp32_onnx)), PrecisionOptions("int8", "none", calib_scenes=2),
                    say=lambda _m: None)
    cal = json.loads({p.key: p.value for p in model.metadata_props}["precision_calibration"])
    assert cal["source"] == "synthetic" and "2 generated small-target scenes" in cal["data"]


@pytest.mark.parametrize("args,message", [
    (["--precision", "fp16", "--calib", "{empty}"], "are for --precision int8"),
    (["--precision", "int8", "--calib", "{empty}"], "contains no images"),
    (["--precision", "int8", "--calib", "{broken}"], "none of its 1 image(s) could be read"),
    (["--precision", "int8", "--calib-scenes", "0"], "needs calibration data"),
    (["--precision", "fp16", "--fp32-islands", "softmaxes"], "unknown island"),
    (["--precision", "fp16", "--height", "256"], "would be ignored"),
])
def test_bad_precision_input_one_paragraph_exit_2(fp32_onnx, tmp_path, args, message):
    empty, broken = tmp_path / "empty", tmp_path / "broken"
    empty.mkdir()
    broken.mkdir()
    (broken / "x.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "out.onnx"
    args = [a.format(empty=empty, broken=broken) for a in args]
    proc = export_model("--from-onnx", str(fp32_onnx), *args, "--output", str(out), timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Fix:" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.onnx*"))


def test_fp16_of_a_foreign_graph_says_what_will_not_run_it(tmp_path):
    """Was: a graph without zsdeploy metadata converted to fp16 silently, and trt-infer then refused the result."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], list(np.eye(4, dtype=np.float32).ravel()))
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(foreign))
    out = tmp_path / "foreign_fp16.onnx"
    proc = export_model("--from-onnx", str(foreign), "--precision", "fp16", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "carries no zsdeploy metadata" in proc.stdout and "trt-infer, zsd-bench and export-triton will refuse" \
        in proc.stdout
    assert onnx.load(str(out)).graph.initializer[0].data_type == TensorProto.FLOAT16


def test_same_input_and_output_refused(fp32_onnx):
    proc = export_model("--from-onnx", str(fp32_onnx), "--precision", "fp16", "--output", str(fp32_onnx))
    assert proc.returncode == 2 and "the fp32 graph would be lost" in proc.stderr


def test_islands_are_found_by_topology(fp32_onnx):
    model = onnx.load(str(fp32_onnx))
    ops = {n.name: n.op_type for n in model.graph.node}
    found = island_nodes(model, BY_NAME)
    assert all(found.values()), {k: len(v) for k, v in found.items()}
    msda = [ops[n] for n in found["msda_sampling"]]
    # 6 encoder layers: the sampling-offset and attention-weight projections, one softmax over points each,
    # and every GridSample (3 levels)
    assert msda.count("Gemm") == 12 and msda.count("Softmax") == 6
    assert msda.count("GridSample") == sum(op == "GridSample" for op in ops.values())
    assert {ops[n] for n in found["layernorm"]} == {"LayerNormalization"}
    assert "Einsum" in {ops[n] for n in found["mask_product"]}
    assert {ops[n] for n in found["class_head"]} >= {"Gemm"}
    with pytest.raises(ZsdError, match="unknown island"):
        convert(model, PrecisionOptions("fp16", "layernorm,nope"))


def test_sensitivity_pass_reports_what_each_island_buys(fp32_onnx, tmp_path):
    out = tmp_path / "sens.json"
    proc = subprocess.run([sys.executable, "-m", "zsdeploy.benchmarks.precision_sensitivity", "--onnx", str(fp32_onnx),
                           "--precision", "fp16", "--scenes", "1", "--candidates", "layernorm,class_head",
                           "--tolerance", "100", "--output", str(out)],
                          capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [r["label"] for r in report["rows"]] == ["naive (no island)", "+ layernorm", "+ class_head"]
    assert report["met"] and report["chosen"] == []  # the naive graph already meets a 100-point tolerance
    for row in report["rows"]:
        assert 1e-5 < row["all"]["mask_logits.rel_l2"] < 1e-2
        assert 0 <= row["small_loss"] <= 100
    md = out.with_suffix(".md").read_text()
    assert "| + layernorm |" in md and "buys vs naive" in md and "--fp32-islands none" in md
    bad = subprocess.run([sys.executable, "-m", "zsdeploy.benchmarks.precision_sensitivity", "--onnx",
                          str(tmp_path / "missing.onnx"), "--precision", "int8", "--output", str(tmp_path / "x.json")],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and not (tmp_path / "x.json").exists()


def test_fp16_of_a_dynamic_export_runs_at_two_sizes(onnx_exports):
    """Dynamic graphs carry shape arithmetic (Shape -> Cast -> Range/Div) the converter leaves half-typed; the
    repaired graph must load and run at any size."""
    model = convert(onnx.load(str(onnx_exports["dynamic"])), PrecisionOptions("fp16"), say=lambda _m: None)
    rng = np.random.default_rng(0)
    for hw in ((128, 160), (96, 224)):
        x = rng.uniform(0, 255, (1, 3, *hw)).astype(np.float32)
        ref = run_ort(onnx_exports["dynamic"], x)
        got = run_ort(model.SerializeToString(), x)
        for g, r in zip(got, ref):
            assert g.shape == r.shape and g.dtype == np.float32
            # measured 8.5e-2 (128x160) and 8.8e-3 (96x224) with the default msda_sampling island, 0.29 without it:
            # the golden stand-in is fp16-fragile in any layout (its static 128x160 graph is no better), while the
            # diverse stand-in is at 2e-3 (test_fp16_graph_runs_in_onnxruntime_close_to_fp32)
            assert rel_l2(g, r) < 0.15
