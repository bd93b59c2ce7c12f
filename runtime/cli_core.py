"""The one entry wrapper every zsdeploy console script runs through (as Polygraphy's `tools/_main.py`): it turns what
can end a command into the README's exit codes, so each CLI's `main` only parses arguments and calls the API.

| exit | meaning |
|---|---|
| 0 | done |
| 1 | a measured check failed (zsd-bench accuracy limits / regression gate); never bad input |
| 2 | user error (`ZsdError`: one paragraph `error: <problem> Fix: <what to do>`), or a missing optional package (the
|   | message names the `pip install` extra) |
| 3 | partial: some inputs failed (each listed), the others' results are kept |
| 70 | a bug in zsdeploy (the traceback is printed): never confused with a failed check or bad input |
| 130 | interrupted (Ctrl-C or SIGTERM): temporary files are removed; the message says which results are complete |
"""
from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from .errors import ZsdError, install_sigterm_as_interrupt
from .options import RUNTIME_PRECISIONS, runtime_precision

__all__ = ["EXIT_CHECK_FAILED", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PARTIAL", "EXIT_USER_ERROR",
           "OPTIONAL_PACKAGES", "add_precision_argument", "missing_extra", "run_main"]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USER_ERROR = ZsdError.exit_code  # 2
EXIT_PARTIAL = 3
EXIT_INTERNAL = 70  # BSD EX_SOFTWARE: distinct from 1 (regression) and 2 (bad input)
EXIT_INTERRUPTED = 130

# top-level module -> the zsdeploy extra (pyproject.toml) that installs it
OPTIONAL_PACKAGES = {
    "torch": "export", "fvcore": "export", "onnxslim": "export", "onnxscript": "export",
    "onnxconverter_common": "export", "pycocotools": "bench", "matplotlib": "bench", "scipy": "bench",
    "onnxruntime_extensions": "plugins", "cuda": "gpu", "openvino": "openvino", "cv2": "video",
    "tritonclient": "serve",
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with README's error contract for every console script: a usage error (unknown option, invalid
    value, missing argument) is one paragraph `prog: error: <problem>. Fix: <usage>` and exit 2. Sub-commands'
    parsers are made of this class too (argparse creates them with the parent's class)."""

    def error(self, message: str) -> NoReturn:
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        self.exit(2, f"{self.prog}: error: {message}. Fix: {usage} (`{self.prog} --help` explains each "
                     "option).\n")


def missing_extra(error: ModuleNotFoundError, prog: str) -> ZsdError | None:
    """The user error for an optional package that is not installed; None for any other missing module (a bug)."""
    top = (error.name or "").split(".")[0]
    extra = OPTIONAL_PACKAGES.get(top)
    if extra is None:
        return None
    return ZsdError(f"{prog} needs the Python package {top}, which is not installed.",
                    f"pip install 'zsdeploy[{extra}]'.")


def run_main(prog: str, body: Callable[[], int],
             interrupted: Callable[[], str] = lambda: "nothing was written") -> int:
    """Run a command's `body` and return its exit code; every ending a user can meet is one paragraph on stderr.

    `interrupted()` says what is complete when Ctrl-C / SIGTERM stops the command ("nothing was written" by
    default); SIGTERM unwinds like Ctrl-C so temporary files are removed.
    """
    install_sigterm_as_interrupt()
    try:
        return body()
    except ZsdError as e:
        # one paragraph whatever a wrapped library's text holds (YAML and pickle errors span lines)
        print(" ".join(f"{prog}: error: {e}".split()), file=sys.stderr)
        return e.exit_code
    except ModuleNotFoundError as e:
        err = missing_extra(e, prog)
        if err is None:
            return _internal_error(prog)
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {interrupted()}.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # noqa: BLE001 - a bug must not exit 1 (a failed check) or 2 (the user's input)
        return _internal_error(prog)


def _internal_error(prog: str) -> int:
    traceback.print_exc()
    print(f"{prog}: internal error (a bug in zsdeploy, not a problem with your input or a failed check): please "
          "report it with the traceback above.", file=sys.stderr)
    return EXIT_INTERNAL


def _precision_arg(value: str) -> str:
    """argparse `type=` of --precision: the one spelling (the old `f32` -> `fp32`); an unknown value is argparse's
    usage error (exit 2) carrying runtime_precision's one-paragraph message."""
    try:
        return runtime_precision(value)
    except ZsdError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_precision_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """`--precision fp32|bf16` (a runtime precision, options.RUNTIME_PRECISIONS) for every CLI that runs a model:
    `f32`, the old spelling of fp32, is accepted and normalised but not listed among the choices."""
    parser.add_argument("--precision", type=_precision_arg, choices=RUNTIME_PRECISIONS, default="fp32",
                        metavar="|".join(RUNTIME_PRECISIONS),
                        help=f"{help}. f32, the old spelling of fp32, is still accepted")
