"""Inference backends behind one `infer()` (Polygraphy-style runners): ONNX Runtime, OpenVINO and TensorRT.

Default (`backend="auto"`): a TensorRT engine (.plan) runs with TensorRT; an .onnx runs with ONNX Runtime (starts
at once, the reference CPU path), or with OpenVINO when bf16 is asked for or when the graph holds MSDeformAttn
plugin nodes (`--msda plugin` / `nvidia` exports: OpenVINO runs them with zsdeploy's extension, ONNX Runtime
cannot). Otherwise OpenVINO is chosen with `--backend openvino`: measured on a 2-core Xeon with AMX (PADing dynamic
export, 512x512 / 800x1216, interleaved, quiet) its fp32 is 1.75x / 1.41x ONNX Runtime and its bf16 2.8x / 3.2x,
after a first compile of a few seconds (cached on disk; a dynamic graph also compiles each input shape it sees
twice, ~2 s, in memory). ONNX Runtime stays the default for plain fp32 graphs because the first image pays that
compile and ONNX Runtime is the reference the accuracy numbers are measured against.

Which backends exist, what each opens and computes in, and the `auto` rule's order are one table: registry.py.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import ZsdError
from ..options import RUNTIME_PRECISIONS, runtime_precision
from .base import Backend, BackendOptions
from .registry import AUTO, BackendSpec, backend_names, backend_spec, backend_specs, register_backend

ENGINE_SUFFIXES = (".plan", ".engine", ".trt")
PRECISIONS = RUNTIME_PRECISIONS


def _has_plugin_nodes(path: Path) -> bool:
    """Whether an export's metadata says MSDeformAttn is a plugin node (an unreadable file fails later, with its
    own message)."""
    from ..artifacts.onnx_metadata import has_msda_plugin, read_onnx_metadata

    try:
        return has_msda_plugin(read_onnx_metadata(path))
    except ZsdError:
        return False


def _auto(path: Path, kind: str, precision: str) -> str:
    """`auto`'s pick for a file of `kind` (registry.py: the first registered backend for the kind that computes in
    `precision` and runs the graph's plugin nodes; else the first for the kind, whose checks then say why)."""
    candidates = list(backend_specs(kind))
    plugin: bool | None = None  # read from the metadata only when a candidate cannot run plugin nodes
    for spec in candidates:
        if not spec.auto or precision not in spec.precisions:
            continue
        if kind == "onnx" and not spec.plugin_nodes:
            plugin = _has_plugin_nodes(path) if plugin is None else plugin
            if plugin:
                continue
        return spec.name
    return candidates[0].name


def resolve_backend(path: str | os.PathLike, backend: str = AUTO, precision: str = "fp32") -> str:
    """The backend `load_backend` will use for `path` (see the module docstring for `auto`). precision: fp32 | bf16
    (`f32`, the old spelling of fp32, is accepted)."""
    path = Path(path)
    names = backend_names()
    if backend not in names:
        raise ZsdError(f"backend {backend!r} is not one of {', '.join(names)}.", "choose one of them.")
    precision = runtime_precision(precision)
    is_engine = path.suffix in ENGINE_SUFFIXES
    if path.suffix != ".onnx" and not is_engine:
        raise ZsdError(f"{path} is neither an ONNX model (.onnx) nor a TensorRT engine ({', '.join(ENGINE_SUFFIXES)}).",
                       "pass the file export-model or build-engine wrote.")
    kind = "engine" if is_engine else "onnx"
    if backend == AUTO:
        backend = _auto(path, kind, precision)
    spec = backend_spec(backend)
    if is_engine and spec.runs != "engine":
        raise ZsdError(f"{path} is a TensorRT engine; --backend {backend} runs .onnx graphs.",
                       f"pass the .onnx it was built from, or --backend {_choices('engine')}.")
    if not is_engine and spec.runs == "engine":
        raise ZsdError(f"{path} is an ONNX graph; {spec.title} runs engines built from it.",
                       f"build one: build-engine --onnx {path} --output {path.with_suffix('.plan')}, or choose "
                       f"--backend {_choices('onnx')}.")
    if precision not in spec.precisions:
        owners = [s for s in backend_specs() if precision in s.precisions]
        raise ZsdError(f"--precision {precision} is an {' / '.join(s.title for s in owners)} setting; {backend} runs "
                       f"the precision its {'engine was built with' if spec.runs == 'engine' else 'graph has (fp32)'}.",
                       f"use --backend {owners[0].name} --precision {precision}, or drop --precision.")
    return backend


def _choices(kind: str) -> str:
    """The backends that open `kind` files, for a message (those that run plugin nodes first: a graph meant for
    TensorRT often has them)."""
    return " / ".join(s.name for s in sorted(backend_specs(kind), key=lambda s: not s.plugin_nodes))


def load_backend(path: str | os.PathLike, *, backend: str = AUTO, precision: str = "fp32",
                 threads: int | None = None, streams: int | None = None, plugin_lib: str | None = None,
                 cache_dir: str | os.PathLike | bool | None = None,
                 say: Callable[[str], None] | None = None) -> Backend:
    """Open a model file with `backend` (auto or a registered backend: onnxruntime | openvino | tensorrt).

    precision: fp32 | bf16 (bf16: OpenVINO only; falls back to fp32 with a note on CPUs without AMX / AVX512-BF16);
    `f32`, the old spelling of fp32, is accepted.
    threads: CPU threads (ONNX Runtime intra-op, OpenVINO INFERENCE_NUM_THREADS); streams: OpenVINO NUM_STREAMS.
    cache_dir: OpenVINO's compiled-model cache (None = ~/.cache/zsdeploy/openvino or $ZSD_CACHE_DIR/openvino,
    False = none). plugin_lib: TensorRT plugin library for engines with plugin nodes.
    """
    path = Path(path)
    if not path.exists():
        raise ZsdError(f"model file {path} does not exist.", "pass an .onnx from export-model or a .plan from build-engine.")
    precision = runtime_precision(precision)
    chosen = resolve_backend(path, backend, precision)
    cpus = os.cpu_count() or 1
    if threads is not None and threads > 4 * cpus:  # pools that large only cost memory (99999: gigabytes)
        note = f"note: {threads} threads asked for, this machine has {cpus} CPUs; using {cpus}."
        say(note) if say is not None else print(note, file=sys.stderr)
        threads = cpus
    options = BackendOptions(precision=precision, threads=threads, streams=streams, plugin_lib=plugin_lib,
                             cache_dir=cache_dir, say=say)
    return backend_spec(chosen).open(path, options)


__all__ = ["ENGINE_SUFFIXES", "PRECISIONS", "Backend", "BackendOptions", "BackendSpec", "load_backend",
           "register_backend", "resolve_backend"]
