"""MultiScaleMaskedTransformerDecoder (Mask2Former), batch-first, export-friendly (no in-place masking)."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .layers import MLP, sine_position_embedding


class MultiheadAttention(nn.Module):
    """nn.MultiheadAttention's parameters (in_proj_weight/bias, out_proj) with batch-first math.

    Written out so the graph has plain MatMul/Softmax and a boolean mask works the same in every exporter.
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, query, key, value, blocked: torch.Tensor | None = None):
        """query [B,Lq,E], key/value [B,Lk,E]; blocked [B,1|heads,Lq,Lk] True = may not attend."""
        b, lq, e = query.shape
        h = self.num_heads
        hd = e // h
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        q = F.linear(query, wq, bq).view(b, lq, h, hd).transpose(1, 2)
        k = F.linear(key, wk, bk).view(b, -1, h, hd).transpose(1, 2)
        v = F.linear(value, wv, bv).view(b, -1, h, hd).transpose(1, 2)
        scores = (q * (1.0 / math.sqrt(hd))) @ k.transpose(-2, -1)
        if blocked is not None:
            scores = scores.masked_fill(blocked, float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, lq, e)
        return self.out_proj(out)


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt, query_pos):
        q = tgt + query_pos
        return self.norm(tgt + self.self_attn(q, q, tgt))


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.multihead_attn = MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt, memory, blocked, pos, query_pos):
        return self.norm(tgt + self.multihead_attn(tgt + query_pos, memory + pos, memory, blocked))


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt):
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Returns (decoder_norm(output) [B,Q,C] of the last layer, mask logits [B,Q,H/4,W/4]).

    Upstream's `class_embed` is not built: PADing classifies with `new_fc` instead (the checkpoint loader drops it).
    """

    num_feature_levels = 3

    def __init__(self, hidden_dim: int = 256, num_queries: int = 100, nheads: int = 8,
                 dim_feedforward: int = 2048, dec_layers: int = 9, mask_dim: int = 256) -> None:
        super().__init__()
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.hidden_dim = hidden_dim
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward(self, features: list[torch.Tensor], mask_features: torch.Tensor):
        return self.forward_all(features, mask_features)[-1]

    def forward_all(self, features: list[torch.Tensor], mask_features: torch.Tensor
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(embed, mask logits) after the learnable queries and after every layer (Mask2Former's deep supervision
        trains on all of them; inference and export read the last: the others are dead code in the graph)."""
        b = mask_features.shape[0]
        src, pos, sizes = [], [], []
        for i, f in enumerate(features):
            sizes.append(f.shape[-2:])
            pos.append(sine_position_embedding(f, self.hidden_dim // 2).flatten(2).transpose(1, 2))
            src.append(f.flatten(2).transpose(1, 2) + self.level_embed.weight[i][None, None, :])
        query_pos = self.query_embed.weight[None].expand(b, -1, -1)
        output = self.query_feat.weight[None].expand(b, -1, -1)

        embed, masks, blocked = self._heads(output, mask_features, sizes[0])
        predictions = [(embed, masks)]
        for i in range(self.num_layers):
            lvl = i % self.num_feature_levels
            output = self.transformer_cross_attention_layers[i](output, src[lvl], blocked, pos[lvl], query_pos)
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            embed, masks, blocked = self._heads(output, mask_features, sizes[(i + 1) % self.num_feature_levels])
            predictions.append((embed, masks))
        return predictions

    def _heads(self, output, mask_features, target_size):
        embed = self.decoder_norm(output)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(embed), mask_features)
        small = F.interpolate(masks, size=target_size, mode="bilinear", align_corners=False)
        blocked = small.sigmoid().flatten(2) < 0.5
        # A query that may attend nowhere attends everywhere (upstream resets fully blocked rows).
        blocked = blocked & ~blocked.all(-1, keepdim=True)
        return embed, masks, blocked[:, None]
