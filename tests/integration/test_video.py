"""trt-infer on video files (runtime/video.py): real OpenCV decoding, real ONNX Runtime, the stand-in PADing export."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason="video tests need opencv-python-headless (pip install 'zsdeploy[video]')")

from zsdeploy.cli.trt_infer import main  # noqa: E402
from zsdeploy.runtime.errors import ZsdError  # noqa: E402
from zsdeploy.runtime.imageio import read_png  # noqa: E402

H, W = 128, 160  # the static_b1 export's canvas: frames go through without resizing


def write_clip(path: Path, n: int, fourcc: str = "mp4v", fps: float = 10.0) -> Path:
    """n frames of a scene whose bright boxes move a few pixels per frame."""
    rng = np.random.default_rng(0)
    base = rng.integers(40, 90, (H, W, 3), dtype=np.uint8)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (W, H))
    assert w.isOpened()
    for i in range(n):
        f = base.copy()
        f[20:60, (5 + 3 * i) % 100:(5 + 3 * i) % 100 + 40] = (230, 40, 40)
        f[70:110, 100 - (2 * i) % 80:140 - (2 * i) % 80] = (40, 200, 60)
        w.write(f)
    w.release()
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def video_frame_count(path: Path) -> int:
    return len(decoded_frames(path))


def trt_infer(model: Path, inp: Path | str, out: Path, *extra: str) -> int:
    return main(["--model", str(model), "--input", str(inp), "--output", str(out), "--quiet", "--threads", "1",
                 *extra])


def _comparable(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in ("image", "source", "frame", "time_s", "timings_ms")}


def test_frames_equal_trt_infer_on_the_decoded_frames_and_vis_video_plays(onnx_exports, tmp_path, capsys):
    from PIL import Image

    clip = write_clip(tmp_path / "clip.mp4", 4)
    frames = decoded_frames(clip)
    assert len(frames) == 4
    img_dir = tmp_path / "frames"
    img_dir.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(img_dir / f"frame_{i:06d}.png")
    model = onnx_exports["static_b1"]
    assert trt_infer(model, clip, tmp_path / "v", "--vis") == 0
    out = capsys.readouterr().out
    assert "4 frames at" in out and "pipelined efficiency" in out
    assert trt_infer(model, img_dir, tmp_path / "i") == 0
    for i in range(4):
        stem = f"frame_{i:06d}"
        np.testing.assert_array_equal(read_png(tmp_path / "v" / f"{stem}_panoptic.png"),
                                      read_png(tmp_path / "i" / f"{stem}_panoptic.png"))
        video_doc = json.loads((tmp_path / "v" / f"{stem}.json").read_text())
        image_doc = json.loads((tmp_path / "i" / f"{stem}.json").read_text())
        assert _comparable(video_doc) == _comparable(image_doc)
        assert video_doc["frame"] == i and video_doc["source"] == str(clip)
    vis = tmp_path / "v" / "clip_vis.mp4"
    assert vis.is_file() and video_frame_count(vis) == 4
    assert not list((tmp_path / "v").glob("*incomplete*")) and not list((tmp_path / "v").glob("*partial*"))


def test_every_and_max_frames(onnx_exports, tmp_path, capsys):
    clip = write_clip(tmp_path / "clip.mp4", 9)
    assert trt_infer(onnx_exports["static_b1"], clip, tmp_path / "o", "--every", "3", "--max-frames", "2") == 0
    assert sorted(p.name for p in (tmp_path / "o").glob("*.json")) == ["frame_000000.json", "frame_000003.json"]
    assert "--max-frames 2" in capsys.readouterr().err
    # --every alone: frames 0, 4, 8 of 9, and the run ended normally
    assert trt_infer(onnx_exports["static_b1"], clip, tmp_path / "e", "--every", "4") == 0
    assert sorted(p.name for p in (tmp_path / "e").glob("*.json")) == [f"frame_{i:06d}.json" for i in (0, 4, 8)]


def test_truncated_video_keeps_frames_read_and_exits_3(onnx_exports, tmp_path, capsys):
    # AVI keeps its frame count in the header, so a cut file still opens and tells how much is missing
    # (an .mp4 cut before its trailing 'moov' index does not open at all: exit 2, tested below).
    full = write_clip(tmp_path / "full.avi", 12, fourcc="MJPG")
    cut = tmp_path / "cut.avi"
    data = full.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    readable = video_frame_count(cut)
    assert 0 < readable < 12
    assert trt_infer(onnx_exports["static_b1"], cut, tmp_path / "o", "--vis") == 3
    err = capsys.readouterr().err
    assert f"stopped at frame {readable}" in err and "truncated or corrupt" in err
    jsons = sorted((tmp_path / "o").glob("frame_*.json"))
    assert [p.name for p in jsons] == [f"frame_{i:06d}.json" for i in range(readable)]
    partial = tmp_path / "o" / "cut_vis.partial.mp4"
    assert partial.is_file() and video_frame_count(partial) == readable
    assert not (tmp_path / "o" / "cut_vis.mp4").exists()


def test_sources_that_cannot_be_opened_exit_2(onnx_exports, tmp_path, capsys):
    model = onnx_exports["static_b1"]
    assert trt_infer(model, tmp_path / "missing.mp4", tmp_path / "o") == 2
    assert "no such video file" in capsys.readouterr().err
    assert trt_infer(model, "9", tmp_path / "o") == 2
    assert "camera 9 cannot be opened" in capsys.readouterr().err
    mp4 = write_clip(tmp_path / "c.mp4", 6)
    data = mp4.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:len(data) // 2])
    assert trt_infer(model, tmp_path / "cut.mp4", tmp_path / "o") == 2
    assert "cannot be opened as a video" in capsys.readouterr().err
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    assert trt_infer(model, img_dir, tmp_path / "o", "--every", "2") == 2
    assert "--every apply to video inputs" in capsys.readouterr().err
    assert not list((tmp_path / "o").glob("frame_*"))


def test_worker_error_reaches_the_caller_and_every_stage_stops(onnx_exports, tmp_path):
    from zsdeploy.families import OpenOptions, open_pipeline
    from zsdeploy.runtime.video import open_source, run_pipelined

    pipe = open_pipeline(onnx_exports["static_b1"], OpenOptions(threads=1))
    src = open_source(str(write_clip(tmp_path / "clip.mp4", 8)))
    seen = []

    def on_result(frame, seg, timings):
        if frame.index == 2:
            raise ZsdError("disk gone", "fix it")
        seen.append(frame.index)

    try:
        with pytest.raises(ZsdError, match="disk gone") as exc:
            run_pipelined(pipe, src, on_result)
    finally:
        src.close()
    assert seen == [0, 1] and exc.value.video_stats.frames == 2
    assert not [t for t in threading.enumerate() if t.name.startswith("zsd-video-")]


def test_sigterm_mid_run_exits_130_with_complete_files(onnx_exports, tmp_path):
    clip = write_clip(tmp_path / "long.mp4", 400)
    out = tmp_path / "o"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "zsdeploy.cli.trt_infer", "--model", str(onnx_exports["static_b1"]),
                             "--input", str(clip), "--output", str(out), "--vis", "--quiet", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while len(list(out.glob("frame_*.json"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    jsons = sorted(out.glob("frame_*.json"))
    assert 2 <= len(jsons) < 400
    assert f"interrupted; {len(jsons)} frame(s) written" in err
    for js in jsons:
        doc = json.loads(js.read_text())  # whole files: each parses
        assert read_png(out / doc["label_png"]).shape == (H, W)
    partial = out / "long_vis.partial.mp4"
    assert partial.is_file() and video_frame_count(partial) == len(jsons)
    assert not list(out.glob("*.incomplete.mp4")) and not list(out.glob("*.tmp*"))
