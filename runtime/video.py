"""Video files, camera indices and stream URLs through a Pipeline, with its steps overlapped.

`trt-infer --input clip.mp4|0|rtsp://...` comes here (zsdeploy.cli.trt_infer.run). Four threads joined by small bounded queues,
decode -> prepare -> forward -> finish+write, so that while the network runs on frame n, frame n+1 is decoded and
pre-processed and frame n-1 post-processed and written: throughput approaches the network's own rate (ONNX Runtime,
OpenVINO, TensorRT, OpenCV decoding, zlib and most numpy release the GIL).

Outputs in --output: per frame `frame_000123_<task>.png` + `frame_000123.json` (as for images, named by the frame's
index in the source), and with --vis an annotated `<stem>_vis.mp4`. The video is written as
`<stem>_vis.incomplete.mp4` (unplayable until closed: a process killed outright leaves that name), closed on every
stop so that it plays and holds exactly the frames whose results were written, then renamed `<stem>_vis.mp4` when
the source was read to its end (or --max-frames), `<stem>_vis.partial.mp4` when the run stopped early (broken
stream, interrupt, error).

trt-infer's summary line gives frames/s, the network's time per frame (the median forward call of the run, measured
inside the pipeline) and their product, the pipelined efficiency (1.0 = the network's own rate); `zsd-bench video`
measures the network alone, with nothing else running, for the acceptance ratio.

Exit codes: 0 the source ended (or --max-frames was reached), 3 it broke mid-way (every frame processed is kept and
the run says "stopped at frame N (why)"), 130 interrupted, 2 user error (source cannot be opened, model mismatch).
"""
from __future__ import annotations

import queue
import re
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ZsdError
from .pipeline import Pipeline, Segmentation

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
QUEUE_SIZE = 2  # frames (batches) waiting between two stages: enough to absorb jitter, little memory
STAGES = ("decode", "preprocess", "infer", "postprocess", "write")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_POLL_S = 0.1  # how often a blocked stage looks at the stop event


def is_video_source(text: str) -> bool:
    """A video file (by suffix), a camera index ("0") or a URL with a scheme (rtsp://, http://, file://)."""
    if _URL.match(text) or text.isdigit() and not Path(text).exists():
        return True
    return Path(text).suffix.lower() in VIDEO_SUFFIXES and not Path(text).is_dir()


@dataclass(frozen=True)
class VideoRunOptions:
    """What a video run is asked for (trt-infer's video options, without argparse)."""

    input: str  # a video file, a camera index or a stream URL
    output: str  # the folder the frames' results go to
    every: int | None = None  # segment every N-th frame (None = every frame)
    max_frames: int | None = None
    batch: int = 1
    vis: bool = False
    save_raw: bool = False
    vis_score_threshold: float | None = None
    quiet: bool = False


def refuse_video_options(input: str, every: int | None, max_frames: int | None) -> None:
    """--max-frames / --every mean nothing for images: refuse them instead of ignoring them."""
    given = [f for f, v in (("--max-frames", max_frames), ("--every", every)) if v is not None]
    if given:
        raise ZsdError(f"{' and '.join(given)} apply to video inputs, but --input {input} is not a video file "
                       f"(suffix {', '.join(VIDEO_SUFFIXES)}), camera index or stream URL.",
                       f"drop {' and '.join(given)}, or pass a video as --input.")


def import_cv2():
    try:
        import cv2
    except ImportError:
        raise ZsdError("video inputs need OpenCV (the Python package opencv-python-headless), which is not installed.",
                       "pip install 'zsdeploy[video]'.") from None
    return cv2


# ------------------------------------------------------------------------------------------------ sources
@dataclass
class VideoSource:
    """An opened cv2.VideoCapture and what it says about itself."""

    spec: str
    kind: str  # "file" | "camera" | "stream"
    capture: Any
    fps: float  # 0 when unknown
    frame_count: int  # 0 when unknown (cameras, live streams)
    stem: str  # names the --vis video

    def close(self) -> None:
        self.capture.release()


def open_source(spec: str) -> VideoSource:
    """Open a video file, camera index or stream URL; a clear ZsdError when that is impossible."""
    cv2 = import_cv2()
    arg: str | int
    if _URL.match(spec):
        kind, arg, stem = "stream", spec, (Path(spec.split("?")[0]).stem or "stream")
    elif spec.isdigit():
        kind, arg, stem = "camera", int(spec), f"camera{spec}"
    else:
        kind, arg, stem = "file", spec, Path(spec).stem
        if not Path(spec).is_file():
            raise ZsdError(f"--input {spec}: no such video file.", "pass an existing video file, a camera index "
                                                                   "(0, 1, ...) or a stream URL.")
    cap = cv2.VideoCapture(arg)
    if not cap.isOpened():
        cap.release()
        why = {"file": (f"--input {spec} cannot be opened as a video (not a video, an unsupported codec, or a file "
                        "cut before its index, e.g. an .mp4 whose 'moov' atom was never written).",
                        "check the file plays (e.g. ffprobe), or re-encode it."),
               "camera": (f"camera {spec} cannot be opened (no such device, no permission, or in use).",
                          "pass the index of a connected camera (ls /dev/video*), or a video file."),
               "stream": (f"the stream {spec} cannot be opened (unreachable, wrong URL, or an unsupported protocol).",
                          "check the URL plays (e.g. ffprobe URL).")}[kind]
        raise ZsdError(*why)
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    return VideoSource(spec, kind, cap, fps if fps > 0 else 0.0, count if kind == "file" and count > 0 else 0, stem)


@dataclass
class Frame:
    index: int  # position in the source (0-based), also with --every
    time_s: float
    rgb: np.ndarray


def read_frames(src: VideoSource, *, every: int = 1, max_frames: int | None = None,
                stop: threading.Event | None = None, busy: dict[str, float] | None = None,
                outcome: dict[str, Any] | None = None):
    """Yield every `every`-th frame (RGB) up to `max_frames`; `outcome` gets why reading stopped:
    {"ended": True/False, "why": str, "read": frames read from the source}."""
    cv2 = import_cv2()
    outcome = {} if outcome is None else outcome
    n_read = yielded = 0
    while True:
        if stop is not None and stop.is_set():
            outcome.update(ended=False, why="stopped", read=n_read)
            return
        if max_frames is not None and yielded >= max_frames:
            outcome.update(ended=True, why=f"--max-frames {max_frames}", read=n_read)
            return
        t0 = time.perf_counter()
        keep = n_read % every == 0
        ok = src.capture.grab()  # frames skipped by --every are not decoded
        bgr = src.capture.retrieve()[1] if ok and keep else None
        if busy is not None:
            busy["decode"] = busy.get("decode", 0.0) + time.perf_counter() - t0
        if not ok or (keep and bgr is None):
            outcome.update(read=n_read, **_why_reading_stopped(src, n_read))
            return
        n_read += 1
        if keep:
            t_s = float(src.capture.get(cv2.CAP_PROP_POS_MSEC) or 0.0) / 1e3
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            yielded += 1
            yield Frame(n_read - 1, t_s, rgb)


def _why_reading_stopped(src: VideoSource, n_read: int) -> dict[str, Any]:
    """A failed read is the normal end of a file read to its stated length; anything else is a break."""
    if src.kind == "file" and src.frame_count:
        # Containers that only estimate their length (duration x fps: mkv, webm) may be a frame or so off.
        if n_read >= src.frame_count - max(1, src.frame_count // 100):
            return {"ended": True, "why": "end of the video"}
        return {"ended": False, "why": f"the video ended or broke after {n_read} of its {src.frame_count} frames: "
                                       "the file is truncated or corrupt"}
    if src.kind == "file":
        return {"ended": n_read > 0, "why": "end of the video (its length is not stated, so a truncated file "
                                            "cannot be told apart)"}
    what = "camera" if src.kind == "camera" else "stream"
    return {"ended": False, "why": f"the {what} stopped delivering frames (disconnected, or a live stream that "
                                   "ended: the two cannot be told apart)"}


# ------------------------------------------------------------------------------------------------ the pipeline
@dataclass
class VideoStats:
    """What a run did and how fast: frames through every stage, wall time, per-stage busy time (s)."""

    frames: int = 0
    wall_s: float = 0.0
    busy_s: dict[str, float] = field(default_factory=dict)
    infer_ms: list[float] = field(default_factory=list)  # per forward call (one batch)
    batch: int = 1
    ended: bool = False
    why: str = ""
    read: int = 0  # frames read from the source (incl. those skipped by --every)
    last_frame: int | None = None  # source index of the last frame fully processed

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def network_ms(self) -> float:
        """The network's own time per frame: median forward call / batch (the first call, a warm-up, excluded
        when there are others)."""
        calls = self.infer_ms[1:] if len(self.infer_ms) > 1 else self.infer_ms
        return statistics.median(calls) / self.batch if calls else float("nan")

    @property
    def efficiency(self) -> float:
        """frames/s relative to 1 / (network time per frame): 1.0 = the pipeline runs at the network's rate."""
        return self.fps * self.network_ms / 1e3

    def as_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "wall_s": round(self.wall_s, 4), "frames_per_s": round(self.fps, 3),
                "network_ms_per_frame": round(self.network_ms, 3), "efficiency": round(self.efficiency, 4),
                "busy_s": {k: round(v, 4) for k, v in self.busy_s.items()}, "batch": self.batch,
                "ended": self.ended, "why": self.why, "frames_read": self.read, "last_frame": self.last_frame}


class _Stopped(Exception):
    """A stage saw the stop event while waiting on a queue."""


_END = object()

#: on_result(frame, segmentation, per-frame timings in ms) -> None; runs in the last stage's thread.
OnResult = Callable[[Frame, Segmentation, dict[str, float]], None]


def _segmentations(pipe: Pipeline, raw, batch, results, timings: dict[str, float]) -> list[Segmentation]:
    """Per-image Segmentations of a batch, as Pipeline.__call__ builds them."""
    return [Segmentation(pipe.task, batch.original_sizes[i], results[i][pipe.task], raw.class_logits[i],
                         raw.mask_logits[i], batch.image_sizes[i], batch.padded_hw, dict(timings),
                         {k: v[i] for k, v in raw.extra.items()}) for i in range(len(results))]


def run_pipelined(pipe: Pipeline, src: VideoSource, on_result: OnResult | None = None, *, every: int = 1,
                  max_frames: int | None = None, batch: int = 1, stop: threading.Event | None = None,
                  queue_size: int = QUEUE_SIZE) -> VideoStats:
    """decode -> prepare -> forward -> finish+on_result in four threads joined by bounded queues.

    Returns when the source ends or breaks (stats.ended / stats.why), or raises in the calling thread: a worker's
    exception as it is (a ZsdError stays the user error it is), or KeyboardInterrupt / Terminated arriving in the
    calling thread. Either way every stage has stopped first, the last one after finishing the frame it was on (so
    `on_result` never runs half-way); frames still in the queues are dropped. `stats` (filled as frames complete)
    is attached to the exception as `.video_stats`.
    """
    stop = stop or threading.Event()
    stats = VideoStats(batch=batch)
    busy = {k: 0.0 for k in STAGES}
    stats.busy_s = busy
    errors: list[BaseException] = []
    outcome: dict[str, Any] = {}
    q_frames: queue.Queue = queue.Queue(queue_size)
    q_batches: queue.Queue = queue.Queue(queue_size)
    q_raw: queue.Queue = queue.Queue(queue_size)

    def put(q: queue.Queue, item: Any) -> None:
        while True:
            if stop.is_set():
                raise _Stopped
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def get(q: queue.Queue) -> Any:
        while True:
            if stop.is_set():
                raise _Stopped
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue

    def decode() -> None:
        for frame in read_frames(src, every=every, max_frames=max_frames, stop=stop, busy=busy, outcome=outcome):
            put(q_frames, frame)
        put(q_frames, _END)

    def prepare() -> None:
        done = False
        while not done:
            frames: list[Frame] = []
            while len(frames) < batch:
                item = get(q_frames)
                if item is _END:
                    done = True
                    break
                frames.append(item)
            if frames:
                t0 = time.perf_counter()
                b = pipe.prepare([f.rgb for f in frames])
                dt = time.perf_counter() - t0
                busy["preprocess"] += dt
                put(q_batches, (frames, b, dt))
        put(q_batches, _END)

    def forward() -> None:
        while (item := get(q_batches)) is not _END:
            frames, b, t_pre = item
            t0 = time.perf_counter()
            raw = pipe.forward(b)
            dt = time.perf_counter() - t0
            busy["infer"] += dt
            stats.infer_ms.append(dt * 1e3)
            put(q_raw, (frames, b, raw, t_pre, dt))
        put(q_raw, _END)

    def finish() -> None:
        while (item := get(q_raw)) is not _END:
            frames, b, raw, t_pre, t_inf = item
            t0 = time.perf_counter()
            results = pipe.finish(raw, b)
            t_post = time.perf_counter() - t0
            busy["postprocess"] += t_post
            n = len(frames)
            timings = {"preprocess": t_pre * 1e3 / n, "infer": t_inf * 1e3 / n, "postprocess": t_post * 1e3 / n}
            for frame, seg in zip(frames, _segmentations(pipe, raw, b, results, timings)):
                if stop.is_set():
                    raise _Stopped
                t1 = time.perf_counter()
                if on_result is not None:
                    on_result(frame, seg, timings)
                busy["write"] += time.perf_counter() - t1
                stats.frames += 1
                stats.last_frame = frame.index

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def body() -> None:
            try:
                fn()
            except _Stopped:
                pass
            except BaseException as e:  # noqa: BLE001 - handed to the calling thread, which re-raises it
                errors.append(e)
                stop.set()
        return body

    threads = [threading.Thread(target=guarded(fn), name=f"zsd-video-{fn.__name__}", daemon=True)
               for fn in (decode, prepare, forward, finish)]
    t_start = time.perf_counter()
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():  # a timed join keeps the calling thread responsive to signals
                t.join(_POLL_S)
    except BaseException as e:  # KeyboardInterrupt / Terminated: stop every stage, let the last finish its frame
        stop.set()
        for t in threads:
            t.join()
        stats.wall_s = time.perf_counter() - t_start
        stats.read = outcome.get("read", 0)
        e.video_stats = stats  # type: ignore[attr-defined]
        raise
    stats.wall_s = time.perf_counter() - t_start
    stats.read = outcome.get("read", 0)
    if errors:
        errors[0].video_stats = stats  # type: ignore[attr-defined]
        raise errors[0]
    stats.ended, stats.why = bool(outcome.get("ended")), str(outcome.get("why", ""))
    return stats


def run_sequential(pipe: Pipeline, src: VideoSource, on_result: OnResult | None = None, *, every: int = 1,
                   max_frames: int | None = None) -> VideoStats:
    """The same work one frame after another (decode, prepare, forward, finish): the baseline the pipelined loop is
    compared with in zsd-bench video."""
    stats = VideoStats()
    busy = {k: 0.0 for k in STAGES}
    stats.busy_s = busy
    outcome: dict[str, Any] = {}
    t_start = time.perf_counter()
    for frame in read_frames(src, every=every, max_frames=max_frames, busy=busy, outcome=outcome):
        r = pipe.run([frame.rgb])
        for k, stage in (("preprocess", "preprocess"), ("infer", "infer"), ("postprocess", "postprocess")):
            busy[stage] += r.timings_ms[k] / 1e3
        stats.infer_ms.append(r.timings_ms["infer"])
        if on_result is not None:
            t1 = time.perf_counter()
            on_result(frame, _segmentations(pipe, r.raw, r.batch, r.results, dict(r.timings_ms))[0], r.timings_ms)
            busy["write"] += time.perf_counter() - t1
        stats.frames += 1
        stats.last_frame = frame.index
    stats.wall_s = time.perf_counter() - t_start
    stats.read, stats.ended, stats.why = outcome.get("read", 0), bool(outcome.get("ended")), outcome.get("why", "")
    return stats


# ------------------------------------------------------------------------------------------------ trt-infer
def overlay_of(seg: Segmentation, info, rgb: np.ndarray, score_threshold: float) -> np.ndarray:
    """The --vis overlay of one result (as results_io.write_outputs draws it for images)."""
    from .visualize import overlay

    r = seg.results
    if seg.task == "semantic":
        kwargs: dict[str, Any] = {"semantic": r["sem_seg"].argmax(0).astype(np.int32)}
    elif seg.task == "panoptic":
        kwargs = {"panoptic": r["panoptic_seg"].astype(np.int32), "segments": r["segments_info"]}
    else:
        kwargs = {"instances": r["instances"], "score_threshold": score_threshold}
    return overlay(rgb, class_names=info.class_names, **kwargs)


class _VisVideo:
    """The annotated video: written under an 'incomplete' name, renamed by how the run ended once closed."""

    def __init__(self, out_dir: Path, stem: str, fps: float) -> None:
        self.out_dir, self.stem, self.fps = out_dir, stem, fps
        self.tmp = out_dir / f"{stem}_vis.incomplete.mp4"
        self.writer: Any = None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        cv2 = import_cv2()
        if self.writer is None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            h, w = rgb.shape[:2]
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self.writer.isOpened():
                raise ZsdError(f"cannot write the --vis video {self.tmp} (OpenCV's mp4v writer did not open).",
                               "check --output is writable, or drop --vis.")
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self, complete: bool) -> Path | None:
        """Close (the file then plays) and rename: <stem>_vis.mp4 if complete, else <stem>_vis.partial.mp4."""
        if self.writer is None:
            return None
        self.writer.release()
        self.writer = None
        if self.frames == 0:
            self.tmp.unlink(missing_ok=True)
            return None
        final = self.out_dir / f"{self.stem}_vis{'' if complete else '.partial'}.mp4"
        self.tmp.replace(final)
        return final


def run_video(args: VideoRunOptions, state: Any, open_pipeline: Callable[[], Pipeline]) -> int:
    """trt-infer on a video file, camera or stream. `state` records progress (done = frames written, out_dir,
    total; trt-infer's _RunState); `open_pipeline()` opens the model once the source is known to open."""
    from .files import check_output_dir
    from .results_io import write_outputs

    every = 1 if args.every is None else args.every
    if every < 1:
        raise ZsdError(f"--every {args.every} must be >= 1.", "pass --every 1 (every frame) or more.")
    if args.max_frames is not None and args.max_frames < 1:
        raise ZsdError(f"--max-frames {args.max_frames} must be >= 1.", "pass a positive number, or leave it out.")
    out_dir = check_output_dir(args.output)
    state.out_dir = out_dir
    src = open_source(args.input)  # before the (slow) model load: a wrong path or camera fails at once
    try:
        return _run_opened(args, state, open_pipeline, src, out_dir, every, write_outputs)
    finally:
        src.close()


def _run_opened(args: VideoRunOptions, state: Any, open_pipeline: Callable[[], Pipeline], src: VideoSource,
                out_dir: Path, every: int, write_outputs: Callable[..., Any]) -> int:
    pipe = open_pipeline()
    for note in pipe.run_notes(args.batch, args.vis_score_threshold):
        print(f"note: {note}", file=sys.stderr)
    info, backend = pipe.info, pipe.backend
    vocab = getattr(pipe, "vocabulary", None)
    vis_threshold = 0.5 if args.vis_score_threshold is None else args.vis_score_threshold
    vis = _VisVideo(out_dir, src.stem, (src.fps or 30.0) / every) if args.vis else None
    total = -(-src.frame_count // every) if src.frame_count else None
    if total is not None and args.max_frames is not None:
        total = min(total, args.max_frames)
    elif args.max_frames is not None:
        total = args.max_frames
    from tqdm import tqdm

    bar = tqdm(total=total, unit="frame", disable=args.quiet, file=sys.stderr)
    extra_common: dict[str, Any] = {"source": src.spec, "backend": backend.name}
    if vocab is not None:
        extra_common["vocabulary"] = {"source": vocab.source, "names": list(vocab.names),
                                      "unseen_ids": list(vocab.unseen_ids)}

    def on_result(frame: Frame, seg: Segmentation, timings: dict[str, float]) -> None:
        write_outputs(seg, info, out_dir, f"frame_{frame.index:06d}", save_raw=args.save_raw,
                      extra={**extra_common, "frame": frame.index, "time_s": round(frame.time_s, 4),
                             "timings_ms": {k: round(v, 2) for k, v in timings.items()}})
        if vis is not None:
            vis.write(overlay_of(seg, info, frame.rgb, vis_threshold))
        state.done += 1
        bar.update(1)

    def written(stats: VideoStats, video: Path | None) -> str:
        if stats.frames == 0:
            return f"no frame was written to {out_dir}"
        s = (f"{stats.frames} frame(s) written to {out_dir} (up to frame_{stats.last_frame:06d}; each file is "
             "complete)")
        return s + (f" and the annotated video {video} ({vis.frames if vis else 0} frames, playable)" if video else "")

    try:
        stats = run_pipelined(pipe, src, on_result, every=every, max_frames=args.max_frames, batch=args.batch)
    except BaseException as e:
        bar.close()
        st: VideoStats = getattr(e, "video_stats", VideoStats())
        video = vis.close(complete=False) if vis else None  # playable, holds exactly the frames written
        state.total = state.done
        if isinstance(e, KeyboardInterrupt):
            print(f"trt-infer: interrupted; {written(st, video)}.", file=sys.stderr)
            return 130
        if isinstance(e, ZsdError):
            err = ZsdError(f"{e.problem} The run stopped after {st.frames} frame(s); {written(st, video)}.", e.fix)
            err.exit_code = 3 if st.frames else e.exit_code
            raise err from None
        raise
    bar.close()
    video = vis.close(complete=stats.ended) if vis else None
    state.total = state.done
    if stats.frames == 0:
        raise ZsdError(f"no frame could be read from {src.spec} ({stats.why}).",
                       "check that the source plays (e.g. ffprobe), or pass another --input.")
    print(f"trt-infer: {stats.frames} frames at {stats.fps:.2f} frames/s (network alone: {stats.network_ms:.1f} "
          f"ms/frame => pipelined efficiency {stats.efficiency:.2f}) ({pipe.task}, {backend.name}, batch "
          f"{args.batch}); results in {out_dir}" + (f"; annotated video {video}" if video else ""))
    if not stats.ended:
        print(f"trt-infer: stopped at frame {stats.read} ({stats.why}); {written(stats, video)}.", file=sys.stderr)
        return 3
    if stats.why.startswith("--max-frames"):
        print(f"trt-infer: stopped at frame {stats.read} ({stats.why}).", file=sys.stderr)
    return 0
