"""Importing TensorRT and talking to its logger: shared by the builder and the runner.

`import_tensorrt` turns every way `import tensorrt` can go wrong (absent, broken, only the type stubs, too old)
into one ZsdError with the install instructions. `make_logger` prints TensorRT's warnings and keeps its errors, so
our own messages can quote them (`logged_errors`).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ZsdError

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = ["MIN_TENSORRT", "Say", "create_builder", "create_runtime", "import_tensorrt", "logged_errors", "make_logger",
           "numpy_dtype", "version_tuple"]

MIN_TENSORRT = (10, 0)

Say = Callable[[str], None]

INSTALL_HELP = ("On x86-64 Linux/Windows: pip install tensorrt (NVIDIA's wheels, matching your CUDA major version, "
                "e.g. tensorrt-cu12), or install the TensorRT tar/deb packages from developer.nvidia.com. On Jetson: "
                "JetPack ships TensorRT (python3-libnvinfer); create the virtual environment with "
                "--system-site-packages so it is visible.")


def import_tensorrt() -> Any:
    """`import tensorrt`, with an actionable error where it is missing or too old."""
    try:
        import tensorrt as trt_mod
    except ModuleNotFoundError as e:
        if e.name != "tensorrt":  # the package is there but one of its own imports is missing
            raise ZsdError(f"TensorRT's Python package is installed but fails to import ({e}).", INSTALL_HELP) \
                from None
        raise ZsdError("TensorRT is not installed: there is no `tensorrt` Python package.", INSTALL_HELP) from None
    except ImportError as e:  # e.g. libnvinfer.so not found: installed, but broken
        raise ZsdError(f"TensorRT's Python package is installed but fails to import ({e}).", INSTALL_HELP) from None
    if not hasattr(trt_mod, "Builder"):
        # `tensorrt-stubs` alone installs tensorrt/__init__.pyi: Python then imports an empty namespace package.
        raise ZsdError("TensorRT is not installed: `import tensorrt` found only type stubs (tensorrt-stubs), not "
                       "the library.", INSTALL_HELP)
    if version_tuple(trt_mod.__version__) < MIN_TENSORRT:
        raise ZsdError(f"TensorRT {trt_mod.__version__} is too old; zsdeploy uses the TensorRT 10 API "
                       "(named I/O tensors, execute_async_v3, IPluginV3).",
                       "install TensorRT 10 or newer. " + INSTALL_HELP)
    return trt_mod


def version_tuple(text: str) -> tuple[int, ...]:
    """Version text as numbers, e.g. `10.13.0.35` -> (10, 13, 0, 35); stops at the first part without digits."""
    out = []
    for part in text.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def make_logger(verbose: bool = False, say: Say | None = None) -> trt.ILogger:
    """A TensorRT logger that prints warnings+ (all with `verbose`) and keeps the errors for our messages."""
    import tensorrt as trt

    class ZsdLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.min_print = trt.ILogger.Severity.VERBOSE if verbose else trt.ILogger.Severity.WARNING

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)
            if int(severity) <= int(self.min_print):  # lower value = more severe
                line = f"[TensorRT] [{severity.name}] {msg}"
                if say is not None:
                    say(line)
                else:
                    print(line, file=sys.stderr, flush=True)

    return ZsdLogger()


def logged_errors(logger: trt.ILogger) -> list[str]:
    """The error messages a `make_logger` logger has seen (none for another ILogger)."""
    return list(getattr(logger, "errors", []))


def _cannot_start_cuda(what: str, trt: Any, logger: trt.ILogger, error: BaseException | None) -> ZsdError:
    """TensorRT returned no object: it could not start CUDA. Name why where cuda-python can tell."""
    from .. import cuda_utils

    reason = cuda_utils.why_cuda_cannot_run()
    messages = "; ".join(logged_errors(logger)[-3:])
    detail = f" ({messages})" if messages else (f" ({error})" if error is not None else "")
    if reason is not None:
        return ZsdError(f"TensorRT {trt.__version__} could not create its {what}{detail}: {reason.problem}",
                        reason.fix)
    return ZsdError(f"TensorRT {trt.__version__} could not create its {what}{detail}: TensorRT needs a working CUDA "
                    "GPU and driver.",
                    "check the GPU with nvidia-smi (no driver, a driver older than this TensorRT's CUDA, or no "
                    "visible device: CUDA_VISIBLE_DEVICES); pip install 'zsdeploy[gpu]' lets zsdeploy name which.")


def _start(factory: Callable[[Any], Any], what: str, trt: Any, logger: trt.ILogger) -> Any:
    """`factory(logger)`, or a ZsdError naming why TensorRT could not start CUDA.

    The bindings raise TypeError ("factory function returned nullptr") where libnvinfer returns no object, which is
    what happens without a usable GPU or driver.
    """
    try:
        made = factory(logger)
    except TypeError as e:
        raise _cannot_start_cuda(what, trt, logger, e) from None
    if made is None:
        raise _cannot_start_cuda(what, trt, logger, None)
    return made


def create_builder(trt: Any, logger: trt.ILogger) -> trt.Builder:
    """`trt.Builder(logger)`, or a ZsdError naming why TensorRT could not start CUDA."""
    return _start(trt.Builder, "builder", trt, logger)


def create_runtime(trt: Any, logger: trt.ILogger) -> trt.Runtime:
    """`trt.Runtime(logger)`, or a ZsdError naming why TensorRT could not start CUDA."""
    return _start(trt.Runtime, "runtime", trt, logger)


def numpy_dtype(trt: Any, dtype: trt.DataType, tensor: str, engine_name: str) -> np.dtype[Any]:
    """The numpy type of an engine I/O tensor; a ZsdError for types numpy has none of (BF16, FP8, INT4, FP4)."""
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:
        name = getattr(dtype, "name", str(dtype))
        raise ZsdError(f"engine {engine_name}: I/O tensor {tensor!r} is {name}, which has no numpy type, so zsdeploy "
                       "cannot feed or read it.",
                       "export with float32 inputs and outputs (export-model keeps them float32 at every --precision) "
                       "and rebuild the engine with build-engine.") from None
