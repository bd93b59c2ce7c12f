"""Accuracy metrics for backend-vs-reference and prediction-vs-ground-truth comparisons.

All metrics can be split by COCO size bucket (small < 32^2, medium < 96^2, large >= 96^2 pixels, measured at the
original image size). Values are floats or None where a metric is undefined (e.g. PQ when the reference produced
no segment at all: "N/A", never a silent 100).

* `TensorAgreement`: raw-tensor agreement (max abs, relative L2 = ||a - b|| / ||b||, cosine, sign agreement),
  accumulated over images, optionally restricted to a pixel region (the pixels of one size bucket).
* `PanopticQuality`: PQ/SQ/RQ (x100) following panopticapi (IoU > 0.5 matching of same-category segments,
  void pixels left out of the IoU, unmatched predictions mostly on void/crowd are not false positives,
  category-averaged). TP and FN go to the bucket of the ground-truth segment, FP to the bucket of the predicted
  segment.
* `SemanticAgreement`: pixel agreement and mIoU (x100, classes present in prediction or ground truth) from a
  confusion matrix, optionally restricted to a pixel region.
* `mask_ap`: instance mask AP (x100) via pycocotools COCOeval; its areaRng gives the buckets.
"""
from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Iterable, Sequence

import numpy as np

BUCKETS: tuple[str, ...] = ("small", "medium", "large")
ALL = "all"
BUCKET_ORDER: tuple[str, ...] = BUCKETS + (ALL,)
SMALL_MAX = 32.0**2
MEDIUM_MAX = 96.0**2


def bucket_of(area: float) -> str:
    """COCO size bucket of an area in pixels."""
    if area < 0:
        raise ValueError(f"negative area {area}")
    if area < SMALL_MAX:
        return "small"
    if area < MEDIUM_MAX:
        return "medium"
    return "large"


# ------------------------------------------------------------------------------------------- raw tensors
class TensorAgreement:
    """Agreement of a tensor `a` (backend) with a reference `b`, accumulated over several arrays."""

    def __init__(self) -> None:
        self.sq_diff = 0.0
        self.sq_ref = 0.0
        self.sq_a = 0.0
        self.dot = 0.0
        self.max_abs = 0.0
        self.sign_same = 0
        self.count = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        a = np.asarray(a, np.float64).ravel()
        b = np.asarray(b, np.float64).ravel()
        if a.shape != b.shape:
            raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
        if a.size == 0:
            return
        d = a - b
        self.sq_diff += float(d @ d)
        self.sq_ref += float(b @ b)
        self.sq_a += float(a @ a)
        self.dot += float(a @ b)
        self.max_abs = max(self.max_abs, float(np.abs(d).max()))
        self.sign_same += int(np.count_nonzero((a > 0) == (b > 0)))
        self.count += a.size

    def result(self) -> dict[str, float | None]:
        if self.count == 0:
            return {"max_abs": None, "rel_l2": None, "cosine": None, "sign_agreement": None, "n": 0}
        rel = math.sqrt(self.sq_diff) / math.sqrt(self.sq_ref) if self.sq_ref > 0 else (0.0 if self.sq_diff == 0 else math.inf)
        den = math.sqrt(self.sq_a) * math.sqrt(self.sq_ref)
        cos = self.dot / den if den > 0 else (1.0 if self.sq_diff == 0 else 0.0)
        return {"max_abs": self.max_abs, "rel_l2": rel, "cosine": cos,
                "sign_agreement": self.sign_same / self.count, "n": self.count}


def tensor_agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float | None]:
    """One-shot `TensorAgreement` of backend tensor `a` against reference `b`."""
    acc = TensorAgreement()
    acc.add(a, b)
    return acc.result()


# ---------------------------------------------------------------------------------------------- panoptic
def _areas(seg: np.ndarray) -> dict[int, int]:
    ids, counts = np.unique(seg, return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts)}


class PanopticQuality:
    """PQ/SQ/RQ per size bucket, accumulated over images (panopticapi semantics, category-averaged)."""

    def __init__(self, void_id: int = 0) -> None:
        self.void_id = void_id
        # bucket -> category -> [iou_sum, tp, fp, fn]
        self.stats: dict[str, dict[int, list[float]]] = {b: {} for b in BUCKET_ORDER}
        self.images = 0
        self.gt_segments = 0

    def _bump(self, bucket: str, cat: int, iou: float = 0.0, tp: int = 0, fp: int = 0, fn: int = 0) -> None:
        for b in (bucket, ALL):
            s = self.stats[b].setdefault(int(cat), [0.0, 0, 0, 0])
            s[0] += iou
            s[1] += tp
            s[2] += fp
            s[3] += fn

    def add(self, pred_seg: np.ndarray, pred_segments: Sequence[dict[str, Any]], gt_seg: np.ndarray,
            gt_segments: Sequence[dict[str, Any]]) -> None:
        """pred_seg/gt_seg: int (H, W) segment-id maps (0 = void); *_segments: dicts with id, category_id and
        optionally iscrowd (ground truth). Segment ids absent from the map have zero area and are skipped."""
        pred_seg = np.asarray(pred_seg, np.int64)
        gt_seg = np.asarray(gt_seg, np.int64)
        if pred_seg.shape != gt_seg.shape:
            raise ValueError(f"panoptic maps differ in shape: {pred_seg.shape} vs {gt_seg.shape}")
        self.images += 1
        p_area, g_area = _areas(pred_seg), _areas(gt_seg)
        preds = {int(s["id"]): s for s in pred_segments if p_area.get(int(s["id"]), 0) > 0 and int(s["id"]) != self.void_id}
        gts = {int(s["id"]): s for s in gt_segments if g_area.get(int(s["id"]), 0) > 0 and int(s["id"]) != self.void_id}
        base = int(pred_seg.max()) + 1 if pred_seg.size else 1
        inter = _areas(gt_seg * base + pred_seg)
        pairs: dict[tuple[int, int], int] = {(k // base, k % base): v for k, v in inter.items()}

        crowd_by_cat = {int(g["category_id"]): gid for gid, g in gts.items() if g.get("iscrowd", 0)}
        matched_p: set[int] = set()
        matched_g: set[int] = set()
        for (gid, pid), n in pairs.items():
            if gid not in gts or pid not in preds:
                continue
            g, p = gts[gid], preds[pid]
            if g.get("iscrowd", 0) or int(g["category_id"]) != int(p["category_id"]):
                continue
            void_overlap = pairs.get((self.void_id, pid), 0)
            union = p_area[pid] + g_area[gid] - n - void_overlap
            iou = n / union
            if iou > 0.5:
                matched_p.add(pid)
                matched_g.add(gid)
                self._bump(bucket_of(g_area[gid]), int(g["category_id"]), iou=iou, tp=1)
        for gid, g in gts.items():
            if gid in matched_g or g.get("iscrowd", 0):
                continue
            self.gt_segments += 1
            self._bump(bucket_of(g_area[gid]), int(g["category_id"]), fn=1)
        self.gt_segments += len(matched_g)
        for pid, p in preds.items():
            if pid in matched_p:
                continue
            ignored = pairs.get((self.void_id, pid), 0)
            crowd = crowd_by_cat.get(int(p["category_id"]))
            if crowd is not None:
                ignored += pairs.get((crowd, pid), 0)
            if ignored / p_area[pid] > 0.5:
                continue
            self._bump(bucket_of(p_area[pid]), int(p["category_id"]), fp=1)

    def result(self) -> dict[str, dict[str, float | int | None]]:
        out: dict[str, dict[str, float | int | None]] = {}
        for b in BUCKET_ORDER:
            cats = {c: s for c, s in self.stats[b].items() if s[1] + s[2] + s[3] > 0}
            tp = sum(int(s[1]) for s in cats.values())
            fp = sum(int(s[2]) for s in cats.values())
            fn = sum(int(s[3]) for s in cats.values())
            if not cats:
                out[b] = {"pq": None, "sq": None, "rq": None, "tp": 0, "fp": 0, "fn": 0, "categories": 0}
                continue
            pq, sq, rq = [], [], []
            for iou, t, f_p, f_n in cats.values():
                den = t + 0.5 * f_p + 0.5 * f_n
                pq.append(iou / den)
                sq.append(iou / t if t else 0.0)
                rq.append(t / den)
            out[b] = {"pq": 100 * float(np.mean(pq)), "sq": 100 * float(np.mean(sq)), "rq": 100 * float(np.mean(rq)),
                      "tp": tp, "fp": fp, "fn": fn, "categories": len(cats)}
        return out


# ---------------------------------------------------------------------------------------------- semantic
class SemanticAgreement:
    """Pixel agreement and mIoU of label maps from a confusion matrix (ignore label excluded)."""

    def __init__(self, num_classes: int, ignore_label: int = 255) -> None:
        self.k = int(num_classes)
        self.ignore = ignore_label
        self.conf = np.zeros((self.k, self.k), np.int64)  # [reference/gt, prediction]

    def add(self, pred: np.ndarray, ref: np.ndarray, region: np.ndarray | None = None) -> None:
        pred = np.asarray(pred).ravel().astype(np.int64)
        ref = np.asarray(ref).ravel().astype(np.int64)
        if pred.shape != ref.shape:
            raise ValueError(f"label maps differ in shape: {pred.shape} vs {ref.shape}")
        keep = (ref != self.ignore) & (ref >= 0) & (ref < self.k)
        if region is not None:
            keep &= np.asarray(region, bool).ravel()
        p, r = pred[keep], ref[keep]
        if ((p < 0) | (p >= self.k)).any():
            raise ValueError("prediction label outside [0, num_classes)")
        self.conf += np.bincount(r * self.k + p, minlength=self.k * self.k).reshape(self.k, self.k)

    def result(self) -> dict[str, float | int | None]:
        total = int(self.conf.sum())
        if total == 0:
            return {"pixel_agreement": None, "miou": None, "pixels": 0, "classes": 0}
        tp = np.diag(self.conf).astype(np.float64)
        union = self.conf.sum(0) + self.conf.sum(1) - tp
        present = union > 0
        return {"pixel_agreement": float(tp.sum() / total), "miou": 100 * float(np.mean(tp[present] / union[present])),
                "pixels": total, "classes": int(present.sum())}


# ---------------------------------------------------------------------------------------------- instance
def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_util

    r = mask_util.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def mask_ap(gts: Sequence[dict[str, np.ndarray]], dets: Sequence[dict[str, np.ndarray]]) -> dict[str, float | None]:
    """Instance mask AP (x100, IoU .50:.95, COCO 101-point) overall and per area bucket, and AP50.

    gts[i]: {"masks": bool [N, H, W], "classes": int [N]} for image i; dets[i]: the same plus "scores" [N].
    A bucket without any ground truth gives None (COCOeval's -1). Areas are mask pixel counts.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(gts) != len(dets):
        raise ValueError("gts and dets must list the same images")
    images, anns, results, cats = [], [], [], set()
    for i, (g, d) in enumerate(zip(gts, dets)):
        h, w = np.asarray(g["masks"]).shape[-2:] if np.asarray(g["masks"]).ndim == 3 else np.asarray(d["masks"]).shape[-2:]
        images.append({"id": i + 1, "height": int(h), "width": int(w)})
        for m, c in zip(np.asarray(g["masks"], bool), np.asarray(g["classes"])):
            area = int(m.sum())
            if area == 0:
                continue
            ys, xs = np.nonzero(m)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1, "segmentation": _rle(m),
                         "area": area, "bbox": bbox, "iscrowd": 0})
            cats.add(int(c) + 1)
        for m, c, s in zip(np.asarray(d["masks"], bool), np.asarray(d["classes"]), np.asarray(d["scores"])):
            results.append({"image_id": i + 1, "category_id": int(c) + 1, "segmentation": _rle(m), "score": float(s)})
            cats.add(int(c) + 1)
    keys = ("ap", "ap50", "ap_small", "ap_medium", "ap_large")
    if not anns:
        return {k: None for k in keys} | {"gt_instances": 0, "detections": len(results)}
    if not results:
        # COCO.loadRes cannot take an empty list; no detections = AP 0 wherever there is ground truth.
        buckets = {bucket_of(a["area"]) for a in anns}
        return {"ap": 0.0, "ap50": 0.0, **{f"ap_{b}": (0.0 if b in buckets else None) for b in BUCKETS},
                "gt_instances": len(anns), "detections": 0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in sorted(cats)]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    st = ev.stats
    vals = [st[0], st[1], st[3], st[4], st[5]]
    return {k: (None if v < 0 else 100 * float(v)) for k, v in zip(keys, vals)} | {
        "gt_instances": len(anns), "detections": len(results)}


def bucket_regions(seg: np.ndarray, segments: Iterable[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Pixel masks of the segments of each size bucket (by segment area in `seg`), plus 'all' (every pixel)."""
    seg = np.asarray(seg)
    areas = _areas(seg)
    lut_bucket: dict[str, list[int]] = {b: [] for b in BUCKETS}
    for s in segments:
        sid = int(s["id"])
        if sid and areas.get(sid, 0) > 0:
            lut_bucket[bucket_of(areas[sid])].append(sid)
    out = {b: np.isin(seg, ids) if ids else np.zeros(seg.shape, bool) for b, ids in lut_bucket.items()}
    out[ALL] = np.ones(seg.shape, bool)
    return out
