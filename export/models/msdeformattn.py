"""Multi-Scale Deformable Attention: one torch custom op carries the semantics; the ONNX lowering is chosen
at export time (`lowering()`), never by the device the export runs on."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

LOWERINGS = ("gridsample", "plugin", "nvidia")

_state = threading.local()


def current_lowering() -> str:
    """'op' in eager mode (the custom op), or the lowering an export asked for."""
    return getattr(_state, "lowering", "op")


@contextlib.contextmanager
def lowering(name: str) -> Iterator[None]:
    """Trace MSDeformAttn as `name` ('gridsample' inlines the reference; 'plugin'/'nvidia' keep the op node)."""
    if name not in LOWERINGS + ("op",):
        raise ValueError(f"unknown MSDeformAttn lowering {name!r}; choose one of {LOWERINGS}")
    previous = current_lowering()
    _state.lowering = name
    try:
        yield
    finally:
        _state.lowering = previous


def ms_deform_attn_gridsample(
    value: torch.Tensor,
    level_shapes: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Reference formulation with grid_sample (bilinear, zeros padding, align_corners=False).

    value [N,S,M,D]; sampling_locations [N,Lq,M,L,P,2] as normalised (x, y); attention_weights [N,Lq,M,L,P];
    returns [N,Lq,M*D]. `level_shapes` are (H_l, W_l); python or symbolic ints so H and W stay dynamic.
    """
    n, _, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    sizes = [h * w for h, w in level_shapes]
    value_levels = value.split(sizes, dim=1)
    grids = 2 * sampling_locations - 1
    # [N,Lq,M,L,P] -> [N*M,1,Lq,L,P]
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels, p)
    out = None
    for lvl, (h, w) in enumerate(level_shapes):
        # [N,HW,M,D] -> [N*M,D,H,W]
        v = value_levels[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # [N,Lq,M,P,2] -> [N*M,Lq,P,2]
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)  # [N*M,D,Lq,P]
        # Weighted sum per level, accumulated: upstream stacks the levels first, but that stack is a Concat on an
        # inner axis that OpenVINO runs with its slow reference kernel (12 % of the network) and ORT copies too.
        level_sum = (sampled * weights[..., lvl, :]).sum(-1)
        out = level_sum if out is None else out + level_sum
    out = out.view(n, m * d, lq)
    return out.transpose(1, 2).contiguous()


@torch.library.custom_op("zsdeploy::ms_deform_attn", mutates_args=())
def ms_deform_attn_op(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The op (NVIDIA plugin input convention). Eager: compiled kernel when built, else the reference."""
    from .. import msda_kernel_bridge

    fast = msda_kernel_bridge.fast_kernel()
    if fast is not None:
        return fast(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return ms_deform_attn_gridsample(value, shapes, sampling_locations, attention_weights)


@ms_deform_attn_op.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    n, lq = sampling_locations.shape[0], sampling_locations.shape[1]
    return value.new_empty((n, lq, value.shape[2] * value.shape[3]))


def ms_deform_attn(
    value: torch.Tensor,
    level_shapes: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Dispatch to the lowering in effect (see `lowering`)."""
    mode = current_lowering()
    if mode == "gridsample":
        return ms_deform_attn_gridsample(value, level_shapes, sampling_locations, attention_weights)
    spatial_shapes = torch.tensor(level_shapes, dtype=torch.int64, device=value.device) if mode == "op" \
        else shapes_tensor(level_shapes, value.device)
    # H*W written as a product of columns: ReduceProd does not down-convert to opset 17 correctly.
    level_start_index = torch.cat((spatial_shapes.new_zeros(1), (spatial_shapes[:, 0] * spatial_shapes[:, 1]).cumsum(0)[:-1]))
    return ms_deform_attn_op(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


def shapes_tensor(level_shapes: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """[L,2] int64 tensor of (H, W) that traces from (possibly symbolic) sizes."""
    one = torch.ones((), dtype=torch.int64, device=device)
    return torch.stack([torch.stack([one * h, one * w]) for h, w in level_shapes])


def _sizes_as_tensor(level_shapes: Sequence[tuple[int, int]], like: torch.Tensor) -> torch.Tensor:
    """[L,2] (W, H) in `like`'s dtype. Multiplying a tensor by the (symbolic) size keeps it dynamic in
    torch.export, where torch.as_tensor(size) would silently become a constant."""
    one = like.new_ones(())
    return torch.stack([torch.stack([one * w, one * h]) for h, w in level_shapes])


class MSDeformAttn(nn.Module):
    """Deformable attention module (keys sampling_offsets, attention_weights, value_proj, output_proj)."""

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value_in: torch.Tensor,
                level_shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """query [N,Lq,C]; reference_points [N,Lq,L,2] normalised (x, y); value_in [N,S,C]."""
        n, lq, _ = query.shape
        m, lv, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value_in).view(n, -1, m, self.d_model // m)
        offsets = self.sampling_offsets(query).view(n, lq, m, lv, p, 2)
        weights = self.attention_weights(query).view(n, lq, m, lv * p).softmax(-1).view(n, lq, m, lv, p)
        # (W_l, H_l) per level: offsets are in pixels of each level.
        normalizer = _sizes_as_tensor(level_shapes, query)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = ms_deform_attn(value, level_shapes, locations, weights)
        return self.output_proj(out)
