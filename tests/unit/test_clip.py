"""CLIP ViT towers: OpenAI key layout, parity with OpenAI's own model code on the same weights, loading of
TorchScript archives and state dicts (with clear errors for files that are not CLIP), and ONNX parity."""
from __future__ import annotations

import pickle
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import FIXTURES, read_manifest, rel_l2, tiny_clip, tiny_clip_spec
from zsdeploy.export.models.clip import (
    CLIP,
    ZEGFORMER_CLIP_PREFIX,
    CLIPImageEncoder,
    CLIPSpec,
    CLIPTextEncoder,
    build_clip,
    load_clip_state_dict,
)
from zsdeploy.runtime.errors import ZsdError

TINY = tiny_clip_spec()  # the spec of helpers.tiny_clip


def token_ids(rows: list[list[int]], n_ctx: int = 77) -> torch.Tensor:
    out = torch.zeros(len(rows), n_ctx, dtype=torch.int64)
    for i, body in enumerate(rows):
        out[i, :len(body) + 2] = torch.tensor([49406, *body, 49407])
    return out


def test_key_layout_is_openai_vit_b16():
    manifest = read_manifest(FIXTURES / "zegformer_manifest_clip_vit_b16.tsv")
    ours = {k: tuple(v.shape) for k, v in CLIP().state_dict().items()}
    assert len(manifest) == 302
    assert ours == manifest


def test_matches_openai_model_code_on_standin_vit_b16():
    """Reference: OpenAI's clip/model.py in fp32 on the same stand-in ViT-B/16 (tests/fixtures/zegformer_make_fixtures.py)."""
    ref = np.load(FIXTURES / "zegformer_clip_reference.npz")
    model, spec, sha = build_clip(None)
    assert spec == CLIPSpec() and sha == ""
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        text = model.encode_text(torch.from_numpy(ref["token_ids"]))
        image = model.encode_image(images)
        normed = CLIPTextEncoder(model)(torch.from_numpy(ref["token_ids"]))
    assert rel_l2(text.numpy(), ref["text_features"]) < 1e-4
    assert rel_l2(image.numpy(), ref["image_features"]) < 1e-4
    expected = ref["text_features"] / np.linalg.norm(ref["text_features"], axis=1, keepdims=True)
    assert rel_l2(normed.numpy(), expected) < 1e-4


def test_text_tower_is_causal_and_pools_at_eot():
    model = tiny_clip()
    ids = token_ids([[320, 1929], [320, 1929, 530, 518, 3562]])
    with torch.inference_mode():
        full = model.encode_text(ids)
        trimmed = model.encode_text(ids[:, :7])  # longest row: 5 + SOT + EOT
        garbage_after_eot = ids.clone()
        garbage_after_eot[0, 4:10] = 77  # tokens after the first row's EOT
        changed = model.encode_text(garbage_after_eot)
        other_eot = model.encode_text(token_ids([[320, 1929, 2368]]))
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(changed, full, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(other_eot[0], full[0], atol=1e-3)


# ------------------------------------------------------------------------------------------------------ loading
class _Archive(torch.nn.Module):
    """Module with OpenAI's archive state_dict: the CLIP parameters plus three integer buffers."""

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        for name, child in clip.named_children():
            self.add_module(name, child)
        for name, p in clip.named_parameters(recurse=False):
            self.register_parameter(name, p)
        self.register_buffer("input_resolution", torch.tensor(224))
        self.register_buffer("context_length", torch.tensor(77))
        self.register_buffer("vocab_size", torch.tensor(49408))

    def forward(self, ids):
        return CLIP.encode_text(self, ids)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    model = tiny_clip()
    state = model.state_dict()
    files = {"state": d / "state.pt", "half": d / "half.pt", "archive": d / "ViT-tiny.pt", "gzss": d / "gzss.pth"}
    torch.save(state, files["state"])
    torch.save({k: v.half() for k, v in state.items()}, files["half"])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated for new code; OpenAI's archives use it
        traced = torch.jit.trace(_Archive(model), token_ids([[320]]), check_trace=False)
        torch.jit.save(traced, files["archive"])
    torch.save({"model": {"backbone.stem.conv1.weight": torch.zeros(1),
                          **{ZEGFORMER_CLIP_PREFIX + k: v for k, v in state.items()}}}, files["gzss"])
    return model, files


@pytest.mark.parametrize("kind", ["state", "half", "archive", "gzss"])
def test_loads_archive_and_state_dicts(tiny_files, kind):
    model, files = tiny_files
    state, spec = load_clip_state_dict(files[kind])
    assert spec == TINY
    expected = model.state_dict()
    assert list(state) == list(expected)
    tol = 1e-3 if kind == "half" else 0.0
    for k, v in expected.items():
        assert state[k].dtype == torch.float32
        torch.testing.assert_close(state[k], v, rtol=tol, atol=tol)


def _error(path) -> str:
    with pytest.raises(ZsdError) as e:
        load_clip_state_dict(path)
    return str(e.value)


def test_not_clip_files_are_refused_clearly(tmp_path, tiny_files):
    model, files = tiny_files
    state = model.state_dict()
    zeg = tmp_path / "zegformer.pth"
    torch.save({"model": {"backbone.stem.conv1.weight": torch.zeros(64, 3, 7, 7)}}, zeg)
    msg = _error(zeg)
    assert "not an OpenAI CLIP ViT model" in msg and "visual.conv1.weight" in msg and "token_embedding.weight" in msg

    resnet = tmp_path / "rn50.pt"
    torch.save({"visual.layer1.0.conv1.weight": torch.zeros(1), "token_embedding.weight": torch.zeros(1)}, resnet)
    assert "ResNet image tower" in _error(resnet)

    extra = tmp_path / "extra.pt"
    torch.save({**state, "visual.extra_head.weight": torch.zeros(2)}, extra)
    assert "unexpected key(s): visual.extra_head.weight" in _error(extra)

    missing = tmp_path / "missing.pt"
    torch.save({k: v for k, v in state.items() if k != "ln_final.bias"}, missing)
    assert "missing key(s): ln_final.bias" in _error(missing)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(files["archive"].read_bytes()[:5000])
    assert "neither a TorchScript archive nor a state dict" in _error(truncated)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "weights_only" in _error(text)
    assert "does not exist" in _error(tmp_path / "absent.pt")


def test_pickle_that_executes_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"visual.conv1.weight": Evil()}, f, protocol=2)
    assert "weights_only" in _error(path)


# ------------------------------------------------------------------------------------------------------ ONNX
@pytest.fixture(scope="module")
def onnx_towers(tmp_path_factory):
    from zsdeploy.export.onnx_export import check_and_simplify
    from zsdeploy.export.zegformer_export import trace_graph

    model = tiny_clip(seed=1)
    text = CLIPTextEncoder(model).eval()
    image = CLIPImageEncoder(model).eval()
    ids = token_ids([[320, 1929], [320, 2368, 530], [22697]])[:, :8]
    t_proto = check_and_simplify(trace_graph(
        text, (ids,), opset=18, input_names=("token_ids",), output_names=("text_embeddings",),
        dynamic_shapes=({0: torch.export.Dim("n", min=1, max=4096), 1: torch.export.Dim("l", min=2, max=77)},)))
    imgs = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    i_proto = check_and_simplify(trace_graph(
        image, (imgs,), opset=18, input_names=("crops",), output_names=("image_embeddings",),
        dynamic_shapes=({0: torch.export.Dim("n", min=1, max=4096)},)))
    return model, ort.InferenceSession(t_proto.SerializeToString()), ort.InferenceSession(i_proto.SerializeToString())


def test_text_encoder_onnx_matches_pytorch(onnx_towers):
    model, sess, _ = onnx_towers
    for ids in (token_ids([[320, 1929, 530, 518, 3562], [49405, 2], [7] * 75, [1]]),  # full 77 columns
                token_ids([[320, 1929], [22697]])[:, :4]):  # trimmed, another batch size
        got = sess.run(None, {"token_ids": ids.numpy()})[0]
        with torch.inference_mode():
            ref = CLIPTextEncoder(model)(ids).numpy()
        assert got.shape == (ids.shape[0], 512)
        assert rel_l2(got, ref) < 1e-4
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_image_encoder_onnx_matches_pytorch(onnx_towers):
    model, _, sess = onnx_towers
    imgs = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    got = sess.run(None, {"crops": imgs.numpy()})[0]
    with torch.inference_mode():
        ref = CLIPImageEncoder(model)(imgs).numpy()
    assert got.shape == (3, 512)
    assert rel_l2(got, ref) < 1e-4
