"""`build-engine` with real TensorRT on a GPU: PADing (stand-in weights, 128x160) in the three MSDeformAttn lowerings
built at fp32 / fp16 and run through the TensorRT backend against ONNX Runtime, and builder-flag int8 calibrated from
images (skipped, with the reason, where TensorRT or a GPU is missing). The checks that need no TensorRT are in
tests/unit/test_build_engine.py."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from zsdeploy.cli.build_engine import main as build_main
from zsdeploy.runtime.artifacts.sidecar import SIDECAR_FORMAT, OnnxSource, read_sidecar
from zsdeploy.runtime.files import file_sha256
from zsdeploy.runtime.tensorrt.loader import version_tuple
from zsdeploy.runtime.tensorrt.plugins import NVIDIA_PLUGIN_MIN_TENSORRT, PLUGIN_LIBRARY_NAME
from zsdeploy.runtime.tensorrt.precision import tensorrt_caps

from helpers import REPO, require_tensorrt_gpu


# ------------------------------------------------------------------------- real TensorRT (GPU machines)


def plugin_library() -> Path | None:
    candidates = [os.environ.get("ZSD_PLUGIN_LIB", ""), REPO / "build" / PLUGIN_LIBRARY_NAME,
                  REPO / "plugins_trt" / "build" / PLUGIN_LIBRARY_NAME]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def rel_l2(got: np.ndarray, ref: np.ndarray) -> float:
    ref64 = ref.astype(np.float64)
    return float(np.linalg.norm(got.astype(np.float64) - ref64) / max(np.linalg.norm(ref64), 1e-30))


@pytest.fixture(scope="module")
def pading_exports(tmp_path_factory):
    """PADing panoptic (stand-in weights) at 128x160, static, in the three lowerings."""
    require_tensorrt_gpu()
    from zsdeploy.cli.export_model import main as export_main

    out = tmp_path_factory.mktemp("pading_trt")
    paths = {}
    for msda in ("gridsample", "plugin", "nvidia"):
        paths[msda] = out / f"pading_{msda}.onnx"
        assert export_main(["--model", "pading", "--task", "panoptic", "--msda", msda, "--height", "128",
                            "--width", "160", "--output", str(paths[msda])]) == 0
    return paths


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("fp16", 3e-2)])
@pytest.mark.parametrize("msda", ["gridsample", "plugin", "nvidia"])
def test_build_and_infer_pading(pading_exports, tmp_path, msda, precision, tol):
    """build-engine -> .plan + sidecar -> TensorRTBackend, against ONNX Runtime on the gridsample graph."""
    trt = require_tensorrt_gpu()
    args = ["--onnx", str(pading_exports[msda]), "--output", str(tmp_path / "m.plan"), "--precision", precision,
            "--timing-cache", str(tmp_path / "timing.cache"), "--workspace", "2048"]
    lib = None
    if msda == "plugin":
        lib = plugin_library()
        if lib is None:
            pytest.skip("libzsdeploy_plugins.so not found (set ZSD_PLUGIN_LIB or build plugins_trt into build/)")
        args += ["--plugin-lib", str(lib)]
    if msda == "nvidia" and version_tuple(trt.__version__) < NVIDIA_PLUGIN_MIN_TENSORRT:
        pytest.skip(f"TensorRT {trt.__version__} has no MultiscaleDeformableAttnPlugin_TRT v2 (needs >= 10.11)")
    assert build_main(args) == 0
    side = read_sidecar(tmp_path / "m.plan")
    assert side.format == SIDECAR_FORMAT
    assert side.precision == precision and side.tensorrt_version == trt.__version__
    assert side.onnx == OnnxSource(str(pading_exports[msda].resolve()), file_sha256(pading_exports[msda]))
    assert side.profiles[0]["images"].opt == (1, 3, 128, 160)
    assert (tmp_path / "timing.cache").stat().st_size > 0
    assert (side.plugin_library is not None) == (msda == "plugin")

    import onnxruntime as ort

    from zsdeploy.runtime.backends.tensorrt_backend import TensorRTBackend

    x = (np.random.default_rng(0).random((1, 3, 128, 160), dtype=np.float32) * 255).astype(np.float32)
    ref = dict(zip(("class_logits", "mask_logits"), ort.InferenceSession(
        str(pading_exports["gridsample"]), providers=["CPUExecutionProvider"]).run(None, {"images": x})))
    with TensorRTBackend(tmp_path / "m.plan", plugin_lib=lib) as backend:
        assert backend.input_names == ("images",)
        got = backend.infer({"images": x})
        for name, r in ref.items():
            assert got[name].shape == r.shape
            assert rel_l2(got[name], r) < tol, f"{msda} {precision} {name}: rel L2 {rel_l2(got[name], r):.2e}"
    # a rebuild reuses the timing cache
    assert build_main(args) == 0


# int8 post-training quantisation of the stand-in PADing at 128x160, calibrated on 8 noise images and run on
# another: a calibrated engine stays within a few percent of fp32 (relative L2); 0.2 still separates it from a
# broken calibration or missing scales (relative L2 around 1).
INT8_TOL = 0.2


def test_int8_with_calibration_images(pading_exports, tmp_path, capsys):
    """Builder-flag int8 (TensorRT <= 10): calibrated from images, rebuilt from the cache alone; the sidecar says
    int8, and the engine runs through the TensorRT backend close to ONNX Runtime's fp32 outputs."""
    trt = require_tensorrt_gpu()
    caps = tensorrt_caps(trt)
    if not (caps.int8_flag and caps.int8_calibrator):
        pytest.skip(f"TensorRT {trt.__version__} has no BuilderFlag.INT8 / IInt8EntropyCalibrator2 (removed in "
                    "TensorRT 11); explicit int8 graphs are built in test_engine_precision")
    import onnxruntime as ort
    from PIL import Image

    from zsdeploy.runtime.backends.tensorrt_backend import TensorRTBackend

    images = tmp_path / "calib"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (120 + 10 * i, 170, 3), dtype=np.uint8)).save(images / f"{i}.png")
    cache, plan, onnx_path = tmp_path / "pading.calib", tmp_path / "m.plan", pading_exports["gridsample"]
    args = ["--onnx", str(onnx_path), "--output", str(plan), "--precision", "int8", "--calib-images", str(images),
            "--calib-cache", str(cache)]
    x = (rng.random((1, 3, 128, 160), dtype=np.float32) * 255).astype(np.float32)
    ref = dict(zip(("class_logits", "mask_logits"), ort.InferenceSession(
        str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"images": x})))

    def check_engine() -> None:
        side = read_sidecar(plan)
        assert (side.precision, side.network, side.graph_precision) == ("int8", "weakly_typed", "fp32")
        assert side.calibration_cache == str(cache)
        assert side.onnx == OnnxSource(str(onnx_path.resolve()), file_sha256(onnx_path))
        with TensorRTBackend(plan) as backend:
            got = backend.infer({"images": x})
        for name, r in ref.items():
            assert got[name].shape == r.shape and np.isfinite(got[name]).all()
            assert rel_l2(got[name], r) < INT8_TOL, f"int8 {name}: rel L2 {rel_l2(got[name], r):.3f}"

    capsys.readouterr()
    assert build_main(args) == 0
    assert "calibration batch 1/8" in capsys.readouterr().out  # calibrated from the images
    assert cache.stat().st_size > 0
    check_engine()
    # the cache alone is enough for the next build: TensorRT reads it instead of calibrating
    assert build_main(args[:6] + ["--calib-cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert f"using calibration cache {cache}" in out and "calibration batch" not in out
    check_engine()
