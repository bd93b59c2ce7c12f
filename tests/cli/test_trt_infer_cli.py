"""`trt-infer` and `export-model` as a person runs them: subprocesses, exit codes, files on disk."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from zsdeploy.runtime.scenes import sample_image


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
    r = _run("zsdeploy.cli.trt_infer", "--model", str(onnx_exports["dynamic"]), "--input", str(scene),
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
    r = _run("zsdeploy.cli.trt_infer", "--model", str(onnx_exports["dynamic"]), "--input", str(d),
             "--output", str(out), "--batch", "2", "--task", "semantic")
    assert r.returncode == 3
    assert "2/3 image(s) segmented" in r.stdout
    assert "notes.jpg" in r.stderr and "Traceback" not in r.stderr
    assert "greyscale" in r.stderr or "(L)" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a_semantic.png", "grey.json", "grey_semantic.png"]


def test_broken_and_looping_links_fail_as_images_instead_of_vanishing(onnx_exports, scene, tmp_path):
    """Was: a symlink loop in the input folder was skipped silently ("1/1 images", exit 0)."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.png").write_bytes(scene.read_bytes())
    (d / "loop.png").symlink_to("loop.png")
    (d / "gone.jpg").symlink_to("deleted.jpg")
    out = tmp_path / "out"
    r = _run("zsdeploy.cli.trt_infer", "--model", str(onnx_exports["dynamic"]), "--input", str(d),
             "--output", str(out), "--task", "semantic")
    assert r.returncode == 3, r.stderr
    assert "1/3 image(s) segmented" in r.stdout and "Traceback" not in r.stderr
    assert "loop.png is a symbolic link that loops" in r.stderr
    assert "gone.jpg is a symbolic link that points to deleted.jpg, which does not exist" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a_semantic.png"]


@pytest.mark.parametrize("case", ["unreadable", "truncated_model", "static_too_small", "missing_model"])
def test_user_errors_are_one_paragraph(onnx_exports, scene, tmp_path, case):
    model, image, extra = onnx_exports["dynamic"], scene, []
    if case == "unreadable":
        image = tmp_path / "x.png"
        image.write_text("hello")
    elif case == "truncated_model":
        model = tmp_path / "m.onnx"
        model.write_bytes(onnx_exports["dynamic"].read_bytes()[:4096])
    elif case == "static_too_small":
        # 128x160 canvas; an explicit short edge 800 (120x152 -> 800x1013) does not fit and is not changed
        model, extra = onnx_exports["static_b1"], ["--short-edge", "800"]
    elif case == "missing_model":
        model = tmp_path / "nope.onnx"
    out = tmp_path / "out"
    r = _run("zsdeploy.cli.trt_infer", "--model", str(model), "--input", str(image), "--output", str(out), *extra)
    assert r.returncode == 2, r.stderr
    [error] = [line for line in r.stderr.splitlines() if line.startswith("trt-infer: error: ")]
    assert "Fix:" in error  # one paragraph: problem and fix
    assert "Traceback" not in r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_export_model_cli_errors(tmp_path):
    out = tmp_path / "m.onnx"
    r = _run("zsdeploy.cli.export_model", "--model", "pading", "--height", "100", "--width", "160", "--output", str(out))
    assert r.returncode == 2 and "multiples of 32" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x04garbage")
    r = _run("zsdeploy.cli.export_model", "--model", "pading", "--weights", str(bad), "--output", str(out))
    assert r.returncode == 2 and "bad.pth" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".m.onnx*"))


# ------------------------------------------------------------------------------------------------ bad input
def _photo(path, h, w, seed=0):
    """An ordinary photo-sized RGB image (random texture: content does not matter for these checks)."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _no_temp_files(d):
    return not [p.name for p in d.rglob(".*")]


def test_directory_run_keeps_going_past_images_that_fail(onnx_exports, scene, tmp_path):
    """An unreadable file and an image that does not fit (explicit --short-edge on a static model) are skipped,
    each reported in one line, in the same batch as a good image whose results are kept; exit 3 (partial)."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.png").write_bytes(scene.read_bytes())  # 120x152 -> short edge 100: 100x127, fits 128x160
    _photo(d / "b_tall.png", 300, 100)  # short edge 100 -> 300x100: taller than the 128 canvas
    (d / "c.jpg").write_text("not an image")
    _photo(d / "d.png", 90, 120, seed=1)
    out = tmp_path / "out"
    r = _run("zsdeploy.cli.trt_infer", "--model", str(onnx_exports["static_b1"]), "--input", str(d), "--output",
             str(out), "--task", "semantic", "--short-edge", "100", "--quiet")
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr and "2/4 image(s) segmented" in r.stdout
    lines = r.stderr.splitlines()
    [tall] = [ln for ln in lines if "b_tall.png" in ln]
    [bad] = [ln for ln in lines if "c.jpg" in ln]
    assert "does not fit" in tall and "Fix:" in tall and "could not be read" in bad
    assert "2 image(s) failed and were skipped" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a_semantic.png", "d.json", "d_semantic.png"]
    assert np.array(Image.open(out / "d_semantic.png")).shape == (90, 120)


def test_directory_where_every_image_fails_is_an_error(onnx_exports, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jpg").write_text("x")
    (d / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    r = _run("zsdeploy.cli.trt_infer", "--model", str(onnx_exports["static_b1"]), "--input", str(d), "--output",
             str(tmp_path / "out"))
    assert r.returncode == 2 and "none of the 2 image(s) could be segmented" in r.stderr
    assert "Traceback" not in r.stderr


def test_inputs_with_the_same_stem_keep_their_own_outputs(onnx_exports, scene, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    _photo(d / "x.png", 100, 140, seed=1)
    _photo(d / "x.jpg", 140, 100, seed=2)  # other size: the two outputs must differ
    (d / "y.png").write_bytes(scene.read_bytes())
    out = tmp_path / "out"
    r = _run("zsdeploy.cli.trt_infer", "--model", str(onnx_exports["static_b1"]), "--input", str(d), "--output",
             str(out), "--task", "semantic")
    assert r.returncode == 0, r.stderr
    assert "share a file stem" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["x.jpg.json", "x.jpg_semantic.png", "x.png.json",
                                                     "x.png_semantic.png", "y.json", "y_semantic.png"]
    for name, hw in (("x.png", (100, 140)), ("x.jpg", (140, 100))):
        doc = json.loads((out / f"{name}.json").read_text())
        assert doc["image"] == str(d / name) and (doc["height"], doc["width"]) == hw
        assert np.array(Image.open(out / f"{name}_semantic.png")).shape == hw


def test_static_model_fits_ordinary_photos(onnx_exports, tmp_path):
    """A 480x640 photo on a 128x160 export: resized (upstream: 800x1067), then scaled to fit 128x160 keeping the
    aspect ratio (120x160), padded with the pixel mean; results at the photo's size. --short-edge 800 refuses."""
    photo = _photo(tmp_path / "photo.jpg", 480, 640)
    out = tmp_path / "out"
    r = _run("zsdeploy.cli.trt_infer", "--model", str(onnx_exports["static_b1"]), "--input", str(photo), "--output",
             str(out), "--task", "semantic", "--save-raw")
    assert r.returncode == 0, r.stderr
    [note] = [ln for ln in r.stderr.splitlines() if "static 128x160" in ln]
    assert "aspect ratio kept" in note and "pixel mean" in note and "--short-edge" in note
    raw = np.load(out / "photo_raw.npz")
    assert tuple(raw["image_hw"]) == (120, 160) and tuple(raw["padded_hw"]) == (128, 160)
    assert tuple(raw["output_hw"]) == (480, 640)
    assert np.array(Image.open(out / "photo_semantic.png")).shape == (480, 640)

    r = _run("zsdeploy.cli.trt_infer", "--model", str(onnx_exports["static_b1"]), "--input", str(photo), "--output",
             str(tmp_path / "o2"), "--short-edge", "800")
    assert r.returncode == 2 and "does not fit" in r.stderr and "static 128x160" not in r.stderr


def test_dynamic_model_keeps_upstream_sizes(onnx_exports, scene, tmp_path):
    out = tmp_path / "out"
    r = _run("zsdeploy.cli.trt_infer", "--model", str(onnx_exports["dynamic"]), "--input", str(scene), "--output",
             str(out), "--task", "semantic", "--save-raw", "--short-edge", "128")
    assert r.returncode == 0, r.stderr
    assert "static" not in r.stderr
    raw = np.load(out / "scene_raw.npz")
    assert tuple(raw["image_hw"]) == (128, 162) and tuple(raw["padded_hw"]) == (128, 192)  # upstream rounding


@pytest.mark.parametrize("case", ["file", "under_a_file", "unwritable"])
def test_unusable_output_is_refused_before_the_model_loads(tmp_path, scene, case):
    """The model is a truncated file: had it been loaded first, the error would name it instead."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"\x08\x07" + b"\0" * 100)
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    out = {"file": blocker, "under_a_file": blocker / "results",
           "unwritable": "/proc/zsdeploy-results"}[case]  # /proc takes no new files, even for root
    r = _run("zsdeploy.cli.trt_infer", "--model", str(model), "--input", str(scene), "--output", str(out))
    assert r.returncode == 2, r.stderr
    [error] = [ln for ln in r.stderr.splitlines() if ln.startswith("trt-infer: error: ")]
    assert f"--output {out}" in error and "Fix:" in error and "m.onnx" not in error
    assert ("is a file" if case != "unwritable" else "is not writable") in error
    assert blocker.read_text() == "a file"


@pytest.mark.parametrize("args, match", [
    (["--batch", "0"], "--batch 0 must be >= 1"),
    (["--threads", "0"], "--threads 0 must be >= 1"),
    (["--short-edge", "-5"], "--short-edge -5 must be >= 0"),
    (["--vis-score-threshold", "0.3"], "--vis is not given"),
    (["--vis", "--vis-score-threshold", "3"], "is not a score"),
    (["--vis", "--vis-score-threshold", "0.3", "--task", "semantic"], "the task is semantic"),
    (["--batch", "2"], "static batch of 1"),
    (["--clip-bpe", "x.txt.gz"], "fixed class list"),
])
def test_contradictory_options_are_refused(onnx_exports, scene, tmp_path, args, match):
    out = tmp_path / "out"
    r = _run("zsdeploy.cli.trt_infer", "--model", str(onnx_exports["static_b1"]), "--input", str(scene), "--output",
             str(out), *args)
    assert r.returncode == 2, r.stderr
    assert match in r.stderr and "Fix:" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_sigterm_keeps_finished_results_and_says_so(onnx_exports, tmp_path):
    import signal
    import time

    d = tmp_path / "in"
    d.mkdir()
    for i in range(40):
        _photo(d / f"img{i:02d}.png", 96, 128, seed=i)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "zsdeploy.cli.trt_infer", "--model", str(onnx_exports["static_b1"]),
                             "--input", str(d), "--output", str(out), "--task", "semantic", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(out.glob("*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    done = sorted(out.glob("*.json"))
    assert 0 < len(done) < 40
    assert f"interrupted; the results of {len(done)} of 40 image(s) in {out} are complete" in err
    assert "Traceback" not in err and _no_temp_files(out)
    for js in done:  # every result that exists is whole
        assert json.loads(js.read_text())["task"] == "semantic"
        assert (out / f"{js.stem}_semantic.png").is_file()
