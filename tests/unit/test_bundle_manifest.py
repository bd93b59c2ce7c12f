"""bundle.json as a typed contract (runtime.artifacts.bundle_manifest): round trip, the unversioned manifests of
earlier exports, strict parsing (every field named when missing or malformed), and files that are missing or were
changed after export."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import BUNDLE_GRAPH_FILES, FIXTURES, MANIFEST_DOC, bundle_manifest
from zsdeploy.runtime.artifacts.bundle_manifest import (
    BUNDLE_FILE,
    FORMAT,
    LEGACY_FORMAT,
    BundleClip,
    BundleFile,
    BundleFusion,
    BundleInput,
    BundleManifest,
    BundleSource,
    describe_file,
    read_bundle_manifest,
    write_bundle_manifest,
)
from zsdeploy.runtime.errors import ZsdError

#: bundle.json exactly as the exporter before "zsdeploy-bundle/2" wrote it (voc_r50_gzss, 64x64, stand-in R50,
#: a small CLIP, with default embeddings): export_zegformer at commit b957d45.
LEGACY_JSON = FIXTURES / "zegformer_bundle_legacy.json"
CLIP_SHA = "84967629c3fcc794b62df2d5185bdf729ea3949c20a1e0df0ee675ec57d66be9"
def make_bundle(d: Path) -> BundleManifest:
    """A bundle directory with stand-in files (bytes, not graphs) and its format-2 bundle.json."""
    d.mkdir(parents=True, exist_ok=True)
    for graph, name in BUNDLE_GRAPH_FILES.items():
        (d / name).write_bytes(graph.encode() * 100)
    np.save(d / "text_embeddings.npy", np.eye(3, 512, dtype=np.float32))
    manifest = bundle_manifest({g: describe_file(d, f) for g, f in BUNDLE_GRAPH_FILES.items()},
                               {"text_embeddings": describe_file(d, "text_embeddings.npy")})
    write_bundle_manifest(d, manifest)
    return manifest


def _paths(obj: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in obj.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out += _paths(v, f"{prefix}{k}.")
    return out


def _edit(doc: dict, path: str, value=None, *, delete: bool = False) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node[p]
    if delete:
        del node[last]
    else:
        node[last] = value
    return doc


def _write_doc(d: Path, doc) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / BUNDLE_FILE).write_text(json.dumps(doc), encoding="utf-8")
    return d


# ------------------------------------------------------------------------------------------------ round trip
def test_round_trip_writes_format_2_and_reads_back_the_same_object(tmp_path):
    manifest = make_bundle(tmp_path / "b")
    doc = json.loads((tmp_path / "b" / BUNDLE_FILE).read_text(encoding="utf-8"))
    assert doc["format"] == FORMAT == "zsdeploy-bundle/2"
    assert doc["graphs"]["segmenter"]["sha256"] == hashlib.sha256(b"segmenter" * 100).hexdigest()
    assert doc["graphs"]["segmenter"]["size"] == 900
    back = read_bundle_manifest(tmp_path / "b", verify=True)
    assert back == manifest and back.format == FORMAT and back.gzss
    assert back.classes.names[2] == "café table" and back.made_from.clip_sha256 is None
    assert back.graph_file(tmp_path / "b", "segmenter") == tmp_path / "b" / "segmenter.onnx"


def test_writer_refuses_what_the_reader_would_refuse(tmp_path):
    d = tmp_path / "b"
    good = make_bundle(d)
    from dataclasses import replace

    with pytest.raises(ZsdError, match="'classes.seen_ids'"):  # 1 is listed as seen and unseen
        write_bundle_manifest(d, replace(good, classes=replace(good.classes, seen_ids=(0, 1, 2))))
    with pytest.raises(ValueError, match="size and sha256"):  # a legacy-style entry cannot go into format 2
        write_bundle_manifest(d, replace(good, embeddings={"text_embeddings": BundleFile("x.npy", None, None)}))
    (d / "text_encoder.onnx").unlink()
    with pytest.raises(ZsdError, match="text_encoder.onnx does not exist"):
        write_bundle_manifest(d, good)


def test_source_as_graph_metadata_keys(tmp_path):
    """TorchBackend.zegformer takes these under the graphs' metadata keys."""
    meta = read_manifest_doc(MANIFEST_DOC, tmp_path).made_from.as_metadata()
    assert meta == {"config": "voc_r50_gzss.yaml", "weights": "model_final.pth", "checkpoint_sha256": "ab" * 32,
                    "standin_weights": "false", "clip_weights": "standin", "clip_sha256": "", "standin_clip": "true"}


def read_manifest_doc(doc, directory: Path) -> BundleManifest:
    """`doc` written as directory/bundle.json, then read."""
    return read_bundle_manifest(_write_doc(directory, doc))


# ------------------------------------------------------------------------------------------------ old bundles
def test_legacy_manifest_of_the_previous_exporter_is_read(tmp_path):
    legacy = json.loads(LEGACY_JSON.read_text(encoding="utf-8"))
    assert "format" not in legacy and legacy["graph"] == "bundle"  # what the previous exporter wrote
    m = read_manifest_doc(legacy, tmp_path)
    assert m.format == LEGACY_FORMAT and m.model == "zegformer" and m.gzss
    assert m.graphs == {g: BundleFile(f, None, None) for g, f in BUNDLE_GRAPH_FILES.items()}
    assert set(m.embeddings) == {"text_embeddings", "text_embeddings_clip"}
    assert len(m.classes.names) == 20 and m.classes.names[:2] == ("aeroplane", "bicycle")
    assert m.classes.seen_ids == tuple(range(15)) and m.classes.unseen_ids == tuple(range(15, 20))
    assert m.prompts.templates == ("A photo of a {} in the scene",) and len(m.prompts.clip_templates) == 32
    assert m.fusion == BundleFusion(True, False, False, 2 / 3, -1.0)
    assert m.input == BundleInput(False, 1, 64, 64)
    assert m.clip == BundleClip("ViT-B/16", 512, 77, "clip-bpe-49408")
    assert m.made_from == BundleSource("voc_r50_gzss.yaml", "standin", True, None, "clip_small.pt", False, CLIP_SHA)
    assert m.exporter.opset == 18


def test_legacy_files_are_checked_for_existence_only(tmp_path):
    """An unversioned manifest records no sizes or hashes: a listed file must exist, nothing more is known."""
    d = _write_doc(tmp_path / "b", json.loads(LEGACY_JSON.read_text(encoding="utf-8")))
    (d / "segmenter.onnx").write_bytes(b"anything")
    m = read_bundle_manifest(d)
    assert m.graph_file(d, "segmenter", verify=True) == d / "segmenter.onnx"
    with pytest.raises(ZsdError, match=r"lists the text_encoder graph as text_encoder.onnx.*does not exist"):
        m.graph_file(d, "text_encoder")


LEGACY_FIELDS = ["model", "bundle_files", "class_names", "seen_ids", "unseen_ids", "thing_ids", "class_colors",
                 "class_list_source", "prompt_ensemble_type", "prompt_templates", "clip_prompt_templates",
                 "clip_classification", "ensembling", "ensembling_all_cls", "ensembling_lambda", "gzero_calibrate",
                 "dynamic", "static_batch", "static_height", "static_width", "clip_model", "text_dim",
                 "context_length", "tokenizer", "config", "weights", "standin_weights", "checkpoint_sha256",
                 "clip_weights", "standin_clip", "clip_sha256", "exporter_version", "torch_version", "opset"]


@pytest.mark.parametrize("key", LEGACY_FIELDS)
def test_legacy_missing_field_is_named(tmp_path, key):
    doc = _edit(json.loads(LEGACY_JSON.read_text(encoding="utf-8")), key, delete=True)
    with pytest.raises(ZsdError, match=f"'{key}' is missing") as e:
        read_manifest_doc(doc, tmp_path)
    assert str(tmp_path / BUNDLE_FILE) in str(e.value) and "export-model --model zegformer" in str(e.value)


@pytest.mark.parametrize("key, value", [
    ("clip_classification", True), ("ensembling", "yes"), ("gzero_calibrate", "0.1x"), ("opset", "eighteen"),
    ("static_height", ""), ("seen_ids", ["0"]), ("class_names", "cat,dog"), ("bundle_files", ["segmenter.onnx"]),
    ("checkpoint_sha256", "not-a-hash"), ("model", "pading"), ("text_dim", "0"),
])
def test_legacy_malformed_field_is_named(tmp_path, key, value):
    doc = _edit(json.loads(LEGACY_JSON.read_text(encoding="utf-8")), key, value)
    with pytest.raises(ZsdError, match=f"'{key}' must be"):
        read_manifest_doc(doc, tmp_path)


def test_legacy_keys_that_are_graph_metadata_are_not_required(tmp_path):
    doc = json.loads(LEGACY_JSON.read_text(encoding="utf-8"))
    for key in ("pixel_mean", "min_size_test", "logit_scale", "input_range", "graph", "task"):
        del doc[key]
    assert read_manifest_doc(doc, tmp_path).format == LEGACY_FORMAT


# ------------------------------------------------------------------------------------------------ strict parsing
# every key of format 2 is required except the entries of "embeddings" (a bundle may store no default embeddings)
REQUIRED = [p for p in _paths(MANIFEST_DOC)
            if p != "format" and not (p.startswith("embeddings.") and p.count(".") == 1)]


@pytest.mark.parametrize("path", REQUIRED)
def test_missing_field_is_named(tmp_path, path):
    with pytest.raises(ZsdError, match=f"'{path}'") as e:
        read_manifest_doc(_edit(MANIFEST_DOC, path, delete=True), tmp_path)
    message = str(e.value)
    assert str(tmp_path / BUNDLE_FILE) in message and "re-export the bundle with export-model --model zegformer" \
        in message


MALFORMED = [
    ("model", "pading"), ("graphs", []), ("graphs.segmenter", "segmenter.onnx"),
    ("graphs.segmenter.file", "../segmenter.onnx"), ("graphs.segmenter.file", "sub/segmenter.onnx"),
    ("graphs.segmenter.file", ""), ("graphs.segmenter.size", "10"), ("graphs.segmenter.size", -1),
    ("graphs.segmenter.sha256", "abc"), ("graphs.segmenter.sha256", "A" * 64), ("graphs.segmenter.sha256", None),
    ("graphs.decoder", {"file": "d.onnx", "size": 1, "sha256": "0" * 64}),
    ("embeddings", None), ("embeddings.text_embeddings.size", True),
    ("classes.names", []), ("classes.names", ["cat", 3]), ("classes.names", ["cat", " "]),
    ("classes.seen_ids", [0, 7]), ("classes.seen_ids", "0,2"), ("classes.seen_ids", [0, 0, 2]),
    ("classes.seen_ids", [0, 1, 2]), ("classes.unseen_ids", [True]), ("classes.thing_ids", [-1]),
    ("classes.colors", [[0, 0]]), ("classes.colors", [[0, 0, 0]]), ("classes.colors", [[0, 0, 256]] * 3),
    ("classes.source", 3),
    ("prompts.ensemble_type", ""), ("prompts.templates", ["no placeholder"]), ("prompts.templates", ["{} {}"]),
    ("prompts.clip_templates", []),
    ("fusion.clip_classification", "true"), ("fusion.clip_classification", False), ("fusion.ensembling", 1),
    ("fusion.ensembling_all_cls", None), ("fusion.ensembling_lambda", "0.5"), ("fusion.gzero_calibrate", None),
    ("input.dynamic", "false"), ("input.batch", 0), ("input.height", None), ("input.width", 64.5),
    ("clip.model", ""), ("clip.text_dim", 0), ("clip.context_length", "77"), ("clip.tokenizer", None),
    ("made_from.config", ""), ("made_from.weights", None), ("made_from.standin_weights", "false"),
    ("made_from.weights_sha256", "xyz"), ("made_from.clip_weights", 1), ("made_from.standin_clip", 0),
    ("made_from.clip_sha256", 5), ("exporter.version", ""), ("exporter.torch_version", 2), ("exporter.opset", "18"),
    ("exporter.commit", "abc"),  # unknown keys are refused: additions bump the format
]


@pytest.mark.parametrize("path, value", MALFORMED, ids=[f"{p}={json.dumps(v)[:20]}" for p, v in MALFORMED])
def test_malformed_field_is_named(tmp_path, path, value):
    # a well-formed false clip_classification contradicts the listed crop classifier: that entry is named
    expect = "graphs.crop_classifier" if (path, value) == ("fusion.clip_classification", False) else path
    with pytest.raises(ZsdError, match=f"'{expect}'") as e:
        read_manifest_doc(_edit(MANIFEST_DOC, path, value), tmp_path)
    assert str(tmp_path / BUNDLE_FILE) in str(e.value)


def test_dynamic_input_has_no_fixed_size(tmp_path):
    doc = _edit(MANIFEST_DOC, "input.dynamic", True)
    with pytest.raises(ZsdError, match="'input.batch' must be null when 'input.dynamic' is true"):
        read_manifest_doc(doc, tmp_path)
    for k in ("batch", "height", "width"):
        doc = _edit(doc, f"input.{k}", None)
    assert read_manifest_doc(doc, tmp_path).input == BundleInput(True, None, None, None)


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ZsdError, match=r"'format' is 'zsdeploy-bundle/3'.*reads 'zsdeploy-bundle/2'"):
        read_manifest_doc(_edit(MANIFEST_DOC, "format", "zsdeploy-bundle/3"), tmp_path)


@pytest.mark.parametrize("content, match", [
    ("", "is empty"), ("  \n", "is empty"), ("[1, 2]", "holds a JSON array, not the object"),
    ('"bundle"', "holds a JSON string"), ("null", "holds a JSON null"), ("{", "is not valid JSON"),
])
def test_wrong_json_type_empty_or_broken_file(tmp_path, content, match):
    (tmp_path / BUNDLE_FILE).write_text(content, encoding="utf-8")
    with pytest.raises(ZsdError, match=match) as e:
        read_bundle_manifest(tmp_path)
    assert str(tmp_path / BUNDLE_FILE) in str(e.value) and "re-export" in str(e.value)


def test_not_utf8_and_not_a_bundle(tmp_path):
    (tmp_path / BUNDLE_FILE).write_bytes(b'{"model": "\xff"}')
    with pytest.raises(ZsdError, match="is not UTF-8"):
        read_bundle_manifest(tmp_path)
    with pytest.raises(ZsdError, match="is not a ZegFormer bundle"):
        read_bundle_manifest(tmp_path / "elsewhere")


# ------------------------------------------------------------------------------------------------ files
def test_listed_graph_missing_is_refused(tmp_path):
    d = tmp_path / "b"
    m = make_bundle(d)
    (d / "crop_classifier.onnx").unlink()
    with pytest.raises(ZsdError, match=r"lists the crop_classifier graph as crop_classifier.onnx, but .* does not "
                                       r"exist.*copy the whole bundle directory"):
        m.graph_file(d, "crop_classifier")
    with pytest.raises(ZsdError, match="does not exist"):
        read_bundle_manifest(d, verify=True)
    read_bundle_manifest(d)  # without verify only bundle.json is read: the file is checked when it is opened


def test_runtime_bundle_refuses_a_missing_segmenter_before_loading_anything(tmp_path):
    from zsdeploy.runtime.zegformer import ZegFormerBundle

    d = tmp_path / "b"
    make_bundle(d)
    (d / "segmenter.onnx").unlink()
    with pytest.raises(ZsdError, match="segmenter.onnx does not exist"):
        ZegFormerBundle(d)


def test_graph_changed_after_export_is_refused(tmp_path):
    d = tmp_path / "b"
    m = make_bundle(d)
    seg = d / "segmenter.onnx"
    seg.write_bytes(b"x" * 900)  # same size, other bytes: only the sha256 tells
    assert m.graph_file(d, "segmenter") == seg  # size only (the trt-infer default: no hashing)
    with pytest.raises(ZsdError, match=r"segmenter.onnx \(the segmenter graph\) has sha256 .* but .*bundle.json "
                                       r"recorded .*changed or replaced after the bundle was exported"):
        m.graph_file(d, "segmenter", verify=True)
    with pytest.raises(ZsdError, match="has sha256"):
        read_bundle_manifest(d, verify=True)
    seg.write_bytes(b"x" * 901)  # another size: refused without hashing
    with pytest.raises(ZsdError, match=r"has 901 bytes, but .*recorded 900"):
        m.graph_file(d, "segmenter")


def test_runtime_bundle_with_verify_refuses_a_changed_graph(tmp_path):
    from zsdeploy.runtime.zegformer import ZegFormerBundle

    d = tmp_path / "b"
    make_bundle(d)
    (d / "segmenter.onnx").write_bytes(b"y" * 900)
    with pytest.raises(ZsdError, match="has sha256"):
        ZegFormerBundle(d, verify=True)


def test_build_engine_refuses_a_changed_graph(tmp_path):
    """A plan built from a graph that is not the exported one would be silently wrong: build-engine hashes."""
    from zsdeploy.runtime.bundle_engines import bundle_jobs
    from zsdeploy.runtime.tensorrt.preflight import BuildOptions

    d = tmp_path / "b"
    make_bundle(d)
    (d / "segmenter.onnx").write_bytes(b"z" * 900)  # same size: only the sha256 tells
    with pytest.raises(ZsdError, match=r"segmenter.onnx \(the segmenter graph\) has sha256"):
        bundle_jobs(BuildOptions(onnx=d, output=d))


def test_stored_embeddings_are_hashed_when_loaded(tmp_path):
    d = tmp_path / "b"
    m = make_bundle(d)
    assert m.embeddings_file(d, "text_embeddings") == d / "text_embeddings.npy"
    emb = np.load(d / "text_embeddings.npy")
    np.save(d / "text_embeddings.npy", emb[::-1].copy())  # same size and shape, rows swapped
    with pytest.raises(ZsdError, match=r"text_embeddings.npy \(the stored text_embeddings\) has sha256"):
        m.embeddings_file(d, "text_embeddings")
    with pytest.raises(ZsdError, match="stores no text_embeddings_clip"):
        m.embeddings_file(d, "text_embeddings_clip")


def test_public_names_of_runtime_zegformer_are_the_contract_s():
    import zsdeploy.runtime.zegformer as z
    from zsdeploy.runtime.artifacts import bundle_manifest as bm

    assert (z.BUNDLE_FILE, z.is_bundle, z.bundle_root, z.read_bundle_manifest, z.GRAPHS) == (
        bm.BUNDLE_FILE, bm.is_bundle, bm.bundle_root, bm.read_bundle_manifest, bm.GRAPHS)


def test_bundle_root_of_a_directory_and_of_its_segmenter(tmp_path):
    from zsdeploy.runtime.zegformer import bundle_root, is_bundle

    d = tmp_path / "b"
    make_bundle(d)
    assert is_bundle(d) and bundle_root(d) == d and bundle_root(d / "segmenter.onnx") == d
    assert bundle_root(d / "text_encoder.onnx") is None and not is_bundle(tmp_path)


# ------------------------------------------------------------------------------------------------ real bundles
def test_old_format_bundle_runs_like_the_new_one(zegformer_bundle, tmp_path):
    """The session bundle's files with the bundle.json the previous exporter wrote for them
    (zegformer_metadata(graph="bundle"), as export_zegformer did): same typed facts, same segmentation."""
    from zsdeploy.export.onnx_export import ExportShape
    from zsdeploy.export.zegformer_export import build_zegformer, zegformer_metadata
    from zsdeploy.runtime.zegformer import ZegFormerBundle, ZegFormerSegmenter, make_vocabulary

    src, clip_file, _ = zegformer_bundle
    new = read_bundle_manifest(src, verify=True)
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.name != BUNDLE_FILE:
            (old_dir / f.name).symlink_to(f)
    built = build_zegformer("cocostuff_r101_gzss", clip=clip_file)
    files = {**{g: f.file for g, f in new.graphs.items()}, **{k: f.file for k, f in new.embeddings.items()}}
    legacy = zegformer_metadata(built, ExportShape(new.input.height, new.input.width, new.input.batch, False),
                                graph="bundle", opset=new.exporter.opset, files=files)
    # the old exporter's dict: scalars as metadata strings, lists and objects as JSON values
    strings = legacy.as_strings()
    old_doc = {k: v if isinstance(v, (list, dict)) else strings[k] for k, v in legacy.to_metadata().items()}
    (old_dir / BUNDLE_FILE).write_text(json.dumps(old_doc, indent=1), encoding="utf-8")
    old = read_bundle_manifest(old_dir)
    assert old.format == LEGACY_FORMAT and new.format == FORMAT
    for part in ("classes", "prompts", "fusion", "input", "clip", "made_from"):
        assert getattr(old, part) == getattr(new, part), part
    assert {g: f.file for g, f in old.graphs.items()} == {g: f.file for g, f in new.graphs.items()}

    image = np.zeros((256, 320, 3), np.uint8)
    image[40:150, 60:200] = (200, 30, 90)
    results = []
    for d in (src, old_dir):
        bundle = ZegFormerBundle(d)
        vocab = make_vocabulary(list(bundle.info.class_names[:5]), bundle.info, "test")
        emb = np.eye(5, 512, dtype=np.float32)
        seg = ZegFormerSegmenter(bundle, vocab, emb, emb if bundle.gzss else None, short_edge=256)
        results.append(seg([image])[0].results["sem_seg"])
        assert (bundle.gzss, seg.ensembling, seg.gzero_calibrate) == (True, True, pytest.approx(0.1))
    np.testing.assert_array_equal(results[0], results[1])
