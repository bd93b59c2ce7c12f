"""Run a graph with TensorRT plugin nodes on CPU in ONNX Runtime (a check of `--msda plugin|nvidia` exports).

ONNX Runtime cannot run `MSDeformAttn` / `MultiscaleDeformableAttnPlugin_TRT` nodes, and no C/C++ ORT custom-op
library can be built here (no ORT headers). onnxruntime-extensions can host Python ops, but only in its own domain
`ai.onnx.contrib`. So `plugin_graph_proto` makes an in-memory copy of the graph in which every plugin node
becomes such a Python op (the file on disk is never changed), and the op runs the host build of our kernel
(`msda_kernel.ms_deform_attn_forward`: the same arithmetic as the CUDA kernel / TensorRT plugin), or, when that
kernel cannot be built here, its pure-PyTorch reference. Which one ran is recorded (`implementation()`,
`calls()`, and `session.msda_implementation`): a test that passes on the reference has not tested the kernel.

Example:
    sess = plugin_graph_session("pading_plugin.onnx")
    print(sess.msda_implementation)           # "kernel (host build)" or "reference (grid_sample): <why>"
    out = sess.run(None, {"images": x})
"""
from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .plugin_lowering import NVIDIA, PLUGIN, PluginOp

__all__ = [
    "CONTRIB_DOMAIN",
    "calls",
    "implementation",
    "plugin_graph_proto",
    "plugin_graph_session",
    "plugin_nodes",
]

CONTRIB_DOMAIN = "ai.onnx.contrib"  # the only domain onnxruntime-extensions serves Python ops from


@dataclass(frozen=True)
class _Mapped:
    plugin: PluginOp
    contrib_op: str  # op type of the Python op in ai.onnx.contrib


# Match by op type only: TensorRT's parser ignores the domain too, so a graph edited by other tools still runs.
_MAPPING = {
    PLUGIN.op_type: _Mapped(PLUGIN, "ZsdMSDeformAttn"),
    NVIDIA.op_type: _Mapped(NVIDIA, "ZsdMultiscaleDeformableAttnPluginTRT"),
}

_lock = threading.Lock()
_registered = False
_impl: tuple[str, Callable[..., object]] | None = None
_calls: collections.Counter[str] = collections.Counter()


def _select_implementation() -> tuple[str, Callable[..., object]]:
    """The host-built kernel when it builds/loads, else the reference (once per process)."""
    global _impl
    if _impl is None:
        from . import msda_kernel

        if msda_kernel.kernel_available("cpu"):
            _impl = ("kernel (host build)", msda_kernel.ms_deform_attn_forward)
        else:
            why = msda_kernel.kernel_unavailable_reason("cpu")
            _impl = (f"reference (grid_sample): host kernel unavailable: {why}", msda_kernel.ms_deform_attn_reference)
    return _impl


def implementation() -> str:
    """Which MSDeformAttn implementation the Python ops run ("kernel (host build)" or "reference ...: why")."""
    return _select_implementation()[0]


def calls() -> dict[str, int]:
    """How many plugin-node evaluations each implementation served in this process."""
    return dict(_calls)


def _compute(output_rank: int) -> Callable[..., np.ndarray]:
    def compute(value: np.ndarray, spatial_shapes: np.ndarray, level_start_index: np.ndarray,
                sampling_locations: np.ndarray, attention_weights: np.ndarray) -> np.ndarray:
        import torch

        name, fn = _select_implementation()
        with torch.no_grad():
            out = fn(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (
                value, spatial_shapes, level_start_index, sampling_locations, attention_weights)))
        _calls[name] += 1
        result = out.numpy()  # type: ignore[union-attr]
        if output_rank == 4:  # NVIDIA's plugin returns [N, Lq, M, D]; the graph reshapes it afterwards
            n, lq, m, d = value.shape[0], sampling_locations.shape[1], value.shape[2], value.shape[3]
            result = result.reshape(n, lq, m, d)
        return result

    return compute


def _register_ops() -> None:
    """Declare the Python ops once per process (onnxruntime-extensions keeps a global registry by op type)."""
    global _registered
    with _lock:
        if _registered:
            return
        from onnxruntime_extensions import PyCustomOpDef, onnx_op

        f32, i32 = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int32
        for mapped in _MAPPING.values():
            # int32 shape inputs are part of the contract: an int64 input makes the session fail to load.
            onnx_op(op_type=mapped.contrib_op, inputs=[f32, i32, i32, f32, f32], outputs=[f32])(
                _compute(mapped.plugin.output_rank))
        _registered = True


def plugin_nodes(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The TensorRT plugin nodes (MSDeformAttn / MultiscaleDeformableAttnPlugin_TRT) of the main graph."""
    return [n for n in proto.graph.node if n.op_type in _MAPPING]


def plugin_graph_proto(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose plugin nodes are onnxruntime-extensions Python ops (the input is not modified)."""
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    else:
        proto = onnx.load(str(model))
    nodes = plugin_nodes(proto)
    if not nodes:
        raise ValueError("the graph has no MSDeformAttn / MultiscaleDeformableAttnPlugin_TRT node; run it with "
                         "onnxruntime directly")
    for node in nodes:
        mapped = _MAPPING[node.op_type]
        node.op_type = mapped.contrib_op
        node.domain = CONTRIB_DOMAIN
        # plugin_version / plugin_namespace select a TensorRT creator; the Python op declares no attributes.
        del node.attribute[:]
    if not any(o.domain == CONTRIB_DOMAIN for o in proto.opset_import):
        proto.opset_import.add(domain=CONTRIB_DOMAIN, version=1)
    return proto


def plugin_graph_session(model: str | Path | onnx.ModelProto, *, threads: int | None = None):  # noqa: ANN201
    """ONNX Runtime (CPU) session for a graph with plugin nodes, which run on the host-built kernel.

    The returned `onnxruntime.InferenceSession` has `msda_implementation` set to what serves the plugin nodes.
    """
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    _register_ops()
    name, _ = _select_implementation()
    proto = plugin_graph_proto(model)
    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.msda_implementation = name  # type: ignore[attr-defined]
    return session
