"""PADing at inference: Mask2Former R50 whose class logits come from `new_fc` on the final decoder embedding."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .backbone import NormalizedResNetModel
from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import MultiScaleMaskedTransformerDecoder


@dataclass(frozen=True)
class PADingSpec:
    """Architecture hyper-parameters (read from an upstream config by `zsdeploy.export.config`)."""

    num_classes: int = 133
    depth: int = 50
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    stride_in_1x1: bool = False
    conv_dim: int = 256
    mask_dim: int = 256
    enc_layers: int = 6
    hidden_dim: int = 256
    num_queries: int = 100
    nheads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 9
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    extra: dict = field(default_factory=dict, compare=False)


class PADing(NormalizedResNetModel):
    """images [B,3,H,W] float RGB 0..255 (H, W multiples of 32) -> (class_logits [B,Q,K+1], mask_logits [B,Q,H/4,W/4]).

    Normalisation is part of the graph, so callers pad with the pixel mean (0 after normalisation, as upstream).
    """

    def __init__(self, spec: PADingSpec) -> None:
        super().__init__(spec.depth, spec.stem_out_channels, spec.res2_out_channels, spec.stride_in_1x1,
                         spec.pixel_mean, spec.pixel_std)
        self.spec = spec
        self.sem_seg_head = nn.Module()
        self.sem_seg_head.pixel_decoder = MSDeformAttnPixelDecoder(
            self.backbone.out_channels, spec.conv_dim, spec.mask_dim, spec.nheads, spec.enc_layers)
        self.sem_seg_head.predictor = MultiScaleMaskedTransformerDecoder(
            spec.hidden_dim, spec.num_queries, spec.nheads, spec.dim_feedforward,
            spec.dec_layers, spec.mask_dim)
        self.new_fc = nn.Linear(spec.hidden_dim, spec.num_classes + 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        res2, res3, res4, res5 = self.features(images)
        mask_features, multi_scale = self.sem_seg_head.pixel_decoder(res2, res3, res4, res5)
        embed, mask_logits = self.sem_seg_head.predictor(multi_scale, mask_features)
        return self.new_fc(embed), mask_logits

    def forward_all(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(class logits, mask logits) of every decoder stage, last = `forward`'s (deep supervision in training)."""
        res2, res3, res4, res5 = self.features(images)
        mask_features, multi_scale = self.sem_seg_head.pixel_decoder(res2, res3, res4, res5)
        return [(self.new_fc(e), m) for e, m in self.sem_seg_head.predictor.forward_all(multi_scale, mask_features)]
