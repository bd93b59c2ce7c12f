"""The one entry wrapper of every console script (runtime/cli_core.py): each way a command can end maps to the
README's exit code with one paragraph on stderr; every console script goes through it."""
from __future__ import annotations

import ast
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zsdeploy.runtime.cli_core import EXIT_INTERNAL, EXIT_INTERRUPTED, run_main
from zsdeploy.runtime.errors import ZsdError

from helpers import REPO


def _missing(name: str):
    def body() -> int:
        raise ModuleNotFoundError(f"No module named '{name}'", name=name)

    return body


def test_user_error_is_one_paragraph_and_its_exit_code(capsys):
    def body() -> int:
        raise ZsdError("the model is gone.", "pass another one.")

    assert run_main("tool", body) == 2
    assert capsys.readouterr().err == "tool: error: the model is gone. Fix: pass another one.\n"


def test_partial_result_keeps_its_own_exit_code():
    def body() -> int:
        e = ZsdError("disk full.", "free space.")
        e.exit_code = 3
        raise e

    assert run_main("tool", body) == 3


def test_missing_optional_package_names_its_extra(capsys):
    assert run_main("tool", _missing("cv2.videoio")) == 2
    err = capsys.readouterr().err
    assert "tool: error: tool needs the Python package cv2" in err and "pip install 'zsdeploy[video]'" in err
    assert "Traceback" not in err


def test_a_missing_module_that_is_no_extra_is_a_bug(capsys):
    assert run_main("tool", _missing("zsdeploy.runtime.gone")) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and "internal error (a bug in zsdeploy" in err


def test_a_bug_exits_70_with_its_traceback(capsys):
    assert run_main("tool", lambda: 1 // 0) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "ZeroDivisionError" in err and "tool: internal error" in err


def test_interrupt_says_what_is_complete(capsys):
    def body() -> int:
        raise KeyboardInterrupt

    assert run_main("tool", body, lambda: "3 of 5 results are complete") == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "tool: interrupted; 3 of 5 results are complete.\n"


def test_sigterm_unwinds_as_an_interrupt(tmp_path):
    """`kill` of a running command: 130 and the interrupt message, as a person sees it."""
    code = ("import sys, time\nfrom zsdeploy.runtime.cli_core import run_main\n"
            "def body():\n    print('ready', flush=True)\n    time.sleep(60)\n    return 0\n"
            "sys.exit(run_main('tool', body, lambda: 'nothing was written'))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED and "tool: interrupted; nothing was written." in err


@pytest.mark.parametrize("script", ["export-model", "trt-infer", "build-engine", "export-triton", "zsd-bench"])
def test_every_console_script_runs_through_the_core(script):
    """Each console script's main hands its work to run_main (no hand-made catch-and-print wrapper)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"][script]
    module = target.split(":")[0]
    path = REPO / (module.replace("zsdeploy.benchmarks", "benchmarks").replace(".", "/") + ".py")
    tree = ast.parse(path.read_text())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    calls = {n.func.id for n in ast.walk(main) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    handlers = [n for n in ast.walk(main) if isinstance(n, ast.ExceptHandler)]
    assert "run_main" in calls and not handlers, script


@pytest.mark.parametrize("script, args, problem", [
    ("trt-infer", ["--model", "m.onnx", "--input", "x", "--output", "o", "--batch", "abc"],
     "argument --batch: invalid int value: 'abc'"),
    ("export-model", ["--model", "pading", "--msda", "cuda", "--output", "m.onnx"], "argument --msda: invalid choice"),
    ("build-engine", ["--onnx", "m.onnx"], "the following arguments are required: --output"),
    ("export-triton", ["--nonsense"], "the following arguments are required"),
    ("zsd-bench", ["latency", "--model", "m.onnx", "--output", "o", "--repeat", "x"], "argument --repeat"),
    ("zsd-bench", [], "the following arguments are required: cmd"),
])
def test_usage_errors_are_one_paragraph_with_the_fix(script, args, problem):
    """argparse's own errors keep README's contract too (cli_core.ArgumentParser): exit 2, one line
    `<prog>: error: <problem>. Fix: <usage>`, no traceback (was: a usage block, then the error without a fix)."""
    exe = Path(sys.executable).parent / script  # the console script installed beside this interpreter
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0] and problem in lines[0] and ". Fix: " in lines[0], r.stderr
    assert "--help` explains each option" in lines[0]
