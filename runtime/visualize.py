"""Overlays of segmentation results on the input image (semantic, panoptic, instances).

Colours are a pure function of the class id (and, for things, of the segment/instance id), so the same
result always renders the same picture on every machine and backend - overlays from PyTorch, ONNX Runtime
and TensorRT can be compared side by side or diffed.
"""

from __future__ import annotations

import colorsys
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["class_color", "instance_color", "overlay"]

_GOLDEN = 0.618033988749895


def class_color(class_id: int) -> tuple[int, int, int]:
    """Deterministic, well-separated RGB colour of a class id (golden-ratio hue walk, 3 brightness levels)."""
    c = int(class_id)
    hue = (c * _GOLDEN) % 1.0
    sat = (0.95, 0.7, 0.85)[c % 3]
    val = (0.95, 0.8, 0.65)[(c // 3) % 3]
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def instance_color(class_id: int, instance_id: int) -> tuple[int, int, int]:
    """Class colour shifted by a deterministic, id-dependent amount so touching instances of a class differ."""
    base = np.array(class_color(class_id), np.int32)
    # A fixed integer hash of the id (not Python's randomised hash()) -> jitter in [-40, 40] per channel.
    x = (int(instance_id) * 2654435761 + int(class_id) * 40503) & 0xFFFFFFFF
    jitter = np.array([(x >> s) & 0xFF for s in (0, 8, 16)], np.int32) * 80 // 255 - 40
    r, g, b = (int(v) for v in np.clip(base + jitter, 0, 255))
    return r, g, b


def _contour(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-neighbour outside it (the image border counts as outside)."""
    p = np.pad(mask, 1, constant_values=False)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def _label_anchor(mask: np.ndarray) -> tuple[int, int] | None:
    """(x, y) of the mask pixel nearest the mask's centroid (the centroid may lie outside, e.g. a ring)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    cy, cx = ys.mean(), xs.mean()
    i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return int(xs[i]), int(ys[i])


def _get(obj: Any, *names: str) -> Any:
    for n in names:
        if isinstance(obj, Mapping):
            if n in obj and obj[n] is not None:
                return obj[n]
        elif getattr(obj, n, None) is not None:
            return getattr(obj, n)
    return None


def _name(class_names: Sequence[str], c: int) -> str:
    if not 0 <= c < len(class_names):
        raise ValueError(f"class id {c} is outside class_names (K={len(class_names)})")
    return str(class_names[c])


class _Layer:
    """Collects fills, contours and labels, then composites them in a fixed order."""

    def __init__(self, h: int, w: int) -> None:
        self.fill = np.zeros((h, w, 3), np.uint8)  # colours are whole numbers: uint8 is exact, 4x smaller
        self.has_fill = np.zeros((h, w), bool)
        self.edges: list[tuple[np.ndarray, tuple[int, int, int]]] = []  # bit-packed contours, not whole masks
        self.labels: list[tuple[tuple[int, int], str, tuple[int, int, int], bool]] = []  # anchor, text, colour, centred
        self.boxes: list[tuple[Sequence[float], tuple[int, int, int]]] = []

    def add_mask(self, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
        # Later masks paint over earlier ones (instances drawn in score order end with the best on top).
        self.fill[mask] = colour
        self.has_fill |= mask
        # Keep the outline only, packed (H*W/8 bytes): a list of whole masks grows to N*H*W bytes (1.2 GB for
        # 100 instances at 12 MP).
        self.edges.append((np.packbits(_contour(mask), axis=None), colour))


def _text_colour(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    lum = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    return (0, 0, 0) if lum > 140 else (255, 255, 255)


def _darker(c: tuple[int, int, int], f: float = 0.6) -> tuple[int, int, int]:
    return int(c[0] * f), int(c[1] * f), int(c[2] * f)


def overlay(
    rgb: np.ndarray,
    *,
    panoptic: np.ndarray | None = None,
    segments: Sequence[Mapping[str, Any]] | None = None,
    semantic: np.ndarray | None = None,
    instances: Any = None,
    class_names: Sequence[str],
    alpha: float = 0.5,
    contours: bool = True,
    labels: bool = True,
    boxes: bool = True,
    legend: bool = False,
    score_threshold: float = 0.0,
    ignore_label: int = 255,
) -> np.ndarray:
    """Draw segmentation results over a uint8 (H, W, 3) RGB image; returns a new uint8 image.

    Inputs (any combination; drawn semantic, then panoptic, then instances):
      - semantic: (H, W) int class map; `ignore_label` pixels are left untouched.
      - panoptic + segments: (H, W) int id map (0 = void, untouched) and dicts with `id`, `category_id`,
        `isthing` and optionally `score`. Things are coloured per segment id, stuff per class.
      - instances: mapping or object with `masks`/`pred_masks` (N, H, W) bool, `labels`/`pred_classes`/`classes`
        (N,) int, optional `scores` (N,) and `boxes`/`pred_boxes` (N, 4) xyxy; boxes default to mask extents.
        Instances scoring below `score_threshold` are skipped; lower scores are drawn first (best on top).
    Masked pixels become (1 - alpha) * image + alpha * colour; `contours` draws mask outlines (inside the
    mask) in full colour. `labels` draws class names (and "name 93%" where a score is known), `boxes` draws
    instance boxes; both may touch pixels outside masks. `legend=True` appends a panel on the right listing
    the classes shown (output is then wider). With contours/labels/boxes/legend off, pixels outside every
    mask are returned unchanged.
    """
    img = np.asarray(rgb)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"rgb must be a uint8 (H, W, 3) array, got {img.dtype} {img.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    h, w = img.shape[:2]
    layer = _Layer(h, w)
    shown: dict[int, tuple[int, int, int]] = {}

    def check_hw(a: np.ndarray, what: str) -> None:
        if a.shape[-2:] != (h, w):
            raise ValueError(f"{what} has spatial shape {a.shape[-2:]}, the image is {(h, w)}")

    if semantic is not None:
        sem = np.asarray(semantic)
        check_hw(sem, "semantic")
        for c in (int(v) for v in np.unique(sem)):
            if c == ignore_label:
                continue
            name = _name(class_names, c)
            m = sem == c
            col = class_color(c)
            layer.add_mask(m, col)
            shown[c] = col
            anchor = _label_anchor(m)
            if anchor is not None:
                layer.labels.append((anchor, name, col, True))

    if panoptic is not None:
        if segments is None:
            raise ValueError("panoptic needs its segments (segments_info) to know each id's class")
        pan = np.asarray(panoptic)
        check_hw(pan, "panoptic")
        for seg in segments:
            sid, c = int(seg["id"]), int(seg["category_id"])
            name = _name(class_names, c)
            m = pan == sid
            if not m.any():
                continue
            col = instance_color(c, sid) if seg.get("isthing", False) else class_color(c)
            layer.add_mask(m, col)
            shown[c] = class_color(c)
            score = seg.get("score")
            text = f"{name} {100 * float(score):.0f}%" if score is not None else name
            anchor = _label_anchor(m)
            if anchor is not None:
                layer.labels.append((anchor, text, col, True))

    if instances is not None:
        masks = _get(instances, "masks", "pred_masks")
        cls = _get(instances, "labels", "pred_classes", "classes")
        if masks is None or cls is None:
            raise ValueError("instances need masks (N, H, W) and labels (N,)")
        if isinstance(masks, np.ndarray) or getattr(masks, "ndim", None) != 3:
            masks = np.asarray(masks).astype(bool)
        # else: a lazy container (postprocess's bit-packed PackedMasks): read one mask at a time below
        cls = np.asarray(cls).astype(np.int64).reshape(-1)
        n = masks.shape[0]
        if masks.ndim != 3 or cls.shape[0] != n:
            raise ValueError(f"instances: masks {masks.shape} and labels {cls.shape} do not match")
        check_hw(masks, "instance masks")
        scores_raw = _get(instances, "scores")
        scores = None if scores_raw is None else np.asarray(scores_raw, np.float64).reshape(-1)
        boxes_raw = _get(instances, "boxes", "pred_boxes")
        bxs = None if boxes_raw is None else np.asarray(boxes_raw, np.float64).reshape(-1, 4)
        order = np.arange(n) if scores is None else np.argsort(scores, kind="stable")
        for i in (int(j) for j in order):
            if scores is not None and scores[i] < score_threshold:
                continue
            c = int(cls[i])
            name = _name(class_names, c)
            m = np.asarray(masks[i], dtype=bool)
            col = instance_color(c, i)
            shown[c] = class_color(c)
            if m.any():
                layer.add_mask(m, col)
            if bxs is not None:
                box: Sequence[float] | None = bxs[i].tolist()
            elif m.any():
                ys, xs = np.nonzero(m)
                box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
            else:
                box = None
            text = f"{name} {100 * scores[i]:.0f}%" if scores is not None else name
            if box is not None:
                layer.boxes.append((box, col))
                layer.labels.append(((int(box[0]), int(box[1])), text, col, False))

    # ---- composite: fill, then contours, boxes, labels
    result = img.copy()
    for r0 in range(0, h, 512):  # row bands: float32 temporaries of a band, not of the whole image
        rows = slice(r0, r0 + 512)
        sel = layer.has_fill[rows]
        blend = (1.0 - alpha) * img[rows][sel].astype(np.float32) + alpha * layer.fill[rows][sel].astype(np.float32)
        result[rows][sel] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    if contours:
        for packed, col in layer.edges:
            result[np.unpackbits(packed, count=h * w).view(bool).reshape(h, w)] = col
    if (boxes and layer.boxes) or (labels and layer.labels) or legend:
        pil = Image.fromarray(result)
        draw = ImageDraw.Draw(pil)
        font = ImageFont.load_default()
        lw = max(1, round(min(h, w) / 400))
        if boxes:
            for (x0, y0, x1, y1), col in layer.boxes:
                # xyxy with exclusive x1/y1 -> PIL's inclusive rectangle corners.
                draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=col, width=lw)
        if labels:
            for (x, y), text, col, centred in layer.labels:
                # FreeType fonts may report fractional extents; whole pixels keep the layout deterministic.
                l, t, r, b = (int(round(v)) for v in draw.textbbox((0, 0), text, font=font))
                tw, th = r - l, b - t
                if centred:
                    x, y = x - tw // 2, y - th // 2
                elif y - th - 2 >= 0:  # instance tag above the box when there is room
                    y = y - th - 2
                x = min(max(x, 0), max(w - tw - 2, 0))
                y = min(max(y, 0), max(h - th - 2, 0))
                draw.rectangle([x, y, x + tw + 2, y + th + 2], fill=_darker(col, 0.8))
                draw.text((x + 1 - l, y + 1 - t), text, fill=_text_colour(_darker(col, 0.8)), font=font)
        result = np.asarray(pil).copy()
        if legend and shown:
            result = _with_legend(result, shown, class_names, font)
    return result


def _with_legend(
    img: np.ndarray, shown: dict[int, tuple[int, int, int]], class_names: Sequence[str], font: Any
) -> np.ndarray:
    """Append a white panel on the right listing each shown class with its colour swatch."""
    h = img.shape[0]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items = sorted(shown.items())
    sizes = [tuple(int(round(v)) for v in probe.textbbox((0, 0), _name(class_names, c), font=font)) for c, _ in items]
    row = max(b - t for _, t, _, b in sizes) + 6
    width = max(r - l for l, _, r, _ in sizes) + row + 12
    per_col = max(1, (h - 8) // row)  # rows that fit the image height; extra classes go to more columns
    cols = -(-len(items) // per_col)
    panel = Image.new("RGB", (width * cols, h), (255, 255, 255))
    d = ImageDraw.Draw(panel)
    for k, ((c, col), (l, t, _, _)) in enumerate(zip(items, sizes)):
        x = (k // per_col) * width + 4
        y = (k % per_col) * row + 4
        d.rectangle([x, y, x + row - 6, y + row - 6], fill=col)
        d.text((x + row - l, y - t), _name(class_names, c), fill=(0, 0, 0), font=font)
    return np.concatenate([img, np.asarray(panel)], axis=1)
