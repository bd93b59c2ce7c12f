"""OpenVINO backend vs ONNX Runtime on the same exports: f32 parity (rel L2 < 1e-5), identical post-processed
results, bf16 within a measured bound, the checked compiled-model cache, trt-infer --backend, and the message when
the openvino package is missing.

Inputs are generated small-target scenes (what users feed), not uniform noise: on noise, Mask2Former's masked
attention (sigmoid(mask) < 0.5) flips for a few near-threshold pixels between ANY two f32 implementations (measured:
rel L2 1.6e-4 for OpenVINO vs ONNX Runtime, starting at decoder layer 6), which says nothing about the backend.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import TESTS, rel_l2

ov = pytest.importorskip("openvino", reason='the OpenVINO backend needs pip install "zsdeploy[openvino]"')

from zsdeploy.runtime.scenes import generate_scene  # noqa: E402
from zsdeploy.runtime.backends import load_backend, resolve_backend  # noqa: E402
from zsdeploy.runtime.backends.openvino_backend import bf16_support  # noqa: E402
from zsdeploy.runtime.errors import ZsdError  # noqa: E402
from zsdeploy.runtime.pipeline import Pipeline  # noqa: E402

F32_TOL = 1e-5  # the README's / issue's claim (measured ~1e-6 class logits, ~3e-6 mask logits)
# bf16 (AMX) vs f32 ONNX Runtime, measured on these stand-in exports and scenes (6 scenes, 128x160, openvino 2026.4,
# Xeon with AMX): class_logits 1.3e-2..1.4e-2, mask_logits 2.0e-2..3.3e-2. Bound = 1.5x the worst seen.
BF16_TOL = 5e-2


def _scenes(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    return [generate_scene(seed + i, h, w, n_objects=12, size_range=(6, 40)).image for i in range(n)]


def _batch(backend, images: list[np.ndarray]) -> np.ndarray:
    return Pipeline(backend, short_edge=0).preprocess(images).tensor


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ov_cache")


@pytest.fixture(scope="module")
def backends(onnx_exports, cache):
    """(ONNX Runtime, OpenVINO f32) per export, loaded once for the module."""
    out = {}
    for name in ("static_b1", "dynamic"):
        out[name] = (load_backend(onnx_exports[name], backend="onnxruntime"),
                     load_backend(onnx_exports[name], backend="openvino", cache_dir=cache))
    return out


@pytest.mark.parametrize("name,b,h,w", [("static_b1", 1, 128, 160), ("dynamic", 1, 128, 160),
                                        ("dynamic", 2, 96, 192), ("dynamic", 1, 160, 128)])
def test_f32_matches_onnxruntime(backends, name, b, h, w):
    ort_b, ov_b = backends[name]
    assert ov_b.name == "openvino" and ov_b.precision == "fp32"
    assert ov_b.input_names == ("images",) and ov_b.output_names == ("class_logits", "mask_logits")
    x = _batch(ort_b, _scenes(b, h, w, seed=h + w))
    ref, got = ort_b.infer({"images": x}), ov_b.infer({"images": x})
    assert got["class_logits"].shape == (b, 100, 134) and got["mask_logits"].shape == (b, 100, h // 4, w // 4)
    assert rel_l2(got["class_logits"], ref["class_logits"]) < F32_TOL
    assert rel_l2(got["mask_logits"], ref["mask_logits"]) < F32_TOL


def test_dynamic_shape_is_declared_dynamic(backends):
    assert backends["dynamic"][1].input_shape("images")[2:] == (None, None)
    assert backends["static_b1"][1].input_shape("images") == (1, 3, 128, 160)
    with pytest.raises(ZsdError, match=r"exported for \[1, 3, 128, 160\]"):
        backends["static_b1"][1].infer({"images": np.zeros((1, 3, 128, 192), np.float32)})


def test_dynamic_model_is_specialised_for_a_repeated_shape(onnx_exports, cache):
    """A shape seen twice gets its own static compile (faster kernels); the results stay f32-exact on both paths,
    the old shapes are dropped beyond the LRU size, and specialize=False never compiles another model."""
    from zsdeploy.runtime.backends.openvino_backend import SPECIALIZED_SHAPES_KEPT

    ort_b = load_backend(onnx_exports["dynamic"], backend="onnxruntime")
    ov_b = load_backend(onnx_exports["dynamic"], backend="openvino", cache_dir=cache)
    assert ov_b.specialize
    sizes = [(128, 160), (128, 160), (96, 192), (96, 192), (160, 128), (160, 128), (128, 160)]
    for i, (h, w) in enumerate(sizes):
        x = _batch(ort_b, _scenes(1, h, w, seed=i))
        ref, got = ort_b.infer({"images": x}), ov_b.infer({"images": x})
        assert rel_l2(got["class_logits"], ref["class_logits"]) < F32_TOL
        assert rel_l2(got["mask_logits"], ref["mask_logits"]) < F32_TOL
        static = [dict(key)["images"] for key in ov_b._static]
        if (h, w) not in sizes[:i]:
            assert (1, 3, h, w) not in static  # first sight: the dynamic model ran it
        else:
            assert static[-1] == (1, 3, h, w)  # seen before: its own static compile, most recently used
        assert len(static) <= SPECIALIZED_SHAPES_KEPT
    assert (1, 3, 96, 192) not in [dict(key)["images"] for key in ov_b._static]  # least recently used, dropped
    plain = load_backend(onnx_exports["dynamic"], backend="openvino", cache_dir=cache)
    plain.specialize = False
    for _ in range(2):
        plain.infer({"images": _batch(ort_b, _scenes(1, 128, 160))})
    assert not plain._static
    assert not load_backend(onnx_exports["static_b1"], backend="openvino", cache_dir=cache).specialize


@pytest.mark.parametrize("name", ["static_b1", "dynamic"])
def test_postprocessed_results_identical(backends, name):
    """Same label / id maps, segments, instances and semantic argmax through runtime.pipeline.Pipeline."""
    ort_b, ov_b = backends[name]
    images = _scenes(2, 128, 160, seed=7)
    per_call = 1 if ort_b.info.static_batch == 1 else 2
    for task in ("panoptic", "instance", "semantic"):
        for i in range(0, 2, per_call):
            chunk = images[i:i + per_call]
            # short_edge 0: the scenes at their own size (the model's 800-px policy would only cost minutes)
            ref, got = Pipeline(ort_b, task, short_edge=0)(chunk), Pipeline(ov_b, task, short_edge=0)(chunk)
            for r, g in zip(ref, got):
                assert _same(g.results, r.results, (task, i))


def _same(a, b, where: tuple) -> bool:
    """Equal structures: integer / bool arrays (maps, masks, classes, ids) exactly, floats (scores, semantic
    probabilities, boxes) to 1e-4 absolute; lazy result arrays (post-processing's row-band objects) via __array__."""
    if isinstance(b, dict):
        assert a.keys() == b.keys(), where
        return all(_same(a[k], b[k], where + (k,)) for k in b)
    if isinstance(b, (list, tuple)):
        assert len(a) == len(b), where
        return all(_same(x, y, where + (i,)) for i, (x, y) in enumerate(zip(a, b)))
    if hasattr(b, "__array__") and not isinstance(b, (int, float, str, bool)):
        x, y = np.asarray(a), np.asarray(b)
        assert x.shape == y.shape, where
        if y.dtype.kind == "f":
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-4, err_msg=str(where))
            if where[-1] == "sem_seg":
                assert np.array_equal(x.argmax(0), y.argmax(0)), where
        else:
            assert np.array_equal(x, y), where
        return True
    if isinstance(b, float):
        assert abs(a - b) <= 1e-4, (where, a, b)
        return True
    assert a == b, (where, a, b)
    return True


def test_bf16_within_measured_bound(onnx_exports, backends, cache):
    ok, why = bf16_support()
    if not ok:
        pytest.skip(f"no bf16 on this CPU: {why}")
    ort_b, f32 = backends["dynamic"]
    bf16 = load_backend(onnx_exports["dynamic"], precision="bf16", cache_dir=cache)  # auto -> openvino for bf16
    assert bf16.name == "openvino" and bf16.precision == "bf16"
    x = _batch(ort_b, _scenes(1, 128, 160, seed=3))
    ref, got, same = ort_b.infer({"images": x}), bf16.infer({"images": x}), f32.infer({"images": x})
    for k in ("class_logits", "mask_logits"):
        err = rel_l2(got[k], ref[k])
        assert err < BF16_TOL, (k, err)
        assert err > 20 * rel_l2(same[k], ref[k]), (k, err)  # bf16 really ran (f32 is ~1e-6 here)


def test_cache_populated_then_used(onnx_exports, tmp_path):
    notes: list[str] = []
    first = load_backend(onnx_exports["static_b1"], backend="openvino", cache_dir=tmp_path, say=notes.append)
    assert not first.loaded_from_cache
    blobs = list(first.cache.dir.glob("*.blob"))
    assert len(blobs) == 1 and blobs[0].stat().st_size > 50e6  # the compiled model with its weights
    assert blobs[0].with_name(blobs[0].name + ".sha256").is_file()
    second = load_backend(onnx_exports["static_b1"], backend="openvino", cache_dir=tmp_path, say=notes.append)
    assert second.loaded_from_cache and second.cache.dir == first.cache.dir and notes == []
    x = _batch(first, _scenes(1, 128, 160))
    a, b = first.infer({"images": x}), second.infer({"images": x})
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_cache_is_rebuilt_with_a_note(onnx_exports, backends, tmp_path, damage):
    """OpenVINO itself loads a blob with flipped weight bytes 'from cache' and silently computes other numbers
    (measured); the sidecar digest catches it."""
    built = load_backend(onnx_exports["static_b1"], backend="openvino", cache_dir=tmp_path)
    [blob] = built.cache.dir.glob("*.blob")
    data = bytearray(blob.read_bytes())
    if damage == "flip":
        mid = len(data) // 2
        data[mid:mid + 4096] = bytes(255 - v for v in data[mid:mid + 4096])
    else:
        data = data[:len(data) // 3]
    os.chmod(blob, 0o644)  # OpenVINO writes blobs read-only
    blob.write_bytes(bytes(data))
    notes: list[str] = []
    again = load_backend(onnx_exports["static_b1"], backend="openvino", cache_dir=tmp_path, say=notes.append)
    assert not again.loaded_from_cache
    assert any("corrupt" in n and "compiled again" in n for n in notes), notes
    x = _batch(again, _scenes(1, 128, 160, seed=11))
    ref = backends["static_b1"][0].infer({"images": x})
    got = again.infer({"images": x})
    assert rel_l2(got["mask_logits"], ref["mask_logits"]) < F32_TOL
    third = load_backend(onnx_exports["static_b1"], backend="openvino", cache_dir=tmp_path, say=notes.append)
    assert third.loaded_from_cache  # the rebuilt entry is sealed and trusted again


def test_unwritable_cache_is_skipped_with_a_note(onnx_exports, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    notes: list[str] = []
    b = load_backend(onnx_exports["static_b1"], backend="openvino", cache_dir=blocker / "cache", say=notes.append)
    assert b.cache is None and not b.loaded_from_cache
    assert any("cannot be written" in n for n in notes), notes
    assert b.infer({"images": _batch(b, _scenes(1, 128, 160))})["class_logits"].shape == (1, 100, 134)


def test_backend_choice(onnx_exports, tmp_path):
    assert resolve_backend(onnx_exports["dynamic"]) == "onnxruntime"  # the default for .onnx: starts at once
    assert resolve_backend(onnx_exports["dynamic"], precision="bf16") == "openvino"  # the only bf16 backend
    assert resolve_backend(onnx_exports["dynamic"], "openvino") == "openvino"
    assert resolve_backend(onnx_exports["dynamic"], "onnxruntime") == "onnxruntime"
    with pytest.raises(ZsdError, match="bf16 is an OpenVINO setting"):
        resolve_backend(onnx_exports["dynamic"], "onnxruntime", "bf16")
    with pytest.raises(ZsdError, match="build-engine"):
        resolve_backend(onnx_exports["dynamic"], "tensorrt")
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    with pytest.raises(ZsdError, match="is a TensorRT engine"):
        resolve_backend(plan, "openvino")
    assert resolve_backend(plan) == "tensorrt"


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "ZSD_CACHE_DIR": str(tmp_path / "zsd_cache"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(TESTS)}


def _image(tmp_path: Path) -> Path:
    from PIL import Image

    p = tmp_path / "scene.png"
    Image.fromarray(_scenes(1, 128, 160, seed=5)[0]).save(p)
    return p


def test_trt_infer_backend_openvino(onnx_exports, tmp_path):
    img = _image(tmp_path)
    cmd = [sys.executable, "-m", "zsdeploy.cli.trt_infer", "--model", str(onnx_exports["static_b1"]), "--input",
           str(img), "--output", str(tmp_path / "out"), "--backend", "openvino", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "with openvino" in proc.stdout
    assert (tmp_path / "out" / "scene_panoptic.png").is_file()
    assert json.loads((tmp_path / "out" / "scene.json").read_text())["backend"] == "openvino"
    assert list((tmp_path / "zsd_cache" / "openvino").glob("*/*.blob"))  # ZSD_CACHE_DIR is honoured


_NO_OPENVINO = ("import sys; sys.modules['openvino'] = None; from zsdeploy.cli.trt_infer import main; "
                "sys.exit(main(sys.argv[1:]))")


def test_missing_openvino_names_the_extra(onnx_exports, tmp_path):
    """A Python where `import openvino` fails (sys.modules entry None): --backend openvino is a clear error naming the
    extra; auto falls back to ONNX Runtime."""
    img = _image(tmp_path)
    base = [sys.executable, "-c", _NO_OPENVINO, "--model", str(onnx_exports["static_b1"]), "--input", str(img),
            "--quiet"]
    proc = subprocess.run(base + ["--output", str(tmp_path / "o1"), "--backend", "openvino"], capture_output=True,
                          text=True, timeout=600, env=_env(tmp_path))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'pip install "zsdeploy[openvino]"' in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o1").exists() or not any((tmp_path / "o1").iterdir())
    proc = subprocess.run(base + ["--output", str(tmp_path / "o2")], capture_output=True, text=True, timeout=600,
                          env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "o2" / "scene.json").read_text())["backend"] == "onnxruntime"


def test_zegformer_bundle_graphs_match_onnxruntime(zegformer_bundle):
    """Every graph of a ZegFormer bundle (segmenter with its text_embeddings input, text encoder, CLIP crop
    classifier) opened through ZegFormerBundle(backend=...), OpenVINO f32 vs ONNX Runtime on the same feeds."""
    from zsdeploy.runtime.zegformer import ZegFormerBundle

    root = zegformer_bundle[0]
    ort_b = ZegFormerBundle(root, backend="onnxruntime", say=lambda m: None)
    ov_b = ZegFormerBundle(root, backend="openvino", say=lambda m: None)
    assert ov_b.segmenter.name == "openvino" and ort_b.segmenter.name == "onnxruntime"
    h, w = ort_b.info.static_hw
    images = _batch(ort_b.segmenter, _scenes(1, h, w, seed=21))
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((7, 512)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    seg_feeds = {"images": images, "text_embeddings": emb}
    ref_masks = ort_b.segmenter.infer(seg_feeds)["mask_logits"]
    tokens = rng.integers(1, 49000, (3, 77)).astype(np.int64)
    tokens[:, 10] = 49407  # CLIP reads the embedding at the end-of-text token (the largest id)
    feeds = {"segmenter": seg_feeds, "text_encoder": {"token_ids": tokens},
             "crop_classifier": {"images": images, "image_sizes": np.array([[h, w]], np.int64),
                                 "mask_logits": ref_masks, "text_embeddings_clip": emb}}
    for graph, f in feeds.items():
        if graph == "crop_classifier" and not ort_b.gzss:
            continue
        ref, got = ort_b.backend(graph).infer(f), ov_b.backend(graph).infer(f)
        assert ov_b.backend(graph).name == "openvino"
        for k in ref:
            assert got[k].shape == ref[k].shape and rel_l2(got[k], ref[k]) < F32_TOL, (graph, k, rel_l2(got[k], ref[k]))


def test_bench_latency_openvino_peers(onnx_exports, tmp_path):
    """zsd-bench latency measures onnxruntime / openvino / openvino-bf16 and the int8 (Q/DQ) graph's openvino-int8 /
    openvino-int8-bf16 side by side and reports the CPU's instruction-set features (bf16 only where the CPU has it:
    else 'not measured' with the reason)."""
    fp32 = onnx_exports["static_b1"]
    int8 = tmp_path / "int8.onnx"
    conv = subprocess.run(["export-model", "--from-onnx", str(fp32), "--precision", "int8", "--calib-scenes", "1",
                           "--output", str(int8)], capture_output=True, text=True, timeout=900, env=_env(tmp_path))
    assert conv.returncode == 0, conv.stderr[-2000:]
    out = tmp_path / "lat"
    base = [sys.executable, "-m", "zsdeploy.benchmarks.cli", "latency", "--model", str(fp32), "--sizes", "128x160",
            "--warmup", "0", "--repeat", "1", "--threads", "1"]
    cmd = [*base, "--backends", "onnxruntime,openvino,openvino-bf16,openvino-int8,openvino-int8-bf16",
           "--int8-model", str(int8), "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    rows = {r["backend"]: r for r in report["results"]}
    ok, why = bf16_support()
    bf16_rows = {"openvino-bf16", "openvino-int8-bf16"}
    assert set(rows) == {"onnxruntime", "openvino", "openvino-int8"} | (bf16_rows if ok else set())
    assert [r["backend"] for r in report["results"]] == [b for b in (
        "onnxruntime", "openvino", "openvino-bf16", "openvino-int8", "openvino-int8-bf16") if b in rows]
    if not ok:
        assert report["unavailable"] == [{"backend": b, "reason": why} for b in sorted(bf16_rows)]
    assert all(r["peak_rss_mib"] > 100 and r["e2e"]["median_ms"] > r["infer"]["median_ms"] > 0 for r in rows.values())
    features = report["machine"]["cpu"]["features"]
    assert set(features) == {"avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni"}
    assert features["amx_bf16"] == ("amx_bf16" in open("/proc/cpuinfo").read())
    assert "- CPU: " in (out / "report.md").read_text()
    # an int8 peer without --int8-model, or with an fp32 graph as --int8-model: one paragraph, exit 2, no report
    for extra, says in (([], "needs --int8-model"), (["--int8-model", str(fp32)], "not one of precision int8")):
        bad = subprocess.run([*base, "--backends", "openvino-int8", *extra, "--output", str(tmp_path / "bad")],
                             capture_output=True, text=True, timeout=900, env=_env(tmp_path))
        assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr, bad.stderr[-2000:]
        assert not (tmp_path / "bad").exists()


def test_bf16_on_a_cpu_without_it_falls_back_to_f32_with_a_note(onnx_exports, cache, monkeypatch):
    """The CPU's flags are the environment (read from /proc/cpuinfo); a CPU without AMX / AVX512-BF16 is simulated
    by what that read returns. The backend itself runs for real, in fp32."""
    from zsdeploy.runtime.backends import openvino_backend

    monkeypatch.setattr(openvino_backend, "cpu_flags", lambda: {"avx2", "avx512f", "fma"})
    notes: list[str] = []
    b = load_backend(onnx_exports["static_b1"], precision="bf16", cache_dir=cache, say=notes.append)
    assert b.requested_precision == "bf16" and b.precision == "fp32" and b.config["INFERENCE_PRECISION_HINT"] == "f32"
    assert any("bf16 was asked for" in n and "running fp32" in n for n in notes), notes
