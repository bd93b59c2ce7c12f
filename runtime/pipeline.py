"""Image -> pre-processing -> backend -> upstream post-processing, for any backend (torch, ORT, TensorRT)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backends.base import Backend
from .errors import ZsdError
from .postprocess import PostprocessConfig, postprocess
from .preprocess import Batch, preprocess

TASKS = ("semantic", "panoptic", "instance")


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


class Segmenter:
    """Runs a loaded backend with the exact upstream pre/post-processing described by its metadata."""

    def __init__(self, backend: Backend, task: str | None = None) -> None:
        self.backend = backend
        self.info = backend.info
        self.post = PostprocessConfig.from_metadata(self.info.raw)
        enabled = self.enabled_tasks()
        self.task = task or self.info.task
        if self.task not in enabled:
            raise ZsdError(f"--task {self.task} is not available for this {self.info.model} {self.info.task} model.",
                           f"choose one of {enabled}.")

    def enabled_tasks(self) -> list[str]:
        on = {"semantic": self.post.semantic_on, "panoptic": self.post.panoptic_on, "instance": self.post.instance_on}
        return [t for t in TASKS if on[t]]

    def preprocess(self, images: list[np.ndarray]) -> Batch:
        return preprocess(
            images, short_edge=self.info.min_size_test, max_size=self.info.max_size_test,
            size_divisibility=self.info.size_divisibility, pixel_mean=self.info.pixel_mean,
            fixed_hw=self.info.static_hw,
        )

    def infer(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Run the network; a static-batch model gets its batch filled with copies of the last image."""
        x = batch.tensor
        want = self.info.static_batch
        n = x.shape[0]
        if want is not None and n != want:
            if n > want:
                raise ZsdError(f"{n} images in one batch but the model takes batch {want}.",
                               f"pass --batch {want} (or re-export with export-model --dynamic).")
            x = np.concatenate([x, np.repeat(x[-1:], want - n, axis=0)], axis=0)
        out = self.backend.infer({"images": np.ascontiguousarray(x, dtype=np.float32)})
        return out["class_logits"][:n], out["mask_logits"][:n]

    def postprocess(self, class_logits: np.ndarray, mask_logits: np.ndarray, batch: Batch, i: int,
                    task: str | None = None) -> dict[str, Any]:
        return postprocess(class_logits[i], mask_logits[i], task=task or self.task, padded_hw=batch.padded_hw,
                           image_hw=batch.image_sizes[i], output_hw=batch.original_sizes[i], meta=self.post)

    def __call__(self, images: list[np.ndarray]) -> list[Segmentation]:
        t0 = time.perf_counter()
        batch = self.preprocess(images)
        t1 = time.perf_counter()
        cls, masks = self.infer(batch)
        t2 = time.perf_counter()
        out = []
        for i in range(len(images)):
            t3 = time.perf_counter()
            results = self.postprocess(cls, masks, batch, i)
            out.append(Segmentation(
                self.task, batch.original_sizes[i], results, cls[i], masks[i], batch.image_sizes[i],
                batch.padded_hw,
                {"preprocess": (t1 - t0) * 1e3 / len(images), "infer": (t2 - t1) * 1e3 / len(images),
                 "postprocess": (time.perf_counter() - t3) * 1e3},
            ))
        return out
