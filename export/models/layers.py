"""Small building blocks shared by the backbones, pixel decoders and heads (detectron2 key layout)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics (detectron2 FrozenBatchNorm2d): all four tensors are buffers."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Folded into one affine per channel, as detectron2 does at inference.
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


class Conv2dNorm(nn.Conv2d):
    """Conv2d followed by an optional norm and activation; keys `<name>.weight`, `<name>.norm.*`."""

    def __init__(self, *args, norm: nn.Module | None = None, activation: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.use_relu = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.use_relu:
            x = F.relu(x)
        return x


class MLP(nn.Module):
    """Plain multi-layer perceptron with ReLU between layers (keys `layers.{i}`)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def sine_position_embedding(x: torch.Tensor, num_pos_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Normalised 2-D sine position encoding of a [B,C,H,W] map without padding mask -> [B,2*F,H,W].

    Equal to DETR's PositionEmbeddingSine(normalize=True) with an all-valid mask: the cumulative sum of ones is
    the 1-based index, written with arange so the graph depends only on H and W.
    """
    b, _, h, w = x.shape
    eps, scale = 1e-6, 2 * torch.pi
    y_embed = torch.arange(1, h + 1, dtype=torch.float32, device=x.device)
    x_embed = torch.arange(1, w + 1, dtype=torch.float32, device=x.device)
    y_embed = y_embed / (y_embed[-1:] + eps) * scale
    x_embed = x_embed / (x_embed[-1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=x.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos_x = x_embed[:, None] / dim_t  # [W,F]
    pos_y = y_embed[:, None] / dim_t  # [H,F]
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    pos = torch.cat(
        (pos_y[:, None, :].expand(h, w, num_pos_feats), pos_x[None, :, :].expand(h, w, num_pos_feats)), dim=2
    )
    return pos.permute(2, 0, 1).unsqueeze(0).expand(b, -1, -1, -1)
