"""`trt-infer` and `export-model` as a person runs them: subprocesses, exit codes, files on disk."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from zsdeploy.benchmarks.synthetic import sample_image


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    sample_image(d / "scene.png", seed=3, height=120, width=152)
    return d / "scene.png"


@pytest.mark.parametrize("task", ["panoptic", "semantic", "instance"])
def test_trt_infer_end_to_end(onnx_exports, scene, tmp_path, task):
    out = tmp_path / "out"
    r = _run("zsdeploy.runtime.cli", "--model", str(onnx_exports["dynamic"]), "--input", str(scene),
             "--output", str(out), "--task", task, "--vis", "--save-raw")
    assert r.returncode == 0, r.stderr
    assert "1/1 image(s) segmented" in r.stdout and "images/s" in r.stdout
    doc = json.loads((out / "scene.json").read_text())
    assert doc["task"] == task and (doc["height"], doc["width"]) == (120, 152)
    label = np.array(Image.open(out / f"scene_{task}.png"))
    assert label.shape == (120, 152)
    vis = np.array(Image.open(out / "scene_vis.png"))
    assert vis.shape[:2] == (120, 152)
    raw = np.load(out / "scene_raw.npz")
    assert raw["class_logits"].shape == (100, 134) and raw["mask_logits"].shape[0] == 100
    if task == "semantic":
        assert sum(c["pixels"] for c in doc["classes"]) == 120 * 152
        assert set(np.unique(label)) == {c["category_id"] for c in doc["classes"]}
    if task == "instance":
        # upstream top-k 100 over (query, class), things only because the panoptic config has panoptic on
        assert len(doc["instances"]) <= 100
        assert all(i["category_id"] < 80 for i in doc["instances"])
        assert len(doc["instances"]) == (label > 0).any() * len(doc["instances"])
        scores = [i["score"] for i in doc["instances"]]
        assert scores == sorted(scores, reverse=True)


def test_directory_with_a_bad_file(onnx_exports, scene, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.png").write_bytes(scene.read_bytes())
    Image.open(scene).convert("L").save(d / "grey.png")
    (d / "notes.jpg").write_text("not an image")
    out = tmp_path / "out"
    r = _run("zsdeploy.runtime.cli", "--model", str(onnx_exports["dynamic"]), "--input", str(d),
             "--output", str(out), "--batch", "2", "--task", "semantic")
    assert r.returncode == 3
    assert "2/3 image(s) segmented" in r.stdout
    assert "notes.jpg" in r.stderr and "Traceback" not in r.stderr
    assert "greyscale" in r.stderr or "(L)" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a_semantic.png", "grey.json", "grey_semantic.png"]


@pytest.mark.parametrize("case", ["unreadable", "truncated_model", "static_too_small", "missing_model"])
def test_user_errors_are_one_paragraph(onnx_exports, scene, tmp_path, case):
    model, image = onnx_exports["dynamic"], scene
    if case == "unreadable":
        image = tmp_path / "x.png"
        image.write_text("hello")
    elif case == "truncated_model":
        model = tmp_path / "m.onnx"
        model.write_bytes(onnx_exports["dynamic"].read_bytes()[:4096])
    elif case == "static_too_small":
        model = onnx_exports["static_b1"]  # 128x160 canvas; the 120x152 image resizes to 800x1013
    elif case == "missing_model":
        model = tmp_path / "nope.onnx"
    out = tmp_path / "out"
    r = _run("zsdeploy.runtime.cli", "--model", str(model), "--input", str(image), "--output", str(out))
    assert r.returncode == 2, r.stderr
    [error] = [line for line in r.stderr.splitlines() if line.startswith("trt-infer: error: ")]
    assert "Fix:" in error  # one paragraph: problem and fix
    assert "Traceback" not in r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_export_model_cli_errors(tmp_path):
    out = tmp_path / "m.onnx"
    r = _run("zsdeploy.export.cli", "--model", "pading", "--height", "100", "--width", "160", "--output", str(out))
    assert r.returncode == 2 and "multiples of 32" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x04garbage")
    r = _run("zsdeploy.export.cli", "--model", "pading", "--weights", str(bad), "--output", str(out))
    assert r.returncode == 2 and "bad.pth" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".m.onnx*"))
