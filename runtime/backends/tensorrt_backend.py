"""TensorRT backend: runs a `.plan` from build-engine (TensorRT 10 API, NVIDIA cuda-python for memory/streams).

Polygraphy-style runner: construction does all the checking (sidecar, ONNX source, TensorRT version, GPU, plugin
library), `infer()` only copies, binds by tensor name and enqueues. Order of checks: files, sidecar and the ONNX the
plan was built from first (no GPU or TensorRT needed: a plan whose ONNX was re-exported since is refused), then
TensorRT, then the GPU, then deserialisation, so each mistake gets its own message. The runner imports the loader,
plugins and the sidecar reader only, never the builder (runtime/tensorrt/builder.py).

I/O per call: inputs host -> (pinned staging) -> device, `set_input_shape` + `set_tensor_address` by name,
`execute_async_v3` on our stream, device -> pinned -> fresh numpy arrays, one stream synchronisation. With
`use_cuda_graph=True` the enqueue is captured once per input-shape set and replayed (copies stay outside the
graph because the host arrays change between calls).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import cuda_utils
from ..artifacts.sidecar import EngineSidecar, check_plan_source, read_sidecar, rebuild_command
from ..errors import ZsdError
from ..tensorrt.loader import create_runtime, import_tensorrt, make_logger, numpy_dtype
from ..tensorrt.plugins import PLUGIN_LIBRARY_NAME, ZSD_PLUGIN, load_plugin_library, require_creators
from .base import Backend, BackendOptions

if TYPE_CHECKING:
    import tensorrt as trt


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    """TensorRT Dims -> tuple (Dims is a sequence, but typed without __iter__)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def _shape_text(shape: tuple[int, ...] | list[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


class TensorRTBackend(Backend):
    """One deserialised engine, one execution context (optimisation profile 0) and one CUDA stream."""

    name = "tensorrt"

    @classmethod
    def from_options(cls, path: Path, options: BackendOptions) -> TensorRTBackend:
        return cls(path, plugin_lib=options.plugin_lib)

    def __init__(self, path: str | Path, plugin_lib: str | Path | None = None, *, device: int = 0,
                 use_cuda_graph: bool = False, pinned: bool = True) -> None:
        path = Path(path)
        if not path.is_file():
            raise ZsdError(f"engine {path} does not exist.", "build it with build-engine.")
        self.path = path
        self.sidecar: EngineSidecar = read_sidecar(path)
        self.info = self.sidecar.info
        check_plan_source(self.sidecar)  # before TensorRT: a stale plan is refused on any machine
        self.use_cuda_graph = use_cuda_graph
        self.pinned = pinned
        lib = self._plugin_library(plugin_lib)

        import_tensorrt()  # the clear error where TensorRT is missing; the import below is then typed (stubs)
        import tensorrt as trt_mod
        if trt_mod.__version__ != self.sidecar.tensorrt_version:
            # Plans are tied to the exact TensorRT build (unless built version-compatible, which we do not do).
            raise ZsdError(f"engine {path.name} was built with TensorRT {self.sidecar.tensorrt_version}, this is "
                           f"TensorRT {trt_mod.__version__}; TensorRT cannot load a plan from another version.",
                           f"rebuild it here: {rebuild_command(self.sidecar)}")
        gpu = cuda_utils.device_info(device)
        if gpu.compute_capability_str != self.sidecar.compute_capability:
            raise ZsdError(f"engine {path.name} was built for {self.sidecar.gpu_name} (compute capability "
                           f"{self.sidecar.compute_capability}); GPU {device} is {gpu.name} (compute capability "
                           f"{gpu.compute_capability_str}). TensorRT engines only run on the architecture they were "
                           "built for.", f"rebuild the engine on this machine: {rebuild_command(self.sidecar)}")
        if gpu.name != self.sidecar.gpu_name:
            # Same architecture runs, but kernels were timed on another GPU: correct, possibly slower.
            warnings.warn(f"engine {path.name} was built on {self.sidecar.gpu_name}, running on {gpu.name} (same "
                          "compute capability): it works, but rebuilding here may be faster.", stacklevel=2)
        cuda_utils.set_device(device)
        self.device = gpu

        self._logger = make_logger()
        if lib is not None:
            load_plugin_library(lib, self._logger)
        require_creators(self.sidecar.plugins, lib, self._logger)
        self._runtime = create_runtime(trt_mod, self._logger)
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            errors = "; ".join(getattr(self._logger, "errors", [])[-3:]) or "no message"
            raise ZsdError(f"TensorRT could not deserialise {path.name} ({errors}); the file may be truncated or "
                           "built for another TensorRT/GPU.", f"rebuild it: {rebuild_command(self.sidecar)}")
        self.engine: trt.ICudaEngine = engine
        context = engine.create_execution_context()
        if context is None:
            raise ZsdError(f"TensorRT could not create an execution context for {path.name} (GPU memory?).",
                           "free GPU memory or build with a smaller --profile max shape.")
        self.context: trt.IExecutionContext = context

        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt_mod.TensorIOMode.INPUT for n in names}
        self.input_names = tuple(n for n in names if is_input[n])
        self.output_names = tuple(n for n in names if not is_input[n])
        self._dtypes: dict[str, np.dtype[Any]] = {
            n: numpy_dtype(trt_mod, engine.get_tensor_dtype(n), n, path.name) for n in names}
        self._profile: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
        for n in self.input_names:
            mn, opt, mx = engine.get_tensor_profile_shape(n, 0)
            self._profile[n] = (_dims(mn), _dims(opt), _dims(mx))

        self._stream = cuda_utils.Stream()
        self._device_buffers = {n: cuda_utils.DeviceBuffer() for n in names}
        self._host_buffers = {n: cuda_utils.PinnedBuffer() for n in names} if pinned else {}
        self._graph = cuda_utils.CudaGraph()
        self._graph_key: tuple[tuple[int, ...], ...] | None = None
        self._closed = False

    # ------------------------------------------------------------------------------------ construction

    def _plugin_library(self, explicit: str | Path | None) -> Path | None:
        """The plugin library to load: the argument, else the one recorded in the sidecar (if still there)."""
        needs_ours = any(p.name == ZSD_PLUGIN.name for p in self.sidecar.plugins)
        if explicit is not None:
            lib = Path(explicit)
            if not lib.is_file():
                raise ZsdError(f"plugin library {lib} does not exist.",
                               f"pass the {PLUGIN_LIBRARY_NAME} the engine was built with (--plugin-lib).")
            return lib
        if not needs_ours:
            return None
        recorded = self.sidecar.plugin_library.path if self.sidecar.plugin_library is not None else None
        if recorded and Path(recorded).is_file():
            return Path(recorded)
        raise ZsdError(f"engine {self.path.name} contains {ZSD_PLUGIN} nodes and needs the plugin library"
                       + (f" it was built with ({recorded}), which does not exist here." if recorded else "."),
                       f"pass --plugin-lib path/to/{PLUGIN_LIBRARY_NAME} (plugin_lib=...) built for this TensorRT.")

    # ---------------------------------------------------------------------------------------- interface

    def input_shape(self, name: str) -> tuple[int | str | None, ...]:
        return tuple(None if d < 0 else d for d in _dims(self.engine.get_tensor_shape(name)))

    def profile_shapes(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) of input `name` in optimisation profile 0."""
        return self._profile[name]

    def check_input(self, name: str, shape: tuple[int, ...]) -> None:
        mn, _, mx = self._profile[name]
        if len(shape) != len(mn) or any(not lo <= s <= hi for s, lo, hi in zip(shape, mn, mx)):
            raise ZsdError(f"input {name!r} has shape {_shape_text(shape)}, outside the engine's optimisation profile "
                           f"(min {_shape_text(mn)}, max {_shape_text(mx)}).",
                           "resize/pad the input into that range (trt-infer does this from the metadata), or rebuild "
                           f"the engine with build-engine --profile {name}:MIN:OPT:MAX covering {_shape_text(shape)}.")

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._closed:
            raise RuntimeError("TensorRTBackend.infer after close()")
        arrays: dict[str, np.ndarray] = {}
        for name in self.input_names:
            if name not in feeds:
                raise ZsdError(f"input {name!r} was not given.", f"feed {list(self.input_names)}.")
            arr = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
            self.check_input(name, arr.shape)
            if not self.context.set_input_shape(name, arr.shape):
                raise ZsdError(f"TensorRT rejected shape {_shape_text(arr.shape)} for input {name!r}.",
                               "see the TensorRT message above.")
            arrays[name] = arr
        out_shapes: dict[str, tuple[int, ...]] = {}
        for name in self.output_names:
            shape = _dims(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ZsdError(f"TensorRT could not infer the shape of output {name!r} ({shape}).",
                               "check the input shapes against the engine's profile.")
            out_shapes[name] = shape

        moved = False  # a reallocated buffer invalidates a captured graph (it holds the old addresses)
        for name, shape in [*((n, a.shape) for n, a in arrays.items()), *out_shapes.items()]:
            nbytes = max(int(np.prod(shape, dtype=np.int64)) * self._dtypes[name].itemsize, 1)
            moved |= self._device_buffers[name].reserve(nbytes)
            if self.pinned:
                self._host_buffers[name].reserve(nbytes)
            if not self.context.set_tensor_address(name, self._device_buffers[name].ptr):
                raise ZsdError(f"TensorRT rejected the device address of {name!r}.", "see the TensorRT message above.")

        stream = self._stream
        for name, arr in arrays.items():
            if self.pinned:
                staged = self._host_buffers[name].view(arr.shape, arr.dtype)
                np.copyto(staged, arr)
                cuda_utils.memcpy_htod_async(self._device_buffers[name].ptr, staged, stream)
            else:
                cuda_utils.memcpy_htod_async(self._device_buffers[name].ptr, arr, stream)
        self._enqueue(tuple(a.shape for a in arrays.values()), moved)
        results: dict[str, np.ndarray] = {}
        for name, shape in out_shapes.items():
            host = (self._host_buffers[name].view(shape, self._dtypes[name]) if self.pinned
                    else np.empty(shape, self._dtypes[name]))
            cuda_utils.memcpy_dtoh_async(host, self._device_buffers[name].ptr, stream)
            results[name] = host
        stream.synchronize()
        # Pinned staging is reused by the next call: hand out copies.
        return {n: np.array(a, copy=True) for n, a in results.items()} if self.pinned else results

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self._stream.ptr):
            errors = "; ".join(getattr(self._logger, "errors", [])[-3:]) or "no message"
            raise ZsdError(f"TensorRT execution failed ({errors}).", "see the TensorRT messages above.")

    def _enqueue(self, key: tuple[tuple[int, ...], ...], moved: bool) -> None:
        if not self.use_cuda_graph:
            self._execute()
            return
        if self._graph.ready and key == self._graph_key and not moved:
            self._graph.launch(self._stream)
            return
        # A plain run first: after a shape change TensorRT does lazy work in the first enqueue that must not be
        # captured. Its results are valid, so this call needs no replay.
        self._execute()
        self._graph.begin_capture(self._stream)
        try:
            self._execute()
            self._graph.end_capture(self._stream)
        except BaseException as e:
            self._graph.abort_capture(self._stream)
            self._graph_key = None
            if isinstance(e, ZsdError):
                raise ZsdError(f"capturing the engine into a CUDA graph failed: {e.problem}",
                               "run without CUDA graphs (use_cuda_graph=False).") from None
            raise
        self._graph_key = key

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._graph.free()
        for buf in self._device_buffers.values():
            buf.free()
        for pbuf in self._host_buffers.values():
            pbuf.free()
        self._stream.free()
        # Context before engine before runtime: TensorRT requires this destruction order.
        del self.context
        del self.engine
        del self._runtime
