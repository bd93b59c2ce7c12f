"""Deterministic untrained stand-in weights, used when no checkpoint is given.

Each tensor depends only on its key name and shape (a CRC32-seeded torch generator), the same rule as the
golden fixtures in ../shared/golden, so a stand-in export reproduces the upstream reference outputs and
benchmarks can rebuild the identical PyTorch reference without any file.

Two variants (recorded in the export's metadata as `standin_variant`):

* ``golden`` (default): exactly the golden rule. Its 100 PADing decoder queries come out nearly identical, so
  panoptic/instance outputs are (almost) empty and PQ/AP cannot be measured with it.
* ``diverse`` (PADing only): the golden tensors, then a few fixed, documented transforms (see
  `diversify_pading`) that make the queries differ, so PADing panoptic yields several distinct segments of
  different sizes on the synthetic scenes — enough to measure PQ and mask AP of a backend against the PyTorch
  reference. The predictions are still meaningless as segmentations.
"""
from __future__ import annotations

import math
import zlib
from typing import Callable

import torch
from torch import nn

STANDIN_WARNING = (
    "WARNING: no --weights given: exporting DETERMINISTIC UNTRAINED STAND-IN weights. The model runs, but its "
    "predictions are meaningless. Pass --weights model_final.pth for a real model."
)

STANDIN_VARIANTS: tuple[str, ...] = ("golden", "diverse")


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


# ------------------------------------------------------------------------------------------- diverse variant
_DEC = "sem_seg_head.predictor."
_MASK_FEATURES = "sem_seg_head.pixel_decoder.mask_features."

#: Query identity vs the query-independent residual branches of the 9 decoder layers.
DIVERSE_QUERY_FEAT_SCALE = 10.0
DIVERSE_BRANCH_SCALE = 0.1
#: Class head gain: ~30 of the 100 queries get a class probability above the panoptic 0.8 threshold.
DIVERSE_CLASS_SCALE = 4.5
#: Channel-mean shifts of the mask-embedding bias and the mask-feature bias; every mask logit gets the constant
#: 256 * 1.0 * -0.03 = -7.68, so a query's own mask (logit > 0) is the tail of its pattern, not half the image.
DIVERSE_MASK_EMBED_SHIFT = 1.0
DIVERSE_MASK_FEATURE_SHIFT = -0.03


def _zero_mean_rows(w: torch.Tensor) -> torch.Tensor:
    """Each output unit's weights minus their mean over the inputs (a [out, in] or [out, in, 1, 1] weight)."""
    return w - w.mean(dim=1, keepdim=True)


def _zero_mean_columns(w: torch.Tensor) -> torch.Tensor:
    """Each input's weights minus their mean over the outputs: the outputs' channel sum no longer depends on
    the input."""
    return w - w.mean(dim=0, keepdim=True)


def _scale(s: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: t * s


def _shift(s: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: t + s


def diverse_transforms(num_decoder_layers: int = 9) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Key -> transform applied to that key's golden tensor by the ``diverse`` variant (PADing only).

    Why each one (measured on the synthetic scenes; with the golden tensors alone the queries' embeddings are
    >99 % one shared vector and their masks correlate at 1.00):
    1. Decoder: `query_feat` x10 and the output projections of every cross-attention, self-attention and FFN
       branch (weight and bias, i.e. the branch output) x0.1. With golden weights the attention is near-uniform,
       so each layer adds the same vector to every query and its LayerNorm washes the query identity out.
    2. Mask embedding MLP: the weights of its 2nd and 3rd linear layers get zero-mean rows, so the positive mean
       of the ReLU activations (shared by all queries) does not become a mask component common to all queries.
       Mask-pattern correlation between queries drops from 1.00 to ~0.04.
    3. Mask features (1x1 conv): zero-mean rows (the ReLU mean of the FPN features is not a per-query offset)
       and zero-mean columns (the features' channel sum is then the bias alone, constant over pixels).
    4. Biases: the mask-embedding output bias +1.0 and the mask-feature bias -0.03 per channel, so every mask
       logit gets the same offset 256 x 1.0 x -0.03 = -7.7 (through the constant channel sum of 3.): a query's
       own mask is the high tail of its pattern, small and mostly its own, which is what panoptic fusion's
       overlap test (won area / own area >= 0.8) needs.
    5. Class head `new_fc.weight` x4.5: ~30 queries pass the 0.8 class-probability threshold.
    """
    t: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        _DEC + "query_feat.weight": _scale(DIVERSE_QUERY_FEAT_SCALE),
        _DEC + "mask_embed.layers.1.weight": _zero_mean_rows,
        _DEC + "mask_embed.layers.2.weight": _zero_mean_rows,
        _DEC + "mask_embed.layers.2.bias": _shift(DIVERSE_MASK_EMBED_SHIFT),
        _MASK_FEATURES + "weight": lambda w: _zero_mean_columns(_zero_mean_rows(w)),
        _MASK_FEATURES + "bias": _shift(DIVERSE_MASK_FEATURE_SHIFT),
        "new_fc.weight": _scale(DIVERSE_CLASS_SCALE),
    }
    for i in range(num_decoder_layers):
        for branch in (f"transformer_cross_attention_layers.{i}.multihead_attn.out_proj",
                       f"transformer_self_attention_layers.{i}.self_attn.out_proj",
                       f"transformer_ffn_layers.{i}.linear2"):
            for leaf in ("weight", "bias"):
                t[f"{_DEC}{branch}.{leaf}"] = _scale(DIVERSE_BRANCH_SCALE)
    return t


def standin_state(keys_shapes: dict[str, tuple[int, ...]], variant: str = "golden") -> dict[str, torch.Tensor]:
    """The stand-in tensor of every key (float32), for `variant` in STANDIN_VARIANTS."""
    if variant not in STANDIN_VARIANTS:
        from ..runtime.errors import ZsdError

        raise ZsdError(f"unknown stand-in variant {variant!r}.", f"choose from {', '.join(STANDIN_VARIANTS)}.")
    state = {k: standin_tensor(k, s) for k, s in keys_shapes.items()}
    if variant == "diverse":
        layers = sum(1 for k in keys_shapes if k.startswith(_DEC + "transformer_ffn_layers.")
                     and k.endswith(".linear2.weight"))
        transforms = diverse_transforms(layers)
        missing = sorted(set(transforms) - set(state))
        if missing or not layers:
            from ..runtime.errors import ZsdError

            raise ZsdError(f"the 'diverse' stand-in is defined for PADing (Mask2Former decoder); this model lacks "
                           f"{', '.join(missing[:3]) or 'its decoder layers'}.", "use the 'golden' stand-in.")
        with torch.no_grad():
            for k, f in transforms.items():
                state[k] = f(state[k])
    return state


def load_standin(model: nn.Module, variant: str = "golden") -> None:
    """Fill every parameter and persistent buffer of `model` with its stand-in tensor."""
    sd = model.state_dict()
    state = standin_state({k: tuple(v.shape) for k, v in sd.items()}, variant)
    model.load_state_dict({k: state[k].to(sd[k].dtype) for k in sd}, strict=True)
