"""Shared fixtures: stand-in PADing models and ONNX exports are built once per session (exports take ~30 s), the
exports in child processes started as soon as the tests are collected (tests/prefetch.py), so that they run on
the second core while the tests that need none run.

The test modules are filed by layer (tests/unit, integration, cli, gpu); this file applies to all of them. What they
share otherwise (paths, ../shared, numeric checks, small models) is in tests/helpers.py."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# helpers.py is where the test modules' shared checks live: its asserts get pytest's detailed failure reports too.
pytest.register_assert_rewrite("helpers")

from helpers import BPE, PADING_PLUGIN_ONNX, assert_ran  # noqa: E402
from prefetch import PREFETCH, Command, build_artifacts, export_model  # noqa: E402

# Keep CPU tests predictable on 2-core CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# OpenVINO's compiled-model cache (and other zsdeploy caches) go to a per-session temp folder, not ~/.cache.
os.environ.setdefault("ZSD_CACHE_DIR", tempfile.mkdtemp(prefix="zsd-test-cache-"))


# ------------------------------------------------------------------------------------- prefetched artifacts
# Jobs are named after the fixtures that use them; each returns the commands that make it in its folder.
DIVERSE_ONNX = "pading_diverse_128x160.onnx"
ZEGFORMER_CLI = ["--model", "zegformer", "--config", "cocostuff_r101_gzss", "--height", "256", "--width", "320"]


def _zegformer_commands(d: Path) -> list[Command]:
    cmd = export_model(*ZEGFORMER_CLI, "--clip", str(d / "clip_small.pt"), "--output", str(d / "bundle"))
    cmd += ["--clip-bpe", str(BPE)] if BPE is not None else ["--no-default-embeddings"]
    return [Command(build_artifacts("tiny_clip", str(d))), Command(cmd)]


def _demo_commands(d: Path) -> list[Command]:
    (d / "demo").mkdir(exist_ok=True)  # as scripts/demo.sh has: a folder named like the weights must not shadow them
    return [Command(export_model("--model", "pading", "--weights", "demo", "--height", "256", "--width", "256",
                                 "--output", str(d / "demo.onnx")), cwd=d)]


PREFETCH.define("diverse_export", lambda d: [Command(export_model(
    "--model", "pading", "--task", "panoptic", "--standin", "diverse", "--height", "128", "--width", "160",
    "--msda", "gridsample", "--precision", "fp32", "--output", str(d / DIVERSE_ONNX)))])
PREFETCH.define("zegformer_bundle", _zegformer_commands)
PREFETCH.define("demo_export", _demo_commands)
PREFETCH.define("onnx_exports", lambda d: [Command(build_artifacts("onnx_exports", str(d)))])
PREFETCH.define("pading_graphs", lambda d: [
    Command(export_model("--model", "pading", "--task", "panoptic", "--msda", "plugin", "--height", "128", "--width",
                         "160", "--output", str(d / PADING_PLUGIN_ONNX))),
    Command(build_artifacts("pading_lowerings", str(d)))])
PREFETCH.define("dynamic_bundle", lambda d: [Command(build_artifacts(
    "zegformer_dynamic", str(d), str(PREFETCH.jobs["zegformer_bundle"].folder / "clip_small.pt")))],
    after=("zegformer_bundle",))


# ------------------------------------------------------------------------------------------------- markers
# Assigned here from what a test needs, so the quick loop (`python -m pytest -q -m "not slow"`) never waits for an
# export: "export" = uses a session export (traced in a child process, minutes on 2 cores); "triton" = starts a real
# tritonserver; "gpu" = runs only with a CUDA GPU (skips elsewhere); "slow" = export, triton or a file listed below.
EXPORT_FIXTURES = frozenset({"onnx_exports", "diverse_export", "demo_export", "zegformer_bundle", "pading_graphs",
                             "dynamic_bundle", "pading_panoptic", "pading_exports", "engines"})
SLOW_FILES = frozenset({"test_triton_serving.py", "test_demo_model.py", "test_demo_ceiling.py", "test_ov_extension.py",
                        "test_export_interrupt.py", "test_tensorrt_bindings.py", "test_zegformer_parity.py"})
GPU_NEEDS = ("require_tensorrt_gpu(", "require_gpu(", "torch.cuda.is_available()")


def pytest_itemcollected(item):
    needs = set(getattr(item, "fixturenames", ()))
    name = item.path.name
    if needs & EXPORT_FIXTURES:
        item.add_marker(pytest.mark.export)
    if name == "test_triton_serving.py":
        item.add_marker(pytest.mark.triton)
    function = getattr(item, "function", None)
    if function is not None:
        import inspect

        try:
            source = inspect.getsource(function) + "".join(str(m.args) for m in item.iter_markers("skipif"))
        except (OSError, TypeError):
            source = ""
        if any(n in source for n in GPU_NEEDS) or needs & {"pading_exports", "engines"}:
            item.add_marker(pytest.mark.gpu)
    if needs & EXPORT_FIXTURES or name in SLOW_FILES:
        item.add_marker(pytest.mark.slow)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    if config.option.collectonly:
        return
    # Tests that need no prefetched export run first, while the exports are made on the second core; the others
    # follow in their collected order (a stable sort), so the main process rarely waits for an export.
    items.sort(key=lambda item: any(f in PREFETCH.jobs for f in getattr(item, "fixturenames", ())))
    needed: list[str] = []
    for item in items:  # the final order: after deselection (-k, -m) and any reordering plugin
        needed += [f for f in getattr(item, "fixturenames", ()) if f in PREFETCH.jobs and f not in needed]
    factory = getattr(config, "_tmp_path_factory", None)  # pytest's basetemp: cleaned up like tmp_path's
    root = factory.mktemp("prefetch") if factory is not None else Path(tempfile.mkdtemp(prefix="zsd-prefetch-"))
    PREFETCH.start(root, needed)


def pytest_sessionfinish(session, exitstatus):
    PREFETCH.stop()


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def pading_panoptic():
    from zsdeploy.export.pading_export import build_pading

    return build_pading("panoptic")


@pytest.fixture(scope="session")
def onnx_exports():
    """Static (batch 1, 128x160), static (batch 2, 96x192) and dynamic exports of stand-in PADing panoptic (traced
    with the Python API: tests/build_artifacts.py onnx_exports)."""
    out, results = PREFETCH.result("onnx_exports")
    assert_ran(results, 1)
    return {name: out / f"{name}.onnx" for name in ("static_b1", "static_b2", "dynamic")}


@pytest.fixture(scope="session")
def diverse_export() -> Path:
    """`export-model --standin diverse` as a person runs it: PADing panoptic, static 128x160, gridsample lowering,
    --precision fp32 said explicitly. Shared read-only: a test that changes it copies it first."""
    out, results = PREFETCH.result("diverse_export")
    assert_ran(results, 1)
    return out / DIVERSE_ONNX


@pytest.fixture(scope="session")
def demo_export() -> Path:
    """`export-model --weights demo` (256x256) run in a folder that has a `demo` subfolder, as scripts/demo.sh has."""
    out, results = PREFETCH.result("demo_export")
    [r] = assert_ran(results, 1)
    assert "stand-in" not in r.stdout.lower()
    return out / "demo.onnx"


@pytest.fixture(scope="session")
def zegformer_bundle():
    """`export-model --model zegformer` run as a person runs it, once per session: the gzss config (static
    1x3x256x320 = the golden case's size), stand-in R101 and a small CLIP (ViT-B/16 layout, 512-d) with the real
    BPE vocabulary when it is available. Returns (bundle dir, CLIP file, export stdout lines)."""
    d, results = PREFETCH.result("zegformer_bundle")
    _, proc = assert_ran(results, 2)
    return d / "bundle", d / "clip_small.pt", proc.stdout.splitlines()


@pytest.fixture(scope="session")
def pading_graphs(onnx_exports):
    """{(msda, dynamic): ModelProto}; the static plugin graph goes through the export-model CLI; the other plugin
    graphs are traced like _export does (tests/build_artifacts.py pading_lowerings, 128x160 shape); the gridsample
    references are the session's exports (static 1x3x128x160 and dynamic, see conftest.py). All are made in a child
    process started at collection (tests/prefetch.py)."""
    from build_artifacts import TRACED_LOWERINGS, lowering_file
    import onnx

    out, results = PREFETCH.result("pading_graphs")
    assert_ran(results, 2)
    graphs: dict[tuple[str, bool], onnx.ModelProto] = {}
    graphs[("plugin", False)] = onnx.load(str(out / PADING_PLUGIN_ONNX))
    graphs[("gridsample", False)] = onnx.load(str(onnx_exports["static_b1"]))
    graphs[("gridsample", True)] = onnx.load(str(onnx_exports["dynamic"]))
    for msda, dynamic in TRACED_LOWERINGS:
        graphs[(msda, dynamic)] = onnx.load(str(lowering_file(out, msda, dynamic)))
    assert set(graphs) == {(m, d) for m in ("gridsample", "plugin", "nvidia") for d in (False, True)}
    return graphs
