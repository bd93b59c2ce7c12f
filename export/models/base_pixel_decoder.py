"""BasePixelDecoder (MaskFormer): a top-down FPN over res2..res5 that yields the stride-4 mask features.

Key layout as upstream: the coarsest level has only `layer_{N}` (3x3 conv, no lateral); every finer level i has a
lateral `adapter_{i}` (1x1 conv + norm) whose output is added to the nearest-upsampled coarser result and then
refined by `layer_{i}` (3x3 conv + norm + ReLU). `mask_features` is a 3x3 conv with bias. With a norm ("GN"),
the convs have no bias; with norm "" they have one.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .layers import Conv2dNorm

SUPPORTED_NORMS = ("GN", "")


def _norm(kind: str, channels: int) -> nn.Module | None:
    if kind == "GN":
        return nn.GroupNorm(32, channels)
    if kind == "":
        return None
    raise ValueError(f"unsupported pixel-decoder norm {kind!r}; supported: {SUPPORTED_NORMS}")


class BasePixelDecoder(nn.Module):
    """(res2, res3, res4, res5) -> mask features [B, mask_dim, H/4, W/4]."""

    def __init__(self, in_channels: tuple[int, ...] = (256, 512, 1024, 2048), conv_dim: int = 256,
                 mask_dim: int = 256, norm: str = "GN") -> None:
        super().__init__()
        use_bias = norm == ""
        n = len(in_channels)
        for idx, cin in enumerate(in_channels):
            if idx == n - 1:
                self.add_module(f"layer_{idx + 1}", Conv2dNorm(
                    cin, conv_dim, kernel_size=3, padding=1, bias=use_bias, norm=_norm(norm, conv_dim),
                    activation=True))
            else:
                self.add_module(f"adapter_{idx + 1}", Conv2dNorm(
                    cin, conv_dim, kernel_size=1, bias=use_bias, norm=_norm(norm, conv_dim)))
                self.add_module(f"layer_{idx + 1}", Conv2dNorm(
                    conv_dim, conv_dim, kernel_size=3, padding=1, bias=use_bias, norm=_norm(norm, conv_dim),
                    activation=True))
        self.num_levels = n
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=3, padding=1)

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        """features: finest (res2) first, coarsest last."""
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(features)}")
        y = getattr(self, f"layer_{self.num_levels}")(features[-1])
        for idx in range(self.num_levels - 2, -1, -1):
            lateral = getattr(self, f"adapter_{idx + 1}")(features[idx])
            # FPN-style nearest upsampling to the lateral's size (exactly 2x for inputs padded to /32).
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = getattr(self, f"layer_{idx + 1}")(y)
        return self.mask_features(y)
