"""Benchmark metrics against cases worked out by hand (the expected numbers are derived in the comments)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from zsdeploy.benchmarks.metrics import (PanopticQuality, SemanticAgreement, TensorAgreement, bucket_of,
                                         bucket_regions, mask_ap, tensor_agreement)


def test_buckets_are_coco_area_ranges():
    # small: area < 32^2 = 1024, medium: < 96^2 = 9216, large: the rest
    assert [bucket_of(a) for a in (0, 1023, 1024, 9215, 9216)] == ["small", "small", "medium", "medium", "large"]


def test_tensor_agreement_by_hand():
    # a = [1, 2, 2], b = [1, 2, 3]: diff = [0, 0, -1] -> max abs 1, ||d|| = 1, ||b|| = sqrt(14)
    # rel L2 = 1/sqrt(14) = 0.26726; cos = (1 + 4 + 6) / (sqrt(9) sqrt(14)) = 11 / 11.2250 = 0.97996
    # signs: all positive in both -> agreement 1
    r = tensor_agreement(np.array([1, 2, 2.0]), np.array([1, 2, 3.0]))
    assert r["max_abs"] == 1.0
    assert r["rel_l2"] == pytest.approx(1 / math.sqrt(14))
    assert r["cosine"] == pytest.approx(11 / (3 * math.sqrt(14)))
    assert r["sign_agreement"] == 1.0
    # accumulation over two arrays equals one concatenated array; sign flips counted: [-1] vs [1] -> 3/4 agree
    acc = TensorAgreement()
    acc.add(np.array([1, 2, 2.0]), np.array([1, 2, 3.0]))
    acc.add(np.array([-1.0]), np.array([1.0]))
    r = acc.result()
    # diff = [0, 0, -1, -2]: ||d|| = sqrt(5), ||b|| = sqrt(15), max abs 2; dot = 11 - 1 = 10, ||a|| = sqrt(10)
    assert r["max_abs"] == 2.0
    assert r["rel_l2"] == pytest.approx(math.sqrt(5 / 15))
    assert r["cosine"] == pytest.approx(10 / (math.sqrt(10) * math.sqrt(15)))
    assert r["sign_agreement"] == 0.75
    assert TensorAgreement().result()["rel_l2"] is None


def _pq_case():
    # 40 x 40 image. Ground truth: segment 1 (category 5) = rows 0..29 (30 x 40 = 1200 px -> medium),
    # segment 2 (category 7) = rows 30..39 (10 x 40 = 400 px -> small).
    gt = np.ones((40, 40), np.int32)
    gt[30:] = 2
    gt_info = [{"id": 1, "category_id": 5}, {"id": 2, "category_id": 7}]
    # Prediction: segment 1 (category 5) = rows 0..33 (1360 px): IoU with gt 1 = 1200 / 1360 = 0.88235 -> TP.
    # segment 2 (category 7) = rows 34..39 (240 px): IoU with gt 2 = 240 / 400 = 0.6 -> TP.
    pred = np.ones((40, 40), np.int32)
    pred[34:] = 2
    pred_info = [{"id": 1, "category_id": 5}, {"id": 2, "category_id": 7}]
    return pred, pred_info, gt, gt_info


def test_pq_by_hand_two_buckets():
    pred, pred_info, gt, gt_info = _pq_case()
    pq = PanopticQuality()
    pq.add(pred, pred_info, gt, gt_info)
    r = pq.result()
    # medium: one TP (cat 5) with IoU 1200/1360 -> PQ = SQ = 88.235, RQ = 100
    assert r["medium"]["pq"] == pytest.approx(100 * 1200 / 1360)
    assert r["medium"]["rq"] == 100 and (r["medium"]["tp"], r["medium"]["fp"], r["medium"]["fn"]) == (1, 0, 0)
    # small: one TP (cat 7) with IoU 0.6 -> PQ = 60
    assert r["small"]["pq"] == pytest.approx(60.0)
    # large: nothing -> N/A, not 100
    assert r["large"]["pq"] is None
    # all: mean over the two categories: (88.235 + 60) / 2 = 74.118
    assert r["all"]["pq"] == pytest.approx(100 * (1200 / 1360 + 0.6) / 2)


def test_pq_unmatched_iou_half_is_fp_and_fn():
    # Prediction segment 2 shrinks to rows 35..39 (200 px): IoU = 200 / 400 = 0.5, not > 0.5 -> no match.
    # Category 7: FP (pred 200 px -> small) + FN (gt 400 px -> small): PQ_7 = 0 / (0 + .5 + .5) = 0, RQ_7 = 0.
    pred, pred_info, gt, gt_info = _pq_case()
    pred[:] = 1
    pred[35:] = 2
    pq = PanopticQuality()
    pq.add(pred, pred_info, gt, gt_info)
    r = pq.result()
    assert r["small"]["pq"] == 0.0 and (r["small"]["fp"], r["small"]["fn"]) == (1, 1)
    # cat 5: pred rows 0..34 (1400 px), IoU = 1200/1400 = 0.857 -> all: PQ = (85.714 + 0) / 2, RQ = (100 + 0) / 2
    assert r["all"]["pq"] == pytest.approx(100 * (1200 / 1400) / 2)
    assert r["all"]["rq"] == pytest.approx(50.0)
    assert r["all"]["sq"] == pytest.approx(100 * (1200 / 1400) / 2)  # panopticapi: SQ of a category without TP is 0


def test_pq_void_is_not_penalised():
    # Ground truth 1 x 10: pixels 0..3 void (0), 4..9 segment 1 (cat 3). Prediction: one segment over 2..9
    # (8 px, 2 of them on void). IoU = 6 / (8 + 6 - 6 - 2) = 1.0 -> PQ 100.
    gt = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]])
    pred = np.array([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1]])
    pq = PanopticQuality()
    pq.add(pred, [{"id": 1, "category_id": 3}], gt, [{"id": 1, "category_id": 3}])
    assert pq.result()["small"]["pq"] == pytest.approx(100.0)
    # A prediction lying mostly on void (3 of 4 px) is ignored, not a false positive.
    pred2 = np.array([[2, 2, 2, 0, 2, 0, 0, 0, 0, 0]])
    pq2 = PanopticQuality()
    pq2.add(pred2, [{"id": 2, "category_id": 3}], gt, [{"id": 1, "category_id": 3}])
    assert pq2.result()["small"]["fp"] == 0 and pq2.result()["small"]["fn"] == 1


def test_pq_without_reference_segments_is_na():
    pq = PanopticQuality()
    pq.add(np.zeros((4, 4)), [], np.zeros((4, 4)), [])
    assert all(v["pq"] is None for v in pq.result().values())


def test_semantic_agreement_by_hand():
    # reference:      prediction:
    #  0 0 1 1         0 0 1 1
    #  0 0 1 1         0 1 1 1
    # 255 2 2 2       255 2 2 0
    # valid pixels: 11 (one ignore). correct: 9 -> agreement 9/11.
    # IoU class 0: tp 3, ref 4, pred 4 -> 3/5; class 1: tp 4, ref 4, pred 5 -> 4/5; class 2: tp 2, ref 3, pred 2
    # -> 2/3. mIoU = (0.6 + 0.8 + 0.6667) / 3 = 68.889
    ref = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [255, 2, 2, 2]])
    pred = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [255, 2, 2, 0]])
    pred[2, 0] = 3  # prediction at an ignored pixel does not count
    acc = SemanticAgreement(4)
    acc.add(pred, ref)
    r = acc.result()
    assert r["pixel_agreement"] == pytest.approx(9 / 11)
    assert r["miou"] == pytest.approx(100 * (0.6 + 0.8 + 2 / 3) / 3)
    assert r["classes"] == 3  # class 3 appears only at the ignored pixel
    # restricted to the region of row 2 (3 valid px, 2 correct): agreement 2/3;
    # IoU class 2: tp 2, ref 3, pred 2 -> 2/3; class 0: tp 0, ref 0, pred 1 -> 0  => mIoU 33.33
    region = np.zeros((3, 4), bool)
    region[2] = True
    acc2 = SemanticAgreement(4)
    acc2.add(pred, ref, region)
    assert acc2.result()["pixel_agreement"] == pytest.approx(2 / 3)
    assert acc2.result()["miou"] == pytest.approx(100 / 3)


def _box(h, w, y0, x0, y1, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_mask_ap_buckets_by_hand():
    # 64 x 64 image, one category. GT A: 10x10 square (100 px, small), GT B: 40x40 (1600 px, medium).
    # Detections: B exactly (score 0.9), A shifted by 6 px (IoU = 40 / 160 = 0.25 < 0.5 at every threshold)
    # with score 0.8.
    h = w = 64
    a = _box(h, w, 0, 0, 10, 10)
    a_shift = _box(h, w, 0, 6, 10, 16)
    b = _box(h, w, 20, 20, 60, 60)
    gts = [{"masks": np.stack([a, b]), "classes": np.array([0, 0])}]
    dets = [{"masks": np.stack([b, a_shift]), "classes": np.array([0, 0]), "scores": np.array([0.9, 0.8])}]
    r = mask_ap(gts, dets)
    # all areas: ranked dets -> TP (recall .5, precision 1), FP (recall .5, precision .5). Interpolated precision
    # is 1 at the 51 recall points 0, .01, ..., .50 and 0 at the other 50 -> AP = 51/101 at every IoU threshold.
    assert r["ap"] == pytest.approx(100 * 51 / 101, abs=1e-6)
    assert r["ap50"] == pytest.approx(100 * 51 / 101, abs=1e-6)
    # small: only A counts; det B matches the ignored (medium) GT, det A-shift (100 px, small) is an FP -> AP 0
    assert r["ap_small"] == 0.0
    # medium: only B counts; det B is a TP, det A-shift is unmatched and outside the range -> ignored -> AP 100
    assert r["ap_medium"] == pytest.approx(100.0)
    # large: no ground truth -> N/A
    assert r["ap_large"] is None


def test_mask_ap_edge_cases():
    h = w = 16
    m = _box(h, w, 0, 0, 4, 4)
    none = {"masks": np.zeros((0, h, w), bool), "classes": np.zeros(0, int), "scores": np.zeros(0)}
    # no ground truth anywhere -> every AP N/A
    r = mask_ap([{"masks": np.zeros((0, h, w), bool), "classes": np.zeros(0, int)}],
                [{"masks": m[None], "classes": np.array([1]), "scores": np.array([0.5])}])
    assert r["ap"] is None and r["ap_small"] is None
    # ground truth but no detections -> 0 where GT exists, N/A elsewhere
    r = mask_ap([{"masks": m[None], "classes": np.array([1])}], [none])
    assert r["ap"] == 0.0 and r["ap_small"] == 0.0 and r["ap_medium"] is None


def test_bucket_regions():
    seg = np.zeros((40, 40), np.int32)
    seg[:30] = 1  # 1200 px -> medium
    seg[30:, :5] = 2  # 50 px -> small
    r = bucket_regions(seg, [{"id": 1}, {"id": 2}, {"id": 9}])
    assert r["medium"].sum() == 1200 and r["small"].sum() == 50 and r["large"].sum() == 0 and r["all"].all()
