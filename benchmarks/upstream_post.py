"""Upstream's post-processing in PyTorch, as a benchmark peer: what a user of the research code runs after the network.

PADing's `forward` (Mask2Former's logic; re-stated, not copied): upsample the mask logits to the padded input
(bilinear), `sem_seg_postprocess` (crop to the image, resize to the output size) before or after inference, then
`semantic_inference` (softmax x sigmoid einsum), `panoptic_inference` (per-query loop over kept masks) and
`instance_inference` (top-k of query x class scores, mask scores, boxes from the binary masks). Everything runs on
full [Q, H, W] float tensors at the output size, as upstream does; zsdeploy's own post-processing
(runtime/postprocess.py) gives the same results in bounded memory. `zsd-bench latency` uses this for the peers
`upstream` (torch eager network + this: the research code end to end) and `openvino-bf16-upstream-post` (OpenVINO
bf16 "by hand" + this), so the table shows what zsdeploy's pipeline adds over them.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from zsdeploy.runtime.postprocess import PostprocessConfig
from zsdeploy.runtime.preprocess import Batch

from .accuracy import BenchSegmenter


def _torch():
    import torch
    import torch.nn.functional as F

    return torch, F


def sem_seg_postprocess(result, image_hw: tuple[int, int], output_hw: tuple[int, int]):
    """detectron2's sem_seg_postprocess: crop the valid image region, resize to the output size."""
    _, F = _torch()
    ih, iw = image_hw
    return F.interpolate(result[None, :, :ih, :iw], size=tuple(output_hw), mode="bilinear", align_corners=False)[0]


def semantic_inference(mask_cls, mask_pred):
    torch, F = _torch()
    return torch.einsum("qc,qhw->chw", F.softmax(mask_cls, dim=-1)[..., :-1], mask_pred.sigmoid())


def panoptic_inference(mask_cls, mask_pred, cfg: PostprocessConfig) -> tuple[np.ndarray, list[dict[str, Any]]]:
    torch, F = _torch()
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    mask_pred = mask_pred.sigmoid()
    keep = labels.ne(cfg.num_classes) & (scores > cfg.object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_pred[keep]
    cur_prob_masks = cur_scores.view(-1, 1, 1) * cur_masks
    h, w = cur_masks.shape[-2:]
    panoptic_seg = torch.zeros((h, w), dtype=torch.int32)
    segments_info: list[dict[str, Any]] = []
    if cur_masks.shape[0] == 0:
        return panoptic_seg.numpy(), segments_info
    things = set(cfg.thing_ids)
    cur_mask_ids = cur_prob_masks.argmax(0)
    stuff_memory: dict[int, int] = {}
    current_segment_id = 0
    for k in range(cur_classes.shape[0]):
        pred_class = int(cur_classes[k].item())
        isthing = pred_class in things
        mask_area = (cur_mask_ids == k).sum().item()
        original_area = (cur_masks[k] >= 0.5).sum().item()
        mask = (cur_mask_ids == k) & (cur_masks[k] >= 0.5)
        if mask_area > 0 and original_area > 0 and mask.sum().item() > 0:
            if mask_area / original_area < cfg.overlap_threshold:
                continue
            if not isthing:
                if pred_class in stuff_memory:
                    panoptic_seg[mask] = stuff_memory[pred_class]
                    continue
                stuff_memory[pred_class] = current_segment_id + 1
            current_segment_id += 1
            panoptic_seg[mask] = current_segment_id
            segments_info.append({"id": current_segment_id, "isthing": bool(isthing), "category_id": pred_class})
    return panoptic_seg.numpy(), segments_info


def instance_inference(mask_cls, mask_pred, cfg: PostprocessConfig) -> dict[str, np.ndarray]:
    torch, F = _torch()
    q, k = mask_cls.shape[0], cfg.num_classes
    scores = F.softmax(mask_cls, dim=-1)[:, :-1]
    labels = torch.arange(k).unsqueeze(0).repeat(q, 1).flatten(0, 1)
    scores_per_image, topk_indices = scores.flatten(0, 1).topk(min(cfg.detections_per_image, q * k), sorted=False)
    labels_per_image = labels[topk_indices]
    mask_pred = mask_pred[topk_indices // k]
    if cfg.panoptic_on:  # upstream keeps only things when panoptic is on too
        keep = torch.zeros_like(scores_per_image, dtype=torch.bool)
        for i, lab in enumerate(labels_per_image.tolist()):
            keep[i] = lab in set(cfg.thing_ids)
        scores_per_image, labels_per_image, mask_pred = scores_per_image[keep], labels_per_image[keep], mask_pred[keep]
    pred_masks = (mask_pred > 0).float()
    flat = pred_masks.flatten(1)
    mask_scores = (mask_pred.sigmoid().flatten(1) * flat).sum(1) / (flat.sum(1) + 1e-6)
    # BitMasks.get_bounding_boxes: per mask, the extent of its rows/columns that have any pixel
    boxes = torch.zeros(pred_masks.shape[0], 4, dtype=torch.float32)
    rows, cols = pred_masks.any(dim=2), pred_masks.any(dim=1)
    for i in range(pred_masks.shape[0]):
        y, x = torch.where(rows[i])[0], torch.where(cols[i])[0]
        if len(x) and len(y):
            boxes[i] = torch.tensor([x[0], y[0], x[-1] + 1, y[-1] + 1], dtype=torch.float32)
    return {"pred_masks": pred_masks.bool().numpy(), "scores": (scores_per_image * mask_scores).numpy(),
            "pred_classes": labels_per_image.numpy(), "pred_boxes": boxes.numpy()}


def upstream_postprocess(class_logits: np.ndarray, mask_logits: np.ndarray, *, task: str, padded_hw: tuple[int, int],
                         image_hw: tuple[int, int], output_hw: tuple[int, int], cfg: PostprocessConfig) -> dict[str, Any]:
    """One image's `task` result the way upstream computes it (full tensors at the output size)."""
    torch, F = _torch()
    mask_cls = torch.from_numpy(np.ascontiguousarray(class_logits))
    mask_pred = F.interpolate(torch.from_numpy(np.ascontiguousarray(mask_logits))[None], size=tuple(padded_hw),
                              mode="bilinear", align_corners=False)[0]
    if cfg.sem_seg_postprocess_before_inference:
        mask_pred = sem_seg_postprocess(mask_pred, image_hw, output_hw)
    if task == "semantic":
        sem = semantic_inference(mask_cls, mask_pred)
        if not cfg.sem_seg_postprocess_before_inference:
            sem = sem_seg_postprocess(sem, image_hw, output_hw)
        return {"sem_seg": sem.numpy()}
    if task == "panoptic":
        seg, info = panoptic_inference(mask_cls, mask_pred, cfg)
        return {"panoptic_seg": seg, "segments_info": info}
    return {"instances": instance_inference(mask_cls, mask_pred, cfg)}


class UpstreamPostSegmenter(BenchSegmenter):
    """A BenchSegmenter whose post-processing step is upstream's PyTorch code (same pre-processing and network)."""

    def postprocess(self, class_logits: np.ndarray, mask_logits: np.ndarray, batch: Batch, i: int,
                    task: str | None = None, extra: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        return upstream_postprocess(class_logits[i], mask_logits[i], task=task or self.task,
                                    padded_hw=batch.padded_hw, image_hw=batch.image_sizes[i],
                                    output_hw=batch.original_sizes[i], cfg=self.post)
