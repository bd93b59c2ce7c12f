"""Pre-processing: detectron2's test-time ResizeShortestEdge and ImageList padding, without torch.

Upstream (Mask2Former / PADing / ZegFormer) does, per image: uint8 RGB -> ResizeShortestEdge (PIL bilinear on
uint8) -> float -> (x - mean) / std -> zero-pad bottom/right to the batch maximum rounded up to a multiple of
`size_divisibility`. Our exported graphs start with the normalisation, so the runtime feeds un-normalised
float RGB and pads with the pixel MEAN: after the graph's (x - mean) / std the padding is exactly 0.0, the
same as upstream's zero padding after normalisation (bit-identical, since mean - mean == 0 in float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import ZsdError

__all__ = ["Batch", "resized_shape", "fit_shape", "resize_shortest_edge", "preprocess"]


@dataclass
class Batch:
    """A model input batch.

    Fields:
        tensor: float32 (B, 3, H, W), RGB in 0..255, NOT normalised; padding (bottom/right) = pixel mean.
        image_sizes: per image (h, w) after resizing = the valid region of `tensor` (upstream `image_sizes`).
        original_sizes: per image (h, w) as given (the size results are mapped back to).
        padded_hw: (H, W) of `tensor`.
    """

    tensor: np.ndarray
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    padded_hw: tuple[int, int]


def resized_shape(h: int, w: int, short_edge: int, max_size: int | None) -> tuple[int, int]:
    """(new_h, new_w) that detectron2's ResizeShortestEdge picks for an (h, w) image.

    Scale the short side to `short_edge`; if the long side then exceeds `max_size`, scale both down so it
    equals `max_size`; round each side with int(x + 0.5). `short_edge == 0` means no resize. The float
    operations are done in the same order as upstream so the rounding agrees on every size.
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    if short_edge < 0:
        raise ValueError(f"short_edge must be >= 0, got {short_edge}")
    if short_edge == 0:
        return h, w
    size = float(short_edge)
    scale = size / min(h, w)
    # The short side gets exactly `size`, not scale * side: after the max_size cap the two differ by an ulp,
    # which flips int(x + 0.5) on exact halves (11x22 at 800/1333: upstream gives 666x1333, not 667x1333).
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max_size is not None:
        if max_size <= 0:
            raise ValueError(f"max_size must be positive (or None for no limit), got {max_size}")
        if max(newh, neww) > max_size:
            scale = max_size * 1.0 / max(newh, neww)
            newh = newh * scale
            neww = neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def fit_short_edge(h: int, w: int, canvas: tuple[int, int], short: int, max_size: int) -> tuple[int, int | None]:
    """ResizeShortestEdge parameters that keep an image inside a fixed canvas (shrink only if needed): how
    calibration images of any size are fed to a static-shape graph."""
    if all(a <= b for a, b in zip(resized_shape(h, w, short, max_size), canvas)):
        return short, max_size
    s = int(min(canvas[0] / h, canvas[1] / w) * min(h, w))
    while s > 1 and any(a > b for a, b in zip(resized_shape(h, w, s, None), canvas)):
        s -= 1  # int(x + 0.5) rounding may overshoot by one pixel
    return max(s, 1), None


def fit_shape(h: int, w: int, canvas_hw: tuple[int, int]) -> tuple[int, int]:
    """(new_h, new_w): an (h, w) image scaled, aspect ratio kept, to the largest size inside `canvas_hw`.

    Each side is rounded (int(x + 0.5)), at least 1 pixel and never larger than the canvas.
    """
    ch, cw = int(canvas_hw[0]), int(canvas_hw[1])
    scale = min(ch / h, cw / w)
    return max(1, min(ch, int(h * scale + 0.5))), max(1, min(cw, int(w * scale + 0.5)))


def _check_rgb(rgb: np.ndarray, what: str) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        desc = f"{rgb.dtype} array of shape {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"{what} must be a uint8 (H, W, 3) RGB array (use imageio.load_image), got {desc}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"{what} is empty: shape {rgb.shape}")


def resize_shortest_edge(rgb: np.ndarray, short_edge: int, max_size: int | None,
                         fit_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Resize a uint8 (H, W, 3) RGB image like detectron2's ResizeShortestEdge at test time.

    The output size is `resized_shape(...)`; the pixels come from PIL `Image.resize(BILINEAR)` on the uint8
    image, which is exactly what detectron2's ResizeTransform does for uint8 input (PIL's bilinear
    filter widens its support when downscaling, i.e. it antialiases — a plain bilinear interpolation would not
    match). `short_edge == 0` returns the input unchanged (no copy). `fit_hw`: a static model's canvas; a size
    that does not fit it is scaled to the largest size that does (aspect ratio kept, see `fit_shape`).
    """
    _check_rgb(rgb, "rgb")
    h, w = int(rgb.shape[0]), int(rgb.shape[1])
    newh, neww = resized_shape(h, w, short_edge, max_size)
    if fit_hw is not None and (newh > fit_hw[0] or neww > fit_hw[1]):
        # From the original size, not the rounded upstream one: one rounding, the image's own aspect ratio.
        newh, neww = fit_shape(h, w, fit_hw)
    if (newh, neww) == (h, w):
        return rgb
    if newh < 1 or neww < 1:
        raise ZsdError(
            f"an image of {h}x{w} pixels is too elongated: resizing it to short edge {short_edge} with max size "
            f"{max_size} leaves {newh}x{neww} pixels.",
            "crop the image to a less extreme aspect ratio before running the model.",
        )
    out = Image.fromarray(np.ascontiguousarray(rgb)).resize((neww, newh), Image.Resampling.BILINEAR)
    return np.asarray(out)


def _round_up(x: int, d: int) -> int:
    return (x + d - 1) // d * d if d > 1 else x


def preprocess(
    images: Sequence[np.ndarray],
    *,
    short_edge: int,
    max_size: int | None,
    size_divisibility: int = 32,
    pixel_mean: Sequence[float],
    fixed_hw: tuple[int, int] | None = None,
    fit: bool = False,
) -> Batch:
    """Resize and batch uint8 RGB images into a float32 (B, 3, H, W) model input.

    Each image is resized with `resize_shortest_edge(img, short_edge, max_size)` (`short_edge=0`: no resize),
    placed top-left, and the rest is filled with `pixel_mean` (per channel, RGB). H, W = the largest resized
    height/width in the batch, rounded up to a multiple of `size_divisibility` (detectron2
    ImageList.from_tensors), or exactly `fixed_hw` for a model exported with a static input shape.

    `fit` (only with `fixed_hw`): an image whose resized size does not fit the canvas is scaled down further,
    aspect ratio kept, until it does (instead of being refused); images that fit are resized exactly as upstream.

    Note: a static canvas larger than upstream's multiple-of-32 padding changes results slightly, because the
    model's sine position encoding is normalised over the padded extent.

    Raises:
        ZsdError: with `fixed_hw` and not `fit`, when a resized image does not fit the model's input size.
        ValueError: malformed arguments (programming errors).
    """
    if len(images) == 0:
        raise ValueError("preprocess needs at least one image")
    mean = np.asarray(pixel_mean, dtype=np.float32)
    if mean.shape != (3,):
        raise ValueError(f"pixel_mean must have 3 values (R, G, B), got {list(pixel_mean)}")
    if size_divisibility < 0:
        raise ValueError(f"size_divisibility must be >= 0, got {size_divisibility}")

    fit_hw = (int(fixed_hw[0]), int(fixed_hw[1])) if fit and fixed_hw is not None else None
    resized: list[np.ndarray] = []
    original_sizes: list[tuple[int, int]] = []
    for i, img in enumerate(images):
        _check_rgb(img, f"images[{i}]")
        original_sizes.append((int(img.shape[0]), int(img.shape[1])))
        resized.append(resize_shortest_edge(img, short_edge, max_size, fit_hw))
    image_sizes = [(int(r.shape[0]), int(r.shape[1])) for r in resized]

    if fixed_hw is not None:
        fh, fw = int(fixed_hw[0]), int(fixed_hw[1])
        if fh <= 0 or fw <= 0:
            raise ValueError(f"fixed_hw must be positive, got {fixed_hw}")
        for i, ((h, w), (oh, ow)) in enumerate(zip(image_sizes, original_sizes)):
            if h > fh or w > fw:
                raise ZsdError(
                    f"image #{i} ({oh}x{ow}, resized to {h}x{w} with short edge {short_edge} / max size "
                    f"{max_size}) does not fit this model's fixed input of {fh}x{fw} (HxW): the model was "
                    "exported with a static input shape.",
                    f"re-export the model with --height/--width of at least {_round_up(h, max(size_divisibility, 1))}"
                    f"x{_round_up(w, max(size_divisibility, 1))} (a multiple of {max(size_divisibility, 1)}), or with "
                    "--dynamic to accept any size; alternatively resize the image so it fits.",
                )
        ph, pw = fh, fw
    else:
        ph = _round_up(max(h for h, _ in image_sizes), size_divisibility)
        pw = _round_up(max(w for _, w in image_sizes), size_divisibility)

    tensor = np.empty((len(resized), 3, ph, pw), dtype=np.float32)
    # Pad with the mean so the graph's (x - mean) / std turns padding into exactly 0 (see module docstring).
    tensor[...] = mean[None, :, None, None]
    for i, r in enumerate(resized):
        h, w = r.shape[:2]
        tensor[i, :, :h, :w] = r.transpose(2, 0, 1)
    return Batch(tensor=tensor, image_sizes=image_sizes, original_sizes=original_sizes, padded_hw=(ph, pw))
