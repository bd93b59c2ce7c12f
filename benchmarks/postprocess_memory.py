"""Post-processing cost at real photo sizes: peak memory of `trt-infer` on 12 MP / 100 MP images, and the share
of post-processing in end-to-end time at network sizes 512x512 and 800x1216.

    python -m zsdeploy.benchmarks.postprocess_memory --workdir /tmp/ppbench [--threads 2] [--repeat 5]
        [--photo 4000x3000|none] [--huge 10000x10000|none] [--sizes 512x512,800x1216|none] [--synthetic]
        [--json report.json]

Memory: each `trt-infer` run (static 128x160 `--standin diverse` PADing export, ONNX Runtime) is a child of a small
wrapper process, which prints the child's peak resident set size (getrusage(RUSAGE_CHILDREN).ru_maxrss: the
whole process - Python, ONNX Runtime, the decoded image, results, PNG encoding). Time: one process, a dynamic
export, images generated at the network size (kept by the resize: short edge = min(H, W)); per task the median
over `repeat` runs of pre-processing, network and post-processing (the Pipeline's own timings; wall and,
because shared machines are noisy, the process's CPU time of the post-processing too).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

_WRAPPER = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
            "sys.stderr.write(r.stderr[-2000:])")


def _hw(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def _export(path: Path, *args: str) -> Path:
    if not path.exists():
        subprocess.run(["export-model", "--model", "pading", "--standin", "diverse", *args, "--output", str(path)],
                       check=True, capture_output=True)
    return path


def _photo(path: Path, hw: tuple[int, int]) -> Path:
    """A smooth colourful JPEG of hw = (H, W) (content is irrelevant to memory; smooth keeps the file small)."""
    if not path.exists():
        from PIL import Image

        h, w = hw
        y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
        x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
        rgb = np.empty((h, w, 3), np.uint8)
        rgb[..., 0] = y.astype(np.uint8)
        rgb[..., 1] = x.astype(np.uint8)
        rgb[..., 2] = ((x + y) / 2).astype(np.uint8)
        Image.fromarray(rgb).save(path, quality=90)
    return path


def peak_memory_run(model: Path, image: Path, out: Path, task: str, threads: int, vis: bool) -> dict[str, Any]:
    """Run trt-infer in a wrapper; return exit code, peak RSS (MiB) and wall seconds."""
    cmd = ["trt-infer", "--model", str(model), "--input", str(image), "--output", str(out), "--task", task,
           "--threads", str(threads), "--backend", "onnxruntime", "--quiet"] + (["--vis"] if vis else [])
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    rc, kib = (int(v) for v in r.stdout.split()[:2])
    return {"task": task, "vis": vis, "image": image.name, "rc": rc, "peak_rss_mib": round(kib / 1024, 1),
            "wall_s": round(wall, 2), "stderr": r.stderr.strip()[-500:] if rc else ""}


def time_share(model: Path, hw: tuple[int, int], tasks: list[str], threads: int, repeat: int) -> list[dict]:
    from zsdeploy.runtime.backends import load_backend
    from zsdeploy.runtime.pipeline import Pipeline

    backend = load_backend(model, backend="onnxruntime", threads=threads)
    rng = np.random.default_rng(0)
    img = (rng.random((*hw, 3)) * 255).astype(np.uint8)
    rows = []
    for task in tasks:
        seg = Pipeline(backend, task=task, short_edge=min(hw), max_size=max(hw))
        seg([img])  # warm-up
        pre, net, post, post_cpu = [], [], [], []
        for _ in range(repeat):
            [r] = seg([img])
            t = r.timings_ms
            pre.append(t["preprocess"]), net.append(t["infer"]), post.append(t["postprocess"])
            post_cpu.append(_post_cpu_ms(seg, r))
        med = {k: float(np.median(v)) for k, v in (("pre", pre), ("net", net), ("post", post), ("post_cpu", post_cpu))}
        e2e = med["pre"] + med["net"] + med["post"]
        rows.append({"size": f"{hw[0]}x{hw[1]}", "task": task, "preprocess_ms": round(med["pre"], 1),
                     "network_ms": round(med["net"], 1), "postprocess_ms": round(med["post"], 1),
                     "postprocess_cpu_ms": round(med["post_cpu"], 1),
                     "postprocess_share": round(med["post"] / e2e, 4)})
    return rows


def _post_cpu_ms(seg: Any, r: Any) -> float:
    """CPU time of one more post-processing of the same outputs (single-threaded numpy: CPU time ~ work)."""
    from zsdeploy.runtime.postprocess import postprocess

    c0 = time.process_time()
    postprocess(r.class_logits, r.mask_logits, task=r.task, padded_hw=r.padded_hw, image_hw=r.image_hw,
                output_hw=r.output_hw, meta=seg.post)
    return (time.process_time() - c0) * 1e3


def synthetic_cost(hw: tuple[int, int], tasks: list[str], repeat: int, kept: int = 20) -> list[dict]:
    """CPU time of `postprocess` alone on synthetic outputs of a 133-class, 100-query PADing at network size hw
    (output = image = network size), with `kept` confident queries owning blobs. CPU time, not wall: it does
    not count time the process waits for a busy machine (numpy here is single-threaded)."""
    from zsdeploy.runtime.postprocess import PostprocessConfig, postprocess

    h, w = hw
    rng = np.random.default_rng(0)
    cls = rng.standard_normal((100, 134)).astype(np.float32)
    masks = (rng.standard_normal((100, h // 4, w // 4)) * 3 - 4).astype(np.float32)
    for j in range(kept):
        cls[j, j] += 12
        y, x = rng.integers(0, h // 4 - 8), rng.integers(0, w // 4 - 8)
        masks[j, y:y + 8, x:x + 8] += 12
    meta = PostprocessConfig(num_classes=133, thing_ids=tuple(range(80)), semantic_on=True, instance_on=True,
                             panoptic_on=True)
    rows = []
    for task in tasks:
        cpu = []
        for _ in range(repeat):
            c0 = time.process_time()
            postprocess(cls, masks, task=task, padded_hw=hw, image_hw=hw, output_hw=hw, meta=meta)
            cpu.append((time.process_time() - c0) * 1e3)
        rows.append({"size": f"{h}x{w}", "task": task, "kept_queries": kept,
                     "postprocess_cpu_ms": round(float(np.median(cpu)), 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--photo", default="4000x3000", help="HxW of the 'photo' run (default 12 MP)")
    ap.add_argument("--huge", default="10000x10000", help="HxW of the 100 MP run, or none")
    ap.add_argument("--sizes", default="512x512,800x1216", help="network sizes of the time-share runs, or none")
    ap.add_argument("--tasks", default="panoptic,instance,semantic")
    ap.add_argument("--synthetic", action="store_true",
                    help="time-share sizes: post-processing CPU time on synthetic outputs instead of a model run")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    a.workdir.mkdir(parents=True, exist_ok=True)
    tasks = a.tasks.split(",")
    report: dict[str, Any] = {"threads": a.threads, "memory": [], "time": []}
    if a.synthetic:
        for size in a.sizes.split(","):
            for row in synthetic_cost(_hw(size), tasks, a.repeat):
                report["time"].append(row)
                print(json.dumps(row), flush=True)
        a.sizes, a.photo = "none", "none"
    static = _export(a.workdir / "pading_static_128x160.onnx", "--height", "128", "--width", "160")
    photos = ([] if a.photo == "none" else [_hw(a.photo)]) + ([] if a.huge == "none" else [_hw(a.huge)])
    for hw in photos:
        img = _photo(a.workdir / f"photo_{hw[0]}x{hw[1]}.jpg", hw)
        for task in tasks if hw == photos[0] and a.photo != "none" else ["panoptic"]:
            for vis in (False, True) if hw == photos[0] and a.photo != "none" else (False,):
                row = peak_memory_run(static, img, a.workdir / "out", task, a.threads, vis)
                report["memory"].append(row)
                print(json.dumps(row), flush=True)
    if a.sizes != "none":
        dynamic = _export(a.workdir / "pading_dynamic.onnx", "--dynamic")
        for size in a.sizes.split(","):
            for row in time_share(dynamic, _hw(size), tasks, a.threads, a.repeat):
                report["time"].append(row)
                print(json.dumps(row), flush=True)
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
