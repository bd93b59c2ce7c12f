"""What build-engine needs to know about an ONNX file before TensorRT sees it: metadata, inputs, plugin nodes and
the precision the graph states. Weights are not loaded."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..errors import ZsdError
from ..artifacts.onnx_metadata import ModelInfo, load_onnx_model
from .plugins import KNOWN_PLUGINS, PluginSpec
from .precision import graph_precision

__all__ = ["OnnxModel", "PluginNode", "inspect_onnx", "plugin_spec"]


@dataclass(frozen=True)
class PluginNode:
    node_name: str
    spec: PluginSpec


@dataclass(frozen=True)
class OnnxModel:
    """What build-engine needs to know about an ONNX file before TensorRT sees it."""

    path: Path
    metadata: dict[str, str]
    info: ModelInfo
    inputs: dict[str, tuple[int | None, ...]]
    plugin_nodes: tuple[PluginNode, ...]
    precision: str = "fp32"  # as the graph states it (precision.graph_precision)

    @property
    def plugins(self) -> tuple[PluginSpec, ...]:
        """The distinct plugin creators the graph needs, in graph order."""
        return tuple(dict.fromkeys(n.spec for n in self.plugin_nodes))


def _graphs(graph: onnx.GraphProto) -> Iterable[onnx.GraphProto]:
    """The graph and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for g in attr.graphs:
                yield from _graphs(g)


def plugin_spec(node: onnx.NodeProto) -> PluginSpec | None:
    """The plugin creator TensorRT's ONNX parser will look up for `node`; None for an ordinary node."""
    known = KNOWN_PLUGINS.get(node.op_type)
    if known is None:
        return None
    attrs = {a.name: a.s.decode() for a in node.attribute if a.type == onnx.AttributeProto.STRING}
    # The parser's defaults when an attribute is absent: version "1", namespace "".
    return PluginSpec(node.op_type, attrs.get("plugin_version", "1"), attrs.get("plugin_namespace", ""))


def inspect_onnx(path: str | Path) -> OnnxModel:
    """Metadata, inputs and plugin nodes of an ONNX file (weights are not loaded)."""
    path = Path(path)
    if not path.is_file():
        raise ZsdError(f"ONNX file {path} does not exist.", "pass the .onnx written by export-model.")
    proto = load_onnx_model(path, weights=False)
    metadata = {p.key: p.value for p in proto.metadata_props}
    info = ModelInfo.from_metadata(metadata, str(path))
    initializers = {i.name for i in proto.graph.initializer}
    inputs: dict[str, tuple[int | None, ...]] = {}
    for vi in proto.graph.input:
        if vi.name in initializers:
            continue
        dims = vi.type.tensor_type.shape.dim
        inputs[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    nodes = []
    for graph in _graphs(proto.graph):
        for node in graph.node:
            spec = plugin_spec(node)
            if spec is not None:
                nodes.append(PluginNode(node.name or node.output[0], spec))
    return OnnxModel(path, metadata, info, inputs, tuple(nodes), graph_precision(proto, metadata))
