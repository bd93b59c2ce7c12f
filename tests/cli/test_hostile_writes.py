"""export-model's single-file writes on hostile targets, run as a person runs the CLI (a subprocess) on real file
systems: a read-only bind mount and small tmpfs mounts (skipped, with the reason, where this process may not mount).
Each asserts the exit code, the one-paragraph message, what is on disk afterwards and that earlier results are
intact. The checked writer is runtime/files (check_output_file before any model loads, atomic_write after)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import read_only, tmpfs
from prefetch import export_model
from zsdeploy.runtime.scenes import sample_image


def trt_infer(*args: str) -> list[str]:
    return [sys.executable, "-m", "zsdeploy.cli.trt_infer", *args]

FAST_EXPORT = ("--model", "pading", "--weights", "demo", "--height", "64", "--width", "64")


def run(args: list[str], cwd: Path | None = None, umask: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=600,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def assert_one_paragraph(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and r.stderr.startswith("export-model: error: ") and "Fix: " in r.stderr, r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


def test_read_only_output_is_refused_before_the_model_is_built(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "old.onnx").write_bytes(b"earlier result")
    with read_only(tmp_path / "data", tmp_path / "ro") as ro:
        r = run(export_model(*FAST_EXPORT, "--output", str(ro / "m.onnx")))
        assert_one_paragraph(r, f"--output {ro / 'm.onnx'} is not writable", "Read-only file system")
        assert "[1/" not in r.stdout  # no export step started: refused before building
        assert sorted(p.name for p in ro.iterdir()) == ["old.onnx"]
    assert (tmp_path / "data" / "old.onnx").read_bytes() == b"earlier result"


def test_full_disk_is_refused_before_the_model_is_built(tmp_path):
    with tmpfs(tmp_path / "full", "1m") as full:
        r = run(export_model(*FAST_EXPORT, "--output", str(full / "m.onnx")))
        assert_one_paragraph(r, "the disk is full")
        assert "[1/" not in r.stdout
        assert list(full.iterdir()) == []


def test_disk_filling_during_the_write_keeps_the_old_file_and_leaves_nothing(tmp_path, diverse_export):
    """Past the free-space check (24 MiB free) but the fp16 graph (~90 MiB) does not fit: ENOSPC mid-write."""
    with tmpfs(tmp_path / "small", "24m") as small:
        (small / "m.onnx").write_bytes(b"earlier result")
        r = run(export_model("--from-onnx", str(diverse_export), "--precision", "fp16", "--output",
                             str(small / "m.onnx")))
        assert_one_paragraph(r, f"writing {small / 'm.onnx'} failed", "No space left on device")
        assert (small / "m.onnx").read_bytes() == b"earlier result"
        assert sorted(p.name for p in small.iterdir()) == ["m.onnx"]  # no temp file left


def test_killed_writers_temporaries_are_removed_and_the_model_is_readable_by_others(tmp_path, diverse_export):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f".m.onnx.{dead.pid}.abcd1234.tmp"  # what a SIGKILL during "[n/n] writing" leaves
    live = tmp_path / f".m.onnx.{os.getpid()}.efgh5678.tmp"  # another export of the same target, still writing
    foreign = tmp_path / ".m.onnx.notes.tmp"  # not named like ours: never touched
    for p in (leftover, live, foreign):
        p.write_bytes(b"x")
    r = run(export_model("--from-onnx", str(diverse_export), "--precision", "fp16", "--output",
                         str(tmp_path / "m.onnx")), umask=0o022)
    assert r.returncode == 0, r.stderr
    assert not leftover.exists() and live.exists() and foreign.exists()
    assert (tmp_path / "m.onnx").stat().st_mode & 0o777 == 0o644  # a Triton container (another user) can read it


def test_trt_infer_into_its_input_folder_does_not_segment_its_own_results(onnx_exports, tmp_path):
    """Was: `--input d --output d` segmented its own label and overlay PNGs on the next run."""
    d = tmp_path / "photos"
    d.mkdir()
    sample_image(d / "street.png", seed=3, height=96, width=128)
    args = ["--model", str(onnx_exports["dynamic"]), "--input", str(d), "--output", str(d), "--task", "semantic",
            "--vis"]
    first = run(trt_infer(*args))
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    assert sorted(before) == ["street.json", "street.png", "street_semantic.png", "street_vis.png"]
    second = run(trt_infer(*args))
    assert second.returncode == 0, second.stderr
    assert "1/1 image(s) segmented" in second.stdout
    assert "skipped 2 result image(s) of an earlier trt-infer run" in second.stderr
    assert sorted(p.name for p in d.iterdir()) == sorted(before)  # no street_semantic_semantic.png & co
    assert (d / "street.png").read_bytes() == before["street.png"]


def test_disk_filling_during_an_images_outputs_leaves_none_of_them(onnx_exports, tmp_path):
    """Was: a disk filling during --vis --save-raw left a label PNG without its JSON. Now an image's files appear
    together or not at all, and the earlier run's files of that image stay as they were."""
    d = tmp_path / "photos"
    d.mkdir()
    sample_image(d / "street.png", seed=3, height=768, width=1024)  # raw outputs ~20 MiB at the model's 800x1066
    with tmpfs(tmp_path / "small", "17m") as small:  # passes the 16 MiB check; the raw outputs do not fit
        (small / "street.json").write_text('{"earlier": true}')
        r = run(trt_infer("--model", str(onnx_exports["dynamic"]), "--input", str(d / "street.png"), "--output",
                          str(small), "--task", "semantic", "--vis", "--save-raw"))
        assert r.returncode == 2, r.stdout + r.stderr
        assert "No space left on device" in r.stderr and "Traceback" not in r.stderr
        assert sorted(p.name for p in small.iterdir()) == ["street.json"]
        assert (small / "street.json").read_text() == '{"earlier": true}'
