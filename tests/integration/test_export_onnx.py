"""ONNX (gridsample lowering) vs PyTorch, fp32: static and dynamic exports, batch 1 and 2, two H x W."""
from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch

from helpers import rel_l2
from zsdeploy.runtime.backends import load_backend
from zsdeploy.runtime.errors import ZsdError


def _torch(model, x):
    with torch.inference_mode():
        return [t.numpy() for t in model(torch.from_numpy(x))]


def _images(b, h, w, seed):
    return (torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 255).numpy()


@pytest.mark.parametrize("name,b,h,w", [
    ("static_b1", 1, 128, 160), ("static_b2", 2, 96, 192),
    ("dynamic", 1, 128, 160), ("dynamic", 2, 96, 192), ("dynamic", 2, 160, 128)])
def test_onnx_matches_torch(onnx_exports, pading_panoptic, name, b, h, w):
    x = _images(b, h, w, seed=b * 1000 + h + w)
    sess = ort.InferenceSession(str(onnx_exports[name]))
    cls, masks = sess.run(["class_logits", "mask_logits"], {"images": x})
    ref_cls, ref_masks = _torch(pading_panoptic.model, x)
    assert cls.shape == (b, 100, 134) and masks.shape == (b, 100, h // 4, w // 4)
    assert rel_l2(cls, ref_cls) < 1e-4
    assert rel_l2(masks, ref_masks) < 1e-4


def test_graph_contract_and_metadata(onnx_exports):
    proto = onnx.load(str(onnx_exports["dynamic"]), load_external_data=False)
    onnx.checker.check_model(proto)
    [inp] = proto.graph.input
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert [o.name for o in proto.graph.output] == ["class_logits", "mask_logits"]
    ops = {n.op_type for n in proto.graph.node}
    assert "GridSample" in ops and not any(n.domain not in ("", "ai.onnx") for n in proto.graph.node)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["model"] == "pading" and meta["msda_lowering"] == "gridsample" and meta["standin_weights"] == "true"
    assert meta["dynamic"] == "true" and meta["num_classes"] == "133"
    static = {p.key: p.value for p in onnx.load(str(onnx_exports["static_b2"]), load_external_data=False).metadata_props}
    assert (static["static_batch"], static["static_height"], static["static_width"]) == ("2", "96", "192")


def test_static_model_rejects_other_shapes(onnx_exports):
    backend = load_backend(onnx_exports["static_b1"])
    with pytest.raises(ZsdError, match=r"exported for \[1, 3, 128, 160\]"):
        backend.infer({"images": _images(1, 128, 192, 0)})


def test_truncated_onnx_is_a_clear_error(onnx_exports, tmp_path):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(onnx_exports["static_b1"].read_bytes()[:5000])
    with pytest.raises(ZsdError, match="not a readable ONNX model"):
        load_backend(cut)


def test_onnx_without_metadata_is_rejected(onnx_exports, tmp_path):
    proto = onnx.load(str(onnx_exports["static_b1"]))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ZsdError, match="carries no zsdeploy metadata"):
        load_backend(bare)
