"""ZegFormer's CLIP crop classifier (gzss evaluation, CLIP_CLS_STYLE "cropmask"), static-shaped and exportable,
and the PyTorch reference of ZegFormer's semantic inference with and without it.

Per image and query, as upstream `MaskFormer.forward` (ZegFormer 8cb9e8f):
1. CLIP input: (image - CLIP mean) / CLIP std, zero outside the image (upstream pads AFTER normalising);
2. the query's mask logits, bilinearly upsampled to the padded size, binarised with sigmoid > 0.5;
3. masked image = CLIP input * binary mask;
4. tight box of the mask: x_max = argmax of the cumulative column counts (= LAST non-empty column; first index of
   the maximum), x_min = argmin of those cumulative counts with zeros replaced by +inf (= FIRST non-empty column;
   0 for an empty mask), same for y; if (y_max - y_min) * (x_max - x_min) == 0 (empty, one row or one column) the
   box is the whole padded image (0, 0, W, H). Coordinates are pixel indices used as-is (no +1);
5. RoIAlign(masked image, box, 224x224, spatial_scale 1, sampling_ratio -1 = adaptive ceil(roi_size / 224),
   aligned=True), written here as two per-box interpolation matrices (rows x image x columns), which is exactly
   the average of the bilinear samples and needs no data-dependent shapes: the per-box sample count is masked
   inside a fixed maximum grid;
6. CLIP image tower -> L2-normalised crop embedding; clip_logits = exp(CLIP logit_scale) * f @ text_clip^T.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .clip import CLIP


def mask_boxes(binary: torch.Tensor) -> torch.Tensor:
    """binary [N,H,W] bool -> boxes [N,4] float (x_min, y_min, x_max, y_max), upstream's rule (module docstring)."""
    _, h, w = binary.shape
    counts = binary.to(torch.int32)
    x_lo, x_hi = _extent(counts.sum(dim=1), w)  # column counts
    y_lo, y_hi = _extent(counts.sum(dim=2), h)  # row counts
    degenerate = (y_hi - y_lo) * (x_hi - x_lo) == 0
    zero = torch.zeros_like(x_lo)
    x_lo = torch.where(degenerate, zero, x_lo)
    y_lo = torch.where(degenerate, zero, y_lo)
    x_hi = torch.where(degenerate, torch.full_like(x_hi, w), x_hi)
    y_hi = torch.where(degenerate, torch.full_like(y_hi, h), y_hi)
    return torch.stack((x_lo, y_lo, x_hi, y_hi), dim=1).to(torch.float32)


def _extent(counts: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last index with a non-zero count; (0, 0) when all counts are zero (upstream's ties)."""
    nonzero = counts > 0
    idx = torch.arange(size, device=counts.device, dtype=torch.int64).expand_as(counts)
    last = torch.where(nonzero, idx, torch.zeros_like(idx)).amax(dim=1)
    first = torch.where(nonzero, idx, torch.full_like(idx, size)).amin(dim=1)
    first = torch.where(nonzero.any(dim=1), first, torch.zeros_like(first))
    return first, last


def _axis_weights(lo: torch.Tensor, hi: torch.Tensor, size: int, out: int, max_grid: int) -> torch.Tensor:
    """[N, out, size]: row k of box n averages the bilinear weights of its adaptive sample points along one axis.

    torchvision roi_align (aligned=True): start = lo - 0.5, length = hi - lo, bin = length / out,
    grid = ceil(length / out) samples per bin at start + p*bin + (k + 0.5) * bin / grid; a sample outside
    [-1, size] contributes 0, otherwise it is clamped to [0, size-1] and interpolated linearly.
    """
    start = lo - 0.5
    length = hi - lo
    bin_size = length / out
    grid = torch.ceil(length / out)
    safe_grid = grid.clamp(min=1.0)
    p = torch.arange(out, device=lo.device, dtype=torch.float32)
    r = torch.arange(size, device=lo.device, dtype=torch.float32)
    acc = torch.zeros(lo.shape[0], out, size, device=lo.device, dtype=torch.float32)
    for k in range(max_grid):
        pos = start[:, None] + p[None, :] * bin_size[:, None] + (k + 0.5) * bin_size[:, None] / safe_grid[:, None]
        use = (grid[:, None] > k) & (pos >= -1.0) & (pos <= float(size))
        c = pos.clamp(min=0.0, max=float(size - 1))
        weight = F.relu(1.0 - (c[:, :, None] - r[None, None, :]).abs())
        acc = acc + weight * use[:, :, None].to(torch.float32)
    return acc / safe_grid[:, None, None]


def roi_align_aligned(images: torch.Tensor, boxes: torch.Tensor, out: int, max_grid: int | None = None):
    """torchvision.ops.roi_align(images, boxes, out, spatial_scale=1, sampling_ratio=-1, aligned=True) with ONE box
    per image (images [N,C,H,W], boxes [N,4] x1,y1,x2,y2) -> [N,C,out,out].

    max_grid: an upper bound of ceil(box side / out); ceil(max(H, W) / out) covers every box inside the image
    (the default when H and W are concrete). Samples beyond a box's own grid are masked out, so the result is exact.
    """
    h, w = images.shape[-2:]
    if max_grid is None:
        max_grid = math.ceil(max(int(h), int(w)) / out)
    wy = _axis_weights(boxes[:, 1], boxes[:, 3], h, out, max_grid)  # [N, out, H]
    wx = _axis_weights(boxes[:, 0], boxes[:, 2], w, out, max_grid)  # [N, out, W]
    rows = wy[:, None] @ images  # [N, C, out, W]
    return rows @ wx.transpose(1, 2)[:, None]  # [N, C, out, out]


class CLIPCropClassifier(nn.Module):
    """Graph `crop_classifier`:
    (images [B,3,H,W] RGB 0..255 (padded, any pad value), image_sizes [B,2] int64 (valid height, width),
     mask_logits [B,Q,H/4,W/4] (the segmenter's), text_embeddings_clip [C,D] L2-normalised)
    -> clip_logits [B,Q,C] = exp(logit_scale) * normalised CLIP embedding of each query's masked box crop @ text^T.
    """

    def __init__(self, clip: CLIP, clip_pixel_mean, clip_pixel_std, max_grid: int | None = None) -> None:
        super().__init__()
        self.visual = clip.visual
        self.logit_scale = clip.logit_scale
        self.resolution = clip.spec.image_resolution
        self.max_grid = max_grid
        self.register_buffer("clip_mean", torch.tensor(clip_pixel_mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("clip_std", torch.tensor(clip_pixel_std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def crops(self, images: torch.Tensor, image_sizes: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """[B*Q, 3, R, R] CLIP-normalised masked box crops (the CLIP tower's input)."""
        b, _, h, w = images.shape
        q = mask_logits.shape[1]
        ys = torch.arange(h, device=images.device)
        xs = torch.arange(w, device=images.device)
        valid = (ys[None, :, None] < image_sizes[:, 0, None, None]) & (xs[None, None, :] < image_sizes[:, 1, None, None])
        clip_images = (images - self.clip_mean) / self.clip_std * valid[:, None].to(images.dtype)
        up = F.interpolate(mask_logits, size=(h, w), mode="bilinear", align_corners=False)
        binary = up.sigmoid() > 0.5  # [B,Q,H,W]
        masked = (clip_images[:, None] * binary[:, :, None].to(images.dtype)).reshape(b * q, 3, h, w)
        boxes = mask_boxes(binary.reshape(b * q, h, w))
        return roi_align_aligned(masked, boxes, self.resolution, self.max_grid)

    def forward(self, images, image_sizes, mask_logits, text_embeddings_clip):
        b, q = mask_logits.shape[:2]
        emb = self.visual(self.crops(images, image_sizes, mask_logits))
        emb = emb / emb.norm(dim=-1, keepdim=True)
        logits = self.logit_scale.exp() * emb @ text_embeddings_clip.t()
        return logits.reshape(b, q, -1)


def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor, padded_hw, image_hw, out_hw, *,
                       clip_logits: torch.Tensor | None = None, seen_ids=(), unseen_ids=(), ensembling: bool = False,
                       ensembling_all_cls: bool = False, gzero_calibrate: float = -1.0) -> torch.Tensor:
    """PyTorch reference of upstream ZegFormer's per-image semantic output [C, out_h, out_w] (one image).

    class_logits [Q, C+1] (void last), mask_logits [Q, h, w] (stride 4 of the padded input), clip_logits [Q, C]
    (the crop classifier's, or None). Masks are upsampled to the padded size, scores einsum'd there, cropped to
    the image and resized (bilinear) to the output size; then seen scores are lowered by gzero_calibrate if > 0.
    """
    masks = F.interpolate(mask_logits[None], size=tuple(padded_hw), mode="bilinear", align_corners=False)[0]
    if clip_logits is None:
        scores = F.softmax(class_logits, dim=-1)[:, :-1]
    else:
        clip_full = torch.cat((clip_logits, class_logits[:, -1:]), dim=1)  # ZegFormer's void logit appended
        if ensembling or ensembling_all_cls:
            lam = 2.0 / 3.0
            p_zeg = F.softmax(class_logits, dim=-1)[:, :-1]
            p_clip = F.softmax(clip_full, dim=-1)[:, :-1]
            if ensembling:
                seen = torch.as_tensor(list(seen_ids), dtype=torch.long)
                unseen = torch.as_tensor(list(unseen_ids), dtype=torch.long)
                p_clip = p_clip.clone()
                p_clip[:, seen] = p_clip[:, seen].mean(dim=1, keepdim=True)
                scores = p_zeg.clone()
                scores[:, seen] = p_zeg[:, seen] ** lam * p_clip[:, seen] ** (1 - lam)
                scores[:, unseen] = p_zeg[:, unseen] ** (1 - lam) * p_clip[:, unseen] ** lam
            else:
                scores = p_zeg ** (1 - lam) * p_clip ** lam
        else:
            # CLIP alone: upstream then runs the usual softmax-over-C+1 semantic inference on these logits.
            scores = F.softmax(clip_full, dim=-1)[:, :-1]
    sem = torch.einsum("qc,qhw->chw", scores, masks.sigmoid())
    sem = sem[:, :image_hw[0], :image_hw[1]]
    sem = F.interpolate(sem[None], size=tuple(out_hw), mode="bilinear", align_corners=False)[0]
    if gzero_calibrate > 0 and len(seen_ids):
        sem = sem.clone()
        sem[torch.as_tensor(list(seen_ids), dtype=torch.long)] -= gzero_calibrate
    return sem
