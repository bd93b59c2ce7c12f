"""The `upstream` latency peers' post-processing (benchmarks/upstream_post.py, PyTorch) reproduces the golden upstream
outputs exactly as zsdeploy's own post-processing does, and gives zsdeploy's results on a resized, padded image."""
from __future__ import annotations

import json

import numpy as np
import pytest

from zsdeploy.benchmarks.upstream_post import upstream_postprocess
from zsdeploy.runtime.postprocess import PostprocessConfig, postprocess

from helpers import COCO_PANOPTIC_THINGS, check_instances, check_semseg, load_postproc_golden

FLAGS = {"object_mask_threshold": "0.8", "overlap_threshold": "0.8", "detections_per_image": "100",
         "semantic_on": "true", "instance_on": "true", "panoptic_on": "true",
         "sem_seg_postprocess_before_inference": "false"}


def _cfg(num_classes: int, things, **over) -> PostprocessConfig:
    return PostprocessConfig.from_metadata({**FLAGS, "num_classes": str(num_classes),
                                            "thing_ids": json.dumps(list(things)), **over})


def test_golden_panoptic_case_all_tasks():
    g = load_postproc_golden("panoptic")
    hw = g["mask_logits"].shape[-2:]
    kw = dict(padded_hw=hw, image_hw=hw, output_hw=hw, cfg=_cfg(133, COCO_PANOPTIC_THINGS))
    check_semseg(upstream_postprocess(g["class_logits"], g["mask_logits"], task="semantic", **kw)["sem_seg"], g)
    pan = upstream_postprocess(g["class_logits"], g["mask_logits"], task="panoptic", **kw)
    np.testing.assert_array_equal(pan["panoptic_seg"], g["panoptic_seg"])
    assert pan["segments_info"] == json.loads(str(g["segments_info"]))
    check_instances(upstream_postprocess(g["class_logits"], g["mask_logits"], task="instance", **kw)["instances"], g)


def test_golden_semantic_and_instance_cases():
    g = load_postproc_golden("semantic")
    hw = g["mask_logits"].shape[-2:]
    cfg = _cfg(171, [], instance_on="false", panoptic_on="false")
    check_semseg(upstream_postprocess(g["class_logits"], g["mask_logits"], task="semantic", padded_hw=hw,
                                       image_hw=hw, output_hw=hw, cfg=cfg)["sem_seg"], g)
    g = load_postproc_golden("instance")
    hw = g["mask_logits"].shape[-2:]
    cfg = _cfg(65, range(65), semantic_on="false", panoptic_on="false")
    check_instances(upstream_postprocess(g["class_logits"], g["mask_logits"], task="instance", padded_hw=hw,
                                          image_hw=hw, output_hw=hw, cfg=cfg)["instances"], g)


@pytest.mark.parametrize("task", ["semantic", "panoptic", "instance"])
def test_same_results_as_zsdeploy_on_a_resized_padded_image(task):
    # stride-4 logits of a 480x640 padded input holding a 460x600 image, mapped back to a 345x450 original
    g = load_postproc_golden("panoptic")
    cls, masks = g["class_logits"], g["mask_logits"]
    cfg = _cfg(133, COCO_PANOPTIC_THINGS)
    geo = dict(padded_hw=(480, 640), image_hw=(460, 600), output_hw=(345, 450))
    ours = postprocess(cls, masks, task=task, meta=cfg, **geo)
    theirs = upstream_postprocess(cls, masks, task=task, cfg=cfg, **geo)
    if task == "semantic":
        a, b = np.asarray(ours["sem_seg"]), theirs["sem_seg"]
        assert a.shape == b.shape == (133, 345, 450)
        np.testing.assert_array_equal(a.argmax(0), b.argmax(0))
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    elif task == "panoptic":
        np.testing.assert_array_equal(ours["panoptic_seg"], theirs["panoptic_seg"])
        assert ours["segments_info"] == theirs["segments_info"] and len(theirs["segments_info"]) >= 3
    else:
        o, t = ours["instances"], theirs["instances"]
        np.testing.assert_array_equal(np.asarray(o["pred_masks"]), t["pred_masks"])
        np.testing.assert_allclose(o["scores"], t["scores"], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(o["pred_classes"], t["pred_classes"])
        np.testing.assert_array_equal(o["pred_boxes"], t["pred_boxes"])


def test_latency_measures_the_upstream_peers(onnx_exports, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "lat"
    proc = subprocess.run([sys.executable, "-m", "zsdeploy.benchmarks.cli", "latency", "--model",
                           str(onnx_exports["static_b1"]), "--backends", "torch,upstream,onnxruntime", "--sizes",
                           "128x160", "--warmup", "0", "--repeat", "1", "--threads", "2", "--output", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    rows = {r["backend"]: r for r in report["results"]}
    assert set(rows) == {"torch", "upstream", "onnxruntime"}
    assert all(rows[b]["task"] == "panoptic" and rows[b]["post_median_ms"] > 0 for b in rows)
    assert {"upstream/128x160/b1/e2e", "onnxruntime/128x160/b1/e2e"} <= set(report["gate"]["speedup"])
