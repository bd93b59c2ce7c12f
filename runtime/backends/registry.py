"""The backends zsdeploy runs models with, each described once (detectron2's registry, as data): adding a backend is
one module in this package (a `Backend`) and one `BackendSpec` in BUILTIN_BACKENDS below (or `register_backend` from
outside zsdeploy). Everything else reads this table: `options.BACKENDS` (trt-infer / zsd-bench --backend choices),
`load_backend` / `resolve_backend` (which files a backend opens, what `auto` picks, the messages that refuse a
mismatch), zsd-bench's accuracy backends and latency peers.

A spec names its Backend class as "module:Class" (relative to this package), imported only when that backend is
opened: importing zsdeploy.runtime.backends imports no backend module, hence neither onnxruntime, openvino nor
TensorRT. A backend's missing optional package is reported by the backend itself where it imports it
(openvino_backend.import_openvino, tensorrt.loader.import_tensorrt: the pip extra / install command named); a
module that fails to import because a package is missing names the spec's `extra`.

`auto` (backend="auto"): among the backends that open the file's kind (`runs`), in registration order, the first
with `auto` set that computes in the asked precision and, for a graph with MSDeformAttn plugin nodes, runs them;
where none does, the first that opens the kind (its checks then say why). Registration order is the preference:
ONNX Runtime first (starts at once, the accuracy reference), OpenVINO for bf16 and plugin graphs, TensorRT for
engines.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ZsdError
from ..options import RUNTIME_PRECISIONS
from .base import Backend, BackendOptions

__all__ = ["AUTO", "BACKEND_SPECS", "BUILTIN_BACKENDS", "FILE_KINDS", "BackendSpec", "backend_names", "backend_spec",
           "backend_specs", "register_backend"]

#: the backend name that picks one per file (resolve_backend)
AUTO = "auto"
#: what a backend opens: "onnx" graphs or TensorRT "engine" files
FILE_KINDS = ("onnx", "engine")


@dataclass(frozen=True)
class BackendSpec:
    """One backend: what it opens and computes in, where its class lives, which pip extra installs its library."""

    name: str  # --backend NAME; also Backend.name of what it opens
    title: str  # how messages name it ("ONNX Runtime")
    runs: str  # the file kind it opens: one of FILE_KINDS
    precisions: tuple[str, ...]  # the runtime precisions it computes in (options.RUNTIME_PRECISIONS; fp32 always)
    opener: str | type[Backend]  # its Backend class: "module:Class" (relative to this package, imported lazily)
    extra: str | None = None  # the pyproject extra that installs its library (None: a core dependency)
    plugin_nodes: bool = False  # runs graphs whose MSDeformAttn is a plugin node (--msda plugin / nvidia)
    auto: bool = True  # `auto` may pick it

    def backend_class(self) -> type[Backend]:
        """The Backend class, imported now (the first time the backend is opened)."""
        if not isinstance(self.opener, str):
            return self.opener
        module, _, attr = self.opener.partition(":")
        try:
            cls = getattr(importlib.import_module(module, __package__), attr)
        except ModuleNotFoundError as e:
            top = (e.name or "").split(".")[0]
            if self.extra is None or top in ("", "zsdeploy"):
                raise  # zsdeploy's own module missing, or a core dependency: a broken install, not an extra
            raise ZsdError(f"the {self.title} backend needs the Python package {top}, which is not installed.",
                           f"pip install 'zsdeploy[{self.extra}]'.") from None
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise TypeError(f"backend {self.name!r}: {self.opener} is not a Backend class")
        return cls

    def open(self, path: Path, options: BackendOptions) -> Backend:
        return self.backend_class().from_options(path, options)


#: zsdeploy's own backends, in `auto`'s order of preference (the module docstring)
BUILTIN_BACKENDS = (
    BackendSpec("onnxruntime", "ONNX Runtime", runs="onnx", precisions=("fp32",),
                opener=".onnxruntime_backend:OnnxRuntimeBackend"),
    BackendSpec("openvino", "OpenVINO", runs="onnx", precisions=RUNTIME_PRECISIONS, plugin_nodes=True,
                opener=".openvino_backend:OpenVINOBackend", extra="openvino"),
    BackendSpec("tensorrt", "TensorRT", runs="engine", precisions=("fp32",), plugin_nodes=True,
                opener=".tensorrt_backend:TensorRTBackend", extra="gpu"),  # TensorRT itself installs apart
)

#: every registered backend by name, in registration order
BACKEND_SPECS: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Add a backend: load_backend, resolve_backend and the CLIs built after this accept its name."""
    if spec.name == AUTO or spec.name in BACKEND_SPECS:
        raise ValueError(f"backend {spec.name!r} is registered twice")
    if spec.runs not in FILE_KINDS:
        raise ValueError(f"backend {spec.name!r}: runs={spec.runs!r} is not one of {FILE_KINDS}")
    if "fp32" not in spec.precisions or not set(spec.precisions) <= set(RUNTIME_PRECISIONS):
        raise ValueError(f"backend {spec.name!r}: precisions {spec.precisions} must hold fp32 and be among "
                         f"{RUNTIME_PRECISIONS}")
    BACKEND_SPECS[spec.name] = spec
    return spec


for _spec in BUILTIN_BACKENDS:
    register_backend(_spec)


def backend_specs(runs: str | None = None) -> Iterator[BackendSpec]:
    """The registered backends (that open `runs` files, if given), in registration order."""
    return (s for s in list(BACKEND_SPECS.values()) if runs is None or s.runs == runs)


def backend_spec(name: str) -> BackendSpec:
    """The registered backend `name` (a user error listing the choices for any other name)."""
    if name not in BACKEND_SPECS:
        names = backend_names()
        raise ZsdError(f"backend {name!r} is not one of {', '.join(names)}.", "choose one of them.")
    return BACKEND_SPECS[name]


def backend_names() -> tuple[str, ...]:
    """`auto` and every registered backend: the --backend choices (options.BACKENDS)."""
    return (AUTO, *BACKEND_SPECS)
