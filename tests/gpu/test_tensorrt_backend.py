"""TensorRT backend and CUDA helpers.

Without TensorRT/GPU: every check that comes before deserialisation (engine file, sidecar, metadata, a plan whose
ONNX changed since the build, plugin library, TensorRT importability), that the runner never loads the builder,
and the cuda-python error path (a real runtime call on a machine without a driver/GPU). With TensorRT and a GPU: a
tiny engine is built with build-engine's API and run against ONNX Runtime, including profile checks, CUDA-graph
replay, and refusing plans of another TensorRT version / GPU or from an older export of a ZegFormer bundle.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from zsdeploy.runtime import cuda_utils
from zsdeploy.runtime.artifacts.sidecar import EngineSidecar, OnnxSource, PluginLibrary, read_sidecar, sidecar_path, \
    write_sidecar
from zsdeploy.runtime.backends import load_backend
from zsdeploy.runtime.backends.tensorrt_backend import TensorRTBackend
from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.tensorrt.loader import import_tensorrt
from zsdeploy.runtime.tensorrt.plugins import PluginSpec
from zsdeploy.runtime.tensorrt.profiles import ShapeRange, parse_profile

from helpers import REPO

CLASS_NAMES = ["person", "car", "sky", "grass"]


def metadata(dynamic: bool) -> dict[str, str]:
    return {
        "model": "pading", "task": "panoptic", "num_classes": str(len(CLASS_NAMES)),
        "class_names": json.dumps(CLASS_NAMES), "pixel_mean": json.dumps([123.675, 116.28, 103.53]),
        "min_size_test": "800", "max_size_test": "1333", "size_divisibility": "32",
        "dynamic": "true" if dynamic else "false", "static_batch": "" if dynamic else "1",
        "static_height": "" if dynamic else "64", "static_width": "" if dynamic else "96", "input_name": "images",
    }


def write_engine_sidecar(plan: Path, *, plugins: tuple[PluginSpec, ...] = (),
                         plugin_library: PluginLibrary | None = None, meta: dict[str, str] | None = None) -> Path:
    """A sidecar written by build-engine's writer (artifacts.sidecar) for an fp16 engine built elsewhere: its
    ONNX (/build-host/...) is not on this machine, as for an engine deployed alone."""
    return write_sidecar(EngineSidecar(
        plan=plan, metadata=metadata(False) if meta is None else meta,
        onnx=OnnxSource("/build-host/exports/pading.onnx", hashlib.sha256(b"the ONNX on the build host").hexdigest()),
        tensorrt_version="10.13.0.35", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
        precision="fp16", profiles=({"images": ShapeRange((1, 3, 64, 96), (1, 3, 64, 96), (1, 3, 64, 96))},),
        plugins=plugins, plugin_library=plugin_library, network="weakly_typed", graph_precision="fp32",
        workspace_mb=4096, calibration_cache=None, builder="zsdeploy-0.1.0", built_at="2025-01-01T00:00:00+0000"))


@pytest.fixture
def plan(tmp_path) -> Path:
    p = tmp_path / "model.plan"
    p.write_bytes(b"not a real plan: every test using it fails before deserialisation")
    return p


def tensorrt_installed() -> bool:
    try:
        import_tensorrt()
    except ZsdError:
        return False
    return True


# -------------------------------------------------------------------------- checks before TensorRT


def test_missing_engine(tmp_path):
    with pytest.raises(ZsdError, match="does not exist"):
        TensorRTBackend(tmp_path / "none.plan")


def test_missing_sidecar(plan):
    with pytest.raises(ZsdError, match="has no sidecar model.plan.json"):
        TensorRTBackend(plan)


def test_malformed_sidecar(plan):
    sidecar_path(plan).write_text("{not json")
    with pytest.raises(ZsdError, match="malformed"):
        TensorRTBackend(plan)


def test_sidecar_without_metadata(plan):
    write_engine_sidecar(plan, meta={"model": "pading"})
    with pytest.raises(ZsdError, match="carries no zsdeploy metadata"):
        TensorRTBackend(plan)


def test_plugin_engine_without_plugin_library(plan, tmp_path):
    gone = tmp_path / "build" / "libzsdeploy_plugins.so"
    write_engine_sidecar(plan, plugins=(PluginSpec("MSDeformAttn", "1", "zsdeploy"),),
                         plugin_library=PluginLibrary(str(gone), gone.name, hashlib.sha256(b"lib").hexdigest(),
                                                      "ctypes + zsdeployInitPlugins"))
    with pytest.raises(ZsdError, match="needs the plugin library it was built with") as e:
        TensorRTBackend(plan)
    assert str(gone) in str(e.value) and "--plugin-lib" in (e.value.fix or "")
    with pytest.raises(ZsdError, match="plugin library .*nope.so does not exist"):
        TensorRTBackend(plan, plugin_lib=tmp_path / "nope.so")


def test_without_tensorrt(plan):
    if tensorrt_installed():
        pytest.skip("TensorRT is installed here, so the 'TensorRT missing' error path cannot be exercised")
    write_engine_sidecar(plan)
    with pytest.raises(ZsdError, match="TensorRT") as e:
        load_backend(plan)  # .plan dispatches to the TensorRT backend
    assert "pip install tensorrt" in (e.value.fix or "") and "JetPack" in (e.value.fix or "")


# ------------------------------------------------------------- a plan whose ONNX changed (no TensorRT needed)


def engine_built_from(onnx_path: Path) -> Path:
    """Stand-in plan bytes next to `onnx_path` and the sidecar build-engine's own functions (preflight ->
    make_sidecar -> write_sidecar) write for an engine built from it on an H100."""
    from zsdeploy.runtime.tensorrt.builder import make_sidecar
    from zsdeploy.runtime.tensorrt.preflight import BuildOptions, preflight

    plan = onnx_path.with_suffix(".plan")
    plan.write_bytes(b"stand-in engine bytes: the stale-plan check comes before deserialisation")
    gpu = cuda_utils.DeviceInfo(0, "NVIDIA H100 80GB HBM3", (9, 0), 80 << 30)
    write_sidecar(make_sidecar(preflight(BuildOptions(onnx_path, plan)), "10.13.0.35", gpu, None))
    return plan


def test_plan_of_a_changed_onnx_is_refused(tmp_path):
    onnx_path = tiny_onnx(tmp_path / "model.onnx", dynamic=False)
    plan = engine_built_from(onnx_path)
    with pytest.raises(ZsdError) as e:
        TensorRTBackend(plan)
    # the ONNX is unchanged: the check passes and a later step (TensorRT, GPU, deserialisation) refuses the bytes
    assert "has changed since" not in e.value.problem
    tiny_onnx(onnx_path, dynamic=False, seed=1)  # export-model run again: other weights, same file name
    for open_engine in (TensorRTBackend, load_backend):
        with pytest.raises(ZsdError) as e:
            open_engine(plan)
        assert e.value.problem.startswith(f"{plan} was built from {onnx_path.resolve()}, which has changed since "
                                          "(sha256 ")
        assert e.value.problem.endswith("the engine would run the old model.")
        assert e.value.fix == f"rebuild the engine: build-engine --onnx {onnx_path.resolve()} --output {plan}"
    onnx_path.unlink()  # the engine deployed without its ONNX: nothing to compare, the check passes
    with pytest.raises(ZsdError) as e:
        TensorRTBackend(plan)
    assert "has changed since" not in e.value.problem


RUNNER_CHECK = """
import sys
import zsdeploy.runtime.backends.tensorrt_backend
BUILDER_SIDE = ("zsdeploy.runtime.tensorrt.builder", "zsdeploy.runtime.tensorrt.calibration",
                "zsdeploy.runtime.tensorrt.preflight", "zsdeploy.runtime.tensorrt.progress")
assert not [m for m in BUILDER_SIDE if m in sys.modules], [m for m in BUILDER_SIDE if m in sys.modules]
from zsdeploy.runtime.backends.tensorrt_backend import TensorRTBackend
from zsdeploy.runtime.errors import ZsdError
try:
    TensorRTBackend(sys.argv[1])
except ZsdError as e:
    assert "has changed since" in e.problem, e.problem
else:
    raise AssertionError("the stale plan was opened")
assert not [m for m in BUILDER_SIDE if m in sys.modules], [m for m in BUILDER_SIDE if m in sys.modules]
assert "tensorrt" not in sys.modules, "TensorRT was imported before the stale plan was refused"
"""


def test_runner_never_loads_the_builder(tmp_path):
    """Importing the TensorRT backend, and opening a plan with it up to the stale-plan refusal, loads neither the
    builder nor the calibrator (nor preflight, nor the engine.py facade), and no TensorRT: a fresh interpreter."""
    onnx_path = tiny_onnx(tmp_path / "model.onnx", dynamic=False)
    plan = engine_built_from(onnx_path)
    tiny_onnx(onnx_path, dynamic=False, seed=1)
    proc = subprocess.run([sys.executable, "-c", RUNNER_CHECK, str(plan)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# -------------------------------------------------------------------------------------- cuda-python


def _cudart_or_skip():
    try:
        return cuda_utils.cudart()
    except ZsdError as e:
        pytest.skip(e.problem)


def _has_gpu() -> bool:
    try:
        return cuda_utils.device_count() > 0
    except ZsdError:
        return False


def test_cuda_check_unpacks_results():
    rt = _cudart_or_skip()
    version = cuda_utils.check(rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")  # needs no driver
    assert isinstance(version, int) and version >= 11000


def test_cuda_errors_are_named_without_gpu():
    _cudart_or_skip()
    if _has_gpu():
        pytest.skip("a CUDA GPU is present: the no-GPU error path cannot be exercised")
    with pytest.raises(cuda_utils.CudaError) as e:
        cuda_utils.device_info(0)
    err = e.value
    assert err.call == "cudaGetDeviceCount" and err.name.startswith("cudaError") and err.code != 0
    assert err.name in str(err) and err.fix  # e.g. cudaErrorInsufficientDriver / cudaErrorNoDevice + what to do


def require_gpu():
    _cudart_or_skip()
    if not _has_gpu():
        pytest.skip("no CUDA GPU (cuda-python cannot find a device/driver)")


def test_device_memory_roundtrip_and_graph():
    require_gpu()
    info = cuda_utils.device_info(0)
    assert info.name and info.compute_capability[0] >= 5
    stream = cuda_utils.Stream()
    src = np.arange(4096, dtype=np.float32)
    dev_a, dev_b = cuda_utils.DeviceBuffer(src.nbytes), cuda_utils.DeviceBuffer(src.nbytes)
    pinned = cuda_utils.PinnedBuffer(src.nbytes)
    staged = pinned.view(src.shape, src.dtype)
    np.copyto(staged, src)
    cuda_utils.memcpy_htod_async(dev_a.ptr, staged, stream)
    rt = cuda_utils.cudart()
    graph = cuda_utils.CudaGraph()
    graph.begin_capture(stream)
    cuda_utils.check(rt.cudaMemcpyAsync(dev_b.ptr, dev_a.ptr, src.nbytes,
                                        rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream.handle), "d2d")
    graph.end_capture(stream)
    graph.launch(stream)  # capture does not execute: the replay does the copy
    out = np.empty_like(src)
    cuda_utils.memcpy_dtoh_async(out, dev_b.ptr, stream)
    stream.synchronize()
    np.testing.assert_array_equal(out, src)
    assert dev_a.reserve(16) is False and dev_a.reserve(src.nbytes * 2) is True
    for res in (graph, dev_a, dev_b, pinned, stream):
        res.free()


# ------------------------------------------------------------------------- TensorRT + GPU (tiny engine)


def tiny_onnx(path: Path, dynamic: bool, seed: int = 0) -> Path:
    """images -> Conv3x3 -> mask_logits; ReduceMean -> class_logits (builds in seconds); `seed`: the weights."""
    dims = ["batch", 3, "height", "width"] if dynamic else [1, 3, 64, 96]
    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["mask_logits"], pads=[1, 1, 1, 1]),
         helper.make_node("ReduceMean", ["mask_logits", "axes"], ["class_logits"], keepdims=0)],
        "tiny", [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("class_logits", onnx.TensorProto.FLOAT, None),
         helper.make_tensor_value_info("mask_logits", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32) / 100, "w"),
         numpy_helper.from_array(np.array([2, 3], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    for k, v in metadata(dynamic).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """{'static'|'dynamic': (onnx, plan)} built with build-engine's API (fp32)."""
    from zsdeploy.runtime.tensorrt.builder import build_engine
    from zsdeploy.runtime.tensorrt.preflight import BuildOptions

    try:
        import_tensorrt()
    except ZsdError as e:
        pytest.skip(e.problem)
    require_gpu()
    out = tmp_path_factory.mktemp("trt")
    built = {}
    for kind in ("static", "dynamic"):
        onnx_path = tiny_onnx(out / f"{kind}.onnx", dynamic=kind == "dynamic")
        profile = parse_profile(["images:1x3x32x32:1x3x64x96:2x3x128x160"]) if kind == "dynamic" else {}
        build_engine(BuildOptions(onnx_path, out / f"{kind}.plan", profile=profile), say=print)
        built[kind] = (onnx_path, out / f"{kind}.plan")
    return built


def reference(onnx_path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return dict(zip(("class_logits", "mask_logits"), sess.run(None, {"images": x})))


def images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 3, h, w), dtype=np.float32) * 255).astype(np.float32)


@pytest.mark.parametrize("pinned", [True, False])
def test_static_engine_matches_onnxruntime(engines, pinned):
    onnx_path, plan = engines["static"]
    with TensorRTBackend(plan, pinned=pinned) as backend:
        assert backend.input_shape("images") == (1, 3, 64, 96)
        assert backend.info.class_names == tuple(CLASS_NAMES)
        x = images(1, 64, 96)
        got, ref = backend.infer({"images": x}), reference(onnx_path, x)
        for name in ref:
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, atol=1e-4)
        with pytest.raises(ZsdError, match="outside the engine's optimisation profile"):
            backend.infer({"images": images(1, 64, 128)})
        with pytest.raises(ZsdError, match="was not given"):
            backend.infer({})


def test_dynamic_engine_and_cuda_graph(engines):
    onnx_path, plan = engines["dynamic"]
    with TensorRTBackend(plan) as plain, TensorRTBackend(plan, use_cuda_graph=True) as graphed:
        assert plain.input_shape("images") == (None, 3, None, None)
        assert plain.profile_shapes("images") == ((1, 3, 32, 32), (1, 3, 64, 96), (2, 3, 128, 160))
        for n, h, w in [(1, 64, 96), (1, 64, 96), (2, 128, 160), (1, 64, 96)]:  # replay, re-capture, re-capture
            x = images(n, h, w, seed=h + n)
            ref = reference(onnx_path, x)
            a, b = plain.infer({"images": x}), graphed.infer({"images": x})
            for name in ref:
                np.testing.assert_allclose(a[name], ref[name], rtol=1e-4, atol=1e-4)
                np.testing.assert_array_equal(b[name], a[name])
        with pytest.raises(ZsdError, match=r"outside the engine's optimisation profile.*--profile images"):
            plain.infer({"images": images(3, 64, 96)})


def _copy_engine(plan: Path, dest: Path, **sidecar_changes: str) -> Path:
    shutil.copy(plan, dest)
    raw = json.loads(sidecar_path(plan).read_text())
    raw.update(sidecar_changes)
    sidecar_path(dest).write_text(json.dumps(raw))
    return dest


def test_refuses_other_tensorrt_version_and_gpu(engines, tmp_path):
    _, plan = engines["static"]
    other = _copy_engine(plan, tmp_path / "v.plan", tensorrt_version="8.6.1.6")
    with pytest.raises(ZsdError, match="was built with TensorRT 8.6.1.6") as e:
        TensorRTBackend(other)
    source = read_sidecar(other).onnx
    assert source is not None and e.value.fix == f"rebuild it here: build-engine --onnx {source.path} --output {other}"
    other = _copy_engine(plan, tmp_path / "cc.plan", compute_capability="1.0", gpu_name="Imaginary GPU")
    with pytest.raises(ZsdError, match="compute capability 1.0"):
        TensorRTBackend(other)
    cc = cuda_utils.device_info(0).compute_capability_str
    other = _copy_engine(plan, tmp_path / "name.plan", compute_capability=cc, gpu_name="Another GPU, same arch")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TensorRTBackend(other).close()
    assert any("Another GPU, same arch" in str(w.message) for w in caught)


def test_truncated_plan(engines, tmp_path):
    _, plan = engines["static"]
    broken = _copy_engine(plan, tmp_path / "t.plan")
    broken.write_bytes(plan.read_bytes()[:1000])
    with pytest.raises(ZsdError, match="could not deserialise"):
        TensorRTBackend(broken)


def test_reexported_onnx_is_refused_until_rebuilt(engines, tmp_path):
    """A real engine: refused once its ONNX is exported again, and the fix's command gives one that runs the new
    model."""
    import shlex

    from zsdeploy.cli.build_engine import main as build_main

    onnx_path = Path(shutil.copy(engines["static"][0], tmp_path / "model.onnx"))
    plan = tmp_path / "model.plan"
    assert build_main(["--onnx", str(onnx_path), "--output", str(plan)]) == 0
    TensorRTBackend(plan).close()
    tiny_onnx(onnx_path, dynamic=False, seed=1)
    with pytest.raises(ZsdError, match="has changed since") as e:
        TensorRTBackend(plan)
    fix = e.value.fix or ""
    assert build_main(shlex.split(fix.split(": ", 1)[1])[1:]) == 0
    x = images(1, 64, 96)
    with TensorRTBackend(plan) as backend:
        got, ref = backend.infer({"images": x}), reference(onnx_path, x)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, atol=1e-4)


def test_bundle_runtime_refuses_a_stale_plan(request, tmp_path):
    """ZegFormer bundles prefer `<graph>.plan` where TensorRT is importable: a plan built from an earlier export of
    the graph (its sidecar records another sha256) is refused, and the fix rebuilds the bundle's engines."""
    try:
        import_tensorrt()
    except ZsdError as e:
        pytest.skip(f"the bundle runtime uses plans only where TensorRT is importable: {e.problem}")
    from zsdeploy.runtime.tensorrt.builder import make_sidecar
    from zsdeploy.runtime.tensorrt.preflight import BuildOptions, preflight
    from zsdeploy.runtime.zegformer import ZegFormerBundle

    bundle, _, _ = request.getfixturevalue("zegformer_bundle")
    root = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    onnx_path, plan = root / "segmenter.onnx", root / "segmenter.plan"
    plan.write_bytes(b"stand-in engine bytes: refused before deserialisation")
    side = make_sidecar(preflight(BuildOptions(onnx_path, plan)), "10.13.0.35",
                        cuda_utils.DeviceInfo(0, "NVIDIA H100 80GB HBM3", (9, 0), 80 << 30), None)
    assert side.onnx is not None
    earlier = hashlib.sha256(b"the segmenter of an earlier export").hexdigest()
    write_sidecar(dataclasses.replace(side, onnx=OnnxSource(side.onnx.path, earlier)))
    with pytest.raises(ZsdError, match="segmenter.plan was built from .*segmenter.onnx, which has changed since") \
            as e:
        ZegFormerBundle(root)
    assert e.value.fix == f"rebuild the bundle's engines: build-engine --onnx {root} --output {root}"
    assert read_sidecar(plan).onnx == OnnxSource(str(onnx_path.resolve()), earlier)
