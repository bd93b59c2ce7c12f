"""OpenVINO backend (CPU): runs our .onnx graphs directly, fp32 or bf16, with a checked compiled-model cache.

Precision: OpenVINO's CPU plugin silently runs bf16 on CPUs with AMX by default, so the hint is always set
explicitly (zsdeploy's `fp32` is OpenVINO's hint `f32`: OPENVINO_HINTS). `fp32` matches ONNX Runtime (rel L2
~1e-6); `bf16` is used only where /proc/cpuinfo lists amx_bf16 or avx512_bf16 (elsewhere OpenVINO would emulate it
slowly or ignore it): on other CPUs it falls back to fp32 with a note rather than failing, so one command line works
on every machine and says what it did. Q/DQ (int8) graphs need no setting: OpenVINO runs their quantised ops in
int8 as they are, and the rest at the inference precision (fp32, or bf16: int8 + bf16 is the fastest CPU path where
both are native).

MSDeformAttn plugin nodes (exports with `--msda plugin` or `nvidia`, the graphs TensorRT builds) run with
zsdeploy's OpenVINO extension (ov_extension.py: the TensorRT plugin's kernel core, built at first use): the
fastest CPU path, since OpenVINO runs the portable `gridsample` lowering as an fp32-only GridSample plus reorders.

Dynamic graphs are specialised: OpenVINO's CPU kernels for a dynamic-shape model are much slower than for a static
one (PADing 512x512, 1 thread, CPU time: fp32 1985 -> 1463 ms, bf16 1329 -> 657 ms once reshaped to the input's
shape; compiling a shape takes ~2 s). So the first batch of a new input shape runs on the dynamic model, and a shape
seen a second time gets its own static compile (in memory only, see _static_request); a few shapes are kept (LRU).
Video, benchmarks and folders of same-size photos run static from their second image; a folder of all-different
sizes never pays a compile it cannot reuse.
"""
from __future__ import annotations

import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ZsdError
from ..options import RUNTIME_PRECISIONS, runtime_precision
from ..artifacts.onnx_metadata import has_msda_plugin
from ..artifacts.onnx_metadata import ModelInfo
from .base import Backend, BackendOptions
from .onnxruntime_backend import check_feeds, read_onnx_metadata
from .ov_cache import CompiledModelCache, entry_key

PRECISIONS = RUNTIME_PRECISIONS
#: zsdeploy's runtime precision -> OpenVINO's INFERENCE_PRECISION_HINT (OpenVINO spells fp32 `f32`)
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}
HINTS = ("LATENCY", "THROUGHPUT")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
INSTALL_HINT = 'pip install "zsdeploy[openvino]"'
SPECIALIZED_SHAPES_KEPT = 2  # static compiles kept per backend (each holds its own copy of the weights)


def import_openvino():
    try:
        import openvino
    except ImportError as e:
        raise ZsdError(f"the OpenVINO backend needs the openvino package, which is not installed ({e}).",
                       f'{INSTALL_HINT} (or pip install "openvino>=2025.1"), or choose --backend onnxruntime.') \
            from None
    return openvino


def cpu_flags() -> set[str]:
    """The instruction-set flags of the first CPU in /proc/cpuinfo (empty where there is no /proc)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's processor / machine name where there is none)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_support() -> tuple[bool, str]:
    """(whether this CPU computes bf16 natively, the flags that say so or the reason not)."""
    have = [f for f in BF16_FLAGS if f in cpu_flags()]
    if have:
        return True, "CPU flags " + ", ".join(have)
    return False, f"this CPU lists neither {' nor '.join(BF16_FLAGS)} in /proc/cpuinfo"


def say_stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


class OpenVINOBackend(Backend):
    name = "openvino"

    @classmethod
    def from_options(cls, path: Path, options: BackendOptions) -> OpenVINOBackend:
        return cls(path, precision=options.precision, threads=options.threads, streams=options.streams,
                   cache_dir=options.cache_dir, say=options.say)

    def __init__(self, path: str | os.PathLike, *, precision: str = "fp32", threads: int | None = None,
                 streams: int | None = None, hint: str = "LATENCY", cache_dir: str | os.PathLike | None | bool = None,
                 say: Callable[[str], None] | None = None, specialize: bool = True) -> None:
        """cache_dir: None = the default cache (ov_cache.default_cache_root), False = no cache, else a directory.
        threads: INFERENCE_NUM_THREADS (default: $OMP_NUM_THREADS like the ONNX Runtime backend, else all
        cores); streams: NUM_STREAMS (default: what the performance hint picks, 1 for LATENCY).
        specialize: compile a dynamic model for an input shape seen twice (see the module docstring).
        precision: fp32 | bf16 (`f32`, the old spelling of fp32, is accepted)."""
        ov = import_openvino()
        self.say = say or say_stderr
        path = Path(path)
        self.info = ModelInfo.from_metadata(read_onnx_metadata(path), str(path))
        precision = runtime_precision(precision)
        if hint not in HINTS:
            raise ZsdError(f"performance hint {hint!r} is not one of {', '.join(HINTS)}.", "pass LATENCY.")
        self.requested_precision = precision
        if precision == "bf16":
            ok, why = bf16_support()
            if not ok:
                self.say(f"note: bf16 was asked for but {why} (no AMX / AVX512-BF16); running fp32 instead.")
                precision = "fp32"
        self.precision = precision
        threads = threads or (int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS") else None)
        config: dict[str, str] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        if streams:
            config["NUM_STREAMS"] = str(streams)
        self.config = dict(config)
        self.core = ov.Core()
        self.path = path
        self.msda_lowering = self.info.raw.get("msda_lowering", "gridsample")
        extra: dict[str, str] = {}
        self.extension: Path | None = None
        if has_msda_plugin(self.info.raw):  # MSDeformAttn as a plugin node: needs zsdeploy's extension
            from .ov_extension import add_to_core

            self.extension = add_to_core(self.core, self.say)
            extra["ov_extension"] = self.extension.parent.name  # its build key: a rebuilt kernel is a new entry
        self._cache_setting = cache_dir
        self.cache = self._open_cache(config, **extra)
        self.compiled = self._compile(path, config)
        self.loaded_from_cache = bool(self._property("LOADED_FROM_CACHE", False))
        if self.cache is not None:
            self.cache.seal(compiled_now=not self.loaded_from_cache)
        self.request = self.compiled.create_infer_request()
        self.input_names = tuple(p.get_any_name() for p in self.compiled.inputs)
        self.output_names = tuple(p.get_any_name() for p in self.compiled.outputs)
        self._shapes = {p.get_any_name(): tuple(d.get_length() if d.is_static else None for d in p.get_partial_shape())
                        for p in self.compiled.inputs}
        self.specialize = specialize and any(None in s for s in self._shapes.values())
        self._seen_shapes: set[tuple] = set()
        self._static: OrderedDict[tuple, tuple] = OrderedDict()  # shape key -> (compiled model, infer request)
        self._ov_model = None  # the read (dynamic) model, reshaped per specialised shape

    def _open_cache(self, config: dict[str, str], **extra: str) -> CompiledModelCache | None:
        if self._cache_setting is False:
            return None
        ov = import_openvino()
        key = entry_key(self.path, {**config, "openvino": ov.get_version(), **extra})
        root = None if self._cache_setting is None or self._cache_setting is True else Path(self._cache_setting)
        return CompiledModelCache.open(root, key, self.say)

    def _static_request(self, feeds: dict[str, np.ndarray]):
        """The infer request of a static compile for these feeds' shapes, or None (first sight of the shape, or
        specialisation failed: the dynamic model runs them)."""
        key = tuple((k, tuple(feeds[k].shape)) for k in self.input_names)
        hit = self._static.get(key)
        if hit is not None:
            self._static.move_to_end(key)
            return hit[1]
        if key not in self._seen_shapes:
            self._seen_shapes.add(key)
            return None
        ov = import_openvino()
        try:
            if self._ov_model is None:
                self._ov_model = self.core.read_model(str(self.path))
            model = self._ov_model.clone()
            model.reshape({k: ov.PartialShape(list(shape)) for k, shape in key})
            # No CACHE_DIR here: with it, openvino 2026.4 made the dynamic compiled model of the same file return
            # wrong outputs once a reshaped copy was compiled next to it (rel L2 2e-3 vs 1e-6; measured, both
            # compiles in one Core). A static compile takes ~2 s and is kept for the process.
            compiled = self.core.compile_model(model, "CPU", self.config)
        except Exception as e:  # noqa: BLE001 (OpenVINO raises RuntimeError subclasses of its own)
            first = " ".join(str(e).split())[:200] or type(e).__name__
            self.say(f"note: OpenVINO could not compile {self.path.name} for the input shape "
                     f"{', '.join(f'{k} {list(s)}' for k, s in key)} ({first}); the dynamic model runs it.")
            self.specialize = False
            return None
        self._static[key] = (compiled, compiled.create_infer_request())
        while len(self._static) > SPECIALIZED_SHAPES_KEPT:
            self._static.popitem(last=False)
        return self._static[key][1]

    @staticmethod
    def _property_of(compiled, name: str, default):
        try:
            return compiled.get_property(name)
        except Exception:  # noqa: BLE001 (an older OpenVINO without the property)
            return default

    def _compile(self, path: Path, config: dict[str, str]):
        if self.cache is not None:
            self.cache.verify()
            try:
                # compiling from the path (not a read Model) lets a cache hit skip reading the ONNX file
                return self.core.compile_model(str(path), "CPU", {**config, "CACHE_DIR": str(self.cache.dir)})
            except Exception as e:  # noqa: BLE001 (OpenVINO raises RuntimeError subclasses of its own)
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                self.say(f"note: compiling with the model cache {self.cache.dir} failed ({first}); the cache entry "
                         "is dropped and the model compiled without it.")
                self.cache.invalidate()
                self.cache = None
        try:
            return self.core.compile_model(str(path), "CPU", config)
        except Exception as e:  # noqa: BLE001
            msg = " ".join(str(e).split())[:400]
            hint = ("this graph contains MSDeformAttn plugin nodes but its metadata does not say so "
                    f"(msda_lowering={self.msda_lowering}), so zsdeploy's extension was not loaded: re-export it "
                    "with export-model --msda plugin, or with --msda gridsample.") \
                if ("MSDeformAttn" in msg or "MultiscaleDeformable" in msg) and self.extension is None else \
                "re-export the model with export-model, or try --backend onnxruntime."
            raise ZsdError(f"OpenVINO cannot load {path}: {msg}.", hint) from None

    def _property(self, name: str, default):
        return self._property_of(self.compiled, name, default)

    def input_shape(self, name: str) -> tuple[int | str | None, ...]:
        return self._shapes[name]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(feeds, self.input_names, self._shapes)
        request = (self._static_request(feeds) if self.specialize else None) or self.request
        # share_inputs: no copy in; outputs are copied out, so results stay valid after the next call
        res = request.infer({k: np.ascontiguousarray(feeds[k]) for k in self.input_names}, share_inputs=True)
        return {name: res[i] for i, name in enumerate(self.output_names)}

    def close(self) -> None:
        self.request = None
        self.compiled = None
        self._static.clear()
        self._ov_model = None
