"""Small checked wrappers over NVIDIA's cuda-python runtime API (device memory, streams, copies, CUDA graphs).

cuda-python (not pycuda, which cannot be built without a driver) returns `(cudaError_t, *values)` tuples from
every call; `check` turns a non-success code into a `CudaError` that names the call and the error
(`cudaErrorNoDevice: no CUDA-capable device is detected`), so nothing fails later with a bare segfault.

cuda-python ships no type stubs (its modules are Cython extensions), so the `cudart` module is `Any` to mypy;
this file is the typed boundary: everything it exports has precise signatures. Import cost is nil until
a function is called (`cudart()` imports lazily), so importing the runtime works without cuda-python.
"""
from __future__ import annotations

import ctypes
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ZsdError

__all__ = [
    "CudaError",
    "CudaUnavailable",
    "CudaGraph",
    "DeviceBuffer",
    "DeviceInfo",
    "PinnedBuffer",
    "Stream",
    "check",
    "cudart",
    "describe_cuda_environment",
    "device_info",
    "memcpy_dtoh_async",
    "memcpy_htod_async",
    "why_cuda_cannot_run",
]

_cudart: Any = None

# What to do about the errors a user meets first; no driver / old driver / no device are told apart by
# `why_cuda_cannot_run`, others get a generic hint.
_FIXES = {
    "cudaErrorInvalidDevice": "the requested GPU index does not exist: check CUDA_VISIBLE_DEVICES / --device.",
    "cudaErrorMemoryAllocation": "the GPU is out of memory: use a smaller batch/input size or free the GPU.",
    "cudaErrorStreamCaptureUnsupported": "an operation in the engine cannot be captured into a CUDA graph: run "
                                         "without CUDA graphs.",
}
_GENERIC_FIX = "check the GPU with `nvidia-smi`; if it persists, report it with this message."
# Errors that mean "this process cannot use a GPU at all": their fix comes from asking the driver why.
_NO_GPU_ERRORS = frozenset({"cudaErrorInsufficientDriver", "cudaErrorNoDevice", "cudaErrorStubLibrary",
                            "cudaErrorInitializationError", "cudaErrorCompatNotSupportedOnDevice"})


@dataclass(frozen=True)
class CudaUnavailable:
    """Why this process cannot run CUDA work, and what to do."""

    problem: str
    fix: str


def _cuda_version_text(version: int) -> str:
    return f"{version // 1000}.{(version % 1000) // 10}"


def describe_cuda_environment(driver_version: int, runtime_version: int, device_query_error: str | None,
                              device_count: int) -> CudaUnavailable | None:
    """No driver, an old driver or no device, from what CUDA reports (None: a device is usable).

    `driver_version` is cudaDriverGetVersion's (0 where no driver is installed), `runtime_version`
    cudaRuntimeGetVersion's, `device_query_error` the error name cudaGetDeviceCount returned (None on success).
    The same decision as the plugin's (plugins_trt/common/zsdCudaStatus.h).
    """
    cpu_way = ("on a CPU-only machine run the .onnx instead: trt-infer --model M.onnx --backend "
               "onnxruntime|openvino.")
    if driver_version == 0 or device_query_error == "cudaErrorStubLibrary":
        return CudaUnavailable("no NVIDIA driver is installed (libcuda.so.1 was not found), so no GPU is usable here.",
                               "run on a machine with an NVIDIA GPU and its driver (Jetson: JetPack); " + cpu_way)
    if device_query_error == "cudaErrorInsufficientDriver" or (
            device_query_error is not None and driver_version < runtime_version):
        return CudaUnavailable(
            f"the NVIDIA driver supports CUDA {_cuda_version_text(driver_version)}, older than the CUDA runtime "
            f"{_cuda_version_text(runtime_version)} of the installed cuda-python.",
            "update the driver, or install the cuda-python major version that matches the driver's CUDA version "
            "(`nvidia-smi` shows it), e.g. pip install 'zsdeploy[gpu-cu12]' for a CUDA 12 driver (JetPack 6).")
    if device_query_error == "cudaErrorNoDevice" or (device_query_error is None and device_count == 0):
        return CudaUnavailable(f"the NVIDIA driver (CUDA {_cuda_version_text(driver_version)}) sees no GPU.",
                               "check `nvidia-smi` and CUDA_VISIBLE_DEVICES (a container needs --gpus).")
    if device_query_error is not None:
        return CudaUnavailable(f"CUDA could not be initialised ({device_query_error}).", _GENERIC_FIX)
    return None


def why_cuda_cannot_run() -> CudaUnavailable | None:
    """Why no GPU is usable in this process; None where one is, or where cuda-python is missing (cannot tell)."""
    try:
        rt = cudart()
    except ZsdError:
        return None
    driver = rt.cudaDriverGetVersion()
    runtime = rt.cudaRuntimeGetVersion()
    count = rt.cudaGetDeviceCount()
    success = int(rt.cudaError_t.cudaSuccess)
    return describe_cuda_environment(
        int(driver[1]) if int(driver[0]) == success else 0,
        int(runtime[1]) if int(runtime[0]) == success else 0,
        None if int(count[0]) == success else _error_text(rt, count[0])[0],
        int(count[1] or 0) if int(count[0]) == success else 0)


class CudaError(ZsdError):
    """A CUDA runtime call failed; `name` is the cudaError_t name, `call` the function."""

    def __init__(self, call: str, code: int, name: str, description: str) -> None:
        self.call, self.code, self.name, self.description = call, code, name, description
        problem = f"CUDA call {call} failed with {name} ({code}): {description}."
        fix = _FIXES.get(name, _GENERIC_FIX)
        if name in _NO_GPU_ERRORS:
            reason = why_cuda_cannot_run()
            if reason is not None:
                # CUDA's own text ("driver version is insufficient") reads as "update the driver" even with none.
                problem, fix = f"{reason.problem[:-1]} (CUDA call {call} reported {name}).", reason.fix
        super().__init__(problem, fix)


def cudart() -> Any:
    """NVIDIA cuda-python's runtime module (`cuda.bindings.runtime`, or `cuda.cudart` before cuda-python 12.6)."""
    global _cudart
    if _cudart is None:
        try:
            from cuda.bindings import runtime as module  # cuda-python >= 12.6
        except ImportError:
            try:
                from cuda import cudart as module  # older cuda-python
            except ImportError:
                raise ZsdError("NVIDIA cuda-python is not installed; the TensorRT runtime needs it for GPU memory "
                               "and streams.",
                               "pip install 'cuda-python>=12' (choose the major version of your CUDA toolkit/driver, "
                               "e.g. 'cuda-python>=12,<13' on JetPack 6), or pip install 'zsdeploy[gpu]'.") from None
        _cudart = module
    return _cudart


def _error_text(rt: Any, err: Any) -> tuple[str, str]:
    try:
        name = rt.cudaGetErrorName(err)[1]
        text = rt.cudaGetErrorString(err)[1]
        return (name.decode() if isinstance(name, bytes) else str(name),
                text.decode() if isinstance(text, bytes) else str(text))
    except Exception:  # noqa: BLE001 (error reporting must not raise something else)
        return str(err), "no description"


def check(result: Any, call: str) -> Any:
    """Unpack a cuda-python result `(err, *values)`: raise `CudaError` on failure, else return the value(s)."""
    rt = cudart()
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if int(err) != int(rt.cudaError_t.cudaSuccess):
        name, text = _error_text(rt, err)
        raise CudaError(call, int(err), name, text)
    if not values:
        return None
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class DeviceInfo:
    """The GPU an engine is built for / runs on."""

    index: int
    name: str
    compute_capability: tuple[int, int]
    total_memory: int

    @property
    def compute_capability_str(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


def device_count() -> int:
    return int(check(cudart().cudaGetDeviceCount(), "cudaGetDeviceCount"))


def device_info(index: int = 0) -> DeviceInfo:
    """Name and compute capability of GPU `index` (raises CudaError without a usable GPU)."""
    rt = cudart()
    count = device_count()
    if not 0 <= index < count:
        raise ZsdError(f"GPU index {index} does not exist ({count} visible).",
                       f"use an index in 0..{count - 1} or check CUDA_VISIBLE_DEVICES.")
    prop = check(rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    raw = prop.name
    name = raw.split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    return DeviceInfo(index, name.strip(), (int(prop.major), int(prop.minor)), int(prop.totalGlobalMem))


def set_device(index: int) -> None:
    check(cudart().cudaSetDevice(index), "cudaSetDevice")


class Stream:
    """A non-blocking CUDA stream (does not synchronise with the legacy default stream)."""

    def __init__(self) -> None:
        rt = cudart()
        self._handle: Any = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    @property
    def handle(self) -> Any:
        """The cudaStream_t object (for cuda-python calls)."""
        return self._handle

    @property
    def ptr(self) -> int:
        """The stream as an integer (what TensorRT's execute_async_v3 takes)."""
        return int(self._handle)

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self._handle), "cudaStreamSynchronize")

    def free(self) -> None:
        if self._handle is not None:
            check(cudart().cudaStreamDestroy(self._handle), "cudaStreamDestroy")
            self._handle = None


class _GrowableBuffer(ABC):
    """`nbytes` of CUDA-allocated memory; grows with `reserve`, never shrinks. Subclasses say how to allocate."""

    def __init__(self, nbytes: int = 0) -> None:
        self.ptr = 0
        self.nbytes = 0
        self.reserve(nbytes)

    @abstractmethod
    def _alloc(self, nbytes: int) -> int:
        """Allocate `nbytes` and return the address."""

    @abstractmethod
    def _release(self, ptr: int) -> None:
        """Free an address `_alloc` returned."""

    def reserve(self, nbytes: int) -> bool:
        """Make the buffer at least `nbytes` large; True when it had to be reallocated (its address changed)."""
        if nbytes <= self.nbytes:
            return False
        self.free()
        self.ptr = self._alloc(nbytes)
        self.nbytes = nbytes
        return True

    def free(self) -> None:
        if self.ptr:
            self._release(self.ptr)
        self.ptr, self.nbytes = 0, 0


class DeviceBuffer(_GrowableBuffer):
    """Device memory (cudaMalloc)."""

    def _alloc(self, nbytes: int) -> int:
        return int(check(cudart().cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))

    def _release(self, ptr: int) -> None:
        check(cudart().cudaFree(ptr), "cudaFree")


class PinnedBuffer(_GrowableBuffer):
    """Page-locked host memory (cudaMallocHost) seen as a numpy array: makes async copies truly asynchronous."""

    def _alloc(self, nbytes: int) -> int:
        return int(check(cudart().cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})"))

    def _release(self, ptr: int) -> None:
        check(cudart().cudaFreeHost(ptr), "cudaFreeHost")

    def view(self, shape: tuple[int, ...], dtype: np.dtype[Any] | type) -> np.ndarray:
        """A numpy array over the first bytes of the buffer (valid until the next `reserve` / `free`)."""
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dt.itemsize > self.nbytes:
            raise ValueError(f"pinned buffer of {self.nbytes} bytes is too small for {shape} {dt}")
        if count == 0:
            return np.empty(shape, dt)
        raw = (ctypes.c_ubyte * (count * dt.itemsize)).from_address(self.ptr)
        return np.frombuffer(memoryview(raw), dtype=dt, count=count).reshape(shape)


def memcpy_htod_async(dst: int, src: np.ndarray, stream: Stream) -> None:
    """Host -> device copy of a C-contiguous array on `stream` (asynchronous only from pinned memory)."""
    if not src.flags.c_contiguous:
        raise ValueError("memcpy_htod_async needs a C-contiguous array")
    rt = cudart()
    check(rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                             stream.handle), "cudaMemcpyAsync(HostToDevice)")


def memcpy_dtoh_async(dst: np.ndarray, src: int, stream: Stream) -> None:
    """Device -> host copy into a C-contiguous, writable array on `stream` (synchronise before reading it)."""
    if not dst.flags.c_contiguous or not dst.flags.writeable:
        raise ValueError("memcpy_dtoh_async needs a C-contiguous, writable array")
    rt = cudart()
    check(rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                             stream.handle), "cudaMemcpyAsync(DeviceToHost)")


def memcpy_htod(dst: int, src: np.ndarray) -> None:
    """Synchronous host -> device copy (calibration batches; not on a hot path)."""
    if not src.flags.c_contiguous:
        raise ValueError("memcpy_htod needs a C-contiguous array")
    rt = cudart()
    check(rt.cudaMemcpy(dst, src.ctypes.data, src.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice),
          "cudaMemcpy(HostToDevice)")


class CudaGraph:
    """Capture the work enqueued on a stream once, then replay it with one launch (fixed shapes and addresses)."""

    def __init__(self) -> None:
        self._graph: Any = None
        self._exec: Any = None

    @property
    def ready(self) -> bool:
        return self._exec is not None

    def begin_capture(self, stream: Stream) -> None:
        self.free()
        rt = cudart()
        # ThreadLocal: other threads may keep using CUDA (e.g. a pre-processing thread) during the capture.
        check(rt.cudaStreamBeginCapture(stream.handle, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
              "cudaStreamBeginCapture")

    def end_capture(self, stream: Stream) -> None:
        rt = cudart()
        self._graph = check(rt.cudaStreamEndCapture(stream.handle), "cudaStreamEndCapture")
        self._exec = check(rt.cudaGraphInstantiate(self._graph, 0), "cudaGraphInstantiate")

    def abort_capture(self, stream: Stream) -> None:
        """End a capture that failed midway (the stream must leave capture mode before it is usable again)."""
        rt = cudart()
        try:
            graph = rt.cudaStreamEndCapture(stream.handle)
            if graph[0] == rt.cudaError_t.cudaSuccess and graph[1] is not None:
                rt.cudaGraphDestroy(graph[1])
        finally:
            self._graph = self._exec = None

    def launch(self, stream: Stream) -> None:
        if self._exec is None:
            raise RuntimeError("CudaGraph.launch before a successful capture")
        check(cudart().cudaGraphLaunch(self._exec, stream.handle), "cudaGraphLaunch")

    def free(self) -> None:
        rt = cudart() if (self._exec is not None or self._graph is not None) else None
        if rt is not None and self._exec is not None:
            check(rt.cudaGraphExecDestroy(self._exec), "cudaGraphExecDestroy")
        if rt is not None and self._graph is not None:
            check(rt.cudaGraphDestroy(self._graph), "cudaGraphDestroy")
        self._graph = self._exec = None
