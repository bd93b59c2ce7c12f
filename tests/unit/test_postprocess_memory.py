"""Streamed (row-band) post-processing: exact against a full-resolution oracle, bounded in memory.

The oracle below is written from upstream's description (../shared/docs/UPSTREAM_PADING.md "Post-processing"):
the resize chain step by step in float64 (upsample to the padded size, crop, resize; the float32 weights are
torch's, see test_bilinear_matrix_weights_bit_identical_to_torch), then semantic / panoptic / instance
inference on the full [Q, H, W] tensors, literally as upstream's loops. The runtime composes the chain into one
matrix per axis in float32, so values differ by a few ulp; decisions may then differ only at pixels whose
oracle value lies within EPS of a threshold or a tie, which are excluded (and counted: they must be rare).
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import zsdeploy.runtime.postprocess as pp
from zsdeploy.runtime.postprocess import (
    PostprocessConfig,
    bilinear_matrix,
    instance_inference,
    masks_to_output,
    panoptic_inference,
    postprocess,
    semantic_inference,
)
from zsdeploy.runtime.postprocess_results import PackedMasks, SemanticScores

EPS = 1e-4  # far above the float32 chain's error (~1e-6 on logits of size ~10), far below typical gaps


# ----------------------------------------------------------------------------------------------------- oracle
def oracle_logits(m: np.ndarray, padded_hw, image_hw, output_hw) -> np.ndarray:
    """Upstream's chain at full resolution, float64: upsample to padded, crop to the image, resize to output."""
    (ph, pw), (ih, iw), (oh, ow) = padded_hw, image_hw, output_hw
    h, w = m.shape[-2:]
    up = np.einsum("ph,qhw,xw->qpx", bilinear_matrix(h, ph), m.astype(np.float64), bilinear_matrix(w, pw))
    crop = up[:, :ih, :iw]
    if (ih, iw) == (oh, ow):
        return crop
    return np.einsum("oh,qhw,xw->qox", bilinear_matrix(ih, oh), crop, bilinear_matrix(iw, ow))


def _softmax64(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _softmax32(x: np.ndarray) -> np.ndarray:
    """float32 softmax as torch computes it (upstream's class scores are float32; thresholds compare those)."""
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def oracle_panoptic(cls, logits, things, obj_thr, overlap_thr):
    """Upstream panoptic_inference (Mask2Former) on full tensors, with per-pixel 'near a decision' flags."""
    k_void = cls.shape[1] - 1
    probs = _softmax32(cls)
    scores, labels = probs.max(-1), probs.argmax(-1)  # float32 like upstream; products follow the logits' dtype
    keep = (labels != k_void) & (probs.max(-1) > np.float32(obj_thr))
    h, w = logits.shape[-2:]
    seg = np.zeros((h, w), np.int32)
    near = np.zeros((h, w), bool)
    info = []
    if not keep.any():
        return seg, info, near
    masks = 1 / (1 + np.exp(-logits[keep]))
    prob_masks = scores[keep][:, None, None] * masks
    ids = prob_masks.argmax(0)
    top2 = np.sort(prob_masks, axis=0)[-2:] if len(prob_masks) > 1 else None
    if top2 is not None:
        # relative: float32 products carry ~1e-7 relative error, whatever their size (sigmoid near 0 or 1)
        near |= (top2[1] - top2[0]) < 1e-6 * top2[1]
    near |= (np.abs(masks - 0.5) < EPS).any(0)
    current, stuff = 0, {}
    for k in range(masks.shape[0]):
        pred_class = int(labels[keep][k])
        isthing = pred_class in things
        mask_area = (ids == k).sum()
        original_area = (masks[k] >= 0.5).sum()
        mask = (ids == k) & (masks[k] >= 0.5)
        if mask_area > 0 and original_area > 0 and mask.sum() > 0:
            if mask_area / original_area < overlap_thr:
                continue
            if not isthing and pred_class in stuff:
                seg[mask] = stuff[pred_class]
                continue
            current += 1
            if not isthing:
                stuff[pred_class] = current
            seg[mask] = current
            info.append({"id": current, "isthing": bool(isthing), "category_id": pred_class})
    return seg, info, near


def oracle_instances(cls, logits, num_classes, topk, things):
    probs = _softmax32(cls)[:, :-1].ravel()
    order = np.argsort(-probs, kind="stable")[:topk]
    labels, queries = order % num_classes, order // num_classes
    if things is not None:
        sel = np.isin(labels, list(things))
        order, labels, queries = order[sel], labels[sel], queries[sel]
    masks = logits[queries] > 0
    sig = 1 / (1 + np.exp(-logits[queries]))
    scores = probs[order] * (sig * masks).reshape(len(order), -1).sum(1) / (masks.reshape(len(order), -1).sum(1) + 1e-6)
    near = np.abs(logits[queries]) < EPS
    return masks, labels, scores, near


def _boxes(masks: np.ndarray) -> np.ndarray:
    out = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if ys.size:
            out[i] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    return out


def _outputs(q: int, k: int, hw, seed: int, confident: int):
    """Random logits with `confident` queries (classes alternate things / stuff) owning a blob each."""
    rng = np.random.default_rng(seed)
    cls = rng.standard_normal((q, k + 1)).astype(np.float32)
    masks = (rng.standard_normal((q, *hw)) * 3).astype(np.float32)
    for j in range(confident):
        cls[j, j % k] += 14
        y, x = rng.integers(0, hw[0] - 4), rng.integers(0, hw[1] - 4)
        masks[j] -= 5
        masks[j, y:y + rng.integers(2, 5), x:x + rng.integers(2, 5)] += 16
    return cls, masks


def _meta(k: int, things, **kw) -> PostprocessConfig:
    base = dict(num_classes=k, thing_ids=tuple(things), detections_per_image=30, semantic_on=True,
                instance_on=True, panoptic_on=True)
    return PostprocessConfig(**{**base, **kw})


# Geometries: (mask hw, padded hw, image hw, output hw); odd sizes, up and down, crop, identity.
GEOMETRIES = [
    ((8, 10), (32, 40), (29, 37), (61, 83)),
    ((12, 9), (48, 36), (45, 36), (23, 17)),
    ((9, 13), (36, 52), (36, 49), (36, 49)),
    ((10, 10), (40, 40), (40, 40), (151, 97)),
]


@pytest.fixture
def tiny_bands(monkeypatch):
    """Force many bands whose height does not divide the output (7 maps x 11 rows of 61..151 columns)."""
    monkeypatch.setattr(pp, "BAND_ELEMENTS", 777)


# ------------------------------------------------------------------------------------ exactness vs the oracle
@pytest.mark.parametrize("geo", GEOMETRIES)
def test_streamed_panoptic_matches_oracle(geo, tiny_bands):
    mhw, padded, image, out = geo
    k, things = 5, {0, 2}
    cls, masks = _outputs(12, k, mhw, seed=sum(out), confident=7)
    res = postprocess(cls, masks, task="panoptic", padded_hw=padded, image_hw=image, output_hw=out,
                      meta=_meta(k, things))
    seg, info, near = oracle_panoptic(cls, oracle_logits(masks, padded, image, out), things, 0.8, 0.8)
    assert len(info) >= 2, "degenerate case: the test would not exercise segments"
    assert res["segments_info"] == info
    assert near.mean() < 1e-2
    np.testing.assert_array_equal(res["panoptic_seg"][~near], seg[~near])


def test_panoptic_thresholds_at_the_edges(tiny_bands):
    # Decisions exactly at the thresholds: the oracle gets the runtime's own float32 logits here (and
    # computes in float32 like upstream), so areas and scores are the same numbers on both sides.
    mhw, padded, image, out = GEOMETRIES[0]
    k, things = 5, {0, 2}
    cls, masks = _outputs(12, k, mhw, seed=3, confident=7)
    logits = masks_to_output(masks, padded, image, out)
    geo = dict(padded_hw=padded, image_hw=image, output_hw=out)
    # object threshold exactly at a kept query's score: "score > threshold" drops that query (and lower ones)
    kept_scores = np.sort(_softmax32(cls).max(-1)[:7])
    score = float(kept_scores[3])
    thr_info = oracle_panoptic(cls, logits, things, score, 0.8)[1]
    got = postprocess(cls, masks, task="panoptic", meta=_meta(k, things, object_mask_threshold=score), **geo)
    assert got["segments_info"] == thr_info
    assert thr_info and thr_info != oracle_panoptic(cls, logits, things, 0.8, 0.8)[1]
    lower = float(np.nextafter(kept_scores[3], np.float32(0)))  # one float32 ulp lower keeps the query again
    below = postprocess(cls, masks, task="panoptic", meta=_meta(k, things, object_mask_threshold=lower), **geo)
    assert below["segments_info"] == oracle_panoptic(cls, logits, things, lower, 0.8)[1] != thr_info
    # overlap threshold exactly at a query's won/own ratio (kept: ">="), then just above it (rejected)
    probs = _softmax32(cls)
    keep = np.flatnonzero((probs.argmax(-1) != k) & (probs.max(-1) > 0.8))
    sig = 1 / (1 + np.exp(-logits[keep]))
    ids = (probs.max(-1)[keep][:, None, None] * sig).argmax(0)
    ratios = [(ids == j).sum() / (sig[j] >= 0.5).sum() for j in range(len(keep)) if (sig[j] >= 0.5).any()]
    ratio = min(r for r in ratios if 0 < r < 1)  # a query that loses some of its own pixels
    for thr in (ratio, np.nextafter(ratio, 1.0)):
        seg, info, near = oracle_panoptic(cls, logits, things, 0.8, thr)
        got = postprocess(cls, masks, task="panoptic", meta=_meta(k, things, overlap_threshold=thr), **geo)
        assert got["segments_info"] == info
        np.testing.assert_array_equal(got["panoptic_seg"][~near], seg[~near])
    assert len(oracle_panoptic(cls, logits, things, 0.8, ratio)[1]) > len(
        oracle_panoptic(cls, logits, things, 0.8, np.nextafter(ratio, 1.0))[1])


@pytest.mark.parametrize("geo", GEOMETRIES)
@pytest.mark.parametrize("things", [None, (0, 2)])
def test_streamed_instances_match_oracle(geo, things, tiny_bands):
    mhw, padded, image, out = geo
    k = 5
    cls, masks = _outputs(12, k, mhw, seed=sum(out) + 1, confident=7)
    meta = _meta(k, things or (), panoptic_on=things is not None, detections_per_image=30)
    inst = postprocess(cls, masks, task="instance", padded_hw=padded, image_hw=image, output_hw=out,
                       meta=meta)["instances"]
    o_masks, o_labels, o_scores, near = oracle_instances(cls, oracle_logits(masks, padded, image, out), k, 30,
                                                         things)
    assert isinstance(inst["pred_masks"], PackedMasks) and inst["pred_masks"].shape == o_masks.shape
    np.testing.assert_array_equal(inst["pred_classes"], o_labels)
    got = np.asarray(inst["pred_masks"])
    assert near.mean() < 1e-3
    np.testing.assert_array_equal(got[~near], o_masks[~near])
    np.testing.assert_allclose(inst["scores"], o_scores, rtol=0, atol=1e-5)
    clean = ~near.reshape(len(near), -1).any(1)  # boxes of masks without a pixel at the decision boundary
    np.testing.assert_array_equal(inst["pred_boxes"][clean], _boxes(o_masks)[clean])
    assert all(np.array_equal(a, b) for a, b in zip(inst["pred_masks"], got))  # iteration == materialisation


@pytest.mark.parametrize("geo", GEOMETRIES)
@pytest.mark.parametrize("before_inference", [True, False])
@pytest.mark.parametrize("q,k", [(12, 5), (4, 9)])  # both sides of the "resize the fewer maps" choice
def test_streamed_semantic_matches_oracle(geo, before_inference, q, k, tiny_bands):
    mhw, padded, image, out = geo
    cls, masks = _outputs(q, k, mhw, seed=q * k + sum(out), confident=2)
    meta = _meta(k, (), instance_on=before_inference, panoptic_on=False)
    sem = postprocess(cls, masks, task="semantic", padded_hw=padded, image_hw=image, output_hw=out,
                      meta=meta)["sem_seg"]
    c = _softmax64(cls)[:, :-1]
    if before_inference:  # sigmoid at the output size
        ref = np.einsum("qc,qhw->chw", c, 1 / (1 + np.exp(-oracle_logits(masks, padded, image, out))))
    else:  # sigmoid at the padded size, einsum, crop, resize
        h, w = mhw
        up = np.einsum("ph,qhw,xw->qpx", bilinear_matrix(h, padded[0]), masks.astype(np.float64),
                       bilinear_matrix(w, padded[1]))
        ref = np.einsum("qc,qhw->chw", c, 1 / (1 + np.exp(-up)))[:, :image[0], :image[1]]
        if image != out:
            ref = np.einsum("oh,chw,xw->cox", bilinear_matrix(image[0], out[0]), ref,
                            bilinear_matrix(image[1], out[1]))
    assert isinstance(sem, SemanticScores) and sem.shape == ref.shape
    np.testing.assert_allclose(np.asarray(sem), ref, rtol=0, atol=1e-5)
    top2 = np.sort(ref, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > EPS
    assert clear.mean() > 0.999
    np.testing.assert_array_equal(sem.argmax(0)[clear], ref.argmax(0)[clear])
    np.testing.assert_allclose(sem.max(0), ref.max(0), rtol=0, atol=1e-5)


# ------------------------------------------------------------------- bands == full tensor, bit for bit
@pytest.mark.parametrize("geo", GEOMETRIES)
def test_band_height_does_not_change_a_bit(geo, monkeypatch):
    mhw, padded, image, out = geo
    k, things = 5, (0, 2)
    cls, masks = _outputs(12, k, mhw, seed=7, confident=7)
    meta = _meta(k, things, detections_per_image=30)
    kw = dict(padded_hw=padded, image_hw=image, output_hw=out, meta=meta)
    full = masks_to_output(masks, padded, image, out)
    ref_pan = panoptic_inference(cls, full, thing_ids=things)
    ref_inst = instance_inference(cls, full, num_classes=k, topk=30, thing_ids=things)
    ref_sem = semantic_inference(cls, full)
    for budget in (1, 333, 1 << 21):  # one row per band, odd heights, one band
        monkeypatch.setattr(pp, "BAND_ELEMENTS", budget)
        np.testing.assert_array_equal(masks_to_output(masks, padded, image, out), full)
        pan = postprocess(cls, masks, task="panoptic", **kw)
        np.testing.assert_array_equal(pan["panoptic_seg"], ref_pan[0])
        assert pan["segments_info"] == ref_pan[1]
        inst = postprocess(cls, masks, task="instance", **kw)["instances"]
        for key in ("scores", "pred_classes", "pred_boxes", "pred_masks"):
            np.testing.assert_array_equal(np.asarray(inst[key]), ref_inst[key])
        sem = postprocess(cls, masks, task="semantic", **kw)["sem_seg"]
        np.testing.assert_array_equal(sem.argmax(0), ref_sem.argmax(0))
        np.testing.assert_allclose(np.asarray(sem), ref_sem, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- the lazy containers' API
def test_semantic_scores_views_and_offsets():
    cls, masks = _outputs(6, 4, (8, 10), seed=1, confident=2)
    geo = dict(padded_hw=(32, 40), image_hw=(30, 33), output_hw=(45, 50))
    meta = _meta(4, (), instance_on=False, panoptic_on=False)
    sem = postprocess(cls, masks, task="semantic", meta=meta, **geo)["sem_seg"]
    full = np.asarray(sem)
    assert full.shape == sem.shape == (4, 45, 50) and full.dtype == np.float32 and len(sem) == 4
    np.testing.assert_array_equal(np.asarray(sem[[1, 3]]), full[[1, 3]])
    np.testing.assert_array_equal(sem[2], full[2])
    np.testing.assert_array_equal(sem[1:3, 5], full[1:3, 5])
    sem[[0, 2, 2]] -= np.float32(0.25)  # ZegFormer's calibration idiom: repeated ids shift once, like numpy
    expected = full.copy()
    expected[[0, 2]] -= np.float32(0.25)
    np.testing.assert_array_equal(np.asarray(sem), expected)
    np.testing.assert_array_equal(sem.argmax(0), expected.argmax(0))
    assert not np.array_equal(expected.argmax(0), full.argmax(0))  # the offset changed decisions
    with pytest.raises(TypeError, match="lazily"):
        sem[1] = 0.0
    with pytest.raises(TypeError, match="scalar"):
        sem[[1]] -= np.ones((45, 50), np.float32)


def test_packed_masks_indexing():
    bits = np.random.default_rng(2).random((3, 5, 13)) > 0.5
    pm = PackedMasks(np.packbits(bits, axis=-1), np.array([2, 0, 2, 1]), 13)
    assert pm.shape == (4, 5, 13) and pm.dtype == np.bool_ and len(pm) == 4
    np.testing.assert_array_equal(np.asarray(pm), bits[[2, 0, 2, 1]])
    np.testing.assert_array_equal(pm[3], bits[1])
    np.testing.assert_array_equal(np.asarray(pm[np.array([True, False, False, True])]), bits[[2, 1]])
    np.testing.assert_array_equal(pm[1, 2:4], bits[0, 2:4])


# ------------------------------------------------------------------------------------------ bounded memory
def _peak_mb(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_peak_memory_is_bounded_at_12_megapixels():
    """3000x4000 output, Q=100 (30 kept for panoptic, all 100 resampled for semantic): upstream's float
    [Q, H, W] would be 4.6 GiB. (Slow on a busy 2-core machine: ~1 min of CPU.)

    Bounds (numpy allocations traced by tracemalloc; inputs allocated before tracing):
    - panoptic: int32 result 46 MiB + uint8 winner codes 11 MiB + one band (2M elements: float32 logits,
      sigmoid, product 8 MiB each, bools, the column-GEMM block) ~ 40 MiB  -> < 120 MiB;
    - instance: the bit-packed masks, at most 100 x 12M / 8 = 143 MiB, + one band ~ 40 MiB -> < 200 MiB;
    - semantic label map: int64 argmax 92 MiB + one band of Q + K maps ~ 40 MiB -> < 150 MiB.
    """
    q, k, out = 100, 4, (3000, 4000)
    cls, masks = _outputs(q, k, (32, 40), seed=5, confident=30)
    geo = dict(padded_hw=(128, 160), image_hw=(120, 160), output_hw=out)
    meta = _meta(k, (0, 2), detections_per_image=100)
    res: dict = {}

    def pan() -> None:
        res["pan"] = postprocess(cls, masks, task="panoptic", meta=meta, **geo)

    def inst() -> None:
        res["inst"] = postprocess(cls, masks, task="instance", meta=meta, **geo)

    def sem() -> None:
        res["lab"] = postprocess(cls, masks, task="semantic", meta=meta, **geo)["sem_seg"].argmax(0)

    assert _peak_mb(pan) < 120
    assert len(res["pan"]["segments_info"]) > 10 and res["pan"]["panoptic_seg"].shape == out
    assert _peak_mb(inst) < 200
    assert res["inst"]["instances"]["pred_masks"].shape == (len(res["inst"]["instances"]["scores"]), *out)
    assert _peak_mb(sem) < 150
    assert res["lab"].shape == out and len(np.unique(res["lab"])) == k


@pytest.mark.parametrize("bands", [777, 1 << 21])
def test_streamed_panoptic_ties_go_to_the_first_query(bands, monkeypatch):
    """panoptic_streamed compares one query at a time; a later query must win only when strictly greater, as
    argmax's first maximum: query 0 covers A and B, query 1 only B with the same logits and score there, so
    query 0 keeps B and query 1 (no pixel won) is no segment. Ties to the last query would make two segments."""
    monkeypatch.setattr(pp, "BAND_ELEMENTS", bands)
    cls = np.zeros((3, 4), np.float32)
    cls[0, 0] = cls[1, 0] = 20.0  # same thing class, bit-identical scores
    cls[2, 3] = 20.0  # void: dropped
    masks = np.full((3, 9, 11), -6.0, np.float32)
    masks[0, :, :7] = 4.0  # A: columns 0..3, B: columns 4..6
    masks[1, :, 4:7] = 4.0
    ref_seg, ref_info = pp.panoptic_inference(cls, masks, thing_ids=[0, 1])
    seg, info = pp.panoptic_streamed(cls, masks, pp.Resampler(np.eye(9), np.eye(11)), thing_ids=[0, 1])
    assert info == ref_info == [{"id": 1, "isthing": True, "category_id": 0}]
    np.testing.assert_array_equal(seg, ref_seg)
    assert (seg[:, :7] == 1).all() and (seg[:, 7:] == 0).all()
