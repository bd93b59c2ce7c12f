"""Importing TensorRT and talking to its logger: shared by the builder and the runner.

`import_tensorrt` turns every way `import tensorrt` can go wrong (absent, broken, only the type stubs, too old)
into one ZsdError with the install instructions. `make_logger` prints TensorRT's warnings and keeps its errors, so
our own messages can quote them (`logged_errors`).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ZsdError

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = ["MIN_TENSORRT", "Say", "import_tensorrt", "logged_errors", "make_logger", "version_tuple"]

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
