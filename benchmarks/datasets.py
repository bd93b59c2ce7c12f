"""Benchmark datasets: generated small-target scenes, a folder of images, COCO-panoptic files given by path.

`--dataset` specs:
    synthetic[:N]                      N generated scenes (default 8), exact panoptic ground truth
    folder:DIR                         every image under DIR, no ground truth
    coco-panoptic:JSON,PNG_DIR,IMG_DIR COCO panoptic annotations (RGB id PNGs) and their images
Nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from zsdeploy.runtime.errors import ZsdError


@dataclass
class Sample:
    name: str
    image: np.ndarray  # uint8 (H, W, 3) RGB
    panoptic: np.ndarray | None = None  # int (H, W) segment ids, 0 = void
    segments: list[dict[str, Any]] = field(default_factory=list)  # id, category_id (contiguous), isthing, iscrowd

    @property
    def has_gt(self) -> bool:
        return self.panoptic is not None


@dataclass
class Dataset:
    spec: str
    kind: str
    samples: list[Any]  # lazily loaded: callables returning Sample
    has_gt: bool

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        for make in self.samples:
            yield make()


def _parse_hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ZsdError(f"size {text!r} is not HxW.", "write sizes like 128x160.") from None
    return h, w


def open_dataset(spec: str, *, scene_size: str = "256x320", seed: int = 0,
                 size_range: tuple[float, float] = (6, 60), n_objects: int = 30) -> Dataset:
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        from .synthetic import _scene_seed, generate_scene

        n = int(arg) if arg else 8
        if n < 1:
            raise ZsdError(f"--dataset {spec}: need at least one scene.", "use e.g. synthetic:8.")
        h, w = _parse_hw(scene_size)

        def make(i: int) -> Sample:
            s = generate_scene(_scene_seed(seed, i), h, w, n_objects=n_objects, size_range=size_range)
            segs = [{"id": g["id"], "category_id": g["category_id"], "isthing": bool(g["isthing"]), "iscrowd": 0}
                    for g in s.segments]
            return Sample(f"scene_{i:04d}", s.image, s.panoptic, segs)

        return Dataset(spec, "synthetic", [lambda i=i: make(i) for i in range(n)], True)
    if kind == "folder":
        from zsdeploy.runtime.imageio import list_images, load_image

        paths = list_images(arg)
        if not paths:
            raise ZsdError(f"--dataset {spec}: no images found.", "point folder: at a directory of images.")
        return Dataset(spec, "folder", [lambda p=p: Sample(p.stem, load_image(p).rgb) for p in paths], False)
    if kind == "coco-panoptic":
        return _coco_panoptic(spec, arg)
    raise ZsdError(f"unknown --dataset {spec!r}.",
                   "use synthetic[:N], folder:DIR or coco-panoptic:JSON,PNG_DIR,IMG_DIR.")


def _coco_panoptic(spec: str, arg: str) -> Dataset:
    import json

    from zsdeploy.runtime.imageio import load_image, read_png, rgb_to_id

    parts = arg.split(",")
    if len(parts) != 3:
        raise ZsdError(f"--dataset {spec}: expected three comma-separated paths.",
                       "use coco-panoptic:panoptic.json,PANOPTIC_PNG_DIR,IMAGE_DIR.")
    js, png_dir, img_dir = (Path(p) for p in parts)
    for p in (js, png_dir, img_dir):
        if not p.exists():
            raise ZsdError(f"--dataset {spec}: {p} does not exist.", "check the three paths.")
    doc = json.loads(js.read_text())
    cats = doc.get("categories", [])
    # Our own synthetic datasets already use contiguous ids (they carry "coco_id"); COCO's own JSON uses COCO ids,
    # mapped to contiguous ids in category-id order (detectron2's convention).
    if cats and all("coco_id" in c for c in cats):
        to_contig = {int(c["id"]): int(c["id"]) for c in cats}
    else:
        to_contig = {int(c["id"]): i for i, c in enumerate(sorted(cats, key=lambda c: int(c["id"])))}
    images = {im["id"]: im for im in doc.get("images", [])}

    def make(ann: dict[str, Any]) -> Sample:
        im = images.get(ann["image_id"], {})
        img_name = im.get("file_name") or Path(ann["file_name"]).with_suffix(".jpg").name
        rgb = load_image(img_dir / img_name).rgb
        pan = rgb_to_id(read_png(png_dir / ann["file_name"])).astype(np.int64)
        segs = [{"id": int(s["id"]), "category_id": to_contig[int(s["category_id"])],
                 "isthing": bool(s.get("isthing", 0)), "iscrowd": int(s.get("iscrowd", 0))}
                for s in ann["segments_info"]]
        if pan.shape != rgb.shape[:2]:
            raise ZsdError(f"{ann['file_name']}: panoptic PNG {pan.shape} and image {rgb.shape[:2]} differ in size.",
                           "check that PNG_DIR and IMG_DIR belong to the same split.")
        return Sample(Path(img_name).stem, rgb, pan, segs)

    anns = doc.get("annotations", [])
    if not anns:
        raise ZsdError(f"{js} has no annotations.", "pass a COCO panoptic JSON.")
    return Dataset(spec, "coco-panoptic", [lambda a=a: make(a) for a in anns], True)


def semantic_from_panoptic(panoptic: np.ndarray, segments: list[dict[str, Any]], ignore: int = 255) -> np.ndarray:
    """Contiguous class id per pixel (ignore for void and crowd)."""
    out = np.full(panoptic.shape, ignore, np.int64)
    for s in segments:
        if not s.get("iscrowd", 0):
            out[panoptic == int(s["id"])] = int(s["category_id"])
    return out
