"""fp32 islands: named groups of nodes that stay fp32 in an fp16 or int8 graph.

Groups are found by op types and graph topology, not by node names: the dynamo exporter names nodes after the
aten op ("node_softmax_3") and onnxslim drops the module scopes, so names carry no module path. Topology works
on any Mask2Former-style graph (PADing at any size, the trained demo model, static or dynamic shapes, graphs
from other tools): e.g. "the math that computes GridSample's sampling grid, back to the linear projection that
predicts the offsets".
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import onnx

from ..runtime.errors import ZsdError

LINEAR = frozenset({"Gemm", "MatMul", "Conv", "Einsum"})
MSDA_PLUGINS = frozenset({"MSDeformAttn", "MultiscaleDeformableAttnPlugin_TRT"})


class GraphIndex:
    """Producers / consumers of the top-level graph's tensors."""

    def __init__(self, model: onnx.ModelProto) -> None:
        ensure_node_names(model)
        self.nodes = list(model.graph.node)
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = [o.name for o in model.graph.output]

    def back_to_linear(self, tensor: str, limit: int = 40) -> set[str]:
        """Nodes computing `tensor`, walking back until (and including) the first Gemm/MatMul/Conv/Einsum on each
        path: the arithmetic between a projection and its use."""
        found: set[str] = set()
        todo = [tensor]
        while todo and len(found) < limit:
            node = self.producer.get(todo.pop())
            if node is None or node.name in found:
                continue
            found.add(node.name)
            if node.op_type not in LINEAR:
                todo.extend(i for i in node.input if i)
        return found

    def forward_until(self, node: onnx.NodeProto, stop: Callable[[onnx.NodeProto, set[str]], bool],
                      hops: int = 6) -> tuple[set[str], list[onnx.NodeProto]]:
        """Nodes downstream of `node` (up to `hops`), and the nodes where `stop` held (not walked past)."""
        path: set[str] = {node.name}
        stops: list[onnx.NodeProto] = []
        frontier = [node]
        for _ in range(hops):
            nxt: list[onnx.NodeProto] = []
            for n in frontier:
                for o in n.output:
                    for c in self.consumers.get(o, []):
                        if c.name in path:
                            continue
                        path.add(c.name)
                        (stops if stop(c, path) else nxt).append(c)
            frontier = nxt
        return path, stops


def _msda_sampling(g: GraphIndex) -> set[str]:
    out: set[str] = set()
    for n in g.nodes:
        if n.op_type == "GridSample":
            out.add(n.name)
            out |= g.back_to_linear(n.input[1])  # the sampling grid: offsets -> normalise -> + reference points
            # downstream, the Mul that weights the samples by the attention weights (the other branch)
            path, muls = g.forward_until(n, lambda c, p: c.op_type == "Mul")
            out |= path
            for mul in muls:
                out.add(mul.name)
                for i in mul.input:
                    if i and g.producer.get(i) is not None and g.producer[i].name not in path:
                        out |= g.back_to_linear(i)  # attention weights: projection -> softmax over points
                for c in g.consumers.get(mul.output[0], []):
                    if c.op_type == "ReduceSum":
                        out.add(c.name)
        elif n.op_type in MSDA_PLUGINS:
            for i in n.input[3:5]:  # sampling locations, attention weights
                out |= g.back_to_linear(i)
    # the Adds that accumulate the per-level weighted sums (every input made inside the island)
    grew = True
    while grew:
        grew = False
        for n in g.nodes:
            if n.op_type == "Add" and n.name not in out and all(
                    (p := g.producer.get(i)) is not None and p.name in out for i in n.input):
                out.add(n.name)
                grew = True
    return out


def _ops(*types: str) -> Callable[[GraphIndex], set[str]]:
    return lambda g: {n.name for n in g.nodes if n.op_type in types}


def _mask_product(g: GraphIndex) -> set[str]:
    out: set[str] = set()
    for n in g.nodes:
        if n.op_type == "Einsum":
            out.add(n.name)
            for i in n.input:
                out |= g.back_to_linear(i)  # the mask-embedding MLP's last layer and the mask-feature conv
    return out


def _class_head(g: GraphIndex) -> set[str]:
    outs = [o for o in g.outputs if "class" in o] or g.outputs[:1]
    return set().union(*(g.back_to_linear(o) for o in outs))


def _pixel_decoder_convs(g: GraphIndex) -> set[str]:
    """Convs followed by a GroupNorm (exported as InstanceNormalization / GroupNormalization, the pixel decoder's
    projections and FPN convs; the backbone's BatchNorms are folded), and convs feeding the mask Einsum."""
    norms = {"InstanceNormalization", "GroupNormalization"}
    out = set()
    for n in g.nodes:
        if n.op_type != "Conv":
            continue
        _, stops = g.forward_until(n, lambda c, p: c.op_type in norms | {"Einsum"}, hops=3)
        if stops:
            out.add(n.name)
    return out


def _attention_products(g: GraphIndex) -> set[str]:
    """MatMuls of two activations (QK^T and attention x V); weight MatMuls have an initializer input."""
    return {n.name for n in g.nodes if n.op_type == "MatMul" and all(i in g.producer for i in n.input[:2])}


def _stem(g: GraphIndex) -> set[str]:
    return next(({n.name} for n in g.nodes if n.op_type == "Conv"), set())


@dataclass(frozen=True)
class Island:
    """A candidate block kept in fp32."""

    name: str
    what: str
    select: Callable[[GraphIndex], set[str]]


# The candidate blocks the sensitivity pass (precision_sensitivity.py) measures one by one.
CANDIDATES: tuple[Island, ...] = (
    Island("msda_sampling", "MSDeformAttn sampling-location and attention-weight math: offset/weight projections, "
           "softmax over points, grid arithmetic, GridSample and the weighted sum", _msda_sampling),
    Island("attn_softmax", "every Softmax (decoder attention, MSDeformAttn weights)", _ops("Softmax", "LogSoftmax")),
    Island("layernorm", "every LayerNormalization", _ops("LayerNormalization")),
    Island("mask_product", "mask embedding x per-pixel mask features (Einsum) with the last mask-embedding layer "
           "and the mask-feature conv", _mask_product),
    Island("class_head", "the class head (the projection and arithmetic that produce class_logits)", _class_head),
    Island("pixel_decoder_convs", "pixel-decoder convolutions (input projections, FPN lateral/output convs, "
           "mask-feature conv)", _pixel_decoder_convs),
    Island("attention_products", "attention matrix products QK^T and attention x V", _attention_products),
    Island("backbone_stem", "the backbone's first convolution (sees the normalised pixels)", _stem),
)
BY_NAME = {i.name: i for i in CANDIDATES}


def parse_islands(text: str | None, default: Iterable[str]) -> tuple[str, ...]:
    """`--fp32-islands`: comma list of candidate names, `none`, or `default` (None = default)."""
    if text is None or text.strip() == "default":
        return tuple(default)
    if text.strip() == "none":
        return ()
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        raise ZsdError(f"--fp32-islands {text!r}: unknown island(s) {unknown or '(empty)'}.",
                       f"use a comma list of {', '.join(BY_NAME)}, or none, or default.")
    return names


def island_nodes(model: onnx.ModelProto, names: Iterable[str]) -> dict[str, list[str]]:
    """Node names (top-level graph) of each island (nodes without a unique name get one first)."""
    g = GraphIndex(model)
    order = {n.name: i for i, n in enumerate(g.nodes)}
    return {name: sorted(BY_NAME[name].select(g), key=order.__getitem__) for name in names}


def ensure_node_names(model: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}_{node.output[0] if node.output else ''}"
        seen.add(node.name)
