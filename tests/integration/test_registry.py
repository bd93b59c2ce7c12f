"""The model registry, the Pipeline's step API, the Python API and the ONNX metadata contract (real exports, real
ONNX Runtime sessions)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import zsdeploy
from zsdeploy.runtime.artifacts.onnx_metadata import FORMAT, FORMAT_KEY, ModelInfo, read_onnx_metadata
from zsdeploy.runtime.errors import ZsdError
from zsdeploy.families import MODELS, ExportRequest, family_for, open_pipeline

from helpers import REPO


def test_registered_families():
    assert MODELS.names() == ["pading", "pading-demo", "zegformer"]
    assert MODELS.get("zegformer").artifact == "bundle" and MODELS.get("zegformer").open_vocabulary
    assert MODELS.get("pading-demo").default_weights == "demo"
    with pytest.raises(ZsdError, match="unknown model 'maskformer'.*pading, pading-demo, zegformer"):
        MODELS.get("maskformer")


# What only a family may decide: a model name compared, "is this a bundle?" asked, the artifact kind compared.
FAMILY_BRANCH = re.compile(r"""(\b(model|name)\s*[!=]=\s*["'](pading|pading-demo|zegformer)["'])"""
                           r"""|\b(is_bundle|bundle_root|bundle_family)\(|\.artifact\s*[!=]=|\["kind"\]\s*[!=]=\s*["']bundle""")


def family_specific(path: Path, root: Path = REPO) -> bool:
    """The family package, a family's own implementation modules (named after it or its bundle: runtime/zegformer.py,
    export/pading_export.py, runtime/artifacts/bundle_manifest.py, ...) and zsd-bench's per-family pairings."""
    rel = path.relative_to(root)
    return rel.parts[:2] == ("zsdeploy", "families") or any(k in path.stem for k in ("pading", "zegformer", "bundle")) \
        or rel == Path("benchmarks/pairing.py")


def family_branches(root: Path = REPO) -> list[str]:
    return [f"{p.relative_to(root)}:{i}: {line.strip()}" for d in ("export", "runtime", "benchmarks", "zsdeploy")
            for p in sorted((root / d).rglob("*.py")) if not family_specific(p, root)
            for i, line in enumerate(p.read_text().splitlines(), 1) if FAMILY_BRANCH.search(line)]


def test_no_family_or_bundle_branch_outside_the_families():
    """Behaviour that differs per model is decided by its family (zsdeploy/families) and nowhere else: no model-name
    comparison, no "is this a bundle?" and no artifact-kind test in the generic modules and CLIs."""
    assert family_branches() == []


@pytest.mark.parametrize("line", ['    if info.model == "pading":', "    if is_bundle(args.onnx):",
                                  "    if bundle_root(args.model) is not None:", '    if family.artifact == "bundle":',
                                  '    if marker["kind"] == "bundle":'])
def test_the_family_branch_check_catches(line):
    assert FAMILY_BRANCH.search(line), line


def test_pipeline_steps_and_call_agree(onnx_exports):
    pipeline = zsdeploy.open_pipeline(onnx_exports["static_b1"])
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 150, 3), dtype=np.uint8)
    run = pipeline.run([image], tasks=["panoptic", "semantic"])
    assert set(run.timings_ms) == {"preprocess", "infer", "postprocess"} and all(v > 0 for v in run.timings_ms.values())
    assert run.e2e_ms == pytest.approx(sum(run.timings_ms.values()))
    [seg] = pipeline([image])
    np.testing.assert_array_equal(seg.class_logits, run.raw.class_logits[0])
    np.testing.assert_array_equal(seg.results["panoptic_seg"], run.results[0]["panoptic"]["panoptic_seg"])
    assert seg.output_hw == (120, 150)
    sem = np.asarray(run.results[0]["semantic"]["sem_seg"])
    assert sem.shape == (pipeline.info.num_classes, 120, 150)


def test_open_pipeline_refuses_vocabulary_options_for_fixed_class_models(onnx_exports):
    with pytest.raises(ZsdError, match="--classes: a pading model has a fixed class list"):
        zsdeploy.open_pipeline(onnx_exports["static_b1"], classes="cat,dog")


def test_family_for_missing_and_foreign_paths(tmp_path):
    with pytest.raises(ZsdError, match="does not exist"):
        family_for(tmp_path / "none.onnx")
    (tmp_path / "d").mkdir()
    with pytest.raises(ZsdError, match="not a zsdeploy bundle"):
        open_pipeline(tmp_path / "d")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ZsdError, match="neither an ONNX model"):
        family_for(tmp_path / "x.txt")


def _with_metadata(src: Path, dst: Path, key: str, value: str) -> Path:
    """A copy of the export `src` with one metadata value replaced."""
    proto = onnx.load(str(src))
    for p in proto.metadata_props:
        if p.key == key:
            p.value = value
    onnx.save(proto, str(dst))
    return dst


def test_a_model_no_family_reads_is_refused(tmp_path, onnx_exports):
    _with_metadata(onnx_exports["static_b1"], tmp_path / "m.onnx", "model", "segformer")
    with pytest.raises(ZsdError, match="'segformer', which this zsdeploy has no family for"):
        family_for(tmp_path / "m.onnx")


# ------------------------------------------------------------------------------------------ metadata contract
def test_exports_carry_the_contract_version_and_their_sources(onnx_exports):
    meta = read_onnx_metadata(onnx_exports["static_b1"])
    assert meta[FORMAT_KEY] == FORMAT
    assert re.fullmatch(r"[0-9a-f]{64}", meta["config_sha256"])
    assert meta["standin_weights"] == "true" and meta["checkpoint_sha256"] == ""


@pytest.mark.parametrize("key, value, message", [
    ("dynamic", "yes", "'dynamic' must be 'true' or 'false'"),
    ("standin_weights", "1", "'standin_weights' must be 'true' or 'false'"),
    ("num_classes", "many", "'num_classes' must be an integer"),
    ("num_classes", "0", "'num_classes' must be an integer >= 1"),
    ("class_names", '["a", "b"', "'class_names' must be a JSON list of str"),
    ("thing_ids", "[0, 9999]", "'thing_ids' must be class ids"),
    ("pixel_mean", "[1, 2]", "'pixel_mean' must be three numbers"),
    ("static_height", "", "'static_height' must be an integer"),
    (FORMAT_KEY, "zsdeploy-onnx/9", "metadata format 'zsdeploy-onnx/9'"),
])
def test_malformed_metadata_names_the_field(onnx_exports, key, value, message):
    meta = dict(read_onnx_metadata(onnx_exports["static_b1"]))
    meta[key] = value
    with pytest.raises(ZsdError, match=re.escape(message)) as e:
        ModelInfo.from_metadata(meta, "m.onnx")
    assert str(e.value).startswith("m.onnx") and "Fix:" in str(e.value)


def test_exports_without_the_format_key_still_read(onnx_exports):
    meta = dict(read_onnx_metadata(onnx_exports["static_b1"]))
    del meta[FORMAT_KEY]
    info = ModelInfo.from_metadata(meta, "old.onnx")
    assert info.format == "zsdeploy-onnx/1" and info.static_hw == (128, 160)


def test_trt_infer_reports_malformed_metadata_without_traceback(tmp_path, onnx_exports):
    _with_metadata(onnx_exports["static_b1"], tmp_path / "m.onnx", "dynamic", "maybe")
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    r = subprocess.run([sys.executable, "-m", "zsdeploy.cli.trt_infer", "--model", str(tmp_path / "m.onnx"), "--input",
                        str(tmp_path / "a.png"), "--output", str(tmp_path / "out")], capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 2 and "'dynamic' must be 'true' or 'false'" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------ export requests
def test_export_request_lists_given_options():
    req = ExportRequest(Path("m.onnx"), clip="c.pt", height=64)
    assert req.given("clip", "clip_bpe", "height", "batch") == ["--clip", "--height"]


@pytest.mark.parametrize("args, match", [
    (["--model", "pading-demo", "--weights", "x.pth"], "--model pading-demo exports the shipped demo weights"),
    (["--model", "pading", "--clip", "c.pt"], "--clip: a ZegFormer option; PADing has no CLIP"),
    (["--model", "pading", "--no-default-embeddings"], "--no-default-embeddings is a ZegFormer option"),
    (["--model", "zegformer", "--msda", "plugin"], "ZegFormer has no MSDeformAttn"),
])
def test_family_specific_options_are_refused_before_tracing(tmp_path, args, match):
    r = subprocess.run([sys.executable, "-m", "zsdeploy.cli.export_model", *args, "--output", str(tmp_path / "m.onnx")],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_python_api_exports_the_demo_model_and_segments_a_file(tmp_path):
    """zsdeploy.export_model("pading-demo") -> open_pipeline -> segment_files: the API a README user calls."""
    from PIL import Image

    out = zsdeploy.export_model("pading-demo", tmp_path / "demo.onnx", height=128, width=128, simplify=False,
                                say=lambda s: None)
    info = ModelInfo.from_metadata(read_onnx_metadata(out), str(out))
    assert info.raw["weights"] == "demo" and not info.standin_weights and info.static_hw == (128, 128)
    from zsdeploy.runtime.scenes import generate_scene

    scene = generate_scene(20261201, 128, 128, n_objects=4, size_range=(20, 60))
    Image.fromarray(scene.image).save(tmp_path / "scene.png")
    [seg] = zsdeploy.segment_files(out, [tmp_path / "scene.png"])
    assert seg.task == "panoptic" and seg.results["panoptic_seg"].shape == (128, 128)
    assert len(seg.results["segments_info"]) >= 1  # a trained model finds objects (the stand-in finds none)


def test_segment_files_isolates_a_bad_image_like_trt_infer(onnx_exports, tmp_path):
    """The loop trt-infer runs (runtime/image_run.py) behind the API: with `failures`, a bad file costs only its own
    result; without, it raises; one path (a str) is one file, not its characters."""
    from PIL import Image

    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 150, 3), dtype=np.uint8)).save(good)
    bad.write_bytes(b"not a png")
    pipeline = zsdeploy.open_pipeline(onnx_exports["static_b1"])
    failures: list = []
    segs = zsdeploy.segment_files(pipeline, [bad, good, bad], failures=failures)
    assert len(segs) == 1 and segs[0].output_hw == (120, 150)
    assert [p for p, _ in failures] == [bad, bad] and all(isinstance(e, ZsdError) for _, e in failures)
    with pytest.raises(ZsdError, match="bad.png"):
        zsdeploy.segment_files(pipeline, [good, bad])
    [seg] = zsdeploy.segment_files(pipeline, str(good))
    np.testing.assert_array_equal(seg.results["panoptic_seg"], segs[0].results["panoptic_seg"])
