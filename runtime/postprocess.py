"""Post-processing of Mask2Former-style outputs (PADing, ZegFormer), reproducing upstream inference in NumPy.

Inputs are one image's `class_logits` [Q, K+1] (last column = void / "no object") and `mask_logits`
[Q, h, w]. Everything here is float32 like upstream, vectorised over pixels; the only Python loops run over
queries (at most Q=100), where upstream's sequential logic (panoptic segment numbering) needs an order.
`postprocess` streams the output in row bands (memory independent of Q x H x W, see `Resampler`); the
`*_inference` functions are the same logic on full tensors (tests, golden fixtures, small images).

Upstream reference (re-implemented, not copied): PADing `PADing_model.py` (`forward` post-processing,
`semantic_inference`, `panoptic_inference`, `instance_inference`), which is Mask2Former's logic with the class
logits taken from `new_fc`, plus detectron2's `sem_seg_postprocess` and `BitMasks.get_bounding_boxes`.

This module must not import torch: it runs on deployment targets that only have NumPy.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Iterator, Mapping

import numpy as np

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # a runtime dependency; without it BLAS keeps its own thread count (correct, maybe slower)
    ThreadpoolController = None

from .errors import ZsdError
from .options import TASKS
from .postprocess_results import PackedMasks, SemanticScores

__all__ = [
    "PostprocessConfig",
    "bilinear_matrix",
    "resize_bilinear",
    "masks_to_output",
    "Resampler",
    "row_bands",
    "semantic_inference",
    "semantic_streamed",
    "panoptic_streamed",
    "instance_streamed",
    "panoptic_inference",
    "instance_inference",
    "postprocess",
]


# --------------------------------------------------------------------------------------------------------------
# Resizing
# --------------------------------------------------------------------------------------------------------------


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Interpolation matrix R [out_size, in_size] (float64) of 1-D linear resizing with torch's
    `F.interpolate(mode="bilinear", align_corners=False, antialias=False)` semantics, so `R @ v` resizes `v`.

    The source coordinates and weights are computed as ATen's CPU kernel does (scale = in/out in float32,
    half-pixel centres, negative source coordinates clamped to 0, right neighbour clamped at the edge), so
    the weights are bit-identical to torch's (checked for hundreds of size pairs); the matrix is float64 so
    products of matrices (see `masks_to_output`) add no rounding of their own.
    """
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"bilinear_matrix: sizes must be positive, got in={in_size}, out={out_size}")
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float64)
    # ATen's `scale * (dst + 0.5) - 0.5` compiles to a fused multiply-add: one float32 rounding, not two.
    # The float64 expression is exact here (24-bit scale times a small half-integer), so casting it once
    # reproduces the FMA; plain float32 arithmetic differs in the last bit for some sizes.
    src = (np.float64(scale) * (dst + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))  # ATen clamps negative source coordinates to 0 (align_corners=False)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)  # at the last pixel both taps hit the edge
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0))
    w0 = np.float32(1.0) - w1
    r = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(r, (rows, i0), w0.astype(np.float64))
    np.add.at(r, (rows, i1), w1.astype(np.float64))  # add, not assign: i0 == i1 at the edge
    return r


_BLOCK = 128  # output rows/columns per banded matmul: big enough for BLAS, small enough to skip most zeros


def _apply_axis(x: np.ndarray, r: np.ndarray, axis: int) -> np.ndarray:
    """Return `r` applied along `axis` (-2: `r @ x`, -1: `x @ r.T`) of float32 x, as a banded matmul.

    Interpolation matrices have a few consecutive non-zeros per row, so each block of output rows only
    reads a narrow band of input rows; multiplying block by band instead of the dense matrix cuts the work
    by the ratio of input size to band width (about 10x at 800x1333) with the same non-zero terms.
    """
    n_out, n_in = r.shape
    nz = r != 0
    has = nz.any(axis=1)
    first = np.where(has, nz.argmax(axis=1), 0)
    last = np.where(has, n_in - 1 - nz[:, ::-1].argmax(axis=1), 0)
    r32 = r.astype(np.float32)
    if axis == -2:
        out = np.empty(x.shape[:-2] + (n_out, x.shape[-1]), dtype=np.float32)
    else:
        out = np.empty(x.shape[:-1] + (n_out,), dtype=np.float32)
        r32 = np.ascontiguousarray(r32.T)  # [n_in, n_out]
    for o0 in range(0, n_out, _BLOCK):
        o1 = min(o0 + _BLOCK, n_out)
        lo, hi = int(first[o0:o1].min()), int(last[o0:o1].max()) + 1
        if axis == -2:
            np.matmul(r32[o0:o1, lo:hi], x[..., lo:hi, :], out=out[..., o0:o1, :])
        else:
            np.matmul(x[..., lo:hi], r32[lo:hi, o0:o1], out=out[..., o0:o1])
    return out


def _apply_separable(x: np.ndarray, ry: np.ndarray, rx: np.ndarray) -> np.ndarray:
    """Return `ry @ x @ rx.T` over the last two axes of x, in float32."""
    x = np.asarray(x, dtype=np.float32)
    h, w = x.shape[-2:]
    oh, ow = ry.shape[0], rx.shape[0]
    # Resize first along the axis that gives the smaller intermediate: it is the one read and written most.
    if oh * w <= h * ow:
        return _apply_axis(_apply_axis(x, ry, -2), rx, -1)
    return _apply_axis(_apply_axis(x, rx, -1), ry, -2)


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize the last two axes of `x` to `size` = (out_h, out_w), float32.

    Same result as torch `F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=False)`
    up to float32 rounding: identical weights, applied as two small interpolation matrices.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 2:
        raise ValueError(f"resize_bilinear needs at least 2 dims, got shape {x.shape}")
    out_h, out_w = int(size[0]), int(size[1])
    h, w = x.shape[-2:]
    if (h, w) == (out_h, out_w):
        return x.copy()  # torch copies the input unchanged in this case (weights 1, 0)
    return _apply_separable(x, bilinear_matrix(h, out_h), bilinear_matrix(w, out_w))


def _crop_resize_matrices(
    in_hw: tuple[int, int], padded_hw: tuple[int, int], image_hw: tuple[int, int], output_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Matrices of upstream's chain "upsample in_hw -> padded_hw, crop to image_hw, resize to output_hw".

    Every step is linear and separable, so the chain is one matrix per axis: the crop keeps the first
    image_h/image_w rows of the upsampling matrix, the resize multiplies them on the left. The product is
    formed in float64, so the only float32 rounding left is the final application (upstream rounds after
    each step; the difference is a few ulp).
    """
    (h, w), (ph, pw), (ih, iw), (oh, ow) = in_hw, padded_hw, image_hw, output_hw
    if not (0 < ih <= ph and 0 < iw <= pw):
        raise ValueError(f"image size {image_hw} must be positive and fit inside the padded size {padded_hw}")
    ry = bilinear_matrix(h, ph)[:ih]
    rx = bilinear_matrix(w, pw)[:iw]
    if (ih, iw) != (oh, ow):  # torch's interpolate to the same size is an exact copy, so skip it then
        ry = bilinear_matrix(ih, oh) @ ry
        rx = bilinear_matrix(iw, ow) @ rx
    return ry, rx


def masks_to_output(
    mask_logits: np.ndarray,
    padded_hw: tuple[int, int],
    image_hw: tuple[int, int],
    output_hw: tuple[int, int],
) -> np.ndarray:
    """Mask logits [Q, h, w] (stride 4 of the padded input) -> [Q, OH, OW] float32 at the output size.

    Upstream path for panoptic/instance configs: bilinear upsampling to the padded input size, crop to the
    resized image (image_hw, before padding), bilinear resize to the requested output size (detectron2
    `sem_seg_postprocess`). Done as one composed matrix per axis, so the padded-size tensor never exists.
    This is the full-tensor form (Q x OH x OW floats) for tests and benchmarks; `postprocess` streams the same
    values in row bands (`Resampler`): the same bits, whatever the band height.
    """
    mask_logits = np.asarray(mask_logits, dtype=np.float32)
    if mask_logits.ndim != 3:
        raise ValueError(f"mask_logits must be [Q, h, w], got shape {mask_logits.shape}")
    rs = Resampler(*_crop_resize_matrices(mask_logits.shape[-2:], padded_hw, image_hw, output_hw))
    x = rows_first(mask_logits)
    out = np.empty((mask_logits.shape[0], *rs.out_hw), np.float32)
    with one_blas_thread():
        for r0, r1 in row_bands(rs.out_hw[0], mask_logits.shape[0] * rs.out_hw[1]):
            out[:, r0:r1] = rs.rows(x, r0, r1).transpose(1, 0, 2)
    return out


# --------------------------------------------------------------------------------------------------------------
# Streaming (row-band) resampling: bounded memory, the same values as the full tensor
# --------------------------------------------------------------------------------------------------------------

# Elements (maps x rows x columns) of one band's float32 buffer: 2M = 8 MB, so a band's handful of temporaries
# (logits, sigmoid, products, bools) stays well under 100 MB at any image size, while each band is still
# large enough (thousands of pixels per map) that numpy/BLAS call overhead is negligible.
BAND_ELEMENTS = 1 << 21


_blas_controller: Any = None


def one_blas_thread() -> contextlib.AbstractContextManager:
    """Context in which BLAS (numpy's matmul) runs single-threaded.

    Why: the GEMMs of the bands are small (a few taps, a band of rows); OpenBLAS's worker threads then cost
    more than they save, and on a busy CPU (ONNX Runtime's spinning pool, other processes) they wait for each
    other: one 12 MP band took 1.7 ms with one thread and a median of 820 ms with two on the 2-core dev box
    under load. Single-threaded the time is what the work costs, and the network keeps the other cores.
    """
    global _blas_controller
    if ThreadpoolController is None:
        return contextlib.nullcontext()
    if _blas_controller is None:
        _blas_controller = ThreadpoolController()  # scans the loaded libraries once (~50 ms)
    return _blas_controller.limit(limits=1, user_api="blas")


def row_bands(n_rows: int, elements_per_row: int, budget: int | None = None) -> Iterator[tuple[int, int]]:
    """Consecutive [r0, r1) row ranges covering n_rows, each holding about `budget` elements (>= 1 row)."""
    step = max(1, min(n_rows, (budget or BAND_ELEMENTS) // max(1, elements_per_row)))
    for r0 in range(0, n_rows, step):
        yield r0, min(r0 + step, n_rows)


def rows_first(maps: np.ndarray) -> np.ndarray:
    """[n, h, w] -> contiguous float32 [h, n, w]: a band of input rows of all maps is then one matrix."""
    return np.ascontiguousarray(np.asarray(maps, dtype=np.float32).transpose(1, 0, 2))


class _Axis:
    """One axis of a separable linear map (matrix r [n_out, n_in], float64) in the two forms the bands use:
    per-output taps (index, float32 weight) for the cheap axis, and per-block input supports for the GEMM axis."""

    def __init__(self, r: np.ndarray) -> None:
        n_out, n_in = r.shape
        nz = r != 0
        has = nz.any(axis=1)
        self.first = np.where(has, nz.argmax(axis=1), 0)
        self.stop = np.where(has, n_in - nz[:, ::-1].argmax(axis=1), 1)
        out_idx = np.arange(n_out)
        # identity (no resize along this axis): skip the arithmetic, values pass through unchanged
        self.identity = bool(n_out == n_in and (self.first == out_idx).all() and (self.stop == out_idx + 1).all()
                             and (r[out_idx, out_idx] == 1.0).all())
        taps = int((self.stop - self.first).max())
        # taps [n_out, T]: consecutive inputs from `first`; rows with fewer taps repeat their last input with
        # weight 0 (so a row never reads outside its own support, which a band's input block covers)
        self.tap_index = np.minimum(self.first[:, None] + np.arange(taps), self.stop[:, None] - 1)
        in_range = self.first[:, None] + np.arange(taps) < self.stop[:, None]
        self.tap_weight = np.where(in_range, r[out_idx[:, None], self.tap_index], 0.0).astype(np.float32)
        self.r32_t = np.ascontiguousarray(r.T.astype(np.float32))  # [n_in, n_out] for the GEMM form

    def support(self, o0: int, o1: int) -> tuple[int, int]:
        """Input index range [lo, hi) read by outputs o0..o1-1."""
        return int(self.first[o0:o1].min()), int(self.stop[o0:o1].max())


class Resampler:
    """Rows of `ry @ X @ rx.T` (float32) for maps X stored input-rows-first ([h, n, w], see `rows_first`).

    Band-independent by construction: each output row is its own small tap product (weights of that row only,
    in a fixed order) and each column block is one GEMM over that block's fixed input support, so a value is
    the same bits whether the output is computed whole (`masks_to_output`) or in bands of any height.
    Compared with upstream's two float32 interpolations (upsample to the padded size, crop, resize), the
    composed matrix rounds once per axis: values differ by a few float32 ulp, and thresholds/argmax decisions
    can differ only where a value lies within those few ulp of a threshold or a tie.
    """

    def __init__(self, ry: np.ndarray, rx: np.ndarray) -> None:
        self.y, self.x = _Axis(np.asarray(ry, np.float64)), _Axis(np.asarray(rx, np.float64))
        self.in_hw = (ry.shape[1], rx.shape[1])
        self.out_hw = (ry.shape[0], rx.shape[0])
        ow = self.out_hw[1]
        # Column blocks sized so each reads ~32 input columns: GEMMs big enough for BLAS, few zero taps.
        blk = int(np.clip(32 * ow // max(1, self.in_hw[1]), 16, 512))
        self._col_blocks = [(c0, min(c0 + blk, ow), *self.x.support(c0, min(c0 + blk, ow)))
                            for c0 in range(0, ow, blk)]

    def input_rows(self, r0: int, r1: int) -> tuple[int, int]:
        """Input rows [lo, hi) needed for output rows r0..r1-1."""
        return (r0, r1) if self.y.identity else self.y.support(r0, r1)

    def rows(self, x: np.ndarray, r0: int, r1: int, x_row0: int = 0) -> np.ndarray:
        """Output rows r0..r1-1 of all maps, float32 [r1-r0, n, OW]; x [rows, n, w] holds input rows from x_row0."""
        rows_in, n, w = x.shape
        b = r1 - r0
        lo, hi = self.input_rows(r0, r1)
        if lo < x_row0 or hi > x_row0 + rows_in:
            raise ValueError(f"input rows [{lo}, {hi}) are not all in the given block starting at {x_row0}")
        flat = x.reshape(rows_in, n * w)
        if self.y.identity:
            t = flat[r0 - x_row0:r1 - x_row0]
        else:  # [B, 1, T] @ [B, T, n*w]: each row's own taps, same arithmetic in any band
            t = np.matmul(self.y.tap_weight[r0:r1, None, :], flat[self.y.tap_index[r0:r1] - x_row0])[:, 0]
        t = t.reshape(b * n, w)
        if self.x.identity:
            return np.array(t, dtype=np.float32).reshape(b, n, w)
        out = np.empty((b * n, self.out_hw[1]), np.float32)
        for c0, c1, clo, chi in self._col_blocks:
            np.matmul(t[:, clo:chi], self.x.r32_t[clo:chi, c0:c1], out=out[:, c0:c1])
        return out.reshape(b, n, self.out_hw[1])


# --------------------------------------------------------------------------------------------------------------
# Element-wise helpers (float32 like upstream)
# --------------------------------------------------------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float32 (max-subtracted, as torch does)."""
    x = np.asarray(logits, dtype=np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Logistic function in float32; exp overflow for very negative logits correctly gives 0. `out`: a float32
    array of x's shape to write into (x itself is never changed)."""
    x = np.asarray(x, dtype=np.float32)
    out = np.negative(x, out=out)  # in place from here on: one buffer instead of four (same operations, same bits)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += np.float32(1.0)
    return np.divide(np.float32(1.0), out, out=out)


def _check_inputs(class_logits: np.ndarray, mask_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    class_logits = np.asarray(class_logits, dtype=np.float32)
    mask_logits = np.asarray(mask_logits, dtype=np.float32)
    if class_logits.ndim != 2 or class_logits.shape[1] < 2:
        raise ValueError(f"class_logits must be [Q, K+1] with K >= 1, got shape {class_logits.shape}")
    if mask_logits.ndim != 3 or mask_logits.shape[0] != class_logits.shape[0]:
        raise ValueError(
            f"mask_logits must be [Q, H, W] with the same Q as class_logits {class_logits.shape}, "
            f"got shape {mask_logits.shape}"
        )
    return class_logits, mask_logits


def _class_scores(class_logits: np.ndarray, class_scores: np.ndarray | None) -> np.ndarray:
    """[Q, K] per-query class probabilities: softmax without the void column, or the given (fused) scores."""
    if class_scores is None:
        return softmax(class_logits)[:, :-1]  # drop the void column
    class_scores = np.asarray(class_scores, dtype=np.float32)
    if class_scores.shape != (class_logits.shape[0], class_logits.shape[1] - 1):
        raise ValueError(f"class_scores must be [Q, K] = {(class_logits.shape[0], class_logits.shape[1] - 1)}, "
                         f"got {class_scores.shape}")
    return class_scores


def _thing_lookup(thing_ids: Iterable[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Bool [K] table: is contiguous class id c a "thing"? Accepts a bool mask [K] or an iterable of ids."""
    arr = np.asarray(thing_ids if isinstance(thing_ids, np.ndarray) else list(thing_ids))
    if arr.dtype == np.bool_:
        if arr.shape != (num_classes,):
            raise ValueError(f"thing mask must have shape ({num_classes},), got {arr.shape}")
        return arr.copy()
    table = np.zeros(num_classes, dtype=bool)
    if arr.size:
        ids = arr.astype(np.int64).ravel()
        if ids.min() < 0 or ids.max() >= num_classes:
            raise ValueError(f"thing ids must lie in [0, {num_classes}), got min {ids.min()}, max {ids.max()}")
        table[ids] = True
    return table


# --------------------------------------------------------------------------------------------------------------
# The three inferences (inputs already at the resolution the result is wanted at)
# --------------------------------------------------------------------------------------------------------------


def semantic_inference(class_logits: np.ndarray, mask_logits: np.ndarray,
                       class_scores: np.ndarray | None = None) -> np.ndarray:
    """sem_seg [K, H, W] float32 = sum_q softmax(class_logits)[q, :K] * sigmoid(mask_logits[q]).

    class_scores [Q, K] replaces softmax(class_logits)[:, :K] when given (ZegFormer's fused CLIP scores)."""
    class_logits, mask_logits = _check_inputs(class_logits, mask_logits)
    cls = _class_scores(class_logits, class_scores)
    q, h, w = mask_logits.shape
    probs = _sigmoid(mask_logits).reshape(q, h * w)
    return (cls.T @ probs).reshape(-1, h, w)  # einsum "qc,qhw->chw" as one GEMM


def panoptic_inference(
    class_logits: np.ndarray,
    mask_logits: np.ndarray,
    *,
    thing_ids: Iterable[int] | np.ndarray,
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Panoptic id map int32 [H, W] (0 = void, segments 1..N) and segments_info, as upstream.

    Queries are kept when their best class is not void and its probability > object_mask_threshold. Each
    pixel goes to the kept query with the largest score * sigmoid(mask) (first query on ties). A kept query
    becomes a segment when it wins some pixels, its own mask (sigmoid >= 0.5) is non-empty, the two overlap,
    and won/own area >= overlap_threshold; its segment is the won pixels inside its own mask. Stuff queries
    of a class already seen join that class's segment (merged, no new id and no new segments_info entry).
    `thing_ids`: contiguous class ids that are things (an iterable of ids, or a bool mask [K]).
    """
    class_logits, mask_logits = _check_inputs(class_logits, mask_logits)
    num_classes = class_logits.shape[1] - 1
    is_thing = _thing_lookup(thing_ids, num_classes)
    h, w = mask_logits.shape[-2:]

    probs = softmax(class_logits)
    labels = probs.argmax(axis=-1)
    scores = probs.max(axis=-1)
    keep = (labels != num_classes) & (scores > np.float32(object_mask_threshold))

    panoptic_seg = np.zeros((h, w), dtype=np.int32)
    segments_info: list[dict[str, Any]] = []
    if not keep.any():  # upstream returns early: all-void map, no segments
        return panoptic_seg, segments_info

    cur_scores = scores[keep]
    cur_classes = labels[keep]
    cur_masks = _sigmoid(mask_logits[keep])  # [N, H, W]
    n = cur_masks.shape[0]

    winner = (cur_scores[:, None, None] * cur_masks).argmax(axis=0)  # [H, W]; np and torch both take the first max
    own = cur_masks >= np.float32(0.5)  # [N, H, W]
    winner_own = np.take_along_axis(own, winner[None], axis=0)[0]  # winner's own mask at each pixel

    flat_winner = winner.ravel()
    mask_area = np.bincount(flat_winner, minlength=n)
    original_area = own.reshape(n, -1).sum(axis=1)
    intersection = np.bincount(flat_winner, weights=winner_own.ravel(), minlength=n)
    segment_of_query, segments_info = _number_segments(mask_area, original_area, intersection, cur_classes,
                                                       is_thing, overlap_threshold)

    # A pixel carries its winner's segment only inside the winner's own mask (upstream: (ids == k) & mask_k).
    panoptic_seg = np.where(winner_own, segment_of_query[winner], 0).astype(np.int32)
    return panoptic_seg, segments_info


def _number_segments(mask_area: np.ndarray, original_area: np.ndarray, intersection: np.ndarray,
                     cur_classes: np.ndarray, is_thing: np.ndarray,
                     overlap_threshold: float) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Upstream's per-query segment decisions from the three areas of each kept query.

    Returns segment id per kept query (0 = none) and segments_info. Numbering is sequential in query order
    (stuff merging depends on it), so this loops over the kept queries.
    """
    n = len(cur_classes)
    segment_of_query = np.zeros(n, dtype=np.int32)
    segments_info: list[dict[str, Any]] = []
    stuff_segment: dict[int, int] = {}
    current_id = 0
    for k in range(n):
        area, orig, inter = int(mask_area[k]), int(original_area[k]), int(intersection[k])
        if not (area > 0 and orig > 0 and inter > 0):
            continue
        if area / orig < overlap_threshold:  # Python float division, like upstream
            continue
        cls = int(cur_classes[k])
        thing = bool(is_thing[cls])
        if not thing and cls in stuff_segment:
            segment_of_query[k] = stuff_segment[cls]
            continue
        current_id += 1
        if not thing:
            stuff_segment[cls] = current_id
        segment_of_query[k] = current_id
        segments_info.append({"id": current_id, "isthing": thing, "category_id": cls})
    return segment_of_query, segments_info


def _boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """[N, 4] float32 x0, y0, x1, y1 (exclusive max) of bool masks [N, H, W]; zeros for empty masks.

    detectron2 `BitMasks.get_bounding_boxes` semantics: x0 = first column with a pixel, x1 = last + 1.
    """
    n, h, w = masks.shape
    boxes = np.zeros((n, 4), dtype=np.float32)
    if n == 0:
        return boxes
    cols = masks.any(axis=1)  # [N, W]
    rows = masks.any(axis=2)  # [N, H]
    nonempty = cols.any(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = w - cols[:, ::-1].argmax(axis=1)
    y0 = rows.argmax(axis=1)
    y1 = h - rows[:, ::-1].argmax(axis=1)
    boxes[nonempty] = np.stack([x0, y0, x1, y1], axis=1)[nonempty].astype(np.float32)
    return boxes


def _instance_pairs(class_logits: np.ndarray, num_classes: int, topk: int,
                    thing_ids: Iterable[int] | np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upstream's top-k (query, class) pairs: class scores float32, labels int64, queries int64 (sorted top-k)."""
    cls_prob = softmax(class_logits)[:, :-1].ravel()  # [Q*K], index = query * K + class
    k = min(int(topk), cls_prob.size)  # torch.topk would raise beyond Q*K; Q*K >= 100 for every real config
    order = np.argsort(-cls_prob, kind="stable")[:k]
    cls_scores = cls_prob[order]
    labels = (order % num_classes).astype(np.int64)
    queries = order // num_classes
    if thing_ids is not None:
        is_thing = _thing_lookup(thing_ids, num_classes)
        sel = is_thing[labels]
        cls_scores, labels, queries = cls_scores[sel], labels[sel], queries[sel]
    return cls_scores, labels, queries


def instance_inference(
    class_logits: np.ndarray,
    mask_logits: np.ndarray,
    *,
    num_classes: int,
    topk: int = 100,
    thing_ids: Iterable[int] | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Instances as upstream PADing: top-k (query, class) pairs over the flattened [Q, K] class probabilities.

    Returns pred_masks bool [N, H, W] (mask logit > 0), scores float32 [N] (class probability times the mean
    sigmoid inside the binary mask), pred_classes int64 [N], pred_boxes float32 [N, 4] (from the masks).
    When `thing_ids` is given (panoptic configs), pairs whose class is not a thing are dropped after the
    top-k, so N <= topk. Upstream's top-k is unsorted; here pairs come in descending class probability
    (ties: lower flat index first), the order torch's sorted top-k would give.
    """
    class_logits, mask_logits = _check_inputs(class_logits, mask_logits)
    if class_logits.shape[1] != num_classes + 1:
        raise ValueError(
            f"class_logits has {class_logits.shape[1]} columns, expected num_classes+1 = {num_classes + 1}"
        )
    q, h, w = mask_logits.shape
    cls_scores, labels, queries = _instance_pairs(class_logits, num_classes, topk, thing_ids)

    # A query can appear with several classes; compute its mask, box and mask score once.
    uniq, inverse = np.unique(queries, return_inverse=True)
    masks_u = mask_logits[uniq] > 0  # [U, H, W]
    mask_score_u = np.zeros(uniq.size, dtype=np.float32)
    for j, qi in enumerate(uniq):  # per query: keeps memory at one [H, W] sigmoid instead of [U, H, W]
        pos = mask_logits[qi][masks_u[j]]
        s = _sigmoid(pos).sum(dtype=np.float64)
        mask_score_u[j] = np.float32(s) / (np.float32(pos.size) + np.float32(1e-6))
    boxes_u = _boxes_from_masks(masks_u)

    return {
        "pred_masks": masks_u[inverse].reshape(-1, h, w),
        "scores": (cls_scores * mask_score_u[inverse]).astype(np.float32),
        "pred_classes": labels,
        "pred_boxes": boxes_u[inverse].reshape(-1, 4),
    }


# --------------------------------------------------------------------------------------------------------------
# Streaming inference at the output size (what `postprocess` runs): row bands, never [Q, OH, OW] at once
# --------------------------------------------------------------------------------------------------------------


def panoptic_streamed(class_logits: np.ndarray, mask_logits: np.ndarray, rs: Resampler, *,
                      thing_ids: Iterable[int] | np.ndarray, object_mask_threshold: float = 0.8,
                      overlap_threshold: float = 0.8) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """`panoptic_inference` on `rs`-resampled mask logits, streamed in row bands over the kept queries only.

    Same arithmetic per pixel as the full-tensor function on `masks_to_output`'s output (so the same map):
    per band the winner (first maximum of score * sigmoid), its own-mask bit and the three area counts;
    the map keeps one small code per pixel (winner + 1 inside its own mask, else 0) until the segment
    decisions, which need the areas of the whole image, turn codes into ids.
    Memory: one band of N kept maps plus 1-2 bytes per output pixel, then the int32 result.
    """
    num_classes = class_logits.shape[1] - 1
    is_thing = _thing_lookup(thing_ids, num_classes)
    oh, ow = rs.out_hw
    probs = softmax(class_logits)
    labels = probs.argmax(axis=-1)
    scores = probs.max(axis=-1)
    keep = np.flatnonzero((labels != num_classes) & (scores > np.float32(object_mask_threshold)))
    if keep.size == 0:  # upstream returns early: all-void map, no segments
        return np.zeros((oh, ow), np.int32), []
    n = keep.size
    cur_scores = scores[keep]
    x = rows_first(mask_logits[keep])
    code = np.empty((oh, ow), np.uint8 if n < 255 else np.uint16)
    mask_area = np.zeros(n, np.int64)
    original_area = np.zeros(n, np.int64)
    intersection = np.zeros(n, np.int64)
    half = np.float32(0.5)
    with one_blas_thread():
        for r0, r1 in row_bands(oh, n * ow):
            logits = rs.rows(x, r0, r1)  # [B, N, OW]
            # One query at a time over [B, OW] planes that stay in cache (instead of argmax over a [B, N, OW]
            # product): the same float32 operations per pixel, and a later query wins only when strictly
            # greater, which is argmax's first maximum on ties. Measured ~2x faster on PADing's 512x512 outputs.
            plane = (r1 - r0, ow)
            prob, own, better = np.empty(plane, np.float32), np.empty(plane, bool), np.empty(plane, bool)
            best, winner, winner_own = np.empty(plane, np.float32), np.zeros(plane, np.int32), np.empty(plane, bool)
            for j in range(n):
                _sigmoid(logits[:, j], out=prob)
                np.greater_equal(prob, half, out=own)
                original_area[j] += np.count_nonzero(own)
                prob *= cur_scores[j]
                if j == 0:
                    best[...] = prob
                    winner_own[...] = own
                    continue
                np.greater(prob, best, out=better)
                np.copyto(best, prob, where=better)
                np.copyto(winner, j, where=better)
                np.copyto(winner_own, own, where=better)
            del logits
            mask_area += np.bincount(winner.ravel(), minlength=n)
            intersection += np.bincount(winner[winner_own], minlength=n)
            code[r0:r1] = np.where(winner_own, winner + 1, 0)
    segment_of_query, segments_info = _number_segments(mask_area, original_area, intersection, labels[keep],
                                                       is_thing, overlap_threshold)
    lut = np.concatenate([[0], segment_of_query]).astype(np.int32)
    return lut[code], segments_info


def instance_streamed(class_logits: np.ndarray, mask_logits: np.ndarray, rs: Resampler, *, num_classes: int,
                      topk: int = 100, thing_ids: Iterable[int] | np.ndarray | None = None) -> dict[str, Any]:
    """`instance_inference` on `rs`-resampled mask logits, streamed in row bands over the selected queries.

    Per band: binary masks (logit > 0), their sigmoid sums and pixel counts, row/column occupancy for the
    boxes, and the bits packed 8 per byte. pred_masks is a `PackedMasks` (H*W/8 bytes per distinct query)
    that reads like upstream's bool [N, H, W]; scores, classes and boxes are plain arrays.
    """
    if class_logits.shape[1] != num_classes + 1:
        raise ValueError(
            f"class_logits has {class_logits.shape[1]} columns, expected num_classes+1 = {num_classes + 1}"
        )
    oh, ow = rs.out_hw
    cls_scores, labels, queries = _instance_pairs(class_logits, num_classes, topk, thing_ids)
    uniq, inverse = np.unique(queries, return_inverse=True)
    u = uniq.size
    packed = np.empty((u, oh, (ow + 7) // 8), np.uint8)
    rows_any = np.zeros((u, oh), bool)
    cols_any = np.zeros((u, ow), bool)
    sig_sum = np.zeros(u, np.float64)
    count = np.zeros(u, np.int64)
    if u:
        x = rows_first(mask_logits[uniq])
        with one_blas_thread():
            for r0, r1 in row_bands(oh, u * ow):
                logit = rs.rows(x, r0, r1)  # [B, U, OW]
                m = logit > 0
                # float32 sigmoid of the mask's pixels summed in float64, as instance_inference
                sig_sum += np.where(m, _sigmoid(logit), np.float32(0)).sum(axis=(0, 2), dtype=np.float64)
                del logit
                count += m.sum(axis=(0, 2))
                rows_any[:, r0:r1] = m.any(axis=2).T
                cols_any |= m.any(axis=0)
                packed[:, r0:r1] = np.packbits(m, axis=-1).transpose(1, 0, 2)
    mask_score = sig_sum.astype(np.float32) / (count.astype(np.float32) + np.float32(1e-6))
    boxes = np.zeros((u, 4), np.float32)
    nonempty = count > 0
    if u:  # detectron2 BitMasks.get_bounding_boxes: first row/column with a pixel, last + 1
        x0 = cols_any.argmax(axis=1)
        x1 = ow - cols_any[:, ::-1].argmax(axis=1)
        y0 = rows_any.argmax(axis=1)
        y1 = oh - rows_any[:, ::-1].argmax(axis=1)
        boxes[nonempty] = np.stack([x0, y0, x1, y1], axis=1)[nonempty].astype(np.float32)
    return {
        "pred_masks": PackedMasks(packed, inverse.reshape(-1), ow),
        "scores": (cls_scores * mask_score[inverse.reshape(-1)]).astype(np.float32),
        "pred_classes": labels,
        "pred_boxes": boxes[inverse.reshape(-1)].reshape(-1, 4),
    }


def semantic_streamed(cls: np.ndarray, mask_logits: np.ndarray, to_output: Resampler,
                      then: Resampler | None = None) -> SemanticScores:
    """Lazy sem_seg [K, OH, OW] = einsum("qc,qhw->chw", cls, sigmoid(masks)) computed in row bands.

    to_output alone (panoptic/instance configs): sigmoid of the logits resampled to the output size, then the
    class GEMM. With `then` (semantic-only configs): `to_output` resamples the logits to the resized image,
    the sigmoid is taken there, and `then` resizes image -> output; as resize and class sum are linear, the
    resize is applied to whichever is fewer, the Q probability maps or the K class maps (upstream: einsum at
    the padded size, crop, resize; the same up to float32 rounding).
    """
    cls = np.asarray(cls, np.float32)
    q, k = cls.shape
    x = rows_first(mask_logits)
    oh, ow = (then or to_output).out_hw

    def band(channels: np.ndarray, r0: int, r1: int) -> np.ndarray:
        c_t = np.ascontiguousarray(cls[:, channels].T)  # [K', Q]
        with one_blas_thread():  # bands may be computed later, outside `postprocess`
            if then is None:
                return np.matmul(c_t, _sigmoid(to_output.rows(x, r0, r1)))  # [B, K', OW]
            i0, i1 = then.input_rows(r0, r1)
            probs = _sigmoid(to_output.rows(x, i0, i1))  # [rows of the image, Q, iw]
            if q <= len(channels):
                return np.matmul(c_t, then.rows(probs, r0, r1, x_row0=i0))
            return then.rows(np.matmul(c_t, probs), r0, r1, x_row0=i0)

    def plan(n_channels: int) -> Iterator[tuple[int, int]]:
        # a band holds the Q probability maps and the K' class maps (x2 for the image-size step)
        return row_bands(oh, (q + n_channels) * ow * (1 if then is None else 2))

    return SemanticScores((k, oh, ow), band, plan)


# --------------------------------------------------------------------------------------------------------------
# Configuration and dispatcher
# --------------------------------------------------------------------------------------------------------------


_REEXPORT = "re-export the model with `export-model` from this zsdeploy version."


@dataclass(frozen=True)
class PostprocessConfig:
    """What post-processing needs from the model config (stored in the ONNX metadata_props).

    `sem_seg_postprocess_before_inference` is stored as the effective upstream flag: upstream ORs the config
    value with panoptic_on and instance_on, and so does this class (after construction it always holds).
    Field defaults are upstream's values (thresholds 0.8, 100 detections) for hand-built configs;
    `from_metadata` requires every key.
    """

    # metadata_props keys read by from_metadata (all required)
    KEYS: ClassVar[tuple[str, ...]] = (
        "num_classes",
        "thing_ids",
        "object_mask_threshold",
        "overlap_threshold",
        "detections_per_image",
        "semantic_on",
        "instance_on",
        "panoptic_on",
        "sem_seg_postprocess_before_inference",
    )

    num_classes: int
    thing_ids: tuple[int, ...]
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    detections_per_image: int = 100
    semantic_on: bool = True
    instance_on: bool = False
    panoptic_on: bool = False
    sem_seg_postprocess_before_inference: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "thing_ids", tuple(int(t) for t in self.thing_ids))
        # upstream: SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or PANOPTIC_ON or INSTANCE_ON
        object.__setattr__(
            self,
            "sem_seg_postprocess_before_inference",
            bool(self.sem_seg_postprocess_before_inference or self.panoptic_on or self.instance_on),
        )
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        bad = [t for t in self.thing_ids if not 0 <= t < self.num_classes]
        if bad:
            raise ValueError(f"thing_ids outside [0, {self.num_classes}): {bad}")

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], source: str = "the model") -> "PostprocessConfig":
        """Read the config from ONNX metadata_props (the artifact contract's strict parsing; all keys required)."""
        from .artifacts.onnx_metadata import fields

        f = fields(meta, source)
        for key in cls.KEYS:
            f.get(key)  # missing -> ZsdError naming it
        try:
            return cls(
                num_classes=f.integer("num_classes", minimum=1),
                thing_ids=tuple(f.list_of("thing_ids", int)),
                object_mask_threshold=f.number("object_mask_threshold"),
                overlap_threshold=f.number("overlap_threshold"),
                detections_per_image=f.integer("detections_per_image", minimum=1),
                semantic_on=f.boolean("semantic_on"),
                instance_on=f.boolean("instance_on"),
                panoptic_on=f.boolean("panoptic_on"),
                sem_seg_postprocess_before_inference=f.boolean("sem_seg_postprocess_before_inference"),
            )
        except ValueError as exc:  # __post_init__'s range checks
            raise ZsdError(f"{source}: unusable post-processing metadata ({exc}).",
                           "re-export the model with this version of export-model.") from None


def postprocess(
    class_logits: np.ndarray,
    mask_logits: np.ndarray,
    *,
    task: str,
    padded_hw: tuple[int, int],
    image_hw: tuple[int, int],
    output_hw: tuple[int, int],
    meta: PostprocessConfig,
    class_scores: np.ndarray | None = None,
) -> dict[str, Any]:
    """Run one task's post-processing on raw network outputs of one image, in upstream's order.

    mask_logits [Q, h, w] are at stride 4 of the padded input (padded_hw); image_hw is the resized image
    inside the padding; output_hw the size the result is wanted at. Returns {"sem_seg": [K,OH,OW]},
    {"panoptic_seg": int32 [OH,OW], "segments_info": [...]} or {"instances": {...}} for task semantic,
    panoptic or instance. class_scores [Q, K] (semantic only) replaces softmax(class_logits) without void:
    ZegFormer's CLIP-fused scores (runtime.zegformer.fuse_scores).

    Bounded memory at any output size: everything is streamed in row bands (`Resampler`, `row_bands`) and
    no [Q or K, OH, OW] float tensor is held. sem_seg is a `SemanticScores` (label map computed here, scores
    on demand, np.asarray gives upstream's array) and instances' pred_masks a `PackedMasks` (bit-packed);
    both read like upstream's arrays. Values equal `masks_to_output` + the full-tensor functions above bit
    for bit (tests/unit/test_postprocess_memory.py).

    Configs with panoptic or instance on resize the mask logits to the output size first and infer there.
    Semantic-only configs (PADing semantic, ZegFormer) take the sigmoid at the padded input size, then the
    class einsum, crop and resize: those last three are linear, so they are applied in the cheaper order
    (the result is the same up to float32 rounding) and only the image part of the padded canvas is computed.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if class_scores is not None and task != "semantic":
        raise ValueError("class_scores replace the class softmax of semantic inference only")
    enabled = {"semantic": meta.semantic_on, "panoptic": meta.panoptic_on, "instance": meta.instance_on}
    if not enabled[task]:
        on = [t for t in TASKS if enabled[t]]
        raise ZsdError(
            f"This model was exported for {on} post-processing; '{task}' is not enabled for it.",
            f"ask for one of {on}, or export the model with a config that has {task.upper()}_ON.",
        )
    class_logits, mask_logits = _check_inputs(class_logits, mask_logits)
    # Non-finite logits (e.g. an fp16 engine overflowing) would silently become NaN scores or wrong masks.
    if not (np.isfinite(class_logits).all() and np.isfinite(mask_logits).all()):
        raise ZsdError(
            "The network produced non-finite (NaN or inf) class or mask logits.",
            "run the model in fp32 (or rebuild the TensorRT engine without fp16 for the heads) and check the input.",
        )
    if class_logits.shape[1] != meta.num_classes + 1:
        raise ZsdError(
            f"The model outputs {class_logits.shape[1] - 1} classes but its metadata says {meta.num_classes}.",
            "the metadata and the graph do not belong together; " + _REEXPORT,
        )

    if meta.sem_seg_postprocess_before_inference:
        # Logits resampled straight to the output size (upstream: to the padded size, crop, to the output),
        # streamed in row bands: no [Q, OH, OW] tensor is ever held.
        rs = Resampler(*_crop_resize_matrices(mask_logits.shape[-2:], padded_hw, image_hw, output_hw))
        if task == "semantic":
            sem = semantic_streamed(_class_scores(class_logits, class_scores), mask_logits, rs)
            return {"sem_seg": sem.compute_labels()}
        if task == "panoptic":
            seg, info = panoptic_streamed(
                class_logits,
                mask_logits,
                rs,
                thing_ids=meta.thing_ids,
                object_mask_threshold=meta.object_mask_threshold,
                overlap_threshold=meta.overlap_threshold,
            )
            return {"panoptic_seg": seg, "segments_info": info}
        return {
            "instances": instance_streamed(
                class_logits,
                mask_logits,
                rs,
                num_classes=meta.num_classes,
                topk=meta.detections_per_image,
                # upstream keeps only thing classes when panoptic is on for the config
                thing_ids=meta.thing_ids if meta.panoptic_on else None,
            )
        }

    # Semantic-only path. Upstream: sigmoid(upsample_to_padded(m)), einsum, crop, resize. Crop commutes with
    # the element-wise sigmoid, so only the image part is upsampled; the resize commutes with the einsum.
    if task != "semantic":  # unreachable: before_inference is forced on for panoptic/instance configs
        raise AssertionError("panoptic/instance post-processing requires sem_seg_postprocess_before_inference")
    to_image = Resampler(*_crop_resize_matrices(mask_logits.shape[-2:], padded_hw, image_hw, image_hw))
    then = None
    if tuple(image_hw) != tuple(output_hw):
        then = Resampler(bilinear_matrix(image_hw[0], output_hw[0]), bilinear_matrix(image_hw[1], output_hw[1]))
    sem = semantic_streamed(_class_scores(class_logits, class_scores), mask_logits, to_image, then)
    return {"sem_seg": sem.compute_labels()}
