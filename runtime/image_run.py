"""Segmenting a list of image files: the loop trt-infer and `zsdeploy.segment_files` share.

Images are loaded and run in batches; when a batch fails, each of its images is run alone, so one unreadable or
unfitting image costs only its own result. What happens to a failure is the caller's choice: `isolate=True` hands it
to `on_failure` and goes on, `isolate=False` raises it (trt-infer on a single image: its failure is the run's error).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .errors import ZsdError
from .imageio import LoadedImage, load_image
from .pipeline import Pipeline, Segmentation

__all__ = ["failure_line", "segment_images"]


def failure_line(path: Path, error: ZsdError) -> str:
    """One line naming the image and why it failed (the path once, even where the message names it already)."""
    text = str(error)
    return text if str(path) in text else f"{path}: {text}"


def segment_images(pipeline: Pipeline, paths: Sequence[Path], *, batch: int = 1, isolate: bool = True,
                   on_failure: Callable[[Path, ZsdError], None] | None = None,
                   on_note: Callable[[str], None] | None = None) -> Iterator[tuple[LoadedImage, Segmentation]]:
    """(image, segmentation) of each image that could be segmented, in order.

    `on_failure(path, error)` is told of each image that failed (isolate=True); `on_note(text)` of each note about
    an input (EXIF orientation applied, 16-bit image scaled, ...).
    """
    if batch < 1:
        raise ZsdError(f"batch {batch} must be >= 1.", "pass a batch of 1 or more.")

    def failed(path: Path, error: ZsdError) -> None:
        if not isolate:
            raise error
        if on_failure is not None:
            on_failure(path, error)

    def run(images: list[LoadedImage]) -> list[tuple[LoadedImage, Segmentation]]:
        try:
            return list(zip(images, pipeline([im.rgb for im in images])))
        except ZsdError as e:
            if len(images) == 1:
                failed(images[0].path, e)
                return []
        return [pair for im in images for pair in run([im])]

    for start in range(0, len(paths), batch):
        loaded = []
        for p in paths[start:start + batch]:
            try:
                img = load_image(p)
            except ZsdError as e:
                failed(Path(p), e)
                continue
            if on_note is not None:
                for note in img.notes:
                    on_note(note)
            loaded.append(img)
        if loaded:
            yield from run(loaded)
