"""`zsd-bench video`: frames/s of the pipelined video loop (runtime.video) vs the sequential per-frame loop and vs
the network alone, on a synthetic clip.

The clip: a synthetic scene (runtime.scenes.generate_scene) larger than the frame, seen through a window that
drifts a few pixels per frame, so objects move and are partly cut at the border, encoded as mp4v by OpenCV. Every
loop decodes the same file, so decoding counts as it does in trt-infer; results are not written to disk (the bench
measures the segmentation loop; trt-infer prints its own rate with writing).

Acceptance (issue 10): pipelined frames/s >= 0.9 x 1 / (network-only time per frame) on the fastest backend.
The network-only time is measured alone: `Pipeline.forward` on one prepared frame, repeated, nothing else running.
Each round measures network-only, sequential and pipelined once; the summary is the median over rounds.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from zsdeploy.runtime.cli_core import add_precision_argument
from zsdeploy.runtime import options

ACCEPTANCE = 0.9


def write_synthetic_clip(path: Path, frames: int, height: int, width: int, fps: float = 25.0, seed: int = 0) -> Path:
    """`frames` frames of one synthetic scene seen through a window drifting along a Lissajous path."""
    from zsdeploy.runtime.video import import_cv2

    from zsdeploy.runtime.scenes import generate_scene

    cv2 = import_cv2()
    margin = max(8, min(height, width) // 8)
    scene = generate_scene(seed, height + 2 * margin, width + 2 * margin, n_objects=25,
                           size_range=(8, 0.4 * min(height, width)))
    path.parent.mkdir(parents=True, exist_ok=True)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not w.isOpened():
        from zsdeploy.runtime.errors import ZsdError

        raise ZsdError(f"OpenCV cannot write {path} (mp4v).", "check --output is writable.")
    for i in range(frames):
        y = int(round(margin * (1 + np.sin(2 * np.pi * i / 47))))
        x = int(round(margin * (1 + np.sin(2 * np.pi * i / 31 + 1.0))))
        crop = np.ascontiguousarray(scene.image[y:y + height, x:x + width])
        w.write(cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    w.release()
    return path


def network_only_ms(pipe, clip: Path, repeat: int, warmup: int = 2) -> float:
    """Median ms of `Pipeline.forward` on the clip's first frame (prepared once), nothing else running."""
    from zsdeploy.runtime.video import open_source, read_frames

    src = open_source(str(clip))
    try:
        frame = next(read_frames(src, max_frames=1))
    finally:
        src.close()
    batch = pipe.prepare([frame.rgb])
    for _ in range(warmup):
        pipe.forward(batch)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        pipe.forward(batch)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _loop(pipe, clip: Path, pipelined: bool, queue_size: int) -> dict[str, Any]:
    from zsdeploy.runtime.video import open_source, run_pipelined, run_sequential

    src = open_source(str(clip))
    try:
        stats = (run_pipelined(pipe, src, queue_size=queue_size) if pipelined else run_sequential(pipe, src))
    finally:
        src.close()
    return stats.as_dict()


def run_video_bench(pipe, clip: Path, *, rounds: int = 3, net_repeat: int = 20, queue_size: int = 2,
                    say=print) -> dict[str, Any]:
    """Rounds of (network-only, sequential, pipelined) on one opened Pipeline; the report dict."""
    # Warm-up: one frame through the whole pipeline (first-call allocations, lazy initialisation).
    network_only_ms(pipe, clip, repeat=1, warmup=1)
    rows = []
    for r in range(rounds):
        net = network_only_ms(pipe, clip, net_repeat)
        seq = _loop(pipe, clip, False, queue_size)
        pipe_stats = _loop(pipe, clip, True, queue_size)
        row = {"round": r, "network_ms": round(net, 3), "sequential": seq, "pipelined": pipe_stats,
               "efficiency": round(pipe_stats["frames_per_s"] * net / 1e3, 4)}
        rows.append(row)
        say(f"round {r}: network alone {net:.1f} ms/frame ({1e3 / net:.2f}/s); sequential "
            f"{seq['frames_per_s']:.2f} frames/s; pipelined {pipe_stats['frames_per_s']:.2f} frames/s "
            f"=> efficiency {row['efficiency']:.2f}")
    net = statistics.median(r["network_ms"] for r in rows)
    seq_fps = statistics.median(r["sequential"]["frames_per_s"] for r in rows)
    pipe_fps = statistics.median(r["pipelined"]["frames_per_s"] for r in rows)
    eff = pipe_fps * net / 1e3
    return {
        "kind": "video",
        "backend": pipe.backend.name + ("-bf16" if getattr(pipe.backend, "precision", "fp32") == "bf16" else ""),
        "task": pipe.task,
        "input_hw": list(pipe.info.static_hw) if pipe.info.static_hw else None,
        "clip": str(clip),
        "frames": rows[0]["pipelined"]["frames"],
        "rounds": rows,
        "summary": {"network_ms_per_frame": round(net, 3), "network_frames_per_s": round(1e3 / net, 3),
                    "sequential_frames_per_s": round(seq_fps, 3), "pipelined_frames_per_s": round(pipe_fps, 3),
                    "speedup_vs_sequential": round(pipe_fps / seq_fps, 3), "efficiency": round(eff, 4),
                    "acceptance": ACCEPTANCE, "passed": eff >= ACCEPTANCE},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count()},
    }


def markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [
        "# zsd-bench video", "",
        f"Backend {report['backend']} ({report['task']}), clip {report['clip']} ({report['frames']} frames), "
        f"{len(report['rounds'])} rounds (median shown).", "",
        "| network alone (ms/frame) | 1 / network (frames/s) | sequential (frames/s) | pipelined (frames/s) | "
        "pipelined / sequential | efficiency (pipelined x network time) |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {s['network_ms_per_frame']:.1f} | {s['network_frames_per_s']:.2f} | {s['sequential_frames_per_s']:.2f} | "
        f"{s['pipelined_frames_per_s']:.2f} | {s['speedup_vs_sequential']:.2f}x | {s['efficiency']:.2f} |", "",
        f"Acceptance (efficiency >= {s['acceptance']}): {'passed' if s['passed'] else 'NOT met'}.", "",
        "Per round: " + "; ".join(f"{r['network_ms']:.1f} ms, {r['sequential']['frames_per_s']:.2f} / "
                                   f"{r['pipelined']['frames_per_s']:.2f} frames/s" for r in report["rounds"]),
        "",
        "Pipelined stage busy time (s, last round): " + ", ".join(
            f"{k} {v:.2f}" for k, v in report["rounds"][-1]["pipelined"]["busy_s"].items()), "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ zsd-bench video
def add_parser(sub) -> None:
    v = sub.add_parser("video", help="video frames/s: pipelined vs sequential loop vs the network alone")
    v.add_argument("--model", required=True, help=".onnx (or .plan), as for trt-infer")
    v.add_argument("--backend", choices=options.BACKENDS, default="auto")
    v.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime / OpenVINO")
    add_precision_argument(v, "as for trt-infer: fp32 (default), or bf16 = OpenVINO's bf16 inference precision "
                              "(CPUs with AMX / AVX512-BF16)")
    v.add_argument("--frames", type=int, default=60, help="frames in the synthetic clip (default 60)")
    v.add_argument("--size", default=None, help="clip frame size HxW (default: the model's static size, else 256x320)")
    v.add_argument("--rounds", type=int, default=3, help="rounds of (network, sequential, pipelined); median kept")
    v.add_argument("--queue", type=int, default=2, help="queue length between pipeline stages (default 2)")
    v.add_argument("--output", required=True, help="output directory (report.json, report.md, clip.mp4)")
    v.set_defaults(func=cmd_video)


def cmd_video(args) -> int:
    from zsdeploy.runtime.errors import ZsdError
    from zsdeploy.families import OpenOptions, open_pipeline
    from zsdeploy.runtime.files import check_output_dir

    from .report_io import say, write_report
    from .latency import parse_sizes

    for flag, n in (("--frames", args.frames), ("--rounds", args.rounds), ("--queue", args.queue)):
        if n < 1:
            raise ZsdError(f"{flag} {n} must be >= 1.", f"pass {flag} 1 or more.")
    out = check_output_dir(args.output)
    pipe = open_pipeline(args.model, OpenOptions(backend=args.backend, threads=args.threads, precision=args.precision))
    if args.size:
        (h, w), = parse_sizes(args.size)
    else:
        h, w = pipe.info.static_hw or (256, 320)
    clip = write_synthetic_clip(out / "clip.mp4", args.frames, h, w)
    say(f"zsd-bench video: {pipe.backend.name} ({args.model}), {args.frames} frames {h}x{w}, threads "
         f"{args.threads or 'default'}, {args.rounds} rounds")
    report = run_video_bench(pipe, clip, rounds=args.rounds, queue_size=args.queue, say=say)
    report["model"], report["threads"] = str(args.model), args.threads
    write_report(out, "report.json", report)
    write_report(out, "report.md", markdown(report))
    s = report["summary"]
    say(f"network alone {s['network_ms_per_frame']:.1f} ms/frame ({s['network_frames_per_s']:.2f}/s); sequential "
         f"{s['sequential_frames_per_s']:.2f} frames/s; pipelined {s['pipelined_frames_per_s']:.2f} frames/s => "
         f"efficiency {s['efficiency']:.2f} (acceptance >= {s['acceptance']}: "
         f"{'passed' if s['passed'] else 'not met'})")
    say(f"wrote {out / 'report.json'} and {out / 'report.md'}")
    return 0
