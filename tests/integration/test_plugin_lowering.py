"""`--msda plugin|nvidia` lowerings: node spelling, int32 shape inputs, onnx.checker, and numerics.

Graphs with plugin nodes run on CPU through export/msda_ort.py (plugin nodes -> onnxruntime-extensions Python
ops backed by the host build of the kernel) and must match the gridsample graph of the same model to
rel L2 < 1e-5. A small one-layer model covers the mechanics quickly; the full PADing model (128x160 static, dynamic
batch/H/W) is the acceptance check and takes a few minutes (six dynamo exports).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn import functional as F

from zsdeploy.export import msda_kernel, msda_ort
from zsdeploy.export.models.msdeformattn import MSDeformAttn
from zsdeploy.export.onnx_export import ExportShape, check_and_simplify, trace_to_onnx
from zsdeploy.export.plugin_lowering import NVIDIA, PLUGIN, custom_translations, plugin_op_for, register_schemas

pytest.importorskip("onnxruntime_extensions", reason="onnxruntime-extensions is not installed (pip install "
                                                      "onnxruntime-extensions): plugin graphs cannot run on CPU")

REL_L2 = 1e-5
LOWERINGS = ("plugin", "nvidia")


def rel_l2(got: np.ndarray, ref: np.ndarray) -> float:
    ref64 = ref.astype(np.float64)
    return float(np.linalg.norm(got.astype(np.float64) - ref64) / max(np.linalg.norm(ref64), 1e-30))


def run_plain(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def run_plugin(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = msda_ort.plugin_graph_session(proto)
    expected = "kernel" if msda_kernel.kernel_available() else "reference"
    assert sess.msda_implementation.startswith(expected)
    return sess.run(None, feeds)


def plugin_nodes(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in proto.graph.node if n.op_type in (PLUGIN.op_type, NVIDIA.op_type)]


def producers(proto: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in proto.graph.node for o in n.output}


def check_plugin_nodes(proto: onnx.ModelProto, msda: str, expected_count: int, static: bool) -> None:
    """Op type, domain and attributes exactly as specified; shape inputs int32 (initializers when static)."""
    op = plugin_op_for(msda)
    assert op is not None
    nodes = plugin_nodes(proto)
    assert len(nodes) == expected_count
    inits = {i.name: i for i in proto.graph.initializer}
    made_by = producers(proto)
    for node in nodes:
        assert node.op_type == op.op_type and node.domain == op.domain
        attrs = {a.name: (a.type, a.s.decode()) for a in node.attribute}
        assert attrs == {"plugin_version": (onnx.AttributeProto.STRING, op.plugin_version),
                         "plugin_namespace": (onnx.AttributeProto.STRING, op.plugin_namespace)}
        assert len(node.input) == 5 and len(node.output) == 1
        for name in node.input[1:3]:
            if static:
                assert name in inits, f"{name} should be folded into an int32 initializer in a static export"
                assert inits[name].data_type == onnx.TensorProto.INT32
            else:
                cast = made_by[name]
                assert cast.op_type == "Cast"
                assert next(a.i for a in cast.attribute if a.name == "to") == onnx.TensorProto.INT32
    if msda == "nvidia":
        # NVIDIA's 4-D output [N,Lq,M,D] feeds a Reshape to [N,Lq,M*D].
        consumers = [n for n in proto.graph.node if nodes[0].output[0] in n.input]
        assert [c.op_type for c in consumers] == ["Reshape"]
    assert any(o.domain == op.domain for o in proto.opset_import)


# ------------------------------------------------------------------------------------------- mechanics


def test_translation_table_and_schemas():
    assert custom_translations("gridsample") is None
    for msda in LOWERINGS:
        table = custom_translations(msda)
        assert table is not None and list(table) == [torch.ops.zsdeploy.ms_deform_attn.default]
    register_schemas()  # idempotent
    for op in (PLUGIN, NVIDIA):
        schema = onnx.defs.get_schema(op.op_type, 1, op.domain)
        assert [i.name for i in schema.inputs] == ["value", "spatial_shapes", "level_start_index",
                                                   "sampling_locations", "attention_weights"]
        assert set(schema.attributes) == {"plugin_version", "plugin_namespace"}
    assert (PLUGIN.plugin_version, PLUGIN.plugin_namespace) == ("1", "zsdeploy")
    assert (NVIDIA.op_type, NVIDIA.plugin_version, NVIDIA.plugin_namespace) == \
        ("MultiscaleDeformableAttnPlugin_TRT", "2", "")


class TinyMSDA(nn.Module):
    """One MSDeformAttn over a 3-level pyramid of the input: level sizes follow H/W (static or dynamic)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 32, 1)
        self.ref = nn.Linear(32, 3 * 2)
        self.attn = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=2)
        with torch.no_grad():  # offsets of several pixels: many samples fall between/outside pixels
            self.attn.sampling_offsets.weight.mul_(20)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f0 = self.proj(images / 255)
        feats = [f0, F.avg_pool2d(f0, 2), F.avg_pool2d(f0, 4)]
        shapes = [(f.shape[2], f.shape[3]) for f in feats]
        value = torch.cat([f.flatten(2) for f in feats], 2).transpose(1, 2)
        ref = torch.sigmoid(self.ref(value)).view(value.shape[0], value.shape[1], 3, 2)
        return self.attn(value, ref, value, shapes)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return TinyMSDA().eval()


def _export(model: nn.Module, shape: ExportShape, msda: str, outputs=("out",)) -> onnx.ModelProto:
    proto = trace_to_onnx(model, shape, opset=18, msda=msda, output_names=outputs)
    return check_and_simplify(proto)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("msda", LOWERINGS)
def test_tiny_model_matches_gridsample(tiny, msda, dynamic):
    shape = ExportShape(64, 96, 2, dynamic)
    ref_graph = _export(tiny, shape, "gridsample")
    graph = _export(tiny, shape, msda)
    onnx.checker.check_model(graph, full_check=True)
    check_plugin_nodes(graph, msda, expected_count=1, static=not dynamic)
    sizes = [(2, 64, 96)] if not dynamic else [(2, 64, 96), (1, 96, 32), (3, 32, 160)]
    rng = np.random.default_rng(1)
    for n, h, w in sizes:
        x = (rng.random((n, 3, h, w), dtype=np.float32) * 255).astype(np.float32)
        (ref,), (got,) = run_plain(ref_graph, {"images": x}), run_plugin(graph, {"images": x})
        assert got.shape == ref.shape
        assert rel_l2(got, ref) < REL_L2, (msda, (n, h, w))
    with torch.no_grad():  # and the PyTorch model itself (the op's eager path)
        torch_out = tiny(torch.from_numpy(x)).numpy()
    assert rel_l2(got, torch_out) < REL_L2


@pytest.mark.parametrize("opset", [17, 21])
def test_other_opsets(tiny, opset):
    shape = ExportShape(64, 96, 1, False)
    graph = check_and_simplify(trace_to_onnx(tiny, shape, opset=opset, msda="plugin", output_names=("out",)))
    ref = check_and_simplify(trace_to_onnx(tiny, shape, opset=opset, msda="gridsample", output_names=("out",)))
    assert {o.domain: o.version for o in graph.opset_import}[""] == opset
    check_plugin_nodes(graph, "plugin", expected_count=1, static=True)
    x = (np.random.default_rng(2).random((1, 3, 64, 96), dtype=np.float32) * 255).astype(np.float32)
    assert rel_l2(run_plugin(graph, {"images": x})[0], run_plain(ref, {"images": x})[0]) < REL_L2


def test_static_shape_initializers_have_level_values(tiny):
    graph = _export(tiny, ExportShape(64, 96, 1, False), "plugin")
    node = plugin_nodes(graph)[0]
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    np.testing.assert_array_equal(inits[node.input[1]], np.array([[64, 96], [32, 48], [16, 24]], np.int32))
    np.testing.assert_array_equal(inits[node.input[2]], np.array([0, 64 * 96, 64 * 96 + 32 * 48], np.int32))
    # the registered shape inference gives the plugin output [N, Lq, M*D]
    inferred = onnx.shape_inference.infer_shapes(graph)
    vi = {v.name: v for v in inferred.graph.value_info}[node.output[0]]
    assert [d.dim_value for d in vi.type.tensor_type.shape.dim] == [1, 64 * 96 + 32 * 48 + 16 * 24, 32]


def test_plugin_graph_copy_leaves_input_untouched(tiny):
    graph = _export(tiny, ExportShape(64, 96, 1, False), "plugin")
    before = graph.SerializeToString()
    copy = msda_ort.plugin_graph_proto(graph)
    assert graph.SerializeToString() == before
    assert [n.domain for n in copy.graph.node if n.op_type.startswith("Zsd")] == [msda_ort.CONTRIB_DOMAIN]
    with pytest.raises(ValueError, match="no MSDeformAttn"):
        msda_ort.plugin_graph_proto(_export(tiny, ExportShape(64, 96, 1, False), "gridsample"))


def test_int64_shape_inputs_are_rejected():
    """The Python op declares int32 shape inputs, like the TensorRT plugins: an int64 graph must not load."""
    value = onnx.helper.make_tensor_value_info("value", onnx.TensorProto.FLOAT, [1, 4, 1, 2])
    loc = onnx.helper.make_tensor_value_info("loc", onnx.TensorProto.FLOAT, [1, 1, 1, 1, 1, 2])
    att = onnx.helper.make_tensor_value_info("att", onnx.TensorProto.FLOAT, [1, 1, 1, 1, 1])
    out = onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)
    shapes = numpy_helper.from_array(np.array([[2, 2]], np.int64), "shapes")
    starts = numpy_helper.from_array(np.array([0], np.int64), "starts")
    node = onnx.helper.make_node(PLUGIN.op_type, ["value", "shapes", "starts", "loc", "att"], ["out"],
                                 domain=PLUGIN.domain, **PLUGIN.attributes)
    graph = onnx.helper.make_graph([node], "g", [value, loc, att], [out], [shapes, starts])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18),
                                                         onnx.helper.make_opsetid(PLUGIN.domain, 1)],
                                  ir_version=10)
    with pytest.raises(Exception, match=r"tensor\(int64\)"):
        msda_ort.plugin_graph_session(model)


# ------------------------------------------------------------------------------------ full PADing model


@pytest.mark.parametrize("dynamic", [False, True], ids=["static_128x160", "dynamic"])
@pytest.mark.parametrize("msda", LOWERINGS)
def test_pading_plugin_graph_matches_gridsample(pading_graphs, msda, dynamic):
    graph, ref_graph = pading_graphs[(msda, dynamic)], pading_graphs[("gridsample", dynamic)]
    onnx.checker.check_model(graph)
    # six deformable encoder layers in PADing's pixel decoder -> six plugin nodes
    check_plugin_nodes(graph, msda, expected_count=6, static=not dynamic)
    if (msda, dynamic) == ("plugin", False):
        assert {p.key: p.value for p in graph.metadata_props}["msda_lowering"] == "plugin"
    sizes = [(1, 128, 160)] if not dynamic else [(2, 128, 160), (1, 96, 192)]
    rng = np.random.default_rng(0)
    for n, h, w in sizes:
        x = (rng.random((n, 3, h, w), dtype=np.float32) * 255).astype(np.float32)
        ref, got = run_plain(ref_graph, {"images": x}), run_plugin(graph, {"images": x})
        for name, r, g in zip(("class_logits", "mask_logits"), ref, got):
            assert g.shape == r.shape
            err = rel_l2(g, r)
            assert err < REL_L2, f"{msda} {name} at {n}x3x{h}x{w}: rel L2 {err:.2e}"
    assert sum(msda_ort.calls().values()) > 0
