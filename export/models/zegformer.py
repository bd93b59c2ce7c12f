"""ZegFormer (CVPR 2022) segmenter at inference, export-friendly.

MaskFormer meta-architecture with the ZegFormerHead: detectron2 ResNet -> BasePixelDecoder (stride-4 mask
features) and a DETR-style transformer decoder on res5 whose 100 segment embeddings are classified zero-shot:
each is projected to the text space (512), L2-normalised and compared with the class TEXT EMBEDDINGS, which are a
graph input here (upstream bakes `text_features_test` into the model), plus a learned background ("void")
embedding. Only the final decoder layer's prediction is computed (upstream's aux outputs feed losses only).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .backbone import NormalizedResNetModel
from .base_pixel_decoder import BasePixelDecoder
from .layers import MLP, sine_position_embedding
from .transformer_decoder import MultiheadAttention

CLIP_PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_PIXEL_STD = (68.5005327, 66.6321579, 70.3231630)


@dataclass(frozen=True)
class ZegFormerSpec:
    """Architecture hyper-parameters (read from an upstream config by `zsdeploy.export.zegformer_export`)."""

    depth: int = 101
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    stride_in_1x1: bool = False
    conv_dim: int = 256
    mask_dim: int = 256
    norm: str = "GN"
    hidden_dim: int = 256
    num_queries: int = 100
    nheads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 6
    pre_norm: bool = False
    enforce_input_proj: bool = False
    text_dim: int = 512
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    extra: dict = field(default_factory=dict, compare=False)


class DETRDecoderLayer(nn.Module):
    """DETR decoder layer: self-attention, cross-attention to the image, FFN; post-norm (or pre-norm).

    Keys: self_attn.*, multihead_attn.*, linear1, linear2, norm1..3 (upstream TransformerDecoderLayer).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, pre_norm: bool = False) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead)
        self.multihead_attn = MultiheadAttention(d_model, nhead)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm

    def forward(self, tgt, memory, pos, query_pos):
        if self.pre_norm:
            t = self.norm1(tgt)
            q = t + query_pos
            tgt = tgt + self.self_attn(q, q, t)
            t = self.norm2(tgt)
            tgt = tgt + self.multihead_attn(t + query_pos, memory + pos, memory)
            t = self.norm3(tgt)
            return tgt + self.linear2(F.relu(self.linear1(t)))
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.self_attn(q, q, tgt))
        tgt = self.norm2(tgt + self.multihead_attn(tgt + query_pos, memory + pos, memory))
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class ZeroShotTransformerPredictor(nn.Module):
    """Upstream TransformerZeroshotPredictor with ENC_LAYERS 0 (no encoder: memory = projected res5).

    (res5 [B,Cin,h,w], mask_features [B,D,H/4,W/4], text [C,T]) -> (class logits [B,Q,C+1], masks [B,Q,H/4,W/4]).
    """

    def __init__(self, in_channels: int, spec: ZegFormerSpec) -> None:
        super().__init__()
        hd = spec.hidden_dim
        # Registration order = upstream's state_dict() order.
        self.bg_feature = nn.Parameter(torch.zeros(1, spec.text_dim))
        # ln(1 / TEMPERATURE); frozen upstream, kept in the state dict.
        self.logit_scale = nn.Parameter(torch.zeros(1), requires_grad=False)
        self.projection_layer = nn.Linear(hd, spec.text_dim)
        self.transformer = nn.Module()
        self.transformer.decoder = nn.Module()
        self.transformer.decoder.layers = nn.ModuleList(
            DETRDecoderLayer(hd, spec.nheads, spec.dim_feedforward, spec.pre_norm) for _ in range(spec.dec_layers))
        self.transformer.decoder.norm = nn.LayerNorm(hd)
        self.query_embed = nn.Embedding(spec.num_queries, hd)
        if in_channels != hd or spec.enforce_input_proj:
            self.input_proj = nn.Conv2d(in_channels, hd, kernel_size=1)
        else:
            self.input_proj = nn.Sequential()
        self.mask_embed = MLP(hd, hd, spec.mask_dim, 3)
        self.hidden_dim = hd

    def forward(self, x: torch.Tensor, mask_features: torch.Tensor, text_embeddings: torch.Tensor):
        b = x.shape[0]
        # Sine position code of the (padded) res5 map; upstream passes mask=None, i.e. all positions valid.
        pos = sine_position_embedding(x, self.hidden_dim // 2).flatten(2).transpose(1, 2)
        memory = self.input_proj(x).flatten(2).transpose(1, 2)  # [B, hw, D]
        query_pos = self.query_embed.weight[None].expand(b, -1, -1)
        tgt = torch.zeros_like(query_pos)
        for layer in self.transformer.decoder.layers:
            tgt = layer(tgt, memory, pos, query_pos)
        hs = self.transformer.decoder.norm(tgt)  # [B, Q, D]

        emb = self.projection_layer(hs)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        scale = self.logit_scale.exp()
        cls = scale * emb @ text_embeddings.t()
        bg = scale * emb @ self.bg_feature.t()
        class_logits = torch.cat((cls, bg), dim=-1)
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_embed(hs), mask_features)
        return class_logits, mask_logits


class ZegFormer(NormalizedResNetModel):
    """(images [B,3,H,W] float RGB 0..255, H and W multiples of 32; text_embeddings [C, 512] L2-normalised)
    -> (class_logits [B,Q,C+1] with the void class LAST, mask_logits [B,Q,H/4,W/4]).

    Normalisation is part of the graph, so callers pad with the pixel mean (0 after normalisation, as upstream).
    The text embeddings are used as given (upstream's `text_features_test` are L2-normalised prompt ensembles).
    """

    def __init__(self, spec: ZegFormerSpec) -> None:
        super().__init__(spec.depth, spec.stem_out_channels, spec.res2_out_channels, spec.stride_in_1x1,
                         spec.pixel_mean, spec.pixel_std)
        self.spec = spec
        self.sem_seg_head = nn.Module()
        self.sem_seg_head.pixel_decoder = BasePixelDecoder(
            self.backbone.out_channels, spec.conv_dim, spec.mask_dim, spec.norm)
        self.sem_seg_head.predictor = ZeroShotTransformerPredictor(self.backbone.out_channels[-1], spec)

    def forward(self, images: torch.Tensor, text_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if text_embeddings.dim() != 2 or text_embeddings.shape[1] != self.spec.text_dim:
            raise ValueError(f"text_embeddings must be [num_classes, {self.spec.text_dim}], "
                             f"got {list(text_embeddings.shape)}")
        res2, res3, res4, res5 = self.features(images)
        mask_features = self.sem_seg_head.pixel_decoder(res2, res3, res4, res5)
        return self.sem_seg_head.predictor(res5, mask_features, text_embeddings)
