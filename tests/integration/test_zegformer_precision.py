"""fp16 ZegFormer bundles (export-model --model zegformer --precision fp16): the segmenter and the CLIP crop classifier
are fp16 graphs outside their fp32 islands, the text encoder stays fp32, bundle.json and each graph's metadata say
so, ONNX Runtime (and OpenVINO, where installed) run them close to the fp32 bundle, zsd-bench accuracy reports the
precision; int8 is refused before anything is written.

Bounds below come from measurements on the same setup (stand-in R101, the tiny CLIP of test_clip, gzss config,
static 256x320, 2 generated small-target scenes, ONNX Runtime CPU, fp16 with the default `layernorm` island vs the
fp32 bundle; 2026-12-02): semantic pixel agreement 99.94..99.98 % per size bucket (small 99.96 %), class_logits
rel L2 3.6e-3, mask_logits 1.3e-3 (small bucket 1.6e-3), clip_logits 1.0e-3. Limits: measured minus/plus margin.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import MANIFEST_DOC, REPO, needs_bpe
from onnxconverter_common import float16

from zsdeploy.export.precision import PrecisionOptions
from zsdeploy.export.precision_islands import island_nodes
from zsdeploy.export.zegformer_precision import ZEGFORMER_FP16_ISLANDS, convert_zegformer_bundle
from zsdeploy.runtime.artifacts.bundle_manifest import (
    BUNDLE_FILE,
    BundleFile,
    GraphPrecision,
    read_bundle_manifest,
)
from zsdeploy.runtime.errors import ZsdError

H, W = 256, 320
F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
# measured minus margin (module docstring)
MIN_PIXEL_AGREEMENT = 0.995
MAX_CLASS_REL_L2, MAX_MASK_REL_L2, MAX_CLIP_REL_L2 = 1e-2, 5e-3, 5e-3
# fp16 really ran: fp32 vs fp32 (ONNX Runtime vs PyTorch) differs by ~1e-6
MIN_FP16_REL_L2 = 1e-4


def export_model(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zsdeploy.cli.export_model", *args], capture_output=True, text=True,
                          timeout=1200, cwd=REPO)


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zsdeploy.benchmarks.cli", *args], capture_output=True, text=True,
                          timeout=1200, cwd=REPO)


def vocabulary_args() -> list[str]:
    from helpers import BPE

    return ["--clip-bpe", str(BPE)] if BPE is not None else ["--no-default-embeddings"]


@pytest.fixture(scope="module")
def fp16_bundle(zegformer_bundle, tmp_path_factory) -> Path:
    """The conftest fp32 bundle's export again with --precision fp16 (default islands): same config, size, CLIP."""
    _, clip_file, _ = zegformer_bundle
    out = tmp_path_factory.mktemp("zegformer_fp16") / "bundle"
    proc = export_model("--model", "zegformer", "--config", "cocostuff_r101_gzss", "--clip", str(clip_file),
                        "--height", str(H), "--width", str(W), "--precision", "fp16", "--output", str(out),
                        *vocabulary_args())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "segmenter fp16 (fp32 islands: layernorm), text_encoder fp32, crop_classifier fp16" in proc.stdout
    return out


def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


# ------------------------------------------------------------------------------------------------ the graphs
@pytest.mark.parametrize("graph", ["segmenter", "crop_classifier"])
def test_converted_graphs_are_fp16_outside_their_islands(fp16_bundle, zegformer_bundle, graph):
    model = onnx.load(str(fp16_bundle / f"{graph}.onnx"))
    fp32_model = onnx.load(str(zegformer_bundle[0] / f"{graph}.onnx"), load_external_data=False)
    # the contract is unchanged: the same inputs and outputs, float tensors still float32
    assert [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input] == \
        [(i.name, i.type.tensor_type.elem_type) for i in fp32_model.graph.input]
    assert [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output] == \
        [(o.name, F32) for o in fp32_model.graph.output]
    islands = set(island_nodes(model, ZEGFORMER_FP16_ISLANDS)["layernorm"])
    assert len(islands) == {"segmenter": 18, "crop_classifier": 6}[graph]  # decoder / ViT LayerNorms
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    weights16 = [t for t in model.graph.initializer if t.data_type == F16]
    assert len(weights16) > {"segmenter": 300, "crop_classifier": 30}[graph]
    # every float32 weight left is read only by an island node or an op the converter keeps fp32 (Resize, ...)
    outside = [t.name for t in model.graph.initializer if t.data_type == F32 and not all(
        c.name in islands or c.op_type in float16.DEFAULT_OP_BLOCK_LIST for c in consumers.get(t.name, []))]
    assert outside == []
    ln_inputs = {i for n in model.graph.node if n.name in islands for i in n.input[1:]}
    assert ln_inputs and all(t.data_type == F32 for t in model.graph.initializer if t.name in ln_inputs)
    # the file halves (weights are most of it)
    fp32_size = (zegformer_bundle[0] / f"{graph}.onnx").stat().st_size
    assert (fp16_bundle / f"{graph}.onnx").stat().st_size < {"segmenter": 0.52, "crop_classifier": 0.9}[graph] * \
        fp32_size


def test_text_encoder_stays_fp32(fp16_bundle):
    model = onnx.load(str(fp16_bundle / "text_encoder.onnx"))
    assert not any(t.data_type == F16 for t in model.graph.initializer)
    assert not any(a.name == "to" and a.i == F16 for n in model.graph.node if n.op_type == "Cast" for a in n.attribute)


def test_manifest_and_metadata_record_each_graph_s_precision(fp16_bundle, zegformer_bundle):
    m = read_bundle_manifest(fp16_bundle, verify=True)
    doc = json.loads((fp16_bundle / BUNDLE_FILE).read_text(encoding="utf-8"))
    for graph in ("segmenter", "crop_classifier"):
        p = m.graph_precision(graph)
        assert p.precision == "fp16" and p.fp32_islands == ("layernorm",)
        assert p.converter.startswith("onnxconverter-common ") and "keep_io_types=True" in p.converter
        assert doc["graphs"][graph]["precision"] == "fp16" and doc["graphs"][graph]["fp32_islands"] == ["layernorm"]
        meta = metadata(fp16_bundle / f"{graph}.onnx")
        assert meta["precision"] == "fp16" and meta["precision_converter"] == p.converter
        assert json.loads(meta["precision_fp32_islands"]) == ["layernorm"]
        assert json.loads(meta["precision_fp32_island_nodes"])["layernorm"] > 0
        assert meta["graph"] == graph and meta["model"] == "zegformer"  # the bundle metadata is kept
    assert m.graph_precision("text_encoder") == GraphPrecision("fp32", "", ())
    assert metadata(fp16_bundle / "text_encoder.onnx")["precision"] == "fp32"
    assert m.precision == "fp16"
    assert m.describe_precision() == ("segmenter fp16 (fp32 islands: layernorm), text_encoder fp32, "
                                      "crop_classifier fp16 (fp32 islands: layernorm)")
    # an fp32 export records fp32 for every graph
    m32 = read_bundle_manifest(zegformer_bundle[0])
    assert {g: m32.graph_precision(g).precision for g in m32.graphs} == dict.fromkeys(m32.graphs, "fp32")


# ------------------------------------------------------------------------------------------------ running it
def _segmenter_factory(bundle):
    from zsdeploy.runtime.zegformer import ZegFormerSegmenter

    return lambda policy: ZegFormerSegmenter.from_bundle(bundle, short_edge=policy.short_edge,
                                                         max_size=policy.max_size)


@needs_bpe  # the bundle's default vocabulary is embedded with CLIP's BPE file
def test_fp16_bundle_agrees_with_the_fp32_bundle_per_size_bucket(fp16_bundle, zegformer_bundle):
    """Both bundles in ONNX Runtime on the same scenes: the fused semantic maps agree and the raw logits are close
    in every size bucket (and do differ: fp16 really ran)."""
    from zsdeploy.benchmarks.accuracy import run_accuracy
    from zsdeploy.benchmarks.datasets import open_dataset
    from zsdeploy.runtime.zegformer import ZegFormerBundle

    b16 = ZegFormerBundle(fp16_bundle, threads=1, prefer_engines=False, backend="onnxruntime")
    b32 = ZegFormerBundle(zegformer_bundle[0], threads=1, prefer_engines=False, backend="onnxruntime")
    report = run_accuracy(b16.segmenter, b32.segmenter, open_dataset("synthetic:2", scene_size=f"{H}x{W}"),
                          segmenters=(_segmenter_factory(b16), _segmenter_factory(b32)))
    assert report["model"]["precision"] == "fp16" and report["model"]["precision_fp32_islands"] == ["layernorm"]
    vs = report["vs_reference"]
    for b in ("small", "medium", "large", "all"):
        assert vs[b]["pixels"] > 0
        assert vs[b]["semantic.pixel_agreement"] >= MIN_PIXEL_AGREEMENT, (b, vs[b])
        assert MIN_FP16_REL_L2 < vs[b]["mask_logits.rel_l2"] < MAX_MASK_REL_L2, (b, vs[b])
    assert MIN_FP16_REL_L2 < vs["all"]["class_logits.rel_l2"] < MAX_CLASS_REL_L2
    assert MIN_FP16_REL_L2 < vs["all"]["clip_logits.rel_l2"] < MAX_CLIP_REL_L2


@needs_bpe  # the bundle's default vocabulary is embedded with CLIP's BPE file
def test_openvino_runs_the_fp16_bundle(fp16_bundle):
    pytest.importorskip("openvino", reason="OpenVINO is not installed")
    from zsdeploy.runtime.scenes import generate_scene
    from zsdeploy.runtime.zegformer import ZegFormerBundle, ZegFormerSegmenter

    image = generate_scene(3, H, W, n_objects=20, size_range=(6, 60)).image
    outs = {}
    for backend in ("onnxruntime", "openvino"):
        bundle = ZegFormerBundle(fp16_bundle, threads=1, prefer_engines=False, backend=backend)
        seg = ZegFormerSegmenter.from_bundle(bundle, short_edge=H, max_size=W)
        assert bundle.segmenter.name == backend
        batch = seg.prepare([image])
        cl, ml = seg.infer(batch)
        clip = seg.infer_extra(batch, cl, ml)["clip_logits"]
        assert cl.dtype == ml.dtype == clip.dtype == np.float32
        outs[backend] = (cl, ml, clip)
    for a, b in zip(outs["openvino"], outs["onnxruntime"]):
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < MAX_CLASS_REL_L2


@needs_bpe  # the bundle's default vocabulary is embedded with CLIP's BPE file
def test_zsd_bench_accuracy_reports_the_bundle_s_precision(fp16_bundle, zegformer_bundle, tmp_path):
    """zsd-bench accuracy: the fp16 bundle vs its PyTorch twins per size bucket; the report states fp16 and its
    islands, and the fp16 limits of the CI gate hold."""
    r = bench("accuracy", "--model", str(fp16_bundle), "--reference", "pytorch", "--clip", str(zegformer_bundle[1]),
              "--dataset", "synthetic:2", "--scene-size", f"{H}x{W}", "--tolerances",
              str(REPO / "benchmarks" / "tolerances" / "ci_fp16.yaml"), "--output", str(tmp_path / "acc"))
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "acc" / "report.json").read_text())
    assert report["model"]["precision"] == "fp16" and report["model"]["precision_fp32_islands"] == ["layernorm"]
    assert "precision fp16 (fp32 islands: layernorm)" in (tmp_path / "acc" / "report.md").read_text()
    assert "precision: fp16 (fp32 islands: layernorm)" in r.stderr + r.stdout
    assert any("fp16 graph" in n for n in report["notes"])
    vs = report["vs_reference"]
    assert MIN_FP16_REL_L2 < vs["all"]["class_logits.rel_l2"] < MAX_CLASS_REL_L2
    assert all(vs[b]["semantic.pixel_agreement"] >= MIN_PIXEL_AGREEMENT for b in ("small", "medium", "all"))
    assert report["passed"]


# ------------------------------------------------------------------------------------------------ conversion
def test_existing_fp32_bundle_converts_to_a_new_fp16_bundle(fp16_bundle, zegformer_bundle, tmp_path):
    """convert_zegformer_bundle (nothing traced) gives the graphs export-model --precision fp16 gives; the source is
    left as it was, and an fp16 bundle is not converted again."""
    src = zegformer_bundle[0]
    before = (src / BUNDLE_FILE).read_bytes()
    out = tmp_path / "fp16"
    proc = export_model("--from-onnx", str(src), "--precision", "fp16", "--output", str(out))  # as a person runs it
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (src / BUNDLE_FILE).read_bytes() == before
    m = read_bundle_manifest(out, verify=True)
    assert m.describe_precision() == read_bundle_manifest(fp16_bundle).describe_precision()
    assert set(m.embeddings) == set(read_bundle_manifest(src).embeddings)
    for graph in ("segmenter", "crop_classifier"):
        a, b = onnx.load(str(out / f"{graph}.onnx")), onnx.load(str(fp16_bundle / f"{graph}.onnx"))
        assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
        wa = {t.name: onnx.numpy_helper.to_array(t) for t in a.graph.initializer}
        wb = {t.name: onnx.numpy_helper.to_array(t) for t in b.graph.initializer}
        assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) and wa[k].dtype == wb[k].dtype
                                              for k in wa)
    with pytest.raises(ZsdError, match="already fp16"):
        convert_zegformer_bundle(out, tmp_path / "again", PrecisionOptions("fp16"), say=lambda m: None)
    assert not (tmp_path / "again").exists()
    proc = export_model("--from-onnx", str(src), "--precision", "int8", "--output", str(tmp_path / "int8"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "not int8" in proc.stderr
    assert not (tmp_path / "int8").exists()


# ------------------------------------------------------------------------------------------------ refusals
def test_int8_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "bundle"
    proc = export_model("--model", "zegformer", "--config", "cocostuff_r101_gzss", "--height", str(H), "--width",
                        str(W), "--precision", "int8", "--output", str(out))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "not int8" in proc.stderr and "--precision fp16" in proc.stderr and "calibration" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no bundle, no staging folder


@pytest.mark.parametrize("flags, match", [
    (["--precision", "fp16", "--calib-scenes", "4"], "are for --precision int8"),
    (["--precision", "fp16", "--fp32-islands", "layernorms"], "unknown island"),
    (["--fp32-islands", "layernorm"], "needs --precision fp16"),
])
def test_bad_precision_flags_are_refused_at_once(tmp_path, flags, match):
    proc = export_model("--model", "zegformer", *flags, "--output", str(tmp_path / "bundle"))
    assert proc.returncode == 2 and match in proc.stderr, proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ bundle.json
def _with_graph_entry(tmp_path: Path, **entry) -> Path:
    """A copy of a test manifest whose segmenter entry has `entry` keys added (or removed where None)."""
    doc = json.loads(json.dumps(MANIFEST_DOC))
    seg = doc["graphs"]["segmenter"]
    for key, value in entry.items():
        if value is None:
            seg.pop(key, None)
        else:
            seg[key] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / BUNDLE_FILE).write_text(json.dumps(doc), encoding="utf-8")
    return tmp_path


FP16_ENTRY = {"precision": "fp16", "converter": "onnxconverter-common 1.16.0 float16", "fp32_islands": ["layernorm"]}


def test_manifest_precision_is_optional_and_all_or_nothing(tmp_path):
    old = read_bundle_manifest(_with_graph_entry(tmp_path / "old"))  # bundles from before: no record = fp32
    assert old.graphs["segmenter"].precision is None and old.graph_precision("segmenter").precision == "fp32"
    new = read_bundle_manifest(_with_graph_entry(tmp_path / "new", **FP16_ENTRY))
    assert new.graph_precision("segmenter") == GraphPrecision("fp16", FP16_ENTRY["converter"], ("layernorm",))
    assert new.to_json()["graphs"]["segmenter"] == json.loads(
        (tmp_path / "new" / BUNDLE_FILE).read_text())["graphs"]["segmenter"]  # written back the same
    assert "precision" not in new.to_json()["graphs"]["text_encoder"]
    bad = [({**FP16_ENTRY, "converter": None}, "'graphs.segmenter.converter' is missing"),
           ({**FP16_ENTRY, "precision": None}, "'graphs.segmenter.precision' is missing"),
           ({**FP16_ENTRY, "precision": "fp8"}, "'graphs.segmenter.precision' must be"),
           ({**FP16_ENTRY, "converter": ""}, "'graphs.segmenter.converter' must name the converter"),
           ({**FP16_ENTRY, "fp32_islands": "layernorm"}, "'graphs.segmenter.fp32_islands' must be a"),
           ({"precision": "fp32", "converter": "x", "fp32_islands": []}, "must be empty for an fp32 graph")]
    for i, (entry, match) in enumerate(bad):
        with pytest.raises(ZsdError, match=match):
            read_bundle_manifest(_with_graph_entry(tmp_path / f"bad{i}", **entry))


def test_embeddings_entries_take_no_precision(tmp_path):
    doc = json.loads(json.dumps(MANIFEST_DOC))
    doc["embeddings"]["text_embeddings"].update(FP16_ENTRY)
    (tmp_path / BUNDLE_FILE).write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ZsdError, match="'embeddings.text_embeddings.precision' is not part of"):
        read_bundle_manifest(tmp_path)
    assert BundleFile("x.npy", 1, "0" * 64).precision is None
