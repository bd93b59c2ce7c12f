"""Deterministic untrained stand-in weights, used when no checkpoint is given.

Each tensor depends only on its key name and shape (a CRC32-seeded torch generator), the same rule as the
golden fixtures in ../shared/golden, so a stand-in export reproduces the upstream reference outputs and
benchmarks can rebuild the identical PyTorch reference without any file.
"""
from __future__ import annotations

import math
import zlib

import torch
from torch import nn

STANDIN_WARNING = (
    "WARNING: no --weights given: exporting DETERMINISTIC UNTRAINED STAND-IN weights. The model runs, but its "
    "predictions are meaningless. Pass --weights model_final.pth for a real model."
)


def standin_tensor(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator(device="cpu")
    g.manual_seed(zlib.crc32(name.encode("utf-8")))
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return 0.5 + torch.rand(shape, generator=g)
    if leaf == "running_mean":
        return 0.1 * torch.randn(shape, generator=g)
    if leaf == "logit_scale":
        return torch.full(shape, math.log(100.0))
    if leaf == "bias" or leaf.endswith("_bias"):
        return 0.02 * torch.randn(shape, generator=g)
    if leaf == "weight" and len(shape) == 1:
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else (shape[0] if shape else 1)
    return torch.randn(shape, generator=g) / math.sqrt(max(fan_in, 1))


def load_standin(model: nn.Module) -> None:
    """Fill every parameter and persistent buffer of `model` with its stand-in tensor."""
    state = {k: standin_tensor(k, tuple(v.shape)).to(v.dtype) for k, v in model.state_dict().items()}
    model.load_state_dict(state, strict=True)
