"""Procedural small-target scenes with exact panoptic / semantic / instance ground truth.

Every pixel is generated here (no third-party images): a background of textured 'stuff' regions (sky above
a wavy horizon, organic ground regions, road/river bands) and many textured 'thing' shapes (discs, ellipses,
rectangles, triangles, stars, polygons) pasted in a known occlusion order. Object sizes are controlled in
pixels, so a benchmark can target COCO's area buckets (small < 32^2, medium < 96^2, large >= 96^2 pixels).

Classes are COCO-panoptic *contiguous* ids (133 classes, things 0..79, stuff 80..132 — the class order of
the PADing panoptic model), so scenes can be scored directly against that model's outputs. The scenes are
not meant to be recognisable to a COCO model; they exist to compare backends (PyTorch vs ONNX Runtime vs
TensorRT) on many small, thin and occluded targets, where numeric differences change decisions first.

Deterministic: the same seed (and numpy/Pillow versions) gives bit-identical scenes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .errors import ZsdError
from .files import write_json_atomic
from .imageio import save_png

__all__ = [
    "COCO_PANOPTIC_NAMES",
    "COCO_PANOPTIC_COCO_IDS",
    "DEFAULT_THING_CLASSES",
    "DEFAULT_STUFF_CLASSES",
    "UNSEEN_PANOPTIC_CLASSES",
    "AREA_BUCKETS",
    "area_bucket",
    "class_name",
    "Scene",
    "generate_scene",
    "write_scenes",
    "sample_image",
]

NUM_THING_CLASSES = 80
NUM_PANOPTIC_CLASSES = 133

#: Contiguous COCO-panoptic id -> name, for the classes this generator uses by default (checked against
#: detectron2's COCO_CATEGORIES order; the 14 unseen PADing classes are all included).
COCO_PANOPTIC_NAMES: dict[int, str] = {
    0: "person",
    1: "bicycle",
    2: "car",
    14: "bird",
    19: "cow",
    23: "giraffe",
    28: "suitcase",
    29: "frisbee",
    32: "sports ball",
    36: "skateboard",
    51: "carrot",
    76: "scissors",
    83: "cardboard",
    97: "playingfield",
    99: "river",
    100: "road",
    102: "sand",
    103: "sea",
    116: "tree-merged",
    119: "sky-other-merged",
    125: "grass-merged",
    131: "wall-other-merged",
}

#: Contiguous id -> original COCO category id (what COCO's own JSON files use), for the same classes.
COCO_PANOPTIC_COCO_IDS: dict[int, int] = {
    0: 1, 1: 2, 2: 3, 14: 16, 19: 21, 23: 25, 28: 33, 29: 34, 32: 37, 36: 41, 51: 57, 76: 87,
    83: 100, 97: 145, 99: 148, 100: 149, 102: 154, 103: 155, 116: 184, 119: 187, 125: 193, 131: 199,
}  # fmt: skip

#: The 14 classes held out as unseen by PADing's panoptic split.
UNSEEN_PANOPTIC_CLASSES: tuple[int, ...] = (19, 23, 28, 29, 36, 51, 76, 83, 97, 99, 100, 116, 119, 125)

DEFAULT_THING_CLASSES: tuple[int, ...] = (0, 2, 14, 19, 23, 28, 29, 32, 36, 51, 76)
DEFAULT_STUFF_CLASSES: tuple[int, ...] = (119, 125, 100, 99, 116, 97)

#: COCO area buckets in pixels: [lo, hi).
AREA_BUCKETS: dict[str, tuple[float, float]] = {
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, math.inf),
}


def area_bucket(area: float) -> str:
    """COCO size bucket of a mask area in pixels: 'small' (< 32^2), 'medium' (< 96^2) or 'large'."""
    for name, (lo, hi) in AREA_BUCKETS.items():
        if lo <= area < hi:
            return name
    raise ValueError(f"invalid area {area}")


def class_name(category_id: int) -> str:
    """Name of a contiguous COCO-panoptic class id ('class_<id>' for ids without a built-in name)."""
    return COCO_PANOPTIC_NAMES.get(int(category_id), f"class_{int(category_id)}")


@dataclass
class Scene:
    """One generated scene and its exact ground truth.

    Fields:
        image: uint8 (H, W, 3) RGB.
        panoptic: int32 (H, W) segment ids (0 = void; every pixel is labelled, so 0 does not occur).
        segments: one dict per segment: id, category_id (contiguous COCO-panoptic id), isthing (bool),
            iscrowd (0), area (visible pixels), bbox [x, y, w, h] of the visible mask; things also carry
            z (paint order: larger z is in front), full_area (unoccluded pixels) and shape.
        semantic: uint8 (H, W) contiguous class ids (255 = ignore; unused since every pixel is labelled).
        instance_masks: bool (N, H, W) visible masks of the thing segments, in `things` order.
        seed: the seed the scene was generated from.
        categories: the class vocabulary of the scene: dicts with id, name, isthing (COCO "categories" style).
    """

    image: np.ndarray
    panoptic: np.ndarray
    segments: list[dict[str, Any]]
    semantic: np.ndarray
    instance_masks: np.ndarray
    seed: int
    categories: list[dict[str, Any]] = field(default_factory=list)

    @property
    def things(self) -> list[dict[str, Any]]:
        """The thing segments, aligned with `instance_masks`."""
        return [s for s in self.segments if s["isthing"]]


# ----------------------------------------------------------------------------------------------- noise


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Value noise in [0, 1]: a random grid every `cell` pixels, bicubically upsampled (float32 (h, w))."""
    gh = max(2, int(math.ceil(h / cell)) + 1)
    gw = max(2, int(math.ceil(w / cell)) + 1)
    grid = rng.random((gh, gw)).astype(np.float32)
    up = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    lo, hi = float(up.min()), float(up.max())
    return (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)


def _fractal_noise(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 3) -> np.ndarray:
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        out += amp * _smooth_noise(rng, h, w, max(cell, 1.5))
        total += amp
        amp *= 0.5
        cell /= 2.0
    return out / total


def _smooth_1d(rng: np.random.Generator, n: int, cell: float) -> np.ndarray:
    """Smooth random curve in [-1, 1] of length n."""
    k = max(2, int(math.ceil(n / cell)) + 1)
    pts = rng.uniform(-1.0, 1.0, k)
    return np.interp(np.linspace(0, k - 1, n), np.arange(k), pts).astype(np.float32)


# -------------------------------------------------------------------------------------- stuff textures


def _hash_colour(key: int) -> np.ndarray:
    r = np.random.default_rng(1_000_003 * (key + 1))
    return r.uniform(40, 215, 3).astype(np.float32)


def _stuff_texture(cid: int, rng: np.random.Generator, h: int, w: int, horizon: np.ndarray) -> np.ndarray:
    """Full-frame float RGB texture (h, w, 3) for stuff class `cid`; the caller masks it."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fine = _fractal_noise(rng, h, w, 6.0, 2)[..., None]
    coarse = _smooth_noise(rng, h, w, max(h, w) / 5.0)[..., None]

    def col(*c: float) -> np.ndarray:
        return np.array(c, np.float32)

    if cid == 119:  # sky: vertical gradient deep -> pale towards the horizon, soft clouds
        t = np.clip(yy / max(float(horizon.max()), 1.0), 0, 1)[..., None]
        base = col(40, 90, 190) * (1 - t) + col(170, 205, 240) * t
        clouds = np.clip((_fractal_noise(rng, h, w, max(h, w) / 6.0, 4) - 0.55) * 3.0, 0, 1)[..., None]
        return base * (1 - clouds) + col(245, 245, 250) * clouds
    if cid == 125:  # grass: green with fine blades (vertical streaks) and patches
        streak = _smooth_noise(rng, h, w, 2.0)
        streak = np.asarray(Image.fromarray(streak).resize((w, max(1, h // 4))).resize((w, h)), np.float32)[..., None]
        return col(55, 125, 45) * (0.75 + 0.35 * coarse) + 40 * (streak - 0.5) + 25 * (fine - 0.5)
    if cid == 97:  # playing field: mowing stripes
        period = rng.uniform(24, 56)
        stripes = (np.floor((xx + 0.3 * yy) / period) % 2)[..., None]
        return col(70, 150, 60) + 22 * stripes + 15 * (fine - 0.5)
    if cid == 100:  # road: asphalt grey with grain and faint tyre streaks
        streak = 0.5 + 0.5 * np.sin(xx / rng.uniform(5, 9))[..., None]
        return col(95, 95, 100) * (0.85 + 0.3 * coarse) + 30 * (fine - 0.5) + 6 * streak
    if cid in (99, 103):  # river / sea: blue-teal with horizontal ripples
        ripple = np.sin(yy / rng.uniform(2.0, 4.0) + 3 * _smooth_noise(rng, h, w, 12.0))[..., None]
        base = col(40, 100, 150) if cid == 99 else col(20, 70, 140)
        return base * (0.85 + 0.3 * coarse) + 18 * ripple + 10 * (fine - 0.5)
    if cid == 116:  # tree: dark green leaf clumps
        leaves = _fractal_noise(rng, h, w, 10.0, 3)[..., None]
        return col(25, 80, 30) + 70 * (leaves - 0.5) + 20 * (fine - 0.5)
    if cid == 102:  # sand
        return col(205, 185, 140) * (0.9 + 0.15 * coarse) + 30 * (fine - 0.5)
    if cid == 83:  # cardboard: brown with corrugation
        corr = np.sin(xx * 2 * math.pi / rng.uniform(5, 9))[..., None]
        return col(170, 130, 85) + 12 * corr + 15 * (fine - 0.5)
    if cid == 131:  # wall: light plaster with a brick grid
        bh, bw = rng.uniform(8, 14), rng.uniform(20, 32)
        row = np.floor(yy / bh)
        mortar = ((yy % bh) < 1.5) | (((xx + (row % 2) * bw / 2) % bw) < 1.5)
        return col(190, 175, 160) * (0.9 + 0.15 * coarse) - 60 * mortar[..., None] + 12 * (fine - 0.5)
    return _hash_colour(cid) * (0.8 + 0.4 * coarse) + 40 * (fine - 0.5)


_TOP_CLASSES = (119,)  # drawn above the horizon
_BAND_CLASSES = (99, 100)  # drawn as long bands across the ground


def _stuff_layout(
    rng: np.random.Generator, h: int, w: int, stuff_classes: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Stuff class map (h, w) int32 and the horizon row per column."""
    k = int(rng.integers(min(2, len(stuff_classes)), min(5, len(stuff_classes)) + 1))
    chosen = [int(c) for c in rng.choice(np.asarray(stuff_classes), size=k, replace=False)]
    top = [c for c in chosen if c in _TOP_CLASSES]
    bands = [c for c in chosen if c in _BAND_CLASSES]
    ground = [c for c in chosen if c not in _TOP_CLASSES and c not in _BAND_CLASSES]
    if not ground:  # bands need something to run across; promote one chosen class
        ground = [(bands or top).pop(0)]

    yy, xx = np.mgrid[0:h, 0:w]
    if top:
        horizon = h * rng.uniform(0.22, 0.45) + h * 0.06 * _smooth_1d(rng, w, w / 4.0)
    else:
        horizon = np.full(w, -1.0, np.float32)
    horizon = horizon.astype(np.float32)

    # Ground: organic regions = argmax of independent smooth fields (one per class).
    fields = np.stack([_smooth_noise(rng, h, w, max(h, w) / rng.uniform(2.0, 4.0)) for _ in ground])
    lab = np.asarray(ground, np.int32)[np.argmax(fields, axis=0)]
    below = yy > horizon[None, :]
    if top:
        lab = np.where(below, lab, top[0])

    for c in bands:
        if rng.random() < 0.5:  # roughly horizontal wavy band
            y0 = rng.uniform(max(float(horizon.max()), 0) + 0.1 * h, 0.9 * h)
            centre = y0 + rng.uniform(-0.15, 0.15) * (xx - w / 2) + 0.05 * h * _smooth_1d(rng, w, w / 3.0)[None, :]
            half = rng.uniform(0.03, 0.08) * h
            band = np.abs(yy - centre) < half
        else:  # perspective band: narrow at the horizon, wide at the bottom
            hz = float(np.clip(horizon.mean(), 0, h - 1))
            t = np.clip((yy - hz) / max(h - hz, 1.0), 0, 1)
            x_top, x_bot = rng.uniform(0.3, 0.7) * w, rng.uniform(0.1, 0.9) * w
            centre = x_top + (x_bot - x_top) * t
            half = 2.0 + t * rng.uniform(0.08, 0.2) * w
            band = (np.abs(xx - centre) < half) & (yy > hz)
        lab = np.where(band & below, c, lab)
    return lab.astype(np.int32), horizon


# ----------------------------------------------------------------------------------------------- things

_SHAPES = ("disc", "ellipse", "rectangle", "triangle", "star", "polygon")

# class -> (shape, base RGB, aspect range): a consistent look per class, varied per object.
_THING_STYLE: dict[int, tuple[str, tuple[int, int, int], tuple[float, float]]] = {
    0: ("ellipse", (200, 150, 120), (1.6, 2.6)),  # person: upright
    1: ("polygon", (40, 40, 160), (1.0, 1.4)),
    2: ("rectangle", (200, 30, 30), (0.4, 0.7)),  # car: wide
    14: ("triangle", (120, 90, 60), (0.8, 1.3)),
    19: ("ellipse", (235, 235, 225), (0.55, 0.8)),  # cow: wide, light
    23: ("rectangle", (215, 165, 70), (2.0, 3.5)),  # giraffe: tall
    28: ("rectangle", (60, 60, 70), (0.7, 1.3)),
    29: ("disc", (250, 220, 40), (1.0, 1.0)),
    32: ("disc", (240, 120, 20), (1.0, 1.0)),
    36: ("rectangle", (150, 60, 170), (0.2, 0.35)),  # skateboard: thin
    51: ("triangle", (245, 120, 20), (2.5, 4.0)),  # carrot: long
    76: ("star", (180, 180, 195), (0.9, 1.1)),
}


def _thing_style(cid: int) -> tuple[str, np.ndarray, tuple[float, float]]:
    if cid in _THING_STYLE:
        s, c, a = _THING_STYLE[cid]
        return s, np.array(c, np.float32), a
    return _SHAPES[cid % len(_SHAPES)], _hash_colour(cid), (0.7, 1.4)


def _unit_polygon(shape: str, rng: np.random.Generator, aspect: float, angle: float) -> np.ndarray:
    """Vertices (N, 2) as (x, y) of a shape centred at 0 with area 1, aspect = height / width, rotated."""
    if shape in ("disc", "ellipse"):
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif shape == "rectangle":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    elif shape == "triangle":
        pts = np.array([[0, -1], [0.9, 0.8], [-0.9, 0.8]], np.float64) + rng.uniform(-0.15, 0.15, (3, 2))
    elif shape == "star":
        n = int(rng.integers(5, 8))
        t = np.linspace(0, 2 * math.pi, 2 * n, endpoint=False)
        r = np.where(np.arange(2 * n) % 2 == 0, 1.0, rng.uniform(0.4, 0.6))
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    elif shape == "polygon":
        n = int(rng.integers(5, 9))
        t = np.sort(rng.uniform(0, 2 * math.pi, n))
        r = rng.uniform(0.7, 1.0, n)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    if shape != "disc":
        pts = pts * np.array([1.0, aspect])
    c, s = math.cos(angle), math.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]])
    x, y = pts[:, 0], pts[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    return pts / math.sqrt(area)


def _raster(poly: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Rasterise a polygon (x, y float) -> (mask, x0, y0) with the mask's top-left at (x0, y0)."""
    x0 = int(math.floor(poly[:, 0].min())) - 1
    y0 = int(math.floor(poly[:, 1].min())) - 1
    ww = int(math.ceil(poly[:, 0].max())) - x0 + 2
    hh = int(math.ceil(poly[:, 1].max())) - y0 + 2
    img = Image.new("L", (ww, hh), 0)
    ImageDraw.Draw(img).polygon([(float(x - x0), float(y - y0)) for x, y in poly], fill=1)
    m = np.asarray(img, dtype=bool)
    ys, xs = np.nonzero(m)
    if ys.size == 0:
        return m[:0, :0], x0, y0
    m = m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return np.ascontiguousarray(m), x0 + int(xs.min()), y0 + int(ys.min())


def _shape_mask(
    shape: str, rng: np.random.Generator, side: float, aspect: float, angle: float, lo: float, hi: float
) -> np.ndarray | None:
    """A shape mask whose pixel area is within [lo^2, hi^2] and close to side^2 (None if impossible)."""
    unit = _unit_polygon(shape, rng, aspect, angle)
    scale = side
    for _ in range(6):
        m, _, _ = _raster(unit * scale)
        a = int(m.sum())
        if a > 0 and lo * lo <= a <= hi * hi:
            return m
        # Rasterisation adds about half the perimeter; correct the scale towards the requested area.
        target = min(max(side * side, lo * lo), hi * hi)
        scale *= math.sqrt(target / max(a, 1))
    return None


def _thing_texture(rng: np.random.Generator, hh: int, ww: int, base: np.ndarray) -> np.ndarray:
    """Float RGB (hh, ww, 3) fill: solid / gradient / stripes / checker / spots around a base colour."""
    colour = np.clip(base + rng.uniform(-45, 45, 3), 0, 255) if rng.random() < 0.75 else rng.uniform(0, 255, 3)
    second = np.clip(colour * rng.uniform(0.4, 0.8) + rng.uniform(-30, 30, 3), 0, 255)
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
    kind = int(rng.integers(0, 5))
    if kind == 0:
        t = np.zeros((hh, ww), np.float32)
    elif kind == 1:
        d = rng.uniform(-1, 1, 2)
        t = (d[0] * xx + d[1] * yy) / max(hh + ww, 1)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    elif kind == 2:
        period = rng.uniform(3, 8)
        t = (np.floor((xx * math.cos(rng.uniform(0, math.pi)) + yy) / period) % 2).astype(np.float32)
    elif kind == 3:
        c = rng.uniform(3, 7)
        t = ((np.floor(xx / c) + np.floor(yy / c)) % 2).astype(np.float32)
    else:
        t = (_smooth_noise(rng, hh, ww, rng.uniform(2, 5)) > 0.6).astype(np.float32)
    return colour * (1 - t[..., None]) + second * t[..., None]


def _validate_classes(classes: Sequence[int], things: bool) -> list[int]:
    out = [int(c) for c in classes]
    if not out:
        raise ValueError(f"{'thing' if things else 'stuff'}_classes must not be empty")
    for c in out:
        ok = 0 <= c < NUM_THING_CLASSES if things else NUM_THING_CLASSES <= c < NUM_PANOPTIC_CLASSES
        if not ok:
            rng_txt = "0..79" if things else "80..132"
            raise ValueError(f"{'thing' if things else 'stuff'} class {c} is not a COCO-panoptic {rng_txt} id")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate class ids in {out}")
    return out


def _bbox(mask: np.ndarray) -> list[int]:
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def generate_scene(
    seed: int,
    height: int = 512,
    width: int = 512,
    n_objects: int = 40,
    size_range: tuple[float, float] = (6, 48),
    thing_classes: Sequence[int] = DEFAULT_THING_CLASSES,
    stuff_classes: Sequence[int] = DEFAULT_STUFF_CLASSES,
    *,
    min_visible: float = 0.5,
    blur: float = 0.6,
    noise: float = 3.0,
) -> Scene:
    """Generate one scene.

    Args:
        seed: any int; same seed -> identical scene.
        n_objects: objects to try to place. An object whose placement would leave it or an earlier object
            with less than `min_visible` of its full area visible is moved (up to 40 tries) and otherwise
            skipped, so a crowded scene may hold fewer objects.
        size_range: (lo, hi) in pixels: each object's unoccluded pixel area lies in [lo^2, hi^2], with
            sqrt(area) drawn log-uniformly. COCO buckets: small area < 32^2, medium < 96^2, large >= 96^2;
            e.g. (6, 31) gives only small objects (full and visible areas < 31^2).
        thing_classes / stuff_classes: contiguous COCO-panoptic ids (things 0..79, stuff 80..132).
        min_visible: fraction of every object's full area that stays visible after occlusion.
        blur, noise: image-only softening (Gaussian radius) and sensor noise (std, 0..255 scale); the labels
            stay pixel-exact.
    """
    if height < 16 or width < 16:
        raise ValueError(f"scene size must be at least 16x16, got {height}x{width}")
    lo, hi = float(size_range[0]), float(size_range[1])
    if not (1 <= lo <= hi):
        raise ValueError(f"size_range must satisfy 1 <= lo <= hi, got {size_range}")
    if hi > 0.9 * min(height, width):
        raise ValueError(f"size_range upper bound {hi} does not fit a {height}x{width} scene")
    if not 0.0 <= min_visible <= 1.0:
        raise ValueError(f"min_visible must be in [0, 1], got {min_visible}")
    things = _validate_classes(thing_classes, True)
    stuffs = _validate_classes(stuff_classes, False)

    rng = np.random.default_rng(np.random.SeedSequence(int(seed) & (2**63 - 1)))
    h, w = int(height), int(width)

    # ---- background
    stuff_lab, horizon = _stuff_layout(rng, h, w, stuffs)
    image = np.zeros((h, w, 3), np.float32)
    for c in np.unique(stuff_lab):
        m = stuff_lab == c
        image[m] = _stuff_texture(int(c), rng, h, w, horizon)[m]

    # ---- things, back to front
    owner = np.full((h, w), -1, np.int32)  # which object is visible at a pixel
    full_areas: list[int] = []
    visible: list[int] = []
    placed: list[dict[str, Any]] = []
    for _ in range(int(n_objects)):
        cid = int(rng.choice(np.asarray(things)))
        shape, base, (a_lo, a_hi) = _thing_style(cid)
        side = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        aspect = 1.0 if shape == "disc" else math.exp(rng.uniform(math.log(a_lo), math.log(a_hi)))
        angle = rng.normal(0.0, 0.25) if shape in ("rectangle", "ellipse") else rng.uniform(0, 2 * math.pi)
        m = _shape_mask(shape, rng, side, aspect, angle, lo, hi)
        if m is None or m.shape[0] > h or m.shape[1] > w:
            continue
        mh, mw = m.shape
        area = int(m.sum())
        for _try in range(40):
            y0 = int(rng.integers(0, h - mh + 1))
            x0 = int(rng.integers(0, w - mw + 1))
            under = owner[y0 : y0 + mh, x0 : x0 + mw][m]
            under = under[under >= 0]
            if under.size:
                lost = np.bincount(under, minlength=len(visible))
                hit = np.flatnonzero(lost)
                if any(visible[j] - lost[j] < min_visible * full_areas[j] for j in hit):
                    continue
                for j in hit:
                    visible[j] -= int(lost[j])
            k = len(visible)
            region = owner[y0 : y0 + mh, x0 : x0 + mw]
            region[m] = k
            full_areas.append(area)
            visible.append(area)
            tex = _thing_texture(rng, mh, mw, base)
            # Darker rim inside the mask: crisp object boundaries like real photos have.
            inner = m.copy()
            inner[1:-1, 1:-1] &= m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
            inner[[0, -1], :] = False
            inner[:, [0, -1]] = False
            tex[m & ~inner] *= 0.65
            patch = image[y0 : y0 + mh, x0 : x0 + mw]
            patch[m] = tex[m]
            placed.append({"category_id": cid, "shape": shape, "full_area": area, "z": k})
            break

    # ---- labels
    segments: list[dict[str, Any]] = []
    panoptic = np.zeros((h, w), np.int32)
    semantic = np.full((h, w), 255, np.uint8)
    stuff_visible = owner < 0
    next_id = 1
    for c in sorted(int(x) for x in np.unique(stuff_lab[stuff_visible])):
        m = stuff_visible & (stuff_lab == c)
        panoptic[m] = next_id
        semantic[m] = c
        segments.append(
            {"id": next_id, "category_id": c, "isthing": False, "iscrowd": 0, "area": int(m.sum()), "bbox": _bbox(m)}
        )
        next_id += 1
    masks: list[np.ndarray] = []
    for k, obj in enumerate(placed):
        m = owner == k
        a = int(m.sum())
        assert a == visible[k] and a > 0, "occlusion bookkeeping out of sync"
        panoptic[m] = next_id
        semantic[m] = obj["category_id"]
        segments.append(
            {
                "id": next_id,
                "category_id": obj["category_id"],
                "isthing": True,
                "iscrowd": 0,
                "area": a,
                "bbox": _bbox(m),
                "z": obj["z"],
                "full_area": obj["full_area"],
                "shape": obj["shape"],
            }
        )
        masks.append(m)
        next_id += 1
    instance_masks = np.stack(masks) if masks else np.zeros((0, h, w), bool)

    # ---- image finishing (labels untouched)
    img_u8 = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    if blur > 0:
        img_u8 = np.asarray(Image.fromarray(img_u8).filter(ImageFilter.GaussianBlur(blur)))
    if noise > 0:
        img_u8 = np.clip(img_u8 + rng.normal(0.0, noise, img_u8.shape) + 0.5, 0, 255).astype(np.uint8)

    categories = [
        {"id": c, "name": class_name(c), "isthing": c < NUM_THING_CLASSES} for c in sorted(things + stuffs)
    ]
    return Scene(
        image=np.ascontiguousarray(img_u8),
        panoptic=panoptic,
        segments=segments,
        semantic=semantic,
        instance_masks=instance_masks,
        seed=int(seed),
        categories=categories,
    )


def scene_seed(seed: int, index: int) -> int:
    # Independent, reproducible per-scene seeds (scene i can be regenerated alone from its recorded seed).
    return int(np.random.SeedSequence([int(seed) & (2**63 - 1), index]).generate_state(1, np.uint64)[0] >> 1)


def write_scenes(out_dir: str | os.PathLike[str], n: int, seed: int, **scene_kwargs: Any) -> Path:
    """Generate `n` scenes and write them as a COCO-panoptic-style dataset; returns the JSON path.

    Layout under `out_dir`: images/NNNNNN.png (RGB), panoptic/NNNNNN.png (COCO panoptic RGB id encoding,
    id = R + 256 G + 256^2 B), semantic/NNNNNN.png (uint8 contiguous class ids, 255 = ignore) and
    panoptic.json with "images" (each with its own "seed"), "annotations" (segments_info per image) and
    "categories". Category ids are the contiguous COCO-panoptic ids (0..132), not COCO's original ids (those
    are in each category's "coco_id"). Instance masks are the thing segments of the panoptic PNGs.
    All files are written atomically. `scene_kwargs` go to `generate_scene`.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ZsdError(f"{out} exists and is not a directory.", "choose another output directory.")
    images, annotations = [], []
    categories: list[dict[str, Any]] = []
    for i in range(n):
        s_seed = scene_seed(seed, i)
        scene = generate_scene(s_seed, **scene_kwargs)
        categories = scene.categories
        name = f"{i:06d}.png"
        save_png(out / "images" / name, scene.image)
        save_png(out / "panoptic" / name, scene.panoptic, id_encoding="rgb")
        save_png(out / "semantic" / name, scene.semantic)
        h, w = scene.image.shape[:2]
        images.append({"id": i, "file_name": name, "height": h, "width": w, "seed": s_seed})
        annotations.append(
            {
                "image_id": i,
                "file_name": name,
                "segments_info": [{**s, "isthing": int(s["isthing"])} for s in scene.segments],
            }
        )
    doc = {
        "info": {
            "description": "zsdeploy synthetic small-target scenes",
            "generator": "zsdeploy.runtime.scenes",
            "version": 1,
            "seed": int(seed),
            "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in scene_kwargs.items()},
            "image_dir": "images",
            "panoptic_dir": "panoptic",
            "semantic_dir": "semantic",
            "category_ids": "contiguous COCO-panoptic ids (things 0..79, stuff 80..132)",
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {**c, "isthing": int(c["isthing"]), "coco_id": COCO_PANOPTIC_COCO_IDS.get(c["id"])} for c in categories
        ],
    }
    return write_json_atomic(out / "panoptic.json", doc)


def sample_image(path: str | os.PathLike[str], seed: int = 0, **scene_kwargs: Any) -> Path:
    """Write one synthetic scene's image as a PNG at `path` (for demos); returns the path."""
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ZsdError(f"sample_image writes PNG files, but {p} does not end in .png.", f"use {p.with_suffix('.png')}.")
    save_png(p, generate_scene(seed, **scene_kwargs).image)
    return p
