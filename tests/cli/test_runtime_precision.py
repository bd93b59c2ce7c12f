"""One spelling of precision across the CLIs: a runtime precision is `fp32 | bf16` (the graph precisions' `fp32`);
`f32`, the old spelling, is still accepted by every CLI and API that took it and normalised to `fp32` at the
boundary (options.runtime_precision); OpenVINO's own hint string `f32` appears only where OpenVINO is called."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import write_tiny_onnx
from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.options import GRAPH_PRECISIONS, RUNTIME_PRECISIONS, runtime_precision


def test_one_spelling_and_the_old_alias():
    assert RUNTIME_PRECISIONS == ("fp32", "bf16") and RUNTIME_PRECISIONS[0] == GRAPH_PRECISIONS[0]
    assert [runtime_precision(v) for v in ("fp32", "f32", "bf16")] == ["fp32", "fp32", "bf16"]
    with pytest.raises(ZsdError, match=r"precision 'fp64' is not one of fp32, bf16\. Fix: pass fp32 or bf16"):
        runtime_precision("fp64")
    with pytest.raises(ZsdError, match=r"fp16 is a graph precision: .*export-model --from-onnx M.onnx --precision fp16"):
        runtime_precision("fp16")


def _trt_infer_args(precision: str) -> list[str]:
    return ["--model", "m.onnx", "--input", "i.png", "--output", "out", "--precision", precision]


def test_trt_infer_and_zsd_bench_video_parse_both_spellings_alike():
    from zsdeploy.benchmarks.cli import build_parser as bench_parser
    from zsdeploy.cli.trt_infer import build_parser, open_options

    new, old = (build_parser().parse_args(_trt_infer_args(p)) for p in ("fp32", "f32"))
    assert vars(new) == vars(old) and new.precision == "fp32"
    assert open_options(new) == open_options(old)
    assert build_parser().parse_args(_trt_infer_args("bf16")).precision == "bf16"
    assert build_parser().parse_args(_trt_infer_args("fp32")[:-2]).precision == "fp32"  # the default
    video = [bench_parser().parse_args(["video", "--model", "m.onnx", "--output", "o", "--precision", p])
             for p in ("fp32", "f32")]
    assert vars(video[0]) == vars(video[1]) and video[0].precision == "fp32"


@pytest.mark.parametrize("cli", [["zsdeploy.cli.trt_infer", "--model", "m.onnx", "--input", "i.png"],
                                 ["zsdeploy.benchmarks.cli", "video", "--model", "m.onnx"]])
def test_an_unknown_precision_exits_2_with_one_paragraph(tmp_path, cli):
    r = subprocess.run([sys.executable, "-m", *cli, "--output", str(tmp_path / "out"), "--precision", "fp16"],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 2, r.stderr
    [error] = [line for line in r.stderr.splitlines() if ": error: " in line]
    assert "argument --precision: precision 'fp16' is not one of fp32, bf16. Fix:" in error
    assert "build-engine --precision fp16" in error and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_apis_take_both_spellings(tmp_path):
    """load_backend / resolve_backend / OpenOptions (open_pipeline) / OpenVINOBackend: `f32` is `fp32`; OpenVINO
    is still handed its own hint string `f32`."""
    from zsdeploy.families import OpenOptions
    from zsdeploy.runtime.backends import load_backend, resolve_backend

    path = write_tiny_onnx(tmp_path / "tiny.onnx", dynamic=True)
    assert resolve_backend(path, precision="f32") == resolve_backend(path, precision="fp32") == "onnxruntime"
    with pytest.raises(ZsdError, match="precision 'f16' is not one of fp32, bf16"):
        resolve_backend(path, precision="f16")
    assert OpenOptions(precision="f32") == OpenOptions(precision="fp32") == OpenOptions()
    assert OpenOptions(precision="f32").precision == "fp32"
    with pytest.raises(ZsdError, match="precision 'int8' is not one of fp32, bf16"):
        OpenOptions(precision="int8")
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 96)).astype(np.float32)
    pytest.importorskip("openvino")
    outs = []
    for spelling in ("f32", "fp32"):
        b = load_backend(path, backend="openvino", precision=spelling, cache_dir=False)
        assert (b.precision, b.requested_precision, b.config["INFERENCE_PRECISION_HINT"]) == ("fp32", "fp32", "f32")
        outs.append(b.infer({"images": x}))
    for k in outs[0]:
        np.testing.assert_array_equal(outs[0][k], outs[1][k])


@pytest.mark.parametrize("backend", ["auto", "openvino"])
def test_trt_infer_runs_alike_with_either_spelling(onnx_exports, tmp_path, backend):
    """trt-infer --precision fp32 and --precision f32 (the old spelling) write the same results."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 152, 3), dtype=np.uint8)).save(image)
    docs = []
    for spelling in ("fp32", "f32"):
        out = tmp_path / spelling
        r = subprocess.run([sys.executable, "-m", "zsdeploy.cli.trt_infer", "--model", str(onnx_exports["dynamic"]),
                            "--input", str(image), "--output", str(out), "--backend", backend, "--precision", spelling,
                            "--task", "semantic", "--save-raw"], capture_output=True, text=True, timeout=600,
                           check=False)
        assert r.returncode == 0, r.stderr
        doc = json.loads((out / "scene.json").read_text())
        doc.pop("timings_ms")
        docs.append((doc, np.array(Image.open(out / "scene_semantic.png")), dict(np.load(out / "scene_raw.npz"))))
    (doc_a, label_a, raw_a), (doc_b, label_b, raw_b) = docs
    assert doc_a == doc_b and doc_a["backend"] == ("onnxruntime" if backend == "auto" else "openvino")
    np.testing.assert_array_equal(label_a, label_b)
    for k in raw_a:
        np.testing.assert_array_equal(raw_a[k], raw_b[k])
