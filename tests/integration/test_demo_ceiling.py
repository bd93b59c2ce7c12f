"""The oracle ceiling of the demo model (benchmarks/demo_model/ceiling.py): perfect outputs at a mask stride, scored by
zsd-bench's own post-processing and metrics on held-out scenes."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from zsdeploy.benchmarks.accuracy import BenchSegmenter, resize_policy
from zsdeploy.benchmarks.datasets import open_dataset
from zsdeploy.benchmarks.demo_model.ceiling import (
    OracleBackend,
    fraction_logits,
    register_dataset,
    run_ceiling,
    segment_fractions,
)
from zsdeploy.benchmarks.demo_model.data import HELDOUT_SEED, SCENE_OBJECT_SIZES, SCENE_OBJECTS
from zsdeploy.runtime.errors import ZsdError

HELDOUT = {"scene_size": "256x256", "seed": HELDOUT_SEED, "size_range": SCENE_OBJECT_SIZES, "n_objects": SCENE_OBJECTS}
SCENES = 3
#: Small-bucket mask AP of the stride-4 oracle on held-out scenes 0-2: measured 85.9 (20 small segments; 77.8 over 50
#: scenes). Stride 1 measures 100 on every metric: the post-processing's thresholds cost a perfect input nothing.
STRIDE4_SMALL_AP_FLOOR = 85.5


def _gt(report: dict, bucket: str, metric: str):
    return report["vs_ground_truth"]["backend"][bucket][metric]


@pytest.fixture(scope="module")
def reports(demo_export):
    ds = open_dataset(f"synthetic:{SCENES}", **HELDOUT)
    return {s: run_ceiling(demo_export, ds, stride=s, reference="oracle") for s in (1, 4)}


def test_segment_fractions_are_cell_area_fractions_and_logits_threshold_at_half():
    pan = np.zeros((16, 16), np.int32)
    pan[2:10, 2:10] = 7  # an 8x8 square off the 4-px grid
    pan[12:, :] = 3
    f = segment_fractions(pan, [7, 3], (16, 16), (16, 16), 4)
    np.testing.assert_array_equal(f[0][:3, :3], np.array([[4, 8, 4], [8, 16, 8], [4, 8, 4]]) / 16)
    assert f[0].sum() * 16 == 64 and f[1].sum() * 16 == 64  # areas are kept
    np.testing.assert_array_equal(f[1][3], 1.0)
    lg = fraction_logits(f[0])
    assert lg.dtype == np.float32 and lg[1, 1] == pytest.approx(9.2102, abs=1e-3) and lg[3, 3] == -lg[1, 1]
    assert lg[0, 1] == 0.0  # exactly half a cell: the boundary of the upsampled mask passes through it
    # a resized image: the ground truth follows it by area (a 32x32 map on the 16x16 image of a 32x32 canvas)
    big = np.kron(pan, np.ones((2, 2), np.int32))
    np.testing.assert_allclose(segment_fractions(big, [7], (16, 16), (32, 32), 4)[0, :4, :4], f[0], atol=1e-6)
    assert segment_fractions(big, [7], (16, 16), (32, 32), 4)[0, 4:].max() == 0  # padding has no segment


def test_oracle_speaks_the_models_shapes_and_only_for_registered_inputs(demo_export):
    from zsdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    net = OnnxRuntimeBackend(demo_export, threads=1)
    oracle = OracleBackend(net, stride=4)
    ds = open_dataset("synthetic:1", **HELDOUT)
    assert register_dataset(oracle, ds) == 1
    sample = next(iter(ds))
    batch = BenchSegmenter(oracle, None, resize_policy(oracle, sample.image.shape[:2], None)).prepare([sample.image])
    got, real = oracle.infer({"images": batch.tensor}), net.infer({"images": batch.tensor})
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in real.items()} \
        == {"class_logits": (1, 50, 134), "mask_logits": (1, 50, 64, 64)}
    n = len(sample.segments)
    labels = got["class_logits"][0].argmax(-1)
    assert labels[:n].tolist() == [s["category_id"] for s in sample.segments] and (labels[n:] == 133).all()
    # every pixel of the scene is some segment's: the cells' fractions over the queries sum to one
    fractions = 1 / (1 + np.exp(-got["mask_logits"][0, :n].astype(np.float64)))
    np.testing.assert_allclose(fractions.sum(0), 1.0, atol=n * 1e-4)
    with pytest.raises(ZsdError, match="no ground truth for"):
        oracle.infer({"images": batch.tensor + 1.0})


def test_stride1_oracle_is_perfect_through_the_post_processing(reports):
    r = reports[1]
    assert r["oracle"]["mask_hw"] == [256, 256] and r["oracle"]["dropped_segments"] == 0
    for bucket in ("small", "medium", "large", "all"):
        assert _gt(r, bucket, "panoptic.pq") == pytest.approx(100.0, abs=1e-9), bucket
        assert _gt(r, bucket, "semantic.miou") == pytest.approx(100.0, abs=1e-9), bucket
    assert _gt(r, "all", "panoptic.segments") == r["oracle"]["segments"] == 55
    assert _gt(r, "small", "instance.ap") == _gt(r, "all", "instance.ap") == pytest.approx(100.0, abs=1e-9)


def test_stride4_oracle_loses_small_targets_to_mask_resolution(reports):
    r1, r4 = reports[1], reports[4]
    assert r4["oracle"]["mask_hw"] == [64, 64]
    ap1, ap4 = _gt(r1, "small", "instance.ap"), _gt(r4, "small", "instance.ap")
    assert STRIDE4_SMALL_AP_FLOOR < ap4 < ap1
    # every segment is still found (IoU > 0.5): what stride 4 costs is boundary quality, most on small targets
    assert _gt(r4, "all", "panoptic.rq") == 100.0
    pq = {b: _gt(r4, b, "panoptic.pq") for b in ("small", "medium", "all")}
    assert pq["small"] < pq["medium"] < 100.0 and 90.0 < pq["all"] < 100.0, pq


def test_cli_writes_the_report_with_the_trained_model_beside_the_oracle(demo_export, tmp_path):
    out = tmp_path / "ceil"
    r = subprocess.run([sys.executable, "-m", "zsdeploy.benchmarks.demo_model.ceiling", "--model", str(demo_export),
                        "--dataset", "synthetic:1", "--threads", "1", "--output", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "oracle-ceiling" and report["oracle"]["stride"] == 4
    assert report["dataset"]["spec"] == "synthetic:1" and report["dataset"]["images"] == 1
    gt = report["vs_ground_truth"]
    assert gt["backend"]["all"]["panoptic.pq"] > gt["reference"]["all"]["panoptic.pq"]  # oracle above the model
    md = (out / "report.md").read_text()
    assert md.startswith("# Oracle ceiling at mask stride 4 (64x64 masks)") and "The trained model" in md


@pytest.mark.parametrize("stride, says", [("0", "--stride 0 is not a positive"), ("3", "--stride 3 does not divide")])
def test_cli_refuses_a_bad_stride_in_one_paragraph(demo_export, tmp_path, stride, says):
    r = subprocess.run([sys.executable, "-m", "zsdeploy.benchmarks.demo_model.ceiling", "--model", str(demo_export),
                        "--dataset", "synthetic:1", "--stride", stride, "--output", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ceiling: error: {says}") and "Fix:" in lines[0], r.stderr
    assert not (tmp_path / "o").exists()
