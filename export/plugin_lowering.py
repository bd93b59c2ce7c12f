"""Translation of the MSDeformAttn custom op for the `plugin` and `nvidia` lowerings (DESIGN.md).

`gridsample` needs none: it inlines the reference formulation while tracing.

How it works: the dynamo exporter (`torch.onnx.export(..., dynamo=True)`) looks up
`torch.ops.zsdeploy.ms_deform_attn.default` in `custom_translation_table` and traces the function found there
with onnxscript's graph recorder. The recorder builds a node from an `onnx.defs.OpSchema` (it needs the
input/attribute names and type constraints to bind arguments), so an op of a custom domain must have a schema
registered in onnx's process-wide registry first (`register_schemas`). The schema also carries a type/shape
inference function, so `onnx.shape_inference` and onnxslim know the plugin's output shape and can fold the
int32 shape inputs into initializers in static exports.

The ONNX domain is ignored by TensorRT's ONNX parser: it maps an unknown op to a plugin creator by op type plus
the `plugin_version` / `plugin_namespace` attributes. The domains below only keep the graph valid ONNX.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx
from onnx.defs import OpSchema

__all__ = [
    "NVIDIA",
    "PLUGIN",
    "PluginOp",
    "custom_translations",
    "plugin_op_for",
    "register_schemas",
]


@dataclass(frozen=True)
class PluginOp:
    """How one lowering spells its TensorRT plugin node."""

    op_type: str
    domain: str
    plugin_version: str
    plugin_namespace: str
    output_rank: int  # 3: [N, Lq, M*D]; 4: [N, Lq, M, D] (reshaped to 3-D right after the node)

    @property
    def attributes(self) -> dict[str, str]:
        return {"plugin_version": self.plugin_version, "plugin_namespace": self.plugin_namespace}


# Ours (plugins_trt/msdeformattn, IPluginV3, registered as zsdeploy::MSDeformAttn v1).
PLUGIN = PluginOp("MSDeformAttn", "zsdeploy", "1", "zsdeploy", output_rank=3)
# TensorRT's built-in plugin; version "2" is the IPluginV3 one (TRT >= 10.11): without it the parser's default
# "1" picks the deprecated IPluginV2DynamicExt v1. It lives in the default ("") plugin namespace.
NVIDIA = PluginOp("MultiscaleDeformableAttnPlugin_TRT", "trt.plugins", "2", "", output_rank=4)

_BY_LOWERING = {"plugin": PLUGIN, "nvidia": NVIDIA}
SCHEMA_VERSION = 1


def plugin_op_for(msda: str) -> PluginOp | None:
    """The plugin node a lowering emits (None for `gridsample`)."""
    return _BY_LOWERING.get(msda)


def _infer_output(rank: int) -> Callable[[onnx.shape_inference.InferenceContext], None]:
    """Shape inference: value [N,S,M,D], sampling_locations [N,Lq,M,L,P,2] -> [N,Lq,M*D] or [N,Lq,M,D]."""

    def infer(ctx: onnx.shape_inference.InferenceContext) -> None:
        value_t = ctx.get_input_type(0)
        if value_t is None or not value_t.HasField("tensor_type"):
            return
        out = onnx.TypeProto()
        out.tensor_type.elem_type = value_t.tensor_type.elem_type
        loc_t = ctx.get_input_type(3)
        if not value_t.tensor_type.HasField("shape") or loc_t is None or not loc_t.tensor_type.HasField("shape"):
            ctx.set_output_type(0, out)
            return
        vdims = list(value_t.tensor_type.shape.dim)
        ldims = list(loc_t.tensor_type.shape.dim)
        if len(vdims) != 4 or len(ldims) != 6:
            ctx.set_output_type(0, out)
            return
        dims = [ldims[0], ldims[1]]  # N, Lq (of the queries, not of the value)
        m, d = vdims[2], vdims[3]
        shape = out.tensor_type.shape
        for src in dims:
            shape.dim.add().CopyFrom(src)
        if rank == 4:
            shape.dim.add().CopyFrom(m)
            shape.dim.add().CopyFrom(d)
        else:
            md = shape.dim.add()
            if m.HasField("dim_value") and d.HasField("dim_value"):
                md.dim_value = m.dim_value * d.dim_value
        ctx.set_output_type(0, out)

    return infer


def _schema(op: PluginOp) -> OpSchema:
    param = OpSchema.FormalParameter
    doc = (f"TensorRT plugin node {op.op_type} (plugin_version {op.plugin_version!r}, namespace "
           f"{op.plugin_namespace!r}): multi-scale deformable attention, bilinear, zero padding, "
           "align_corners=False. Output " + ("[N, Lq, M*D]." if op.output_rank == 3 else "[N, Lq, M, D]."))
    schema = OpSchema(
        op.op_type, op.domain, SCHEMA_VERSION, doc,
        inputs=[
            param("value", "T", "[N, S, M, D], S = sum(H_l * W_l)"),
            param("spatial_shapes", "I", "[L, 2] (H_l, W_l), int32"),
            param("level_start_index", "I", "[L] start of each level in S, int32"),
            param("sampling_locations", "T", "[N, Lq, M, L, P, 2] normalised (x, y)"),
            param("attention_weights", "T", "[N, Lq, M, L, P]"),
        ],
        outputs=[param("output", "T", "[N, Lq, M*D]" if op.output_rank == 3 else "[N, Lq, M, D]")],
        type_constraints=[
            ("T", ["tensor(float)", "tensor(float16)"], "value / location / weight type"),
            ("I", ["tensor(int32)"], "TensorRT plugins take the level shapes as int32"),
        ],
        attributes=[
            OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "plugin creator version"),
            OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "plugin creator namespace"),
        ],
    )
    schema.set_type_and_shape_inference_function(_infer_output(op.output_rank))
    return schema


def register_schemas() -> None:
    """Register both plugin ops with onnx's schema registry (idempotent; the registry is process-wide)."""
    for op in (PLUGIN, NVIDIA):
        if not onnx.defs.has(op.op_type, SCHEMA_VERSION, op.domain):
            onnx.defs.register_schema(_schema(op))


def _plugin_translation(op: PluginOp) -> Callable[..., object]:
    """onnxscript function that replaces `zsdeploy::ms_deform_attn` by the plugin node."""
    import onnxscript
    from onnxscript import ir
    from onnxscript import opset18 as onnx_op  # Cast / Reshape are identical across opsets 17..21

    plugin = onnxscript.values.Opset(op.domain, SCHEMA_VERSION)
    node = getattr(plugin, op.op_type)

    def translate(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):  # noqa: ANN001
        # The torch op carries int64 shapes; TensorRT plugins read int32. In a static export these Casts of
        # constants fold into int32 initializers (exporter optimiser / onnxslim); in a dynamic one they stay
        # behind the Shape arithmetic that produces the level sizes.
        shapes32 = onnx_op.Cast(spatial_shapes, to=ir.DataType.INT32)
        starts32 = onnx_op.Cast(level_start_index, to=ir.DataType.INT32)
        out = node(value, shapes32, starts32, sampling_locations, attention_weights, **op.attributes)
        if op.output_rank == 4:
            # [N, Lq, M, D] -> [N, Lq, M*D]: 0 copies the input dim, so this stays valid for dynamic N / Lq.
            out = onnx_op.Reshape(out, onnx_op.Constant(value_ints=[0, 0, -1]))
        return out

    translate.__name__ = f"ms_deform_attn_as_{op.op_type}"
    return translate


def custom_translations(msda: str) -> dict | None:
    """`custom_translation_table` for `torch.onnx.export(dynamo=True)` under lowering `msda`."""
    if msda == "gridsample":
        return None
    op = plugin_op_for(msda)
    if op is None:
        from ..runtime.errors import ZsdError

        raise ZsdError(f"--msda {msda} is unknown.", f"choose one of gridsample, {', '.join(_BY_LOWERING)}.")
    import torch

    from .models import msdeformattn  # noqa: F401 (defines torch.ops.zsdeploy.ms_deform_attn)

    register_schemas()
    return {torch.ops.zsdeploy.ms_deform_attn.default: _plugin_translation(op)}
