"""The backend registry (runtime/backends/registry.py) is the one list of backends: the CLIs' --backend choices, the
`auto` rule and its messages, and zsd-bench's backend names are read from it; backend modules are imported only
when opened; a backend registered from outside zsdeploy (here: a test's) opens by name with no other file touched."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, write_tiny_onnx
from zsdeploy.runtime import options
from zsdeploy.runtime.artifacts.onnx_metadata import ModelInfo, read_onnx_metadata
from zsdeploy.runtime.backends import Backend, BackendOptions, load_backend, resolve_backend
from zsdeploy.runtime.backends.registry import (BACKEND_SPECS, BUILTIN_BACKENDS, BackendSpec, backend_names,
                                                register_backend)
from zsdeploy.runtime.errors import ZsdError


def _choices(parser: argparse.ArgumentParser, option: str, command: str | None = None) -> tuple[str, ...]:
    if command is not None:
        [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices[command]
    [action] = [a for a in parser._actions if option in a.option_strings]
    return tuple(action.choices)


def test_the_cli_choices_are_the_registry():
    from zsdeploy.benchmarks.cli import build_parser as bench_parser
    from zsdeploy.benchmarks.latency import OPENVINO_PEERS, PEERS
    from zsdeploy.benchmarks.pairing import ACCURACY_BACKENDS
    from zsdeploy.cli.trt_infer import build_parser

    assert options.BACKENDS == backend_names() == ("auto", *BACKEND_SPECS) == \
        ("auto", "onnxruntime", "openvino", "tensorrt")
    assert tuple(BACKEND_SPECS.values()) == BUILTIN_BACKENDS
    assert _choices(build_parser(), "--backend") == options.BACKENDS
    assert _choices(bench_parser(), "--backend", "video") == options.BACKENDS
    # zsd-bench accuracy: each backend at each precision it computes in; latency: the peers the names derive from
    assert _choices(bench_parser(), "--backend", "accuracy") == tuple(ACCURACY_BACKENDS) == \
        ("auto", "onnxruntime", "openvino", "openvino-bf16", "tensorrt")
    assert ACCURACY_BACKENDS["openvino-bf16"] == ("openvino", "bf16")
    assert [n for n, _, _ in OPENVINO_PEERS] == [
        "openvino", "openvino-bf16", "openvino-int8", "openvino-int8-bf16", "openvino-msda", "openvino-msda-bf16",
        "openvino-msda-int8", "openvino-msda-int8-bf16"]
    assert PEERS == ("torch", "upstream", "torch-compile", "onnxruntime", *(n for n, _, _ in OPENVINO_PEERS),
                     "openvino-bf16-upstream-post", "tensorrt")


def test_backend_modules_are_imported_only_when_opened():
    """`import zsdeploy.runtime.backends` (and reading BACKENDS) imports no backend module and none of their
    libraries; each spec's "module:Class" then names the Backend of that name."""
    code = """
import importlib.util, json, sys
import zsdeploy.runtime.backends as b, zsdeploy.runtime.options as o
from zsdeploy.runtime.backends.registry import BACKEND_SPECS
o.BACKENDS
loaded = sorted(m for m in sys.modules)
names = {}
for spec in BACKEND_SPECS.values():
    module = importlib.util.resolve_name(spec.opener.partition(":")[0], "zsdeploy.runtime.backends")
    names[spec.name] = [module, spec.backend_class().name]
print(json.dumps({"loaded": loaded, "names": names}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc["names"]) == {"onnxruntime", "openvino", "tensorrt"}
    for name, (module, class_name) in doc["names"].items():
        assert module not in doc["loaded"], f"{module} is imported by `import zsdeploy.runtime.backends`"
        assert class_name == name
    assert not {"onnxruntime", "openvino", "tensorrt"} & {m.split(".")[0] for m in doc["loaded"]}


def test_every_extra_is_a_pyproject_extra():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert all(s.extra is None or s.extra in extras for s in BUILTIN_BACKENDS)


# ------------------------------------------------------------------------------ the auto rule and its messages
@pytest.fixture
def tiny(tmp_path) -> Path:
    return write_tiny_onnx(tmp_path / "tiny.onnx", dynamic=True)


def test_auto_and_its_messages_are_unchanged(tiny, tmp_path):
    """What `auto` picks and the messages that refuse a mismatch, word for word as before the registry."""
    import onnx

    proto = onnx.load(str(write_tiny_onnx(tmp_path / "plugin.onnx", plugin="MSDeformAttn")))
    for p in proto.metadata_props:
        if p.key == "msda_lowering":
            p.value = "plugin"  # what an `--msda plugin` export records (has_msda_plugin)
    meta = tmp_path / "meta.onnx"
    onnx.save(proto, str(meta))
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    assert resolve_backend(tiny) == "onnxruntime"
    assert resolve_backend(tiny, precision="bf16") == "openvino"
    assert resolve_backend(meta) == "openvino"
    assert resolve_backend(plan) == "tensorrt"
    cases = [
        ((tiny, "onnxruntime", "bf16"), "--precision bf16 is an OpenVINO setting; onnxruntime runs the precision its "
                                        "graph has (fp32). Fix: use --backend openvino --precision bf16, or drop "
                                        "--precision."),
        ((plan, "auto", "bf16"), "--precision bf16 is an OpenVINO setting; tensorrt runs the precision its engine was "
                                 "built with. Fix: use --backend openvino --precision bf16, or drop --precision."),
        ((tiny, "tensorrt", "fp32"), f"{tiny} is an ONNX graph; TensorRT runs engines built from it. Fix: build one: "
                                     f"build-engine --onnx {tiny} --output {tiny.with_suffix('.plan')}, or choose "
                                     f"--backend openvino / onnxruntime."),
        ((plan, "openvino", "fp32"), f"{plan} is a TensorRT engine; --backend openvino runs .onnx graphs. Fix: pass "
                                     f"the .onnx it was built from, or --backend tensorrt."),
        ((tiny, "onnx", "fp32"), "backend 'onnx' is not one of auto, onnxruntime, openvino, tensorrt. Fix: choose one "
                                 "of them."),
    ]
    for args, message in cases:
        with pytest.raises(ZsdError) as e:
            resolve_backend(*args)
        assert str(e.value) == message


# ------------------------------------------------------------------------------ a backend registered from outside
class FixedBackend(Backend):
    """A real (small) backend: the model's metadata, fixed outputs of the shapes the graph declares."""

    name = "fixed"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.info = ModelInfo.from_metadata(read_onnx_metadata(path), str(path))
        self.input_names, self.output_names = ("images",), ("class_logits", "mask_logits")
        self.threads = threads

    @classmethod
    def from_options(cls, path: Path, options: BackendOptions) -> FixedBackend:
        return cls(path, threads=options.threads)

    def input_shape(self, name: str) -> tuple[int | str | None, ...]:
        return ("batch", 3, "height", "width")

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n, _, h, w = feeds["images"].shape
        return {"class_logits": np.full((n, 4), 0.25, np.float32), "mask_logits": np.ones((n, 4, h, w), np.float32)}


@pytest.fixture
def fixed():
    spec = register_backend(BackendSpec("fixed", "Fixed", runs="onnx", precisions=("fp32",), opener=FixedBackend))
    yield spec
    del BACKEND_SPECS[spec.name]


def test_a_registered_backend_opens_by_name(fixed, tiny):
    from zsdeploy.cli.trt_infer import build_parser

    assert options.BACKENDS == backend_names() == ("auto", "onnxruntime", "openvino", "tensorrt", "fixed")
    assert "fixed" in _choices(build_parser(), "--backend")  # a CLI built after registration offers it
    assert resolve_backend(tiny, "fixed") == "fixed"
    assert resolve_backend(tiny) == "onnxruntime"  # auto keeps its preference: registration order
    b = load_backend(tiny, backend="fixed", threads=3, precision="f32")
    assert isinstance(b, FixedBackend) and b.threads == 3 and b.info.num_classes == 4
    out = b.infer({"images": np.zeros((2, 3, 8, 16), np.float32)})
    assert out["mask_logits"].shape == (2, 4, 8, 16) and float(out["class_logits"][1, 2]) == 0.25
    with pytest.raises(ZsdError, match="--precision bf16 is an OpenVINO setting; fixed runs the precision its graph"):
        load_backend(tiny, backend="fixed", precision="bf16")
    plan = tiny.with_suffix(".plan")
    plan.write_bytes(b"x")
    with pytest.raises(ZsdError, match="--backend fixed runs .onnx graphs"):
        resolve_backend(plan, "fixed")


def test_a_backend_module_that_needs_a_missing_package_names_its_extra(tmp_path, monkeypatch, tiny):
    (tmp_path / "zsd_test_backend_needing.py").write_text("import zsd_no_such_package_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = BackendSpec("needing", "Needing", runs="onnx", precisions=("fp32",), extra="openvino",
                       opener="zsd_test_backend_needing:NeedingBackend")
    with pytest.raises(ZsdError) as e:
        spec.open(tiny, BackendOptions())
    assert str(e.value) == ("the Needing backend needs the Python package zsd_no_such_package_here, which is not "
                            "installed. Fix: pip install 'zsdeploy[openvino]'.")
    monkeypatch.delitem(sys.modules, "zsd_test_backend_needing", raising=False)
    with pytest.raises(ModuleNotFoundError):  # no extra: a core dependency missing is a broken install
        BackendSpec("needing", "Needing", runs="onnx", precisions=("fp32",),
                    opener="zsd_test_backend_needing:NeedingBackend").open(tiny, BackendOptions())


@pytest.mark.parametrize("spec, problem", [
    (BackendSpec("onnxruntime", "x", runs="onnx", precisions=("fp32",), opener=FixedBackend), "registered twice"),
    (BackendSpec("auto", "x", runs="onnx", precisions=("fp32",), opener=FixedBackend), "registered twice"),
    (BackendSpec("x", "x", runs="plan", precisions=("fp32",), opener=FixedBackend), "runs='plan' is not one of"),
    (BackendSpec("x", "x", runs="onnx", precisions=("bf16",), opener=FixedBackend), "must hold fp32"),
    (BackendSpec("x", "x", runs="onnx", precisions=("fp32", "f32"), opener=FixedBackend), "must hold fp32"),
])
def test_register_refuses_a_bad_spec(spec, problem):
    with pytest.raises(ValueError, match=problem):
        register_backend(spec)
    assert backend_names() == ("auto", "onnxruntime", "openvino", "tensorrt")


def test_zsd_bench_latency_measures_a_registered_backend_it_has_no_code_for(fixed, tiny):
    from zsdeploy.benchmarks.pairing import _one_graph_backends

    args = argparse.Namespace(model=str(tiny), engine=None, threads=2, sizes="64x96", batch="1", int8_model=None,
                              msda_model=None, msda_int8_model=None, task=None, config=None, weights=None)
    backends, unavailable = _one_graph_backends(args, ["fixed"])
    assert [(b.name, type(b.backend)) for b in backends] == [("fixed", FixedBackend)] and unavailable == []
    assert backends[0].backend.threads == 2
    args.model = None
    assert _one_graph_backends(args, ["fixed"]) == ([], [{"backend": "fixed", "reason": "no onnx file given "
                                                                                       "(--model / --engine)"}])


def test_a_thread_count_far_beyond_the_cpus_is_capped_with_a_note(fixed, tiny):
    """--threads 99999 made ONNX Runtime build a pool of that size (over 8 GB in the hostile-input sweep)."""
    import os

    cpus = os.cpu_count() or 1
    notes: list[str] = []
    b = load_backend(tiny, backend="fixed", threads=4 * cpus + 1, say=notes.append)
    assert b.threads == cpus and notes == [f"note: {4 * cpus + 1} threads asked for, this machine has {cpus} CPUs; "
                                           f"using {cpus}."]
    assert load_backend(tiny, backend="fixed", threads=4 * cpus, say=notes.append).threads == 4 * cpus
