"""`build-engine`: argument/ONNX/plugin checks (run everywhere, before TensorRT is imported) and the real
TensorRT build + inference of PADing (skipped, with the reason, where TensorRT or a GPU is missing)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from zsdeploy.runtime import engine
from zsdeploy.runtime.build_cli import main as build_main
from zsdeploy.runtime.engine import BuildOptions, ShapeRange, parse_profile, preflight
from zsdeploy.runtime.errors import ZsdError

REPO = Path(__file__).resolve().parent.parent

CLASS_NAMES = ["person", "car", "sky", "grass"]


def metadata(dynamic: bool = False, batch: int = 1, h: int = 64, w: int = 96, msda: str = "gridsample") -> dict:
    return {
        "model": "pading", "task": "panoptic", "num_classes": str(len(CLASS_NAMES)),
        "class_names": json.dumps(CLASS_NAMES), "pixel_mean": json.dumps([123.675, 116.28, 103.53]),
        "min_size_test": "800", "max_size_test": "1333", "size_divisibility": "32",
        "dynamic": "true" if dynamic else "false", "static_batch": "" if dynamic else str(batch),
        "static_height": "" if dynamic else str(h), "static_width": "" if dynamic else str(w),
        "input_name": "images", "msda_lowering": msda,
    }


def write_tiny_onnx(path: Path, *, with_metadata: bool = True, dynamic: bool = False,
                    plugin: str | None = None) -> Path:
    """images [N,3,H,W] -> Conv3x3 -> mask_logits [N,4,H,W]; ReduceMean -> class_logits [N,4].

    `plugin` adds a node of that op type (enough for the checks that run before TensorRT parses the graph).
    """
    dims = ["batch", 3, "height", "width"] if dynamic else [1, 3, 64, 96]
    images = helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, dims)
    masks = helper.make_tensor_value_info("mask_logits", onnx.TensorProto.FLOAT, None)
    logits = helper.make_tensor_value_info("class_logits", onnx.TensorProto.FLOAT, None)
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32) / 100, "w")
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    nodes = [helper.make_node("Conv", ["images", "w"], ["mask_logits"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("ReduceMean", ["mask_logits", "axes"], ["class_logits"], keepdims=0, name="mean")]
    opsets = [helper.make_opsetid("", 18)]
    if plugin is not None:
        nodes.append(helper.make_node(plugin, ["mask_logits"], ["extra"], domain="zsdeploy", name="msda_0",
                                      plugin_version="1", plugin_namespace="zsdeploy"))
        opsets.append(helper.make_opsetid("zsdeploy", 1))
    graph = helper.make_graph(nodes, "tiny", [images], [logits, masks], [weight, axes])
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    if with_metadata:
        for k, v in metadata(dynamic).items():
            model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """build-engine in a fresh interpreter, as a user runs it (exit code, stderr)."""
    return subprocess.run([sys.executable, "-m", "zsdeploy.runtime.build_cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def tensorrt_installed() -> bool:
    try:
        engine.import_tensorrt()
    except ZsdError:
        return False
    return True


# -------------------------------------------------------------------------- errors that need no TensorRT


def test_without_tensorrt_clear_error_and_nonzero_exit(tmp_path):
    if tensorrt_installed():
        pytest.skip("TensorRT is installed here, so the 'TensorRT missing' error path cannot be exercised")
    onnx_path = write_tiny_onnx(tmp_path / "tiny.onnx")
    proc = run_cli("--onnx", str(onnx_path), "--output", str(tmp_path / "tiny.plan"))
    assert proc.returncode == ZsdError.exit_code
    err = proc.stderr
    assert err.startswith("build-engine: error:") and "Traceback" not in err
    assert "TensorRT" in err and "pip install tensorrt" in err and "JetPack" in err
    assert not (tmp_path / "tiny.plan").exists() and not (tmp_path / "tiny.plan.json").exists()


def test_onnx_without_metadata_rejected(tmp_path):
    onnx_path = write_tiny_onnx(tmp_path / "bare.onnx", with_metadata=False)
    proc = run_cli("--onnx", str(onnx_path), "--output", str(tmp_path / "bare.plan"))
    assert proc.returncode != 0
    assert "carries no zsdeploy metadata" in proc.stderr and "export-model" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_plugin_library_rejected(tmp_path):
    onnx_path = write_tiny_onnx(tmp_path / "p.onnx", plugin="MSDeformAttn")
    missing = tmp_path / "nowhere" / "libzsdeploy_plugins.so"
    proc = run_cli("--onnx", str(onnx_path), "--output", str(tmp_path / "p.plan"), "--plugin-lib", str(missing))
    assert proc.returncode != 0
    assert f"plugin library {missing} does not exist" in proc.stderr and "--plugin-lib" in proc.stderr


def test_plugin_node_without_plugin_lib_rejected(tmp_path):
    onnx_path = write_tiny_onnx(tmp_path / "p.onnx", plugin="MSDeformAttn")
    with pytest.raises(ZsdError, match=r"1 MSDeformAttn plugin node\(s\).*'msda_0'.*no --plugin-lib") as e:
        preflight(BuildOptions(onnx_path, tmp_path / "p.plan"))
    assert "libzsdeploy_plugins.so" in (e.value.fix or "")
    # NVIDIA's node needs no library (TensorRT ships it): no error before TensorRT
    nv = write_tiny_onnx(tmp_path / "nv.onnx", plugin="MultiscaleDeformableAttnPlugin_TRT")
    plan = preflight(BuildOptions(nv, tmp_path / "nv.plan"))
    assert plan.model.plugins[0].name == "MultiscaleDeformableAttnPlugin_TRT"


def test_plugin_lib_directory_rejected(tmp_path):
    onnx_path = write_tiny_onnx(tmp_path / "p.onnx", plugin="MSDeformAttn")
    with pytest.raises(ZsdError, match="is not a file"):
        preflight(BuildOptions(onnx_path, tmp_path / "p.plan", plugin_lib=tmp_path))


def test_missing_and_unreadable_onnx(tmp_path):
    with pytest.raises(ZsdError, match="does not exist"):
        preflight(BuildOptions(tmp_path / "none.onnx", tmp_path / "x.plan"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 not a protobuf" * 10)
    with pytest.raises(ZsdError, match="not a readable ONNX model"):
        preflight(BuildOptions(junk, tmp_path / "x.plan"))


def test_output_and_precision_checks(tmp_path):
    onnx_path = write_tiny_onnx(tmp_path / "t.onnx")
    with pytest.raises(ZsdError, match="should end in .plan"):
        preflight(BuildOptions(onnx_path, tmp_path / "t.bin"))
    with pytest.raises(ZsdError, match="--precision fp8 is unknown"):
        preflight(BuildOptions(onnx_path, tmp_path / "t.plan", precision="fp8"))
    with pytest.raises(ZsdError, match="needs calibration data"):
        preflight(BuildOptions(onnx_path, tmp_path / "t.plan", precision="int8"))
    with pytest.raises(ZsdError, match="are for --precision int8"):
        preflight(BuildOptions(onnx_path, tmp_path / "t.plan", precision="fp16", calib_images=tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ZsdError, match="contains no images"):
        preflight(BuildOptions(onnx_path, tmp_path / "t.plan", precision="int8", calib_images=empty))
    with pytest.raises(ZsdError, match="must be positive"):
        preflight(BuildOptions(onnx_path, tmp_path / "t.plan", workspace_mb=0))
    # an existing calibration cache is enough for int8
    cache = tmp_path / "t.calib"
    cache.write_bytes(b"cache")
    assert preflight(BuildOptions(onnx_path, tmp_path / "t.plan", precision="int8")).calib_cache == cache


def test_parse_profile():
    p = parse_profile(["images:1x3x512x512:1x3x800x1216:2x3x1344x1344"])
    assert p == {"images": ShapeRange((1, 3, 512, 512), (1, 3, 800, 1216), (2, 3, 1344, 1344))}
    for bad, msg in [("images:1x3x512x512:1x3x800x1216", "NAME:MIN:OPT:MAX"),
                     ("images:1x3xAx512:1x3x800x1216:2x3x1344x1344", "integers"),
                     ("images:1x3x512:1x3x800x1216:2x3x1344x1344", "different ranks"),
                     ("images:1x3x900x900:1x3x800x1216:2x3x1344x1344", "min <= opt <= max")]:
        with pytest.raises(ZsdError, match=msg):
            parse_profile([bad])
    with pytest.raises(ZsdError, match="twice"):
        parse_profile(["a:1:1:1", "a:1:1:1"])


def test_profiles_from_metadata_and_overrides(tmp_path):
    static = write_tiny_onnx(tmp_path / "s.onnx")
    plan = preflight(BuildOptions(static, tmp_path / "s.plan"))
    assert plan.profile == {"images": ShapeRange((1, 3, 64, 96), (1, 3, 64, 96), (1, 3, 64, 96))}
    with pytest.raises(ZsdError, match="exported with a static shape"):
        preflight(BuildOptions(static, tmp_path / "s.plan",
                               profile=parse_profile(["images:1x3x64x64:1x3x64x96:1x3x128x128"])))

    dyn = write_tiny_onnx(tmp_path / "d.onnx", dynamic=True)
    plan = preflight(BuildOptions(dyn, tmp_path / "d.plan"))
    # min_size_test 800 / max_size_test 1333 / size_divisibility 32
    assert plan.profile == {"images": ShapeRange((1, 3, 32, 32), (1, 3, 800, 1216), (1, 3, 1344, 1344))}
    custom = parse_profile(["images:1x3x512x512:1x3x800x1216:2x3x1344x1344"])
    assert preflight(BuildOptions(dyn, tmp_path / "d.plan", profile=custom)).profile == custom
    with pytest.raises(ZsdError, match="multiples of 32"):
        preflight(BuildOptions(dyn, tmp_path / "d.plan",
                               profile=parse_profile(["images:1x3x500x512:1x3x800x1216:2x3x1344x1344"])))
    with pytest.raises(ZsdError, match="does not have"):
        preflight(BuildOptions(dyn, tmp_path / "d.plan", profile=parse_profile(["img:1x3:1x3:1x3"])))
    with pytest.raises(ZsdError, match="has rank 3"):
        preflight(BuildOptions(dyn, tmp_path / "d.plan", profile=parse_profile(["images:1x3x32:1x3x32:1x3x32"])))


def test_calibration_resize_fits_canvas():
    from zsdeploy.runtime.preprocess import resized_shape

    # the model's own policy when the image fits the canvas
    assert engine._fit_short_edge(480, 640, (800, 1088), 800, 1333) == (800, 1333)
    for h, w, canvas in [(480, 640, (512, 512)), (1000, 200, (800, 1216)), (300, 3000, (320, 640))]:
        short, max_size = engine._fit_short_edge(h, w, canvas, 800, 1333)
        rh, rw = resized_shape(h, w, short, max_size)
        assert rh <= canvas[0] and rw <= canvas[1]
        assert max(rh / canvas[0], rw / canvas[1]) > 0.95  # shrunk only as much as needed


def test_sidecar_roundtrip(tmp_path):
    from zsdeploy.runtime.cuda_utils import DeviceInfo

    onnx_path = write_tiny_onnx(tmp_path / "m.onnx", plugin="MSDeformAttn")
    lib = tmp_path / "libzsdeploy_plugins.so"
    lib.write_bytes(b"\x7fELF stand-in bytes: only hashed here, never loaded")
    plan = preflight(BuildOptions(onnx_path, tmp_path / "m.plan", precision="fp16", plugin_lib=lib))
    gpu = DeviceInfo(0, "NVIDIA Jetson AGX Orin", (8, 7), 32 << 30)
    side = engine.write_sidecar(tmp_path / "m.plan", engine.make_sidecar(plan, "10.13.0.35", gpu, "ctypes"))
    assert side == tmp_path / "m.plan.json"
    got = engine.read_sidecar(tmp_path / "m.plan")
    assert (got.tensorrt_version, got.gpu_name, got.compute_capability, got.precision) == \
        ("10.13.0.35", "NVIDIA Jetson AGX Orin", "8.7", "fp16")
    assert got.profiles == ({"images": ShapeRange((1, 3, 64, 96), (1, 3, 64, 96), (1, 3, 64, 96))},)
    assert got.plugins == (engine.ZSD_PLUGIN,) and got.plugin_library == str(lib.resolve())
    assert got.info.class_names == tuple(CLASS_NAMES) and got.info.static_hw == (64, 96)
    assert got.raw["metadata"] == {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}


def test_sidecar_missing_or_malformed(tmp_path):
    with pytest.raises(ZsdError, match="has no sidecar"):
        engine.read_sidecar(tmp_path / "x.plan")
    (tmp_path / "x.plan.json").write_text('{"format": "zsdeploy-engine/1", "metadata": {}}')
    with pytest.raises(ZsdError, match="malformed"):
        engine.read_sidecar(tmp_path / "x.plan")


def test_plugin_specs_match_the_exporter():
    from zsdeploy.export.plugin_lowering import NVIDIA, PLUGIN

    assert engine.ZSD_PLUGIN == engine.PluginSpec(PLUGIN.op_type, PLUGIN.plugin_version, PLUGIN.plugin_namespace)
    assert engine.NVIDIA_PLUGIN == engine.PluginSpec(NVIDIA.op_type, NVIDIA.plugin_version, NVIDIA.plugin_namespace)


def test_runtime_modules_do_not_import_torch():
    code = ("import sys; import zsdeploy.runtime.engine, zsdeploy.runtime.build_cli, zsdeploy.runtime.cuda_utils, "
            "zsdeploy.runtime.backends.tensorrt_backend; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


# ------------------------------------------------------------------------- real TensorRT (GPU machines)


def require_tensorrt_gpu():
    """Skip (naming what is missing) unless TensorRT, cuda-python and a GPU are all usable."""
    try:
        trt = engine.import_tensorrt()
    except ZsdError as e:
        pytest.skip(e.problem)
    from zsdeploy.runtime import cuda_utils

    try:
        cuda_utils.device_info(0)
    except ZsdError as e:
        pytest.skip(f"no usable CUDA GPU / cuda-python: {e.problem}")
    return trt


def plugin_library() -> Path | None:
    candidates = [os.environ.get("ZSD_PLUGIN_LIB", ""), REPO / "build" / engine.PLUGIN_LIBRARY_NAME,
                  REPO / "plugins_trt" / "build" / engine.PLUGIN_LIBRARY_NAME]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def rel_l2(got: np.ndarray, ref: np.ndarray) -> float:
    ref64 = ref.astype(np.float64)
    return float(np.linalg.norm(got.astype(np.float64) - ref64) / max(np.linalg.norm(ref64), 1e-30))


@pytest.fixture(scope="module")
def pading_exports(tmp_path_factory):
    """PADing panoptic (stand-in weights) at 128x160, static, in the three lowerings."""
    require_tensorrt_gpu()
    from zsdeploy.export.cli import main as export_main

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
    if msda == "nvidia" and engine._version_tuple(trt.__version__) < engine.NVIDIA_PLUGIN_MIN_TENSORRT:
        pytest.skip(f"TensorRT {trt.__version__} has no MultiscaleDeformableAttnPlugin_TRT v2 (needs >= 10.11)")
    assert build_main(args) == 0
    side = engine.read_sidecar(tmp_path / "m.plan")
    assert side.precision == precision and side.tensorrt_version == trt.__version__
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


def test_int8_with_calibration_images(pading_exports, tmp_path):
    require_tensorrt_gpu()
    from PIL import Image

    images = tmp_path / "calib"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (120 + 10 * i, 170, 3), dtype=np.uint8)).save(images / f"{i}.png")
    cache = tmp_path / "pading.calib"
    args = ["--onnx", str(pading_exports["gridsample"]), "--output", str(tmp_path / "m.plan"), "--precision",
            "int8", "--calib-images", str(images), "--calib-cache", str(cache)]
    assert build_main(args) == 0
    assert cache.stat().st_size > 0
    # the cache alone is enough for the next build
    assert build_main(args[:6] + ["--calib-cache", str(cache)]) == 0
    assert engine.read_sidecar(tmp_path / "m.plan").precision == "int8"
