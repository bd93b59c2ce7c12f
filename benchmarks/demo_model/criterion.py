"""Mask2Former's training objective, written from the paper and its reference recipe:

- Hungarian matching (scipy's linear_sum_assignment) on class cost + sigmoid-BCE + dice mask costs, the mask costs
  on one shared set of uniformly sampled points;
- cross-entropy over K+1 classes with a down-weighted no-object class;
- sigmoid-BCE and dice on importance-sampled points (oversample, keep the most uncertain, add uniform points);
- the same losses on every decoder stage (deep supervision).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch.nn import functional as F


@dataclass(frozen=True)
class LossWeights:
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 784
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """maps [N,1,H,W], coords [N,P,2] normalised (x, y) in [0, 1] -> [N,P] (bilinear, align_corners=False)."""
    return F.grid_sample(maps, 2.0 * coords[:, :, None, :] - 1.0, mode="bilinear", align_corners=False)[:, 0, :, 0]


def _pairwise_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [Q,P], targets [T,P] -> mean BCE of every (query, target) pair [Q,T]."""
    p = logits.shape[1]
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / p


def _pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    prob = logits.sigmoid()
    numerator = 2 * prob @ targets.T
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


@torch.no_grad()
def hungarian_match(class_logits: torch.Tensor, mask_logits: torch.Tensor, classes: list[torch.Tensor],
                    masks: list[torch.Tensor], w: LossWeights) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image (query indices, target indices) minimising class + mask + dice cost."""
    out = []
    for b in range(class_logits.shape[0]):
        if classes[b].numel() == 0:
            out.append((np.zeros(0, np.int64), np.zeros(0, np.int64)))
            continue
        prob = class_logits[b].float().softmax(-1)
        cost_class = -prob[:, classes[b]]
        coords = torch.rand(1, w.num_points, 2, device=mask_logits.device)
        tgt = point_sample(masks[b][:, None].to(mask_logits.dtype), coords.expand(masks[b].shape[0], -1, -1))
        pred = point_sample(mask_logits[b][:, None].float(), coords.expand(mask_logits.shape[1], -1, -1))
        cost = (w.mask_weight * _pairwise_bce(pred, tgt) + w.class_weight * cost_class
                + w.dice_weight * _pairwise_dice(pred, tgt))
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        out.append((rows.astype(np.int64), cols.astype(np.int64)))
    return out


def _uncertain_points(logits: torch.Tensor, w: LossWeights) -> torch.Tensor:
    """logits [N,1,H,W] -> coords [N,P,2]: the most uncertain of oversampled points plus uniform ones."""
    n = logits.shape[0]
    sampled = int(w.num_points * w.oversample_ratio)
    coords = torch.rand(n, sampled, 2, device=logits.device)
    uncertainty = -point_sample(logits, coords).abs()
    k = int(w.importance_sample_ratio * w.num_points)
    idx = uncertainty.topk(k, dim=1).indices
    picked = torch.gather(coords, 1, idx[..., None].expand(-1, -1, 2))
    return torch.cat([picked, torch.rand(n, w.num_points - k, 2, device=logits.device)], dim=1)


def stage_losses(class_logits: torch.Tensor, mask_logits: torch.Tensor, classes: list[torch.Tensor],
                 masks: list[torch.Tensor], w: LossWeights, num_masks: float) -> dict[str, torch.Tensor]:
    """Losses of one decoder stage (class_logits [B,Q,K+1], mask_logits [B,Q,h,w])."""
    class_logits, mask_logits = class_logits.float(), mask_logits.float()
    matches = hungarian_match(class_logits, mask_logits, classes, masks, w)
    b, q, k1 = class_logits.shape
    target_classes = torch.full((b, q), k1 - 1, dtype=torch.int64, device=class_logits.device)
    for i, (rows, cols) in enumerate(matches):
        target_classes[i, torch.as_tensor(rows)] = classes[i][torch.as_tensor(cols)]
    empty_weight = torch.ones(k1, device=class_logits.device)
    empty_weight[-1] = w.no_object_weight
    loss_ce = F.cross_entropy(class_logits.transpose(1, 2), target_classes, empty_weight)

    pred = torch.cat([mask_logits[i, torch.as_tensor(r)] for i, (r, _) in enumerate(matches)])
    tgt = torch.cat([masks[i][torch.as_tensor(c)] for i, (_, c) in enumerate(matches)]).to(pred.dtype)
    if pred.shape[0] == 0:
        zero = mask_logits.sum() * 0.0
        return {"loss_ce": loss_ce, "loss_mask": zero, "loss_dice": zero}
    with torch.no_grad():
        coords = _uncertain_points(pred[:, None], w)
        tgt_pts = point_sample(tgt[:, None], coords)
    pred_pts = point_sample(pred[:, None], coords)
    loss_mask = F.binary_cross_entropy_with_logits(pred_pts, tgt_pts, reduction="none").mean(1).sum() / num_masks
    prob = pred_pts.sigmoid()
    dice = 1 - (2 * (prob * tgt_pts).sum(-1) + 1) / (prob.sum(-1) + tgt_pts.sum(-1) + 1)
    loss_dice = dice.sum() / num_masks
    return {"loss_ce": loss_ce, "loss_mask": loss_mask, "loss_dice": loss_dice}


def set_criterion(predictions: list[tuple[torch.Tensor, torch.Tensor]], classes: list[torch.Tensor],
                  masks: list[torch.Tensor], w: LossWeights) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum over every decoder stage (deep supervision); also the final stage's parts for logging."""
    num_masks = max(float(sum(int(c.numel()) for c in classes)), 1.0)
    masks = [m.float() for m in masks]  # once per batch, not once per stage
    total = torch.zeros(())
    parts: dict[str, float] = {}
    for s, (cls, msk) in enumerate(predictions):
        ls = stage_losses(cls, msk, classes, masks, w, num_masks)
        total = total + w.class_weight * ls["loss_ce"] + w.mask_weight * ls["loss_mask"] + w.dice_weight * ls["loss_dice"]
        if s == len(predictions) - 1:
            parts = {k: float(v.detach()) for k, v in ls.items()}
    return total, parts
