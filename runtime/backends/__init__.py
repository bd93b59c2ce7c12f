"""Inference backends behind one `infer()` (Polygraphy-style runners): ONNX Runtime, OpenVINO and TensorRT.

Default (`backend="auto"`): a TensorRT engine (.plan) runs with TensorRT; an .onnx runs with ONNX Runtime (starts
at once, the reference CPU path), or with OpenVINO when bf16 is asked for or when the graph holds MSDeformAttn
plugin nodes (`--msda plugin` / `nvidia` exports: OpenVINO runs them with zsdeploy's extension, ONNX Runtime
cannot). Otherwise OpenVINO is chosen with `--backend openvino`: measured on a 2-core Xeon with AMX (PADing dynamic
export, 512x512 / 800x1216, interleaved, quiet) its fp32 is 1.75x / 1.41x ONNX Runtime and its bf16 2.8x / 3.2x,
after a first compile of a few seconds (cached on disk; a dynamic graph also compiles each input shape it sees
twice, ~2 s, in memory). ONNX Runtime stays the default for plain fp32 graphs because the first image pays that
compile and ONNX Runtime is the reference the accuracy numbers are measured against.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..errors import ZsdError
from ..options import BACKENDS, RUNTIME_PRECISIONS, runtime_precision
from .base import Backend

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


def resolve_backend(path: str | os.PathLike, backend: str = "auto", precision: str = "fp32") -> str:
    """The backend `load_backend` will use for `path` (see the module docstring for `auto`). precision: fp32 | bf16
    (`f32`, the old spelling of fp32, is accepted)."""
    path = Path(path)
    if backend not in BACKENDS:
        raise ZsdError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}.", "choose one of them.")
    precision = runtime_precision(precision)
    is_engine = path.suffix in ENGINE_SUFFIXES
    if path.suffix != ".onnx" and not is_engine:
        raise ZsdError(f"{path} is neither an ONNX model (.onnx) nor a TensorRT engine ({', '.join(ENGINE_SUFFIXES)}).",
                       "pass the file export-model or build-engine wrote.")
    if backend == "auto":
        if is_engine:
            backend = "tensorrt"
        elif precision == "bf16" or _has_plugin_nodes(path):
            backend = "openvino"  # the only backend here with a bf16 setting / that runs plugin nodes on a CPU
        else:
            backend = "onnxruntime"
    if is_engine and backend != "tensorrt":
        raise ZsdError(f"{path} is a TensorRT engine; --backend {backend} runs .onnx graphs.",
                       "pass the .onnx it was built from, or --backend tensorrt.")
    if not is_engine and backend == "tensorrt":
        raise ZsdError(f"{path} is an ONNX graph; TensorRT runs engines built from it.",
                       f"build one: build-engine --onnx {path} --output {path.with_suffix('.plan')}, or choose "
                       "--backend openvino / onnxruntime.")
    if precision == "bf16" and backend != "openvino":
        raise ZsdError(f"--precision bf16 is an OpenVINO setting; {backend} runs the precision its "
                       f"{'engine was built with' if backend == 'tensorrt' else 'graph has (fp32)'}.",
                       "use --backend openvino --precision bf16, or drop --precision.")
    return backend


def load_backend(path: str | os.PathLike, *, backend: str = "auto", precision: str = "fp32",
                 threads: int | None = None, streams: int | None = None, plugin_lib: str | None = None,
                 cache_dir: str | os.PathLike | bool | None = None,
                 say: Callable[[str], None] | None = None) -> Backend:
    """Open a model file with `backend` (auto | onnxruntime | openvino | tensorrt).

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
    if chosen == "openvino":
        from .openvino_backend import OpenVINOBackend

        return OpenVINOBackend(path, precision=precision, threads=threads, streams=streams, cache_dir=cache_dir,
                               say=say)
    if chosen == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, threads=threads)
    from .tensorrt_backend import TensorRTBackend

    return TensorRTBackend(path, plugin_lib=plugin_lib)


__all__ = ["BACKENDS", "PRECISIONS", "Backend", "load_backend", "resolve_backend"]
