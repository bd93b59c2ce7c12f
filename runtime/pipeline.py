"""The Pipeline: images -> pre-processing -> one or more backends -> upstream post-processing.

It is the unit every CLI and benchmark runs (trt-infer, zsd-bench accuracy and latency, Triton's Python backend):
`prepare` (resize, pad, batch), `forward` (the network, plus further networks such as ZegFormer's CLIP crop
classifier, on the main outputs), `finish` (post-processing per image and task). `run` times the three steps; the
benchmarks read those timings instead of re-stating the order. Model families (zsdeploy.families) open artifacts as
Pipelines; ZegFormer's subclass adds the vocabulary.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backends.base import Backend
from .errors import ZsdError
from .options import TASKS
from .postprocess import PostprocessConfig, postprocess
from .preprocess import Batch, preprocess


@dataclass
class Segmentation:
    """Results for one image at its original size, plus the raw network outputs it came from."""

    task: str
    output_hw: tuple[int, int]
    results: dict[str, Any]
    class_logits: np.ndarray
    mask_logits: np.ndarray
    image_hw: tuple[int, int]
    padded_hw: tuple[int, int]
    timings_ms: dict[str, float] = field(default_factory=dict)
    extra_raw: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. ZegFormer's clip_logits


@dataclass
class RawOutputs:
    """What the networks returned for a batch: [B, ...] arrays."""

    class_logits: np.ndarray
    mask_logits: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. ZegFormer's clip_logits


@dataclass
class PipelineRun:
    """One timed pass: the batch, the raw outputs, per image {task: results}, and each step's wall time (whole
    batch, ms)."""

    batch: Batch
    raw: RawOutputs
    results: list[dict[str, dict[str, Any]]]
    timings_ms: dict[str, float]

    @property
    def e2e_ms(self) -> float:
        return sum(self.timings_ms.values())


STEPS = ("preprocess", "infer", "postprocess")


class Pipeline:
    """Runs a loaded backend with the exact upstream pre/post-processing described by its metadata."""

    def __init__(self, backend: Backend, task: str | None = None, short_edge: int | None = None,
                 max_size: int | None = None) -> None:
        """short_edge / max_size: override the metadata's ResizeShortestEdge sizes (min_size_test / max_size_test);
        short_edge 0 = no resize."""
        self.backend = backend
        if short_edge is not None and short_edge < 0:
            raise ZsdError(f"--short-edge {short_edge} must be >= 0.", "pass 0 (no resize) or a size in pixels.")
        self.short_edge, self.max_size = short_edge, max_size
        self.info = backend.info
        self.post = PostprocessConfig.from_metadata(self.info.raw, self.info.model)
        enabled = self.enabled_tasks()
        self.task = task or self.info.task
        if self.task not in enabled:
            raise ZsdError(f"--task {self.task} is not available for this {self.info.model} {self.info.task} model.",
                           f"choose one of {enabled}.")

    def enabled_tasks(self) -> list[str]:
        on = {"semantic": self.post.semantic_on, "panoptic": self.post.panoptic_on, "instance": self.post.instance_on}
        return [t for t in TASKS if on[t]]

    @property
    def fits_to_canvas(self) -> bool:
        """A static-shape model without an explicit short edge: images too large for its canvas are scaled down
        to fit (aspect ratio kept, padded with the pixel mean) instead of being refused."""
        return self.info.static_hw is not None and self.short_edge is None

    def resize_note(self) -> str | None:
        """One line telling the user how images are fitted to a static model, or None (upstream resize)."""
        if not self.fits_to_canvas:
            return None
        h, w = self.info.static_hw  # type: ignore[misc]
        return (f"this model has a static {h}x{w} (HxW) input: images are resized to short edge "
                f"{self.info.min_size_test} (max {self.info.max_size_test}) as upstream, and further down, aspect "
                f"ratio kept, where that does not fit {h}x{w}; the rest is padded with the pixel mean. Pass "
                "--short-edge N to choose the size yourself (images that then do not fit are skipped), or export "
                "with --dynamic for upstream's exact sizes.")

    def run_notes(self, batch: int = 1, vis_score_threshold: float | None = None) -> list[str]:
        """Check a run's options against this model (ZsdError) and return the notes to show before it starts
        (trt-infer on images and on video alike)."""
        info = self.info
        if info.static_batch is not None and batch > info.static_batch:
            raise ZsdError(f"--batch {batch}, but the model was exported with a static batch of {info.static_batch}.",
                           f"pass --batch {info.static_batch} or less (or re-export with export-model --dynamic).")
        if vis_score_threshold is not None and self.task != "instance":
            raise ZsdError(f"--vis-score-threshold applies to instance overlays, but the task is {self.task}.",
                           "drop --vis-score-threshold, or pass --task instance.")
        notes = []
        if info.standin_weights:
            notes.append("this model was exported with untrained stand-in weights; its predictions are meaningless.")
        note = self.resize_note()
        return notes + ([note] if note else [])

    def preprocess(self, images: list[np.ndarray]) -> Batch:
        return preprocess(
            images, short_edge=self.info.min_size_test if self.short_edge is None else self.short_edge,
            max_size=self.info.max_size_test if self.max_size is None else self.max_size,
            size_divisibility=self.info.size_divisibility, pixel_mean=self.info.pixel_mean,
            fixed_hw=self.info.static_hw, fit=self.fits_to_canvas,
        )

    def infer(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Run the network; a static-batch model gets its batch filled with copies of the last image."""
        n = batch.tensor.shape[0]
        x = self._fill_static_batch(batch.tensor)
        out = self.backend.infer({"images": np.ascontiguousarray(x, dtype=np.float32)})
        return out["class_logits"][:n], out["mask_logits"][:n]

    def _fill_static_batch(self, x: np.ndarray) -> np.ndarray:
        want = self.info.static_batch
        n = x.shape[0]
        if want is None or n == want:
            return x
        if n > want:
            raise ZsdError(f"{n} images in one batch but the model takes batch {want}.",
                           f"pass --batch {want} (or re-export with export-model --dynamic).")
        return np.concatenate([x, np.repeat(x[-1:], want - n, axis=0)], axis=0)

    def infer_extra(self, batch: Batch, class_logits: np.ndarray, mask_logits: np.ndarray) -> dict[str, np.ndarray]:
        """Further networks run on the main outputs (ZegFormer's CLIP crop classifier); per-image arrays [B,...]."""
        return {}

    def postprocess(self, class_logits: np.ndarray, mask_logits: np.ndarray, batch: Batch, i: int,
                    task: str | None = None, extra: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        return postprocess(class_logits[i], mask_logits[i], task=task or self.task, padded_hw=batch.padded_hw,
                           image_hw=batch.image_sizes[i], output_hw=batch.original_sizes[i], meta=self.post)

    # -------------------------------------------------------------------------------------------- the steps
    def prepare(self, images: list[np.ndarray]) -> Batch:
        return self.preprocess(images)

    def forward(self, batch: Batch) -> RawOutputs:
        cls, masks = self.infer(batch)
        return RawOutputs(cls, masks, self.infer_extra(batch, cls, masks))

    def finish(self, raw: RawOutputs, batch: Batch, tasks: list[str] | None = None) -> list[dict[str, dict[str, Any]]]:
        """Post-processing of every image of the batch for each of `tasks` (default: the pipeline's task)."""
        return [{t: self.postprocess(raw.class_logits, raw.mask_logits, batch, i, t, extra=raw.extra)
                 for t in (tasks or [self.task])} for i in range(len(batch.image_sizes))]

    def run(self, images: list[np.ndarray], tasks: list[str] | None = None) -> PipelineRun:
        """prepare -> forward -> finish, each timed."""
        t0 = time.perf_counter()
        batch = self.prepare(images)
        t1 = time.perf_counter()
        raw = self.forward(batch)
        t2 = time.perf_counter()
        results = self.finish(raw, batch, tasks)
        t3 = time.perf_counter()
        return PipelineRun(batch, raw, results, {"preprocess": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3,
                                                 "postprocess": (t3 - t2) * 1e3})

    def __call__(self, images: list[np.ndarray]) -> list[Segmentation]:
        r = self.run(images)
        n, b = len(images), r.batch
        per_image = {k: v / n for k, v in r.timings_ms.items()}
        return [Segmentation(self.task, b.original_sizes[i], r.results[i][self.task], r.raw.class_logits[i],
                             r.raw.mask_logits[i], b.image_sizes[i], b.padded_hw, dict(per_image),
                             {k: v[i] for k, v in r.raw.extra.items()})
                for i in range(n)]
