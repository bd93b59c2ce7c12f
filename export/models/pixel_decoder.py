"""MSDeformAttnPixelDecoder (Mask2Former): deformable encoder over res3..res5 plus a one-level FPN on res2."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .layers import Conv2dNorm, sine_position_embedding
from .msdeformattn import MSDeformAttn


class MSDeformAttnEncoderLayer(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, level_shapes):
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, level_shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class MSDeformAttnEncoder(nn.Module):
    """Holds `level_embed` and `encoder.layers` (key layout of MSDeformAttnTransformerEncoderOnly)."""

    def __init__(self, d_model: int, n_heads: int, d_ffn: int, num_layers: int, n_levels: int, n_points: int = 4):
        super().__init__()
        self.level_embed = nn.Parameter(torch.zeros(n_levels, d_model))
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            MSDeformAttnEncoderLayer(d_model, d_ffn, n_levels, n_heads, n_points) for _ in range(num_layers)
        )

    def forward(self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]) -> torch.Tensor:
        level_shapes = [(s.shape[2], s.shape[3]) for s in srcs]
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], dim=1)
        pos_flat = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[i].view(1, 1, -1) for i, p in enumerate(pos_embeds)],
            dim=1,
        )
        reference_points = _reference_points(level_shapes, src_flat)
        out = src_flat
        for layer in self.encoder.layers:
            out = layer(out, pos_flat, reference_points, level_shapes)
        return out


def _reference_points(level_shapes, like: torch.Tensor) -> torch.Tensor:
    """Pixel centres (i+0.5)/size of every level as normalised (x, y), [B, S, L, 2] (valid ratios are 1)."""
    refs = []
    for h, w in level_shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=like.device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=like.device) + 0.5) / w
        ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
        refs.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
    ref = torch.cat(refs, 0)
    return ref[None, :, None, :].expand(like.shape[0], -1, len(level_shapes), -1)


class MSDeformAttnPixelDecoder(nn.Module):
    """Returns (mask_features [B,mask_dim,H/4,W/4], multi-scale features [1/32, 1/16, 1/8])."""

    def __init__(self, in_channels: tuple[int, int, int, int], conv_dim: int = 256, mask_dim: int = 256,
                 n_heads: int = 8, enc_layers: int = 6, enc_ffn: int = 1024, n_points: int = 4) -> None:
        super().__init__()
        # input_proj ordered res5, res4, res3 (low to high resolution), as upstream.
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for c in in_channels[1:][::-1]
        )
        self.transformer = MSDeformAttnEncoder(conv_dim, n_heads, enc_ffn, enc_layers, n_levels=3, n_points=n_points)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        # One FPN level: res2 (stride 4) from the stride-8 encoder output.
        self.adapter_1 = Conv2dNorm(in_channels[0], conv_dim, kernel_size=1, bias=False, norm=nn.GroupNorm(32, conv_dim))
        self.layer_1 = Conv2dNorm(conv_dim, conv_dim, kernel_size=3, padding=1, bias=False,
                                  norm=nn.GroupNorm(32, conv_dim), activation=True)
        self.conv_dim = conv_dim

    def forward(self, res2, res3, res4, res5):
        feats = (res5, res4, res3)
        srcs = [proj(f) for proj, f in zip(self.input_proj, feats)]
        pos = [sine_position_embedding(f, self.conv_dim // 2) for f in feats]
        memory = self.transformer(srcs, pos)
        b = memory.shape[0]
        sizes = [s.shape[2] * s.shape[3] for s in srcs]
        levels = [
            m.transpose(1, 2).reshape(b, self.conv_dim, s.shape[2], s.shape[3])
            for m, s in zip(memory.split(sizes, dim=1), srcs)
        ]
        lateral = self.adapter_1(res2)
        fpn = self.layer_1(lateral + F.interpolate(levels[-1], size=lateral.shape[-2:], mode="bilinear",
                                                   align_corners=False))
        return self.mask_features(fpn), levels
