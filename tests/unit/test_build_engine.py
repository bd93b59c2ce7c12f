"""`build-engine`: argument/ONNX/plugin checks (run everywhere, before TensorRT is imported) and the engine sidecar
contract (zsdeploy-engine/2, /1 still read, strict fields, stale-plan check). The real TensorRT build + inference of
PADing is in tests/gpu/test_build_engine_gpu.py."""
from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from zsdeploy.runtime.artifacts.sidecar import SIDECAR_FORMAT, SIDECAR_FORMAT_V1, EngineSidecar, OnnxSource, \
    check_plan_source, read_sidecar, rebuild_command, sidecar_path, write_sidecar
from zsdeploy.runtime.cuda_utils import DeviceInfo
from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.files import file_sha256
from zsdeploy.runtime.tensorrt.builder import make_sidecar
from zsdeploy.runtime.preprocess import fit_short_edge
from zsdeploy.runtime.tensorrt.loader import import_tensorrt
from zsdeploy.runtime.tensorrt.plugins import NVIDIA_PLUGIN, PLUGIN_LIBRARY_NAME, ZSD_PLUGIN, PluginSpec
from zsdeploy.runtime.tensorrt.preflight import BuildOptions, preflight
from zsdeploy.runtime.tensorrt.profiles import ShapeRange, parse_profile

from helpers import CLASS_NAMES, REPO, metadata, run_cli, write_tiny_onnx  # noqa: E402


def tensorrt_installed() -> bool:
    try:
        import_tensorrt()
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
    assert fit_short_edge(480, 640, (800, 1088), 800, 1333) == (800, 1333)
    for h, w, canvas in [(480, 640, (512, 512)), (1000, 200, (800, 1216)), (300, 3000, (320, 640))]:
        short, max_size = fit_short_edge(h, w, canvas, 800, 1333)
        rh, rw = resized_shape(h, w, short, max_size)
        assert rh <= canvas[0] and rw <= canvas[1]
        assert max(rh / canvas[0], rw / canvas[1]) > 0.95  # shrunk only as much as needed


# ------------------------------------------------------------------- engine sidecar (artifacts/sidecar.py)


JETSON = DeviceInfo(0, "NVIDIA Jetson AGX Orin", (8, 7), 32 << 30)

# Every field a zsdeploy-engine/2 sidecar must have (plugin_library and calibration_cache may be null).
V2_FIELDS = ("format", "builder", "built_at", "metadata", "onnx", "tensorrt_version", "gpu_name", "compute_capability",
             "precision", "network", "graph_precision", "workspace_mb", "profiles", "plugins", "plugin_library",
             "calibration_cache")


def built_sidecar(directory: Path, *, dynamic: bool = False, **opts) -> tuple[Path, Path, EngineSidecar]:
    """(onnx, plan, sidecar) as build-engine leaves them, without TensorRT: a real ONNX, stand-in plan bytes and the
    sidecar that the builder's own functions (preflight -> make_sidecar -> write_sidecar) write for them."""
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = write_tiny_onnx(directory / "m.onnx", dynamic=dynamic)
    plan_path = directory / "m.plan"
    plan_path.write_bytes(b"stand-in engine bytes: never deserialised here")
    side = make_sidecar(preflight(BuildOptions(onnx_path, plan_path, **opts)), "10.13.0.35", JETSON, None)
    assert write_sidecar(side) == sidecar_path(plan_path)
    return onnx_path, plan_path, side


def reexport(onnx_path: Path) -> None:
    """What a new export-model run does to the file: same graph, other weights."""
    model = onnx.load(str(onnx_path))
    w = next(i for i in model.graph.initializer if i.name == "w")
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 2, "w"))
    onnx.save(model, str(onnx_path))


def test_sidecar_roundtrip(tmp_path):
    onnx_path = write_tiny_onnx(tmp_path / "m.onnx", plugin="MSDeformAttn")
    lib = tmp_path / "libzsdeploy_plugins.so"
    lib.write_bytes(b"\x7fELF stand-in bytes: only hashed here, never loaded")
    plan = preflight(BuildOptions(onnx_path, tmp_path / "m.plan", precision="fp16", plugin_lib=lib))
    written = make_sidecar(plan, "10.13.0.35", JETSON, "ctypes")
    side = write_sidecar(written)
    assert side == tmp_path / "m.plan.json"
    assert json.loads(side.read_text())["format"] == SIDECAR_FORMAT == "zsdeploy-engine/2"
    assert set(json.loads(side.read_text())) == set(V2_FIELDS)
    got = read_sidecar(tmp_path / "m.plan")
    assert got == written  # every typed field survives the JSON
    assert (got.tensorrt_version, got.gpu_name, got.compute_capability, got.precision) == \
        ("10.13.0.35", "NVIDIA Jetson AGX Orin", "8.7", "fp16")
    assert got.profiles == ({"images": ShapeRange((1, 3, 64, 96), (1, 3, 64, 96), (1, 3, 64, 96))},)
    assert got.plugins == (ZSD_PLUGIN,)
    assert got.plugin_library is not None and got.plugin_library.path == str(lib.resolve())
    assert (got.plugin_library.sha256, got.plugin_library.loaded_by) == (file_sha256(lib), "ctypes")
    assert got.onnx == OnnxSource(str(onnx_path.resolve()), file_sha256(onnx_path))
    assert (got.network, got.graph_precision, got.workspace_mb) == ("weakly_typed", "fp32", 4096)
    assert got.info.class_names == tuple(CLASS_NAMES) and got.info.static_hw == (64, 96)
    assert got.raw["metadata"] == {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the atomic write left no temp file


def test_sidecar_v1_still_read(tmp_path):
    onnx_path = write_tiny_onnx(tmp_path / "m.onnx")
    plan = tmp_path / "m.plan"
    profiles = [{"images": {"min": [1, 3, 64, 96], "opt": [1, 3, 64, 96], "max": [1, 3, 64, 96]}}]
    # exactly what the /1 writer (zsdeploy 0.1's runtime/engine.py make_sidecar) wrote
    v1 = {"format": "zsdeploy-engine/1", "builder": "zsdeploy-0.1.0", "built_at": "2025-01-01T00:00:00+0000",
          "metadata": metadata(), "onnx": {"path": str(onnx_path.resolve()), "sha256": file_sha256(onnx_path)},
          "tensorrt_version": "10.3.0.30", "gpu_name": "Orin", "compute_capability": "8.7", "precision": "fp16",
          "network": "weakly_typed", "graph_precision": "fp32", "workspace_mb": 4096, "profiles": profiles,
          "plugins": [], "plugin_library": None, "calibration_cache": None}
    sidecar_path(plan).write_text(json.dumps(v1))
    got = read_sidecar(plan)
    assert got.format == SIDECAR_FORMAT_V1 and (got.tensorrt_version, got.precision) == ("10.3.0.30", "fp16")
    assert got.onnx is not None and got.onnx.sha256 == file_sha256(onnx_path)
    check_plan_source(got)  # recorded and unchanged
    # /1 files written by hand (or by the earliest builds) had only what the /1 reader required
    minimal = {k: v1[k] for k in ("format", "metadata", "tensorrt_version", "gpu_name", "compute_capability",
                                  "precision", "profiles")}
    sidecar_path(plan).write_text(json.dumps(minimal))
    got = read_sidecar(plan)
    assert (got.onnx, got.plugins, got.plugin_library, got.network, got.builder) == (None, (), None, None, None)
    reexport(onnx_path)
    check_plan_source(got)  # nothing recorded to compare: accepted
    # but /1 still requires what the /1 reader required
    del minimal["compute_capability"]
    sidecar_path(plan).write_text(json.dumps(minimal))
    with pytest.raises(ZsdError, match="field 'compute_capability' .* is missing"):
        read_sidecar(plan)


@pytest.mark.parametrize("key", V2_FIELDS)
def test_sidecar_v2_field_missing_is_named(tmp_path, key):
    onnx_path, plan, _ = built_sidecar(tmp_path)
    doc = json.loads(sidecar_path(plan).read_text())
    del doc[key]
    sidecar_path(plan).write_text(json.dumps(doc))
    with pytest.raises(ZsdError) as e:
        read_sidecar(plan)
    err = e.value
    assert err.exit_code == 2
    assert f"engine sidecar {sidecar_path(plan)} is malformed: field {key!r}" in err.problem
    assert err.problem.endswith("is missing.")
    # the fix rebuilds both files from the recorded ONNX (or says which ONNX to pass when that is what is missing)
    source = "MODEL.onnx" if key == "onnx" else str(onnx_path.resolve())
    assert f"build-engine --onnx {source} --output {plan}" in (err.fix or "")


@pytest.mark.parametrize("key,value,why", [
    ("compute_capability", "sm_87", "MAJOR.MINOR expected"),
    ("precision", "fp8", "not one of fp32, fp16, int8"),
    ("network", "explicit", "not one of strongly_typed, weakly_typed"),
    ("profiles", [], "a non-empty list expected"),
    ("profiles", [{"images": {"min": [1, 3, 64, 96], "opt": [1, 3, 32, 32], "max": [1, 3, 64, 96]}}],
     "min <= opt <= max"),
    ("profiles", [{"images": {"min": [1, 3, 64, 96], "max": [1, 3, 64, 96]}}], "no 'opt'"),
    ("onnx", {"path": "m.onnx", "sha256": "abc"}, "64 lowercase hex"),
    ("onnx", {"path": "m.onnx"}, "no 'sha256'"),
    ("metadata", {"num_classes": 4}, "are not strings"),
    ("workspace_mb", "4096", "a positive integer expected"),
    ("plugins", [{"name": "MSDeformAttn"}], "no 'version', 'namespace'"),
    ("plugin_library", {"path": "/x/lib.so"}, "no 'name', 'sha256', 'loaded_by'"),
    ("tensorrt_version", "", "a non-empty string expected"),
    ("built_at", None, "a non-empty string expected"),
])
def test_sidecar_v2_malformed_field_is_named(tmp_path, key, value, why):
    _, plan, _ = built_sidecar(tmp_path)
    doc = json.loads(sidecar_path(plan).read_text())
    doc[key] = value
    sidecar_path(plan).write_text(json.dumps(doc))
    with pytest.raises(ZsdError) as e:
        read_sidecar(plan)
    assert f"is malformed: field {key!r} must be" in e.value.problem and why in e.value.problem
    assert "build-engine --onnx" in (e.value.fix or "")


def test_sidecar_missing_unreadable_or_unknown_format(tmp_path):
    with pytest.raises(ZsdError, match="has no sidecar x.plan.json"):
        read_sidecar(tmp_path / "x.plan")
    side = tmp_path / "x.plan.json"
    side.write_text('{"format": "zsdeploy-engine/1", "metadata": {}}')
    with pytest.raises(ZsdError, match="malformed: field 'tensorrt_version' .* is missing"):
        read_sidecar(tmp_path / "x.plan")
    side.write_text("{not json")
    with pytest.raises(ZsdError, match="malformed: not readable JSON"):
        read_sidecar(tmp_path / "x.plan")
    side.write_text("[1, 2]")
    with pytest.raises(ZsdError, match="malformed: a JSON list, not an object"):
        read_sidecar(tmp_path / "x.plan")
    side.write_text('{"metadata": {}}')
    with pytest.raises(ZsdError, match="field 'format' .* is missing"):
        read_sidecar(tmp_path / "x.plan")
    side.write_text('{"format": "zsdeploy-engine/9"}')
    with pytest.raises(ZsdError, match="has format 'zsdeploy-engine/9'; this zsdeploy reads zsdeploy-engine/1 and "
                                       "zsdeploy-engine/2"):
        read_sidecar(tmp_path / "x.plan")


def test_sidecar_writer_refuses_an_incomplete_v2_document(tmp_path):
    _, plan, side = built_sidecar(tmp_path)
    before = sidecar_path(plan).read_bytes()
    with pytest.raises(ValueError, match=r"needs \['onnx'\]"):
        write_sidecar(dataclasses.replace(side, onnx=None))
    assert sidecar_path(plan).read_bytes() == before


def _fix_args(fix: str) -> list[str]:
    """The build-engine arguments of a 'rebuild ...: build-engine ...' fix."""
    args = shlex.split(fix.split(": ", 1)[1])
    assert args[0] == "build-engine"
    return args[1:]


def test_stale_plan_refused_with_the_build_engine_fix(tmp_path):
    onnx_path, plan, side = built_sidecar(tmp_path)
    check_plan_source(read_sidecar(plan))  # the ONNX it was built from, unchanged: accepted
    recorded = side.onnx.sha256 if side.onnx else ""
    reexport(onnx_path)
    with pytest.raises(ZsdError) as e:
        check_plan_source(read_sidecar(plan))
    err = e.value
    assert err.exit_code == 2
    assert err.problem == (f"{plan} was built from {onnx_path.resolve()}, which has changed since (sha256 "
                           f"{recorded[:12]}... when the engine was built, {file_sha256(onnx_path)[:12]}... now); "
                           "the engine would run the old model.")
    assert err.fix == f"rebuild the engine: build-engine --onnx {onnx_path.resolve()} --output {plan}"
    # the fix is a command build-engine accepts (its checks before TensorRT pass)
    from zsdeploy.cli.build_engine import build_parser, options_from_args

    assert preflight(options_from_args(build_parser().parse_args(_fix_args(err.fix)))).model.path == \
        onnx_path.resolve()
    # deployed alone (the ONNX is not on this machine): nothing to compare, accepted
    onnx_path.unlink()
    check_plan_source(read_sidecar(plan))


def test_stale_plan_found_beside_a_moved_plan(tmp_path):
    """A copied or moved folder: the recorded path is gone, the ONNX of that name next to the plan is compared."""
    built_sidecar(tmp_path / "a")
    moved = tmp_path / "b"
    shutil.move(tmp_path / "a", moved)
    check_plan_source(read_sidecar(moved / "m.plan"))  # the same bytes: accepted
    reexport(moved / "m.onnx")
    with pytest.raises(ZsdError, match=f"was built from {moved / 'm.onnx'}, which has changed since"):
        check_plan_source(read_sidecar(moved / "m.plan"))


def test_rebuild_command_repeats_the_build_options(tmp_path):
    """The fix's command builds the same engine: ONNX, output, precision, plugin library and dynamic profile."""
    d = tmp_path / "my models"  # a space: the command is quoted for the shell
    d.mkdir()
    onnx_path = write_tiny_onnx(d / "m.onnx", dynamic=True, plugin="MSDeformAttn")
    lib = d / PLUGIN_LIBRARY_NAME
    lib.write_bytes(b"stand-in library bytes")
    profile = parse_profile(["images:1x3x64x64:1x3x128x128:2x3x256x256"])
    opts = BuildOptions(onnx_path.resolve(), d / "m.plan", precision="fp16", profile=profile,
                        plugin_lib=lib.resolve())
    side = make_sidecar(preflight(opts), "10.13.0.35", JETSON, "ctypes")
    from zsdeploy.cli.build_engine import build_parser, options_from_args

    again = options_from_args(build_parser().parse_args(shlex.split(rebuild_command(side))[1:]))
    assert again == opts
    bundle = rebuild_command(side, bundle=d)
    assert shlex.split(bundle) == ["build-engine", "--onnx", str(d), "--output", str(d), "--precision", "fp16",
                                   "--plugin-lib", str(lib.resolve())]


def test_stale_bundle_plan_fix_rebuilds_the_bundle(tmp_path):
    root = tmp_path / "bundle"
    onnx_path, plan, _ = built_sidecar(root)
    reexport(onnx_path)
    with pytest.raises(ZsdError) as e:
        check_plan_source(read_sidecar(plan), bundle=root)
    assert "the engine would run the old model" in e.value.problem
    assert e.value.fix == f"rebuild the bundle's engines: build-engine --onnx {root} --output {root}"


def test_tensorrt_package_exports_lazily():
    """The tensorrt package exports its public API lazily (PEP 562): each name is its module's object."""
    from zsdeploy.runtime import tensorrt
    from zsdeploy.runtime.tensorrt import builder

    assert {n: getattr(tensorrt, n) for n in tensorrt.__all__}["BuildOptions"] is BuildOptions
    assert tensorrt.build_engine is builder.build_engine and tensorrt.make_sidecar is make_sidecar

def test_plugin_specs_match_the_exporter():
    from zsdeploy.export.plugin_lowering import NVIDIA, PLUGIN

    assert ZSD_PLUGIN == PluginSpec(PLUGIN.op_type, PLUGIN.plugin_version, PLUGIN.plugin_namespace)
    assert NVIDIA_PLUGIN == PluginSpec(NVIDIA.op_type, NVIDIA.plugin_version, NVIDIA.plugin_namespace)


def test_runtime_modules_do_not_import_torch():
    code = ("import sys; import zsdeploy.runtime.tensorrt.builder, zsdeploy.cli.build_engine, zsdeploy.runtime.cuda_utils, "
            "zsdeploy.runtime.bundle_engines, zsdeploy.runtime.backends.tensorrt_backend; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
