"""export-model on bad or contradictory options, interrupted exports, and whole-bundle writes (real files,
the CLI as a subprocess)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zsdeploy.export.bundle_write import publish, staging_dir


def _export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zsdeploy.cli.export_model", *args], capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.mark.parametrize("model", ["pading", "zegformer"])
@pytest.mark.parametrize("args, match", [
    (["--height", "0"], "--height 0 must be a positive multiple of 32"),
    (["--width", "-32"], "--width -32 must be a positive multiple of 32"),
    (["--height", "256", "--dynamic"], "--height 256 and --dynamic contradict each other"),
    (["--batch", "2", "--dynamic"], "--batch 2 and --dynamic contradict each other"),
])
def test_contradictory_shape_options_are_refused(tmp_path, model, args, match):
    out = tmp_path / ("m.onnx" if model == "pading" else "bundle")
    r = _export("--model", model, *args, "--output", str(out))
    assert r.returncode == 2, r.stderr
    assert match in r.stderr and "Fix:" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def _interrupt_after(args: list[str], line_prefix: str) -> tuple[int, str, str]:
    """Start export-model, send SIGTERM once stdout shows `line_prefix` (a step has started)."""
    proc = subprocess.Popen([sys.executable, "-m", "zsdeploy.cli.export_model", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.monotonic() + 300
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(line_prefix) or time.monotonic() > deadline:
            break
    time.sleep(0.5)  # inside the step
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + out, err


def test_sigterm_during_pading_export_leaves_the_old_file(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"the previous export")
    rc, out, err = _interrupt_after(["--model", "pading", "--height", "64", "--width", "64", "--no-simplify",
                                     "--output", str(target)], "[2/4] tracing")
    assert rc == 130, err
    assert "interrupted; nothing was written" in err and "Traceback" not in err
    assert target.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def _old_bundle(d: Path) -> Path:
    d.mkdir()
    (d / "bundle.json").write_text('{"old": true}')
    (d / "segmenter.onnx").write_bytes(b"old graph")
    (d / "segmenter.plan").write_bytes(b"old engine")
    return d


def test_sigterm_during_zegformer_export_keeps_the_old_bundle(tmp_path):
    bundle = _old_bundle(tmp_path / "bundle")
    rc, out, err = _interrupt_after(["--model", "zegformer", "--height", "64", "--width", "64",
                                     "--no-default-embeddings", "--output", str(bundle)], "[1/")
    assert rc == 130, err
    assert "interrupted; nothing was written" in err and "Traceback" not in err
    assert sorted(p.name for p in bundle.iterdir()) == ["bundle.json", "segmenter.onnx", "segmenter.plan"]
    assert (bundle / "segmenter.onnx").read_bytes() == b"old graph"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no partial folder left


def test_zegformer_export_refuses_a_directory_that_is_not_a_bundle(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    (d / "holiday.jpg").write_bytes(b"precious")
    r = _export("--model", "zegformer", "--height", "64", "--width", "64", "--output", str(d))
    assert r.returncode == 2, r.stderr
    assert "is a directory with other files in it" in r.stderr and "Traceback" not in r.stderr
    assert (d / "holiday.jpg").read_bytes() == b"precious" and sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_publish_replaces_a_bundle_as_a_whole(tmp_path):
    bundle = _old_bundle(tmp_path / "bundle")
    with staging_dir(bundle) as stage:
        assert stage.parent == tmp_path and stage.name.startswith(".bundle.partial-")
        (stage / "bundle.json").write_text('{"new": true}')
        (stage / "segmenter.onnx").write_bytes(b"new graph")
        # until publish, readers see the complete old bundle
        assert (bundle / "segmenter.onnx").read_bytes() == b"old graph"
        assert publish(stage, bundle) is False
    # the new bundle only: the old engine built from the old graph is gone with it
    assert sorted(p.name for p in bundle.iterdir()) == ["bundle.json", "segmenter.onnx"]
    assert (bundle / "segmenter.onnx").read_bytes() == b"new graph"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert bundle.stat().st_mode & 0o777 == 0o777 & ~umask  # like mkdir, not mkdtemp's private 0700


def test_a_failed_bundle_write_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt), staging_dir(tmp_path / "bundle") as stage:
        (stage / "segmenter.onnx").write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_sigterm_inside_string_exec_still_exits_130(tmp_path):
    """CPython under `python -m` turns any exit into "killed by SIGINT" (-2) once exactly KeyboardInterrupt has left
    PyRun_String code (torch tracing runs some); the CLIs' SIGTERM/Ctrl-C handler raises a subclass instead."""
    (tmp_path / "interrupted_in_exec.py").write_text(
        "import os, signal, sys\n"
        "from zsdeploy.runtime.errors import install_sigterm_as_interrupt\n"
        "install_sigterm_as_interrupt()\n"
        "try:\n"
        "    exec('import os, signal, time\\nos.kill(os.getpid(), signal.SIGTERM)\\ntime.sleep(30)', {})\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n")
    r = subprocess.run([sys.executable, "-m", "interrupted_in_exec"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 130, r.stderr
