"""ZegFormer bundle export: segmenter (text embeddings as an input, any vocabulary size) and CLIP text encoder,
ONNX Runtime vs PyTorch, self-describing metadata, default-vocabulary embeddings, and bad input."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import BPE, FIXTURES, REPO, rel_l2
from zsdeploy.runtime.errors import ZsdError

H, W = 256, 320  # the golden case's size
GZSS = REPO / "configs" / "zegformer" / "cocostuff_r101_gzss.yaml"


@pytest.fixture(scope="module")
def bundle(zegformer_bundle):
    """The session's export-model --model zegformer bundle (see conftest)."""
    return zegformer_bundle


@pytest.fixture(scope="module")
def reference(bundle):
    from zsdeploy.export.zegformer_export import build_zegformer

    return build_zegformer(GZSS, clip=bundle[1])


_SESSIONS: dict[str, ort.InferenceSession] = {}


def session(path) -> ort.InferenceSession:
    """One ONNX Runtime session per graph for the whole module (loading the 240 MB segmenter takes seconds)."""
    key = str(path)
    if key not in _SESSIONS:
        _SESSIONS[key] = ort.InferenceSession(key, providers=["CPUExecutionProvider"])
    return _SESSIONS[key]


def test_bundle_files_and_metadata(bundle):
    from zsdeploy.runtime.artifacts.bundle_manifest import FORMAT, BundleInput, read_bundle_manifest
    from zsdeploy.runtime.artifacts.onnx_metadata import ModelInfo

    out, _, lines = bundle
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}  # .vocab_cache: runtime tests
    expected = {"segmenter.onnx", "text_encoder.onnx", "crop_classifier.onnx", "bundle.json"}
    if BPE is not None:
        expected |= {"text_embeddings.npy", "text_embeddings_clip.npy"}
    assert names == expected
    assert any("STAND-IN" in line for line in lines)
    manifest = read_bundle_manifest(out, verify=True)  # every file as exported: sizes and sha256s agree
    assert json.loads((out / "bundle.json").read_text())["format"] == FORMAT == manifest.format
    assert {g: f.file for g, f in manifest.graphs.items()} == {
        "segmenter": "segmenter.onnx", "text_encoder": "text_encoder.onnx", "crop_classifier": "crop_classifier.onnx"}
    assert set(manifest.embeddings) == ({"text_embeddings", "text_embeddings_clip"} if BPE is not None else set())
    assert manifest.input == BundleInput(dynamic=False, batch=1, height=H, width=W)
    assert manifest.made_from.standin_weights and manifest.made_from.weights_sha256 is None
    assert manifest.made_from.clip_weights == "clip_small.pt" and not manifest.made_from.standin_clip
    assert manifest.made_from.config == "cocostuff_r101_gzss.yaml" and manifest.exporter.opset == 18
    assert manifest.fusion.ensembling and manifest.fusion.gzero_calibrate == pytest.approx(0.1)
    assert manifest.prompts.templates == ("A photo of a {} in the scene",)
    assert len(manifest.prompts.clip_templates) == 32
    for graph in ("segmenter", "text_encoder", "crop_classifier"):
        proto = onnx.load(str(out / f"{graph}.onnx"), load_external_data=False)
        meta = {p.key: p.value for p in proto.metadata_props}
        info = ModelInfo.from_metadata(meta, graph)
        assert (info.model, info.task, info.num_classes, info.static_hw) == ("zegformer", "semantic", 171, (H, W))
        assert info.class_names[:3] == ("person", "bicycle", "car") and info.unseen_ids == tuple(range(156, 171))
        assert meta["graph"] == graph and meta["standin_weights"] == "true" and meta["standin_clip"] == "false"
        assert json.loads(meta["seen_ids"]) == list(range(156))
        assert meta["prompt_ensemble_type"] == "single"
        assert json.loads(meta["prompt_templates"]) == ["A photo of a {} in the scene"]
        assert len(json.loads(meta["clip_prompt_templates"])) == 32
        assert meta["clip_weights"] == "clip_small.pt" and len(meta["clip_sha256"]) == 64
        assert json.loads(meta["bundle_files"])["segmenter"] == "segmenter.onnx"
        assert meta["clip_classification"] == "true" and meta["gzero_calibrate"] == "0.1"
        assert meta["ensembling"] == "true" and meta["clip_cls_style"] == "cropmask"
        assert float(meta["logit_scale"]) == pytest.approx(100.0)
        assert manifest.classes.names == info.class_names and manifest.classes.seen_ids == info.seen_ids
        assert manifest.made_from.clip_sha256 == meta["clip_sha256"]


def test_segmenter_inputs_outputs(bundle):
    sess = session(bundle[0] / "segmenter.onnx")
    ins = {i.name: i.shape for i in sess.get_inputs()}
    assert ins == {"images": [1, 3, H, W], "text_embeddings": ["num_classes", 512]}
    assert [o.name for o in sess.get_outputs()] == ["class_logits", "mask_logits"]


def test_segmenter_onnx_reproduces_upstream_golden(bundle):
    """ONNX Runtime on the exported graph vs the upstream reference outputs (same stand-in weights)."""
    golden = np.load(FIXTURES / "zegformer_cocostuff_r101.npz")
    cls, masks = session(bundle[0] / "segmenter.onnx").run(None, {
        "images": golden["image"][None].astype(np.float32), "text_embeddings": golden["text_features_test"]})
    assert rel_l2(cls, golden["pred_logits"]) < 1e-4
    assert rel_l2(masks, golden["pred_masks"]) < 1e-4


@pytest.mark.parametrize("num_classes", [5, 1])
def test_segmenter_onnx_matches_pytorch_for_any_vocabulary(bundle, reference, num_classes):
    sess = session(bundle[0] / "segmenter.onnx")
    g = torch.Generator().manual_seed(num_classes)
    images = torch.rand(1, 3, H, W, generator=g) * 255
    text = torch.nn.functional.normalize(torch.randn(num_classes, 512, generator=g), dim=-1)
    cls, masks = sess.run(None, {"images": images.numpy(), "text_embeddings": text.numpy()})
    with torch.inference_mode():
        ref_cls, ref_masks = reference.model(images, text)
    assert cls.shape == (1, 100, num_classes + 1) and masks.shape == (1, 100, H // 4, W // 4)
    assert rel_l2(cls, ref_cls.numpy()) < 1e-4
    assert rel_l2(masks, ref_masks.numpy()) < 1e-4


def test_segmenter_rejects_wrong_text_width(bundle):
    sess = session(bundle[0] / "segmenter.onnx")
    with pytest.raises(Exception, match="text_embeddings"):
        sess.run(None, {"images": np.zeros((1, 3, H, W), np.float32),
                        "text_embeddings": np.zeros((3, 300), np.float32)})


def test_text_encoder_onnx_matches_pytorch(bundle, reference):
    from zsdeploy.export.models.clip import CLIPTextEncoder

    sess = session(bundle[0] / "text_encoder.onnx")
    ids = np.zeros((4, 77), np.int64)
    for i, body in enumerate(([320, 1929], [320, 2368, 530, 518, 3562], [22697], [9706] * 30)):
        ids[i, :len(body) + 2] = [49406, *body, 49407]
    with torch.inference_mode():
        ref = CLIPTextEncoder(reference.clip)(torch.from_numpy(ids)).numpy()
    for cols in (77, 34):  # full context, and with padding columns dropped
        got = sess.run(None, {"token_ids": ids[:, :cols]})[0]
        assert got.shape == (4, 512)
        assert rel_l2(got, ref) < 1e-4


@pytest.mark.skipif(BPE is None, reason="CLIP's BPE vocabulary not found")
def test_default_and_new_vocabulary_end_to_end(bundle):
    """The stored default embeddings equal the ONNX text encoder's prompt ensemble; a new 5-name vocabulary
    runs through tokenizer -> text_encoder.onnx -> segmenter.onnx."""
    from zsdeploy.runtime.prompts import class_text_embeddings
    from zsdeploy.runtime.tokenizer import ClipTokenizer

    from zsdeploy.runtime.artifacts.bundle_manifest import read_bundle_manifest

    out = bundle[0]
    manifest = read_bundle_manifest(out)
    names, prompts = list(manifest.classes.names), manifest.prompts
    tok = ClipTokenizer(BPE)
    text_sess = session(out / "text_encoder.onnx")

    def encode(ids):
        return text_sess.run(None, {"token_ids": ids})[0]

    default = np.load(out / "text_embeddings.npy")
    assert default.shape == (171, 512) and default.dtype == np.float32
    again = class_text_embeddings(names[:7], prompts.templates, tok.tokenize, encode)
    assert rel_l2(again, default[:7]) < 1e-4
    default_clip = np.load(out / "text_embeddings_clip.npy")
    again = class_text_embeddings(names[-3:], prompts.clip_templates, tok.tokenize, encode)
    assert default_clip.shape == (171, 512) and rel_l2(again, default_clip[-3:]) < 1e-4

    new_names = ["corgi", "fire truck", "traffic cone, pylon", "St. Peter's Basilica", "café table"]
    emb = class_text_embeddings(new_names, prompts.templates, tok.tokenize, encode)
    emb_clip = class_text_embeddings(new_names, prompts.clip_templates, tok.tokenize, encode)
    seg = session(out / "segmenter.onnx")
    image = (np.random.default_rng(0).random((1, 3, H, W)) * 255).astype(np.float32)
    cls, masks = seg.run(None, {"images": image, "text_embeddings": emb})
    assert cls.shape == (1, 100, 6) and np.isfinite(cls).all() and np.isfinite(masks).all()
    clip_logits = session(out / "crop_classifier.onnx").run(None, {
        "images": image, "image_sizes": np.array([[H, W]], np.int64), "mask_logits": masks,
        "text_embeddings_clip": emb_clip})[0]
    assert clip_logits.shape == (1, 100, 5) and np.isfinite(clip_logits).all()
    with pytest.raises(ZsdError, match="duplicate"):
        class_text_embeddings(["cat", "Cat"], "single", tok.tokenize, encode)
    with pytest.raises(ZsdError, match="at most 77"):
        class_text_embeddings(["very " * 80 + "long"], "single", tok.tokenize, encode)


def test_crop_classifier_onnx_matches_pytorch(bundle, reference):
    from zsdeploy.export.models.zegformer_clip import CLIPCropClassifier

    sess = session(bundle[0] / "crop_classifier.onnx")
    assert {i.name: i.shape for i in sess.get_inputs()} == {
        "images": [1, 3, H, W], "image_sizes": [1, 2], "mask_logits": [1, 100, H // 4, W // 4],
        "text_embeddings_clip": ["num_classes", 512]}
    g = torch.Generator().manual_seed(11)
    images = torch.rand(1, 3, H, W, generator=g) * 255
    sizes = torch.tensor([[H - 10, W - 30]])
    text = torch.nn.functional.normalize(torch.randn(4, 512, generator=g), dim=-1)
    with torch.inference_mode():
        _, masks = reference.model(images, text)
        ref = CLIPCropClassifier(reference.clip, reference.settings.clip_pixel_mean,
                                 reference.settings.clip_pixel_std)(images, sizes, masks, text).numpy()
    got = sess.run(None, {"images": images.numpy(), "image_sizes": sizes.numpy(), "mask_logits": masks.numpy(),
                          "text_embeddings_clip": text.numpy()})[0]
    assert got.shape == (1, 100, 4)
    assert rel_l2(got, ref) < 1e-4


def test_bad_export_arguments(tmp_path):
    from zsdeploy.export.zegformer_export import export_zegformer

    with pytest.raises(ZsdError, match="DIRECTORY"):
        export_zegformer(tmp_path / "x.onnx")
    with pytest.raises(ZsdError, match="multiples of 32"):
        export_zegformer(tmp_path / "b", height=100, width=96)
    not_clip = tmp_path / "not_clip.pt"
    torch.save({"foo": torch.zeros(2)}, not_clip)
    with pytest.raises(ZsdError, match="not an OpenAI CLIP ViT model"):
        export_zegformer(tmp_path / "b", clip=not_clip, height=64, width=64)
    assert not (tmp_path / "b").exists()
