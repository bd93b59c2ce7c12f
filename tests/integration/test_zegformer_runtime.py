"""ZegFormer at run time: vocabulary parsing, CLIP score fusion (numpy port vs the PyTorch reference), the bundle
segmenter end to end vs PyTorch, and `trt-infer` on a bundle with a new vocabulary as a person runs it."""
from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import BPE, assert_ran, needs_bpe, rel_l2
from PIL import Image
from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.artifacts.onnx_metadata import ModelInfo
from zsdeploy.runtime.zegformer import (
    ZegFormerBundle,
    ZegFormerSegmenter,
    check_text_embeddings,
    fuse_scores,
    make_vocabulary,
    parse_class_names,
    read_class_file,
)

H, W = 256, 320
NEW_NAMES = ["corgi", "fire truck", "traffic cone", "St. Peter's Basilica", "café table"]


def _info(names, seen_ids) -> ModelInfo:
    meta = {"model": "zegformer", "task": "semantic", "num_classes": str(len(names)), "class_names": json.dumps(names),
            "pixel_mean": "[0, 0, 0]", "min_size_test": "640", "max_size_test": "2560", "size_divisibility": "32",
            "dynamic": "true", "seen_ids": json.dumps(seen_ids)}
    return ModelInfo.from_metadata(meta, "test")


# ------------------------------------------------------------------------------------------------ vocabulary
def test_parse_class_names_and_errors():
    assert parse_class_names(" corgi, fire truck ,traffic cone") == ["corgi", "fire truck", "traffic cone"]
    for bad, match in (("", "empty"), (" , ", "empty"), ("a,,b", r"position\(s\) \[2\]"), ("a,b,", r"\[3\]")):
        with pytest.raises(ZsdError, match=match):
            parse_class_names(bad)


def test_read_class_file_text_and_json(tmp_path):
    txt = tmp_path / "v.txt"
    txt.write_text("# my vocabulary\ncorgi\n\n  traffic cone, pylon  \ncafé table\n", encoding="utf-8")
    assert read_class_file(txt) == ["corgi", "traffic cone, pylon", "café table"]
    js = tmp_path / "v.json"
    js.write_text(json.dumps(["a", "b, c"]))
    assert read_class_file(js) == ["a", "b, c"]
    js.write_text('{"names": ["a"]}')
    with pytest.raises(ZsdError, match="JSON list of strings"):
        read_class_file(js)
    with pytest.raises(ZsdError, match="does not exist"):
        read_class_file(tmp_path / "missing.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ZsdError, match="UTF-8"):
        read_class_file(tmp_path / "bin.txt")


def test_vocabulary_seen_and_unseen_split():
    info = _info(["person", "grass", "cat", "frisbee"], seen_ids=[0, 1, 3])  # cat is unseen at training
    v = make_vocabulary(["Frisbee", "corgi", "cat", " person "], info, "--classes")
    assert v.seen_ids == (0, 3) and v.unseen_ids == (1, 2)
    with pytest.raises(ZsdError, match="duplicate"):
        make_vocabulary(["cat", "CAT "], info, "x")
    with pytest.raises(ZsdError, match="empty"):
        make_vocabulary([], info, "x")


def test_check_text_embeddings_errors():
    good = np.eye(3, 512, dtype=np.float32)
    assert check_text_embeddings(good, 3, 512, "t").shape == (3, 512)
    with pytest.raises(ZsdError, match=r"shape \[3, 300\].*expected \[3, 512\]"):
        check_text_embeddings(np.eye(3, 300, dtype=np.float32), 3, 512, "t")
    with pytest.raises(ZsdError, match=r"shape \[2, 512\]"):
        check_text_embeddings(good[:2], 3, 512, "t")
    with pytest.raises(ZsdError, match="not L2-normalised"):
        check_text_embeddings(good * 2, 3, 512, "t")
    bad = good.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ZsdError, match="NaN"):
        check_text_embeddings(bad, 3, 512, "t")


# ------------------------------------------------------------------------------------------------ fusion
@pytest.mark.parametrize("mode", ["none", "ensembling", "ensembling_all_cls", "clip_only"])
@pytest.mark.parametrize("calibrate", [-1.0, 0.1])
def test_fusion_matches_pytorch_reference(mode, calibrate):
    """Numpy fusion + post-processing vs models.zegformer_clip.semantic_inference (the PyTorch port of upstream)."""
    from zsdeploy.export.models.zegformer_clip import semantic_inference
    from zsdeploy.runtime.postprocess import PostprocessConfig, postprocess

    rng = np.random.default_rng(3)
    q, c = 20, 7
    cls = (rng.standard_normal((q, c + 1)) * 3).astype(np.float32)
    masks = (rng.standard_normal((q, 24, 32)) * 4).astype(np.float32)
    clip = None if mode == "none" else (rng.standard_normal((q, c)) * 5).astype(np.float32)
    seen, unseen = (0, 2, 3, 5), (1, 4, 6)
    padded, image, out = (96, 128), (90, 117), (181, 233)
    scores = fuse_scores(cls, clip, seen_ids=seen, unseen_ids=unseen, ensembling=mode == "ensembling",
                         ensembling_all_cls=mode == "ensembling_all_cls")
    got = postprocess(cls, masks, task="semantic", padded_hw=padded, image_hw=image, output_hw=out,
                      meta=PostprocessConfig(num_classes=c, thing_ids=()), class_scores=scores)["sem_seg"]
    if calibrate > 0:
        got[list(seen)] -= np.float32(calibrate)
    ref = semantic_inference(torch.from_numpy(cls), torch.from_numpy(masks), padded, image, out,
                             clip_logits=None if clip is None else torch.from_numpy(clip), seen_ids=seen,
                             unseen_ids=unseen, ensembling=mode == "ensembling",
                             ensembling_all_cls=mode == "ensembling_all_cls", gzero_calibrate=calibrate).numpy()
    assert got.shape == ref.shape == (c, *out)
    assert np.abs(got - ref).max() < 2e-5 * max(1.0, np.abs(ref).max())
    assert (got.argmax(0) == ref.argmax(0)).mean() > 0.999


def test_fusion_modes_differ_where_they_should():
    rng = np.random.default_rng(0)
    cls = rng.standard_normal((5, 4)).astype(np.float32)
    clip = rng.standard_normal((5, 3)).astype(np.float32)
    kw = {"seen_ids": (0,), "unseen_ids": (1, 2)}
    ens = fuse_scores(cls, clip, ensembling=True, ensembling_all_cls=False, **kw)
    allc = fuse_scores(cls, clip, ensembling=False, ensembling_all_cls=True, **kw)
    # unseen classes get the same geometric weighting in both modes; seen ones differ (CLIP's seen mean)
    np.testing.assert_allclose(ens[:, 1:], allc[:, 1:], rtol=1e-6)
    assert not np.allclose(ens[:, 0], allc[:, 0])


# ------------------------------------------------------------------------------------------------ bundle
def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((H, W, 3), np.uint8)
    img[:] = rng.integers(0, 255, 3)
    img[40:150, 60:200] = rng.integers(0, 255, 3)
    img[160:240, 220:300] = rng.integers(0, 255, (80, 80, 3))
    return img


@needs_bpe
def test_bundle_segmenter_matches_pytorch_pipeline(zegformer_bundle):
    """Default vocabulary, gzss: runtime (ONNX Runtime + numpy fusion) vs PyTorch models + reference fusion."""
    from zsdeploy.export.models.zegformer_clip import (
        CLIPCropClassifier,
        semantic_inference,
    )
    from zsdeploy.export.zegformer_export import build_zegformer

    out, clip_file, _ = zegformer_bundle
    bundle = ZegFormerBundle(out)
    seg = ZegFormerSegmenter.from_bundle(bundle, short_edge=256)
    assert bundle.gzss and seg.vocabulary.unseen_ids == tuple(range(156, 171))
    img = _image()
    result = seg([img])[0]
    assert result.extra_raw["clip_logits"].shape == (100, 171)

    ref = build_zegformer("cocostuff_r101_gzss", clip=clip_file)
    batch = seg.preprocess([img])
    x = torch.from_numpy(batch.tensor)
    emb = torch.from_numpy(np.load(out / "text_embeddings.npy"))
    emb_clip = torch.from_numpy(np.load(out / "text_embeddings_clip.npy"))
    with torch.inference_mode():
        cls, masks = ref.model(x, emb)
        s = ref.settings
        clip_logits = CLIPCropClassifier(ref.clip, s.clip_pixel_mean, s.clip_pixel_std)(
            x, torch.tensor(batch.image_sizes), masks, emb_clip)
        sem = semantic_inference(cls[0], masks[0], batch.padded_hw, batch.image_sizes[0], (H, W),
                                 clip_logits=clip_logits[0], seen_ids=range(156), unseen_ids=range(156, 171),
                                 ensembling=s.ensembling, ensembling_all_cls=s.ensembling_all_cls,
                                 gzero_calibrate=s.gzero_calibrate).numpy()
    assert rel_l2(result.class_logits, cls[0].numpy()) < 1e-4
    assert rel_l2(result.extra_raw["clip_logits"], clip_logits[0].numpy()) < 1e-4
    got = result.results["sem_seg"]
    assert rel_l2(got, sem) < 1e-4
    assert (got.argmax(0) == sem.argmax(0)).mean() >= 0.999


def test_gzss_bundle_needs_clip_embeddings_and_right_width(zegformer_bundle):
    bundle = ZegFormerBundle(zegformer_bundle[0])
    vocab = make_vocabulary(["cat", "dog"], bundle.info, "test")
    emb = np.eye(2, 512, dtype=np.float32)
    with pytest.raises(ZsdError, match="32 crop templates"):
        ZegFormerSegmenter(bundle, vocab, emb)
    with pytest.raises(ZsdError, match=r"expected \[2, 512\]"):
        ZegFormerSegmenter(bundle, vocab, np.eye(2, 768, dtype=np.float32), emb)


@needs_bpe  # the bundle stores default embeddings only when the BPE file was there at export
def test_damaged_default_embeddings_are_named(zegformer_bundle, tmp_path):
    """A bundle whose stored default embeddings were replaced (wrong width): refused when they are loaded, the
    error names the file (the graphs are not affected: the bundle opens)."""
    src = zegformer_bundle[0]
    for f in src.iterdir():
        if f.is_file():
            os.symlink(f, tmp_path / f.name)
    (tmp_path / "text_embeddings.npy").unlink(missing_ok=True)
    np.save(tmp_path / "text_embeddings.npy", np.eye(171, 300, dtype=np.float32))
    bundle = ZegFormerBundle(tmp_path)
    from zsdeploy.runtime.zegformer import default_vocabulary

    with pytest.raises(ZsdError, match=r"text_embeddings.npy \(the stored text_embeddings\) has \d+ bytes, but "
                                       r".*bundle.json recorded \d+"):
        bundle.text_embeddings(default_vocabulary(bundle.info))


# ------------------------------------------------------------------------------------------------ CLI
def _trt_infer(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.pop("ZSD_CLIP_BPE", None)  # the BPE path is passed explicitly where a test needs it
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "zsdeploy.cli.trt_infer", *args], capture_output=True, text=True,
                          timeout=900, env=e, check=False)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(_image(1)).save(p)
    return p


@needs_bpe
def test_trt_infer_new_vocabulary_end_to_end(zegformer_bundle, image_file, tmp_path):
    """5 new names as a person runs it: embedded with the bundle's text encoder, cached, segmented, written."""
    bundle = zegformer_bundle[0]
    for f in (bundle / ".vocab_cache").glob("*"):
        f.unlink()
    args = ("--model", str(bundle), "--input", str(image_file), "--short-edge", "256", "--save-raw",
            "--classes", ",".join(NEW_NAMES), "--clip-bpe", str(BPE))
    first = _trt_infer(*args, "--output", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr
    assert "vocabulary: 5 classes (--classes; 0 seen, 5 unseen)" in first.stderr
    assert first.stderr.count("embedding 5 class name(s)") == 2  # segmenter prompts + CLIP crop prompts
    assert len(list((bundle / ".vocab_cache").glob("*.npz"))) == 2
    doc = json.loads((tmp_path / "a" / "scene.json").read_text())
    assert doc["task"] == "semantic" and (doc["height"], doc["width"]) == (H, W)
    assert doc["classes"] and {c["name"] for c in doc["classes"]} <= set(NEW_NAMES)
    assert doc["vocabulary"] == {"source": "--classes", "names": NEW_NAMES, "unseen_ids": [0, 1, 2, 3, 4]}
    assert all(c["unseen"] for c in doc["classes"]) and sum(c["pixels"] for c in doc["classes"]) == H * W
    labels = np.asarray(Image.open(tmp_path / "a" / "scene_semantic.png"))
    assert labels.shape == (H, W) and labels.max() < 5
    raw = np.load(tmp_path / "a" / "scene_raw.npz")
    assert raw["class_logits"].shape == (100, 6) and raw["clip_logits"].shape == (100, 5)

    # Second run: the cache answers (no embedding, no BPE file needed), identical result.
    second = _trt_infer(*args[:-2], "--output", str(tmp_path / "b"))
    assert second.returncode == 0, second.stderr
    assert "embedding" not in second.stderr
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b" / "scene_semantic.png")), labels)


@needs_bpe
def test_unwritable_vocabulary_cache_degrades_to_no_cache_and_long_vocabularies_show_progress(
        zegformer_bundle, image_file, tmp_path):
    """The bundle's files behind symlinks, its .vocab_cache pointing into /proc (no new files there, even for root):
    the run goes on without a cache and says so once per embedding; 20 names x 32 CLIP prompts show progress."""
    src = zegformer_bundle[0]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for f in src.iterdir():
        if not f.name.startswith("."):
            (bundle / f.name).symlink_to(f)
    (bundle / ".vocab_cache").symlink_to("/proc/self")
    words = ["red", "blue", "green", "small", "large", "old", "new", "wooden", "metal", "plastic", "glass", "paper",
             "stone", "striped", "dotted", "shiny", "broken", "folded", "round", "square"]
    names = [f"{w} box" for w in words]
    out = tmp_path / "out"
    r = _trt_infer("--model", str(bundle), "--input", str(image_file), "--output", str(out), "--short-edge", "256",
                   "--classes", ",".join(names), "--clip-bpe", str(BPE))
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if "could not be cached" in ln]
    assert len(notes) == 2 and all("continuing without a cache" in n for n in notes)
    assert "640/640" in r.stderr and "embedding text_embeddings_clip" in r.stderr  # the progress bar's last state
    assert "20/20" not in r.stderr  # 20 prompts: too few for a bar
    assert json.loads((out / "scene.json").read_text())["vocabulary"]["names"] == names
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args, match", [
    (("--classes", ""), "--classes is empty"),
    (("--classes", "cat,dog,Cat"), "duplicate class name"),
    (("--classes", "cat," + "very " * 80 + "long"), "at most 77"),
    (("--classes", "cat", "--classes-file", "x.txt"), "both given"),
    (("--classes", "cat,dog", "--text-embeddings", "e.npy"), "gzss"),
])
def test_trt_infer_bad_vocabulary(zegformer_bundle, image_file, tmp_path, args, match):
    if "77" in match and BPE is None:
        pytest.skip("needs CLIP's BPE vocabulary to count tokens")
    extra = ("--clip-bpe", str(BPE)) if BPE is not None else ()
    r = _trt_infer("--model", str(zegformer_bundle[0]), "--input", str(image_file), "--output",
                   str(tmp_path / "o"), "--short-edge", "256", *args, *extra)
    assert r.returncode == 2, r.stderr
    assert match in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_trt_infer_new_names_without_bpe_file_is_a_clear_error(zegformer_bundle, image_file, tmp_path):
    r = _trt_infer("--model", str(zegformer_bundle[0]), "--input", str(image_file), "--output", str(tmp_path / "o"),
                   "--short-edge", "256", "--no-cache", "--classes", "zebra crossing,lamp post")
    assert r.returncode == 2
    assert "bpe_simple_vocab_16e6.txt.gz" in r.stderr and "--clip-bpe" in r.stderr


def test_vocabulary_flags_refused_for_pading(onnx_exports, image_file, tmp_path):
    r = _trt_infer("--model", str(onnx_exports["static_b1"]), "--input", str(image_file), "--output",
                   str(tmp_path / "o"), "--classes", "cat,dog")
    assert r.returncode == 2 and "fixed class list" in r.stderr


# ------------------------------------------------------------------------------------------------ TensorRT profiles
def test_default_engine_profiles_of_bundle_graphs(zegformer_bundle):
    """build-engine needs no --profile for bundle graphs: the class-count and token axes get default ranges."""
    from zsdeploy.runtime.tensorrt.onnx_inspect import inspect_onnx
    from zsdeploy.runtime.tensorrt.profiles import default_profile

    root = zegformer_bundle[0]
    seg = default_profile(inspect_onnx(root / "segmenter.onnx"))
    assert seg["images"].min == seg["images"].max == (1, 3, H, W)
    assert (seg["text_embeddings"].min, seg["text_embeddings"].opt, seg["text_embeddings"].max) == (
        (1, 512), (171, 512), (1024, 512))
    txt = default_profile(inspect_onnx(root / "text_encoder.onnx"))["token_ids"]
    assert (txt.min, txt.opt, txt.max) == ((1, 2), (256, 16), (256, 77))
    crop = default_profile(inspect_onnx(root / "crop_classifier.onnx"))
    assert crop["mask_logits"].min == crop["mask_logits"].max == (1, 100, H // 4, W // 4)
    assert crop["text_embeddings_clip"].max == (1024, 512)


def test_default_profile_of_dynamic_crop_classifier_follows_the_image_range():
    from zsdeploy.runtime.tensorrt.onnx_inspect import OnnxModel
    from zsdeploy.runtime.tensorrt.profiles import default_profile

    info = _info(["a", "b", "c"], [0, 1])
    model = OnnxModel(Path("crop_classifier.onnx"), dict(info.raw), info, {
        "images": (None, 3, None, None), "image_sizes": (None, 2), "mask_logits": (None, 100, None, None),
        "text_embeddings_clip": (None, 512)}, ())
    p = default_profile(model)
    assert (p["images"].min, p["images"].opt, p["images"].max) == ((1, 3, 32, 32), (1, 3, 640, 960),
                                                                   (1, 3, 2560, 2560))
    assert (p["mask_logits"].min, p["mask_logits"].opt, p["mask_logits"].max) == (
        (1, 100, 8, 8), (1, 100, 160, 240), (1, 100, 640, 640))
    assert p["image_sizes"].min == p["image_sizes"].max == (1, 2)
    assert p["text_embeddings_clip"].opt == (3, 512)


def test_export_model_refuses_a_file_that_is_not_clip(tmp_path):
    not_clip = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 2048)}, not_clip)
    r = subprocess.run([sys.executable, "-m", "zsdeploy.cli.export_model", "--model", "zegformer", "--clip", str(not_clip),
                        "--height", "64", "--width", "64", "--output", str(tmp_path / "b")],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 2, r.stderr
    assert "CLIP" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------------ dynamic, no CLIP
@pytest.fixture(scope="module")
def dynamic_bundle(zegformer_bundle):
    """The released non-gzss config (no crop classifier) exported with dynamic batch/H/W via the Python API
    (export_zegformer in a child process started at collection: tests/build_artifacts.py zegformer_dynamic)."""
    from prefetch import PREFETCH

    clip_file = zegformer_bundle[1]
    d, results = PREFETCH.result("dynamic_bundle")
    assert_ran(results, 1)
    return d / "bundle", clip_file


def test_dynamic_segmenter_matches_pytorch_at_other_sizes(dynamic_bundle):
    import onnxruntime as ort
    from zsdeploy.export.zegformer_export import build_zegformer

    out, clip_file = dynamic_bundle
    assert not (out / "crop_classifier.onnx").exists()
    sess = ort.InferenceSession(str(out / "segmenter.onnx"), providers=["CPUExecutionProvider"])
    ref = build_zegformer("cocostuff_r101", clip=clip_file, need_clip=False)
    g = torch.Generator().manual_seed(5)
    for b, h, w in ((2, 128, 192), (1, 224, 160)):
        images = torch.rand(b, 3, h, w, generator=g) * 255
        text = torch.nn.functional.normalize(torch.randn(4, 512, generator=g), dim=-1)
        cls, masks = sess.run(None, {"images": images.numpy(), "text_embeddings": text.numpy()})
        with torch.inference_mode():
            ref_cls, ref_masks = ref.model(images, text)
        assert cls.shape == (b, 100, 5) and masks.shape == (b, 100, h // 4, w // 4)
        assert rel_l2(cls, ref_cls.numpy()) < 1e-4 and rel_l2(masks, ref_masks.numpy()) < 1e-4


@needs_bpe
def test_bundle_without_clip_branch_matches_pytorch_pipeline(dynamic_bundle):
    """Non-gzss bundle, new vocabulary, image resized by the runtime: sem_seg vs the PyTorch reference."""
    from zsdeploy.export.models.zegformer_clip import semantic_inference
    from zsdeploy.export.zegformer_export import build_zegformer

    out, clip_file = dynamic_bundle
    bundle = ZegFormerBundle(out)
    vocab = make_vocabulary(["person", "grass", "corgi"], bundle.info, "test")
    assert not bundle.gzss and vocab.seen_ids == (0,) and vocab.unseen_ids == (1, 2)  # grass is unseen in training
    seg = ZegFormerSegmenter.from_bundle(bundle, vocab, bpe_path=BPE, use_cache=False, short_edge=200)
    img = _image(2)[:, :300]
    result = seg([img])[0]
    batch = seg.preprocess([img])
    assert batch.image_sizes[0] == (200, 234) and batch.padded_hw == (224, 256)
    ref = build_zegformer("cocostuff_r101", clip=clip_file, need_clip=False)
    with torch.inference_mode():
        cls, masks = ref.model(torch.from_numpy(batch.tensor), torch.from_numpy(seg.text_embeddings))
        sem = semantic_inference(cls[0], masks[0], batch.padded_hw, batch.image_sizes[0], img.shape[:2]).numpy()
    got = result.results["sem_seg"]
    assert got.shape == (3, *img.shape[:2]) and not result.extra_raw
    assert rel_l2(got, sem) < 1e-4
    assert (got.argmax(0) == sem.argmax(0)).mean() >= 0.999


# ------------------------------------------------------------------------------------------------ zsd-bench
def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zsdeploy.benchmarks.cli", *args], capture_output=True, text=True,
                          timeout=900, check=False)


@needs_bpe  # the bundle's default vocabulary is embedded with CLIP's BPE file
def test_zsd_bench_latency_of_a_bundle(zegformer_bundle, tmp_path):
    """torch twins vs ONNX Runtime on the same bundle (segmenter + CLIP crop classifier + fusion), side by side."""
    bundle, clip_file, _ = zegformer_bundle
    common = ("latency", "--model", str(bundle), "--backends", "torch,onnxruntime", "--sizes", f"{H}x{W}",
              "--batch", "1", "--warmup", "0", "--repeat", "2")
    refused = _bench(*common, "--output", str(tmp_path / "x"))
    assert refused.returncode == 2 and "--clip" in refused.stderr and "clip_small.pt" in refused.stderr
    r = _bench(*common, "--clip", str(clip_file), "--output", str(tmp_path / "lat"))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "lat" / "report.json").read_text())
    rows = {row["backend"]: row for row in report["results"]}
    assert set(rows) == {"torch", "onnxruntime"}
    for row in rows.values():
        assert row["task"] == "semantic" and row["e2e"]["n"] == 2
        assert 0 < row["infer"]["median_ms"] <= row["e2e"]["median_ms"]
    speedup = report["gate"]["speedup"]["onnxruntime/256x320/b1/e2e"]
    assert speedup == pytest.approx(rows["torch"]["e2e"]["median_ms"] / rows["onnxruntime"]["e2e"]["median_ms"])


@needs_bpe  # the bundle's default vocabulary is embedded with CLIP's BPE file
def test_zsd_bench_accuracy_of_a_bundle(zegformer_bundle, tmp_path):
    """ONNX Runtime bundle vs its PyTorch twins on small-target scenes: raw tensors (incl. CLIP crop logits) and
    the fused semantic maps agree in every size bucket; ground truth is not comparable (vocabulary) and says so."""
    bundle, clip_file, _ = zegformer_bundle
    r = _bench("accuracy", "--model", str(bundle), "--reference", "pytorch", "--clip", str(clip_file),
               "--dataset", "synthetic:2", "--scene-size", f"{H}x{W}", "--output", str(tmp_path / "acc"))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "acc" / "report.json").read_text())
    assert report["tasks"] == ["semantic"] and report["resize"]["short_edge"] == H
    assert "vs_ground_truth" not in report and any("vocabulary" in n for n in report["notes"])
    vs = report["vs_reference"]
    assert vs["all"]["class_logits.rel_l2"] < 1e-4 and vs["all"]["clip_logits.rel_l2"] < 1e-4
    assert vs["all"]["clip_logits.cosine"] > 0.99999
    for b in ("small", "medium", "all"):
        assert vs[b]["pixels"] > 0 and vs[b]["semantic.pixel_agreement"] >= 0.999
        assert vs[b]["mask_logits.rel_l2"] < 1e-4
    assert report["passed"]


# ------------------------------------------------------------------------------------------------ build-engine
def _build_engine(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zsdeploy.cli.build_engine", *args], capture_output=True,
                          text=True, timeout=600, check=False)


def _tensorrt_missing() -> bool:
    from zsdeploy.runtime.tensorrt.loader import import_tensorrt

    try:
        import_tensorrt()
    except ZsdError:
        return True
    return False


@pytest.mark.skipif(not _tensorrt_missing(), reason="TensorRT is installed: the bundle would really be built")
def test_build_engine_on_a_bundle_checks_every_graph_first(zegformer_bundle):
    """Every graph is preflighted (profiles shown, --profile routed by input name) before TensorRT is needed."""
    root = zegformer_bundle[0]
    r = _build_engine("--onnx", str(root), "--output", str(root), "--precision", "fp16",
                      "--profile", "text_embeddings:1x512:20x512:200x512")
    assert r.returncode == 2 and "TensorRT is not installed" in r.stderr
    out = r.stdout
    assert (f"checked segmenter: segmenter.onnx -> segmenter.plan; profile images 1x3x{H}x{W}:1x3x{H}x{W}:1x3x{H}x{W}, "
            "text_embeddings 1x512:20x512:200x512") in out
    assert "checked text_encoder: text_encoder.onnx -> text_encoder.plan; profile token_ids 1x2:256x16:256x77" in out
    assert "checked crop_classifier" in out and "text_embeddings_clip 1x512:171x512:1024x512" in out
    assert not list(root.glob("*.plan"))


@pytest.mark.parametrize("output, args, match", [
    ("elsewhere", (), "written next to its graphs"),
    (None, ("--precision", "int8"), "int8 is not supported for ZegFormer bundles"),
    (None, ("--profile", "foo:1x1:1x1:1x1"), r"names input\(s\) \['foo'\] that no graph"),
])
def test_build_engine_on_a_bundle_bad_arguments(zegformer_bundle, output, args, match):
    root = zegformer_bundle[0]
    r = _build_engine("--onnx", str(root), "--output", output or str(root), *args)
    assert r.returncode == 2 and re.search(match, r.stderr), r.stderr


@needs_bpe  # the bundle's default vocabulary is embedded with CLIP's BPE file
def test_trt_infer_on_one_graph_of_a_bundle(zegformer_bundle, image_file, tmp_path):
    root = zegformer_bundle[0]
    r = _trt_infer("--model", str(root / "text_encoder.onnx"), "--input", str(image_file), "--output",
                   str(tmp_path / "o"))
    assert r.returncode == 2 and "the text_encoder graph of a ZegFormer bundle" in r.stderr
    # the segmenter file stands for its bundle
    r = _trt_infer("--model", str(root / "segmenter.onnx"), "--input", str(image_file), "--output",
                   str(tmp_path / "s"), "--short-edge", "256")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "s" / "scene.json").read_text())["vocabulary"]["source"] == "default"
