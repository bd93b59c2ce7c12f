"""Tests of zsdeploy.runtime.postprocess against upstream PADing post-processing.

Golden fixtures (tests/fixtures/postproc_*.npz, built by tests/fixtures/make_postproc_fixtures.py) hold
upstream's inputs and outputs; torch is used here only as the reference for the resize chain.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.postprocess import (
    PostprocessConfig,
    bilinear_matrix,
    instance_inference,
    masks_to_output,
    panoptic_inference,
    postprocess,
    resize_bilinear,
    semantic_inference,
)

from helpers import COCO_PANOPTIC_THINGS, check_instances, check_semseg, load_postproc_golden

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _torch_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return F.interpolate(torch.from_numpy(x)[None], size=size, mode="bilinear", align_corners=False)[0].numpy()


def _torch_upstream_semseg(
    class_logits: np.ndarray, mask_logits: np.ndarray, padded_hw, image_hw, output_hw, before_inference: bool
) -> np.ndarray:
    """Upstream's order with torch ops: upsample to padded, (crop+resize), sigmoid, einsum, (crop+resize)."""
    ih, iw = image_hw

    def crop_resize(r: torch.Tensor) -> torch.Tensor:  # detectron2 sem_seg_postprocess
        return F.interpolate(r[None, :, :ih, :iw], size=output_hw, mode="bilinear", align_corners=False)[0]

    m = F.interpolate(torch.from_numpy(mask_logits)[None], size=padded_hw, mode="bilinear", align_corners=False)[0]
    if before_inference:
        m = crop_resize(m)
    cls = torch.softmax(torch.from_numpy(class_logits), dim=-1)[:, :-1]
    sem = torch.einsum("qc,qhw->chw", cls, m.sigmoid())
    if not before_inference:
        sem = crop_resize(sem)
    return sem.numpy()


# ----------------------------------------------------------------------------------------------------------
# resize
# ----------------------------------------------------------------------------------------------------------

RESIZE_CASES = [
    ((3, 7, 9), (20, 33)),  # up, non-square
    ((2, 50, 40), (13, 17)),  # down
    ((2, 9, 5), (4, 12)),  # down in H, up in W
    ((5, 30, 40), (30, 41)),  # one axis unchanged
    ((1, 1, 5), (4, 3)),  # single source row
    ((2, 8, 8), (8, 8)),  # same size
    ((2, 120, 160), (300, 380)),  # golden case's output ratio
    ((1, 61, 1000), (1000, 61)),  # strong up and down
]


@pytest.mark.parametrize("shape,size", RESIZE_CASES)
def test_resize_bilinear_matches_torch(shape, size):
    x = np.random.default_rng(sum(shape) + sum(size)).standard_normal(shape).astype(np.float32)
    out = resize_bilinear(x, size)
    assert out.dtype == np.float32 and out.shape == shape[:-2] + size
    np.testing.assert_allclose(out, _torch_resize(x, size), rtol=0, atol=1e-5)


def test_resize_bilinear_2d_and_4d_inputs():
    x = np.random.default_rng(0).standard_normal((2, 3, 11, 13)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x), size=(7, 29), mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(resize_bilinear(x, (7, 29)), ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(resize_bilinear(x[0, 0], (7, 29)), ref[0, 0], rtol=0, atol=1e-5)


def test_bilinear_matrix_weights_bit_identical_to_torch():
    # Probing torch with basis vectors yields its interpolation weights exactly; ours must be the same bits
    # (this pins the fused multiply-add of the source coordinate, which plain float32 arithmetic misses).
    rng = np.random.default_rng(1)
    pairs = [(333, 1000), (200, 801), (40, 41), (7, 20), (100, 37), (1, 4), (800, 1333), (1344, 1333)]
    pairs += [tuple(int(v) for v in rng.integers(1, 700, 2)) for _ in range(40)]
    for n_in, n_out in pairs:
        basis = torch.eye(n_in)[:, None, None, :]
        ref = F.interpolate(basis, size=(1, n_out), mode="bilinear", align_corners=False)[:, 0, 0, :].numpy().T
        np.testing.assert_array_equal(bilinear_matrix(n_in, n_out).astype(np.float32), ref, err_msg=f"{n_in}->{n_out}")


@pytest.mark.parametrize(
    "in_hw,padded_hw,image_hw,output_hw",
    [
        ((8, 10), (32, 40), (30, 37), (45, 50)),  # upscale to output
        ((8, 10), (32, 40), (25, 40), (13, 21)),  # downscale to output
        ((8, 8), (32, 32), (32, 27), (32, 27)),  # output == image: no final resize
        ((16, 24), (64, 96), (64, 96), (64, 96)),  # no padding at all
    ],
)
def test_masks_to_output_matches_upstream_chain(in_hw, padded_hw, image_hw, output_hw):
    m = (np.random.default_rng(3).standard_normal((5, *in_hw)) * 4).astype(np.float32)
    ih, iw = image_hw
    up = F.interpolate(torch.from_numpy(m)[None], size=padded_hw, mode="bilinear", align_corners=False)
    ref = F.interpolate(up[:, :, :ih, :iw], size=output_hw, mode="bilinear", align_corners=False)[0].numpy()
    out = masks_to_output(m, padded_hw, image_hw, output_hw)
    assert out.shape == (5, *output_hw) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)


def test_masks_to_output_rejects_image_larger_than_padding():
    with pytest.raises(ValueError, match="padded"):
        masks_to_output(np.zeros((1, 4, 4), np.float32), (16, 16), (17, 16), (10, 10))


def test_runtime_module_does_not_import_torch():
    code = "import sys; sys.modules['torch'] = None; import zsdeploy.runtime.postprocess as p; print('ok')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


# ----------------------------------------------------------------------------------------------------------
# golden cases (upstream outputs)
# ----------------------------------------------------------------------------------------------------------


def test_golden_semantic():
    g = load_postproc_golden("semantic")
    sem = semantic_inference(g["class_logits"], g["mask_logits"])
    assert sem.shape == (171, 80, 112) and sem.dtype == np.float32
    check_semseg(sem, g)


def test_golden_panoptic_case_semseg():
    g = load_postproc_golden("panoptic")
    sem = semantic_inference(g["class_logits"], g["mask_logits"])
    assert sem.shape == (133, 120, 160)
    check_semseg(sem, g)


def test_golden_panoptic():
    g = load_postproc_golden("panoptic")
    obj_thr, overlap_thr = g["thresholds"]
    seg, info = panoptic_inference(
        g["class_logits"],
        g["mask_logits"],
        thing_ids=set(COCO_PANOPTIC_THINGS),
        object_mask_threshold=float(obj_thr),
        overlap_threshold=float(overlap_thr),
    )
    assert seg.dtype == np.int32
    np.testing.assert_array_equal(seg, g["panoptic_seg"])
    assert info == json.loads(str(g["segments_info"]))
    assert len(info) == 9  # the case is not degenerate: things and stuff, several segments


def test_golden_panoptic_thing_ids_as_bool_mask():
    g = load_postproc_golden("panoptic")
    thing_mask = np.zeros(133, dtype=bool)
    thing_mask[list(COCO_PANOPTIC_THINGS)] = True
    seg, info = panoptic_inference(g["class_logits"], g["mask_logits"], thing_ids=thing_mask)
    np.testing.assert_array_equal(seg, g["panoptic_seg"])
    assert info == json.loads(str(g["segments_info"]))


def test_golden_panoptic_case_instances_keep_things_only():
    g = load_postproc_golden("panoptic")
    inst = instance_inference(
        g["class_logits"], g["mask_logits"], num_classes=133, topk=100, thing_ids=COCO_PANOPTIC_THINGS
    )
    assert len(inst["scores"]) == 57  # 100 top pairs, 43 of them stuff
    check_instances(inst, g)


def test_golden_instance():
    g = load_postproc_golden("instance")
    inst = instance_inference(g["class_logits"], g["mask_logits"], num_classes=65, topk=100)
    assert len(inst["scores"]) == 100
    check_instances(inst, g)


def test_golden_through_dispatcher():
    # padded = image = output size: the resize chain is the identity, so the golden outputs must come out.
    g = load_postproc_golden("panoptic")
    meta = PostprocessConfig.from_metadata(
        {
            "num_classes": "133",
            "thing_ids": json.dumps(list(COCO_PANOPTIC_THINGS)),
            "object_mask_threshold": "0.8",
            "overlap_threshold": "0.8",
            "detections_per_image": "100",
            "semantic_on": "true",
            "instance_on": "true",
            "panoptic_on": "true",
            "sem_seg_postprocess_before_inference": "false",
        }
    )
    hw = g["mask_logits"].shape[-2:]
    kw = dict(padded_hw=hw, image_hw=hw, output_hw=hw, meta=meta)
    check_semseg(postprocess(g["class_logits"], g["mask_logits"], task="semantic", **kw)["sem_seg"], g)
    pan = postprocess(g["class_logits"], g["mask_logits"], task="panoptic", **kw)
    np.testing.assert_array_equal(pan["panoptic_seg"], g["panoptic_seg"])
    assert pan["segments_info"] == json.loads(str(g["segments_info"]))
    check_instances(postprocess(g["class_logits"], g["mask_logits"], task="instance", **kw)["instances"], g)


def test_golden_semantic_through_semantic_only_dispatcher():
    g = load_postproc_golden("semantic")
    meta = PostprocessConfig.from_metadata({**META, "num_classes": "171", "thing_ids": "[]"})
    assert not meta.sem_seg_postprocess_before_inference  # the semantic-only path (einsum, then resize)
    hw = g["mask_logits"].shape[-2:]
    geo = dict(padded_hw=hw, image_hw=hw, output_hw=hw)
    out = postprocess(g["class_logits"], g["mask_logits"], task="semantic", meta=meta, **geo)
    check_semseg(out["sem_seg"], g)


# ----------------------------------------------------------------------------------------------------------
# hand-made panoptic cases
# ----------------------------------------------------------------------------------------------------------

K = 4  # classes 0, 1 are things, 2, 3 stuff; column 4 is void
THINGS = {0, 1}
SURE, UNSURE = 12.0, 0.0  # logit of the chosen class: prob ~0.99998 vs uniform 0.2


def _cls(*labels: int | None) -> np.ndarray:
    """Class logits [Q, K+1]; a label gives that class (or void=K) probability ~1, None a uniform row."""
    out = np.zeros((len(labels), K + 1), np.float32)
    for q, lab in enumerate(labels):
        if lab is not None:
            out[q, lab] = SURE
    return out


def _masks(h: int, w: int, *regions) -> np.ndarray:
    """Mask logits [Q, h, w]: +8 inside each (y0, y1, x0, x1) region, -8 outside."""
    out = np.full((len(regions), h, w), -8.0, np.float32)
    for q, (y0, y1, x0, x1) in enumerate(regions):
        out[q, y0:y1, x0:x1] = 8.0
    return out


def test_panoptic_empty_when_nothing_passes_threshold():
    masks = _masks(6, 7, (0, 6, 0, 7), (0, 3, 0, 3), (2, 5, 2, 5))
    # uniform rows (score 0.2), a confident void query and a class at exactly-not-enough confidence
    cls = _cls(None, K, None)
    cls[2, 1] = np.log(0.79 / 0.21 * 4)  # softmax prob of class 1 = 0.79 <= 0.8
    seg, info = panoptic_inference(cls, masks, thing_ids=THINGS)
    assert seg.shape == (6, 7) and seg.dtype == np.int32
    assert not seg.any() and info == []
    # the same masks with one confident query do produce a segment (the test above can fail)
    seg2, info2 = panoptic_inference(_cls(None, K, 1), masks, thing_ids=THINGS)
    assert info2 == [{"id": 1, "isthing": True, "category_id": 1}]
    assert (seg2 == 1).sum() == 9


def test_panoptic_object_threshold_is_a_parameter():
    cls = _cls(None)
    cls[0, 3] = np.log(0.79 / 0.21 * 4)  # prob 0.79
    masks = _masks(4, 4, (0, 4, 0, 4))
    assert panoptic_inference(cls, masks, thing_ids=THINGS)[1] == []
    seg, info = panoptic_inference(cls, masks, thing_ids=THINGS, object_mask_threshold=0.5)
    assert info == [{"id": 1, "isthing": False, "category_id": 3}] and (seg == 1).all()


def test_panoptic_stuff_merges_things_do_not():
    h, w = 4, 12
    cls = _cls(2, 0, 2, 0, 3)
    masks = _masks(h, w, (0, 4, 0, 3), (0, 4, 3, 5), (0, 4, 5, 8), (0, 4, 8, 10), (0, 2, 10, 12))
    seg, info = panoptic_inference(cls, masks, thing_ids=THINGS)
    assert info == [
        {"id": 1, "isthing": False, "category_id": 2},
        {"id": 2, "isthing": True, "category_id": 0},
        {"id": 3, "isthing": True, "category_id": 0},  # a second thing of class 0: its own id
        {"id": 4, "isthing": False, "category_id": 3},
    ]  # the second class-2 stuff query joined segment 1: no entry of its own
    expected = np.zeros((h, w), np.int32)
    expected[:, 0:3] = 1
    expected[:, 3:5] = 2
    expected[:, 5:8] = 1
    expected[:, 8:10] = 3
    expected[0:2, 10:12] = 4  # rows 2..3 of the last columns: no query's own mask -> void
    np.testing.assert_array_equal(seg, expected)
    # with classes 2 and 3 declared things, nothing merges
    seg2, info2 = panoptic_inference(cls, masks, thing_ids={0, 1, 2, 3})
    assert [s["id"] for s in info2] == [1, 2, 3, 4, 5] and all(s["isthing"] for s in info2)
    assert set(np.unique(seg2)) == {0, 1, 2, 3, 4, 5}


def test_panoptic_overlap_ratio_rejects_and_boundary_is_inclusive():
    # query 0 (thing) owns 10 pixels of row 0; query 1 (more confident) covers the first n of them.
    def run(n: int):
        cls = _cls(0, 1)
        cls[1, 1] = SURE + 1.0  # higher score: wins the shared pixels
        masks = _masks(2, 10, (0, 1, 0, 10), (0, 2, 0, n))
        return panoptic_inference(cls, masks, thing_ids=THINGS)

    seg, info = run(2)  # query 0 keeps 8 of 10 pixels: 0.8 >= 0.8, kept
    assert info == [{"id": 1, "isthing": True, "category_id": 0}, {"id": 2, "isthing": True, "category_id": 1}]
    assert (seg[0, 2:] == 1).all() and (seg[:, :2] == 2).all()
    seg, info = run(3)  # 7 of 10: 0.7 < 0.8, rejected; its pixels stay void, ids stay consecutive
    assert info == [{"id": 1, "isthing": True, "category_id": 1}]
    assert (seg[0, 3:] == 0).all() and (seg[:, :3] == 1).all()
    # a looser overlap threshold keeps it
    cls = _cls(0, 1)
    cls[1, 1] = SURE + 1.0
    masks = _masks(2, 10, (0, 1, 0, 10), (0, 2, 0, 3))
    _, info = panoptic_inference(cls, masks, thing_ids=THINGS, overlap_threshold=0.6)
    assert len(info) == 2


def test_panoptic_ties_go_to_first_query_and_weak_own_mask_is_void():
    # two identical confident queries: the first wins every pixel, the second has no area -> one segment
    cls = _cls(1, 1)
    masks = _masks(3, 3, (0, 3, 0, 3), (0, 3, 0, 3))
    seg, info = panoptic_inference(cls, masks, thing_ids=THINGS)
    assert info == [{"id": 1, "isthing": True, "category_id": 1}] and (seg == 1).all()
    # a query that wins pixels where its own sigmoid < 0.5 leaves them void
    masks = np.full((1, 3, 3), -0.5, np.float32)
    masks[0, 0, 0] = 3.0
    seg, info = panoptic_inference(_cls(2), masks, thing_ids=THINGS)
    assert info == [{"id": 1, "isthing": False, "category_id": 2}]
    assert seg[0, 0] == 1 and seg.sum() == 1


# ----------------------------------------------------------------------------------------------------------
# hand-made instance cases
# ----------------------------------------------------------------------------------------------------------


def test_instance_scores_boxes_order_and_empty_mask():
    rng = np.random.default_rng(5)
    class_logits = rng.standard_normal((3, 3)).astype(np.float32) * 2  # Q=3, K=2
    masks = np.full((3, 6, 8), -3.0, np.float32)
    masks[0, 2:5, 1:6] = rng.uniform(0.5, 4, (3, 5))  # box x0=1, y0=2, x1=6, y1=5
    masks[2, 0, 7] = 1.0  # single pixel in the corner: box (7, 0, 8, 1)
    # query 1: no positive logit -> empty mask, zero box, zero score
    inst = instance_inference(class_logits, masks, num_classes=2, topk=6)
    probs = np.exp(class_logits - class_logits.max(1, keepdims=True))
    probs = (probs / probs.sum(1, keepdims=True))[:, :2]
    order = np.argsort(-probs.ravel(), kind="stable")
    np.testing.assert_array_equal(inst["pred_classes"], order % 2)
    for i, flat in enumerate(order):
        q = flat // 2
        binary = masks[q] > 0
        np.testing.assert_array_equal(inst["pred_masks"][i], binary)
        sig = 1 / (1 + np.exp(-masks[q].astype(np.float64)))
        expected = probs.ravel()[flat] * (sig * binary).sum() / (binary.sum() + 1e-6)
        assert abs(inst["scores"][i] - expected) < 1e-6
        box = {0: [1, 2, 6, 5], 1: [0, 0, 0, 0], 2: [7, 0, 8, 1]}[q]
        np.testing.assert_array_equal(inst["pred_boxes"][i], np.array(box, np.float32))
    assert inst["pred_boxes"].dtype == np.float32


def test_instance_topk_and_thing_filter():
    rng = np.random.default_rng(6)
    class_logits = rng.standard_normal((5, 4)).astype(np.float32)  # Q=5, K=3
    masks = rng.standard_normal((5, 4, 4)).astype(np.float32)
    probs = np.exp(class_logits) / np.exp(class_logits).sum(1, keepdims=True)
    all_pairs = instance_inference(class_logits, masks, num_classes=3, topk=100)  # more than Q*K: all 15
    assert len(all_pairs["scores"]) == 15
    top4 = instance_inference(class_logits, masks, num_classes=3, topk=4)
    best4 = np.sort(probs[:, :3].ravel())[::-1][:4]
    flat = np.argsort(-probs[:, :3].ravel())[:4]
    np.testing.assert_array_equal(top4["pred_classes"], flat % 3)
    np.testing.assert_array_equal(top4["pred_masks"], masks[flat // 3] > 0)
    assert np.all(np.diff(best4) <= 0)
    things = instance_inference(class_logits, masks, num_classes=3, topk=6, thing_ids={0, 2})
    top6 = instance_inference(class_logits, masks, num_classes=3, topk=6)
    keep = np.isin(top6["pred_classes"], [0, 2])
    assert 0 < keep.sum() < 6  # the filter is exercised
    np.testing.assert_array_equal(things["pred_classes"], top6["pred_classes"][keep])
    np.testing.assert_array_equal(things["scores"], top6["scores"][keep])
    np.testing.assert_array_equal(things["pred_masks"], top6["pred_masks"][keep])
    with pytest.raises(ValueError, match="num_classes"):
        instance_inference(class_logits, masks, num_classes=4)


# ----------------------------------------------------------------------------------------------------------
# config and dispatcher
# ----------------------------------------------------------------------------------------------------------

META = {
    "num_classes": "4",
    "thing_ids": "[0, 1]",
    "object_mask_threshold": "0.8",
    "overlap_threshold": "0.7",
    "detections_per_image": "5",
    "semantic_on": "true",
    "instance_on": "false",
    "panoptic_on": "false",
    "sem_seg_postprocess_before_inference": "false",
}


def test_config_from_metadata():
    cfg = PostprocessConfig.from_metadata(META)
    assert cfg == PostprocessConfig(4, (0, 1), 0.8, 0.7, 5, True, False, False, False)
    # upstream: before_inference = config value OR panoptic OR instance
    assert PostprocessConfig.from_metadata({**META, "instance_on": "true"}).sem_seg_postprocess_before_inference
    assert PostprocessConfig.from_metadata({**META, "panoptic_on": "True"}).sem_seg_postprocess_before_inference
    with pytest.raises(ZsdError, match="detections_per_image"):
        PostprocessConfig.from_metadata({k: v for k, v in META.items() if k != "detections_per_image"})
    with pytest.raises(ZsdError, match="semantic_on"):
        PostprocessConfig.from_metadata({**META, "semantic_on": "yes"})
    with pytest.raises(ZsdError, match="'thing_ids' must be a JSON list of int"):
        PostprocessConfig.from_metadata({**META, "thing_ids": "0,1"})
    with pytest.raises(ZsdError, match=r"thing_ids outside \[0, 4\): \[4\]"):
        PostprocessConfig.from_metadata({**META, "thing_ids": "[0, 4]"})


def _random_outputs(q: int, k: int, hw: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    class_logits = (rng.standard_normal((q, k + 1)) * 3).astype(np.float32)
    mask_logits = (rng.standard_normal((q, *hw)) * 3).astype(np.float32)
    # some confident queries with their own blob so that panoptic has segments
    for j in range(q // 2):
        class_logits[j, j % 2] += 12
        y, x = rng.integers(0, hw[0] - 3), rng.integers(0, hw[1] - 3)
        mask_logits[j] -= 6
        mask_logits[j, y : y + 3, x : x + 3] += 14
    return class_logits, mask_logits


@pytest.mark.parametrize("q,k,output_hw", [(6, 10, (50, 45)), (10, 4, (50, 45)), (6, 4, (29, 38)), (10, 4, (20, 17))])
def test_dispatcher_semantic_only_matches_upstream_order(q, k, output_hw):
    # semantic-only config: sigmoid at padded size, einsum, then crop and resize (both branches of the
    # cheaper-order choice, and output == image size)
    meta = PostprocessConfig.from_metadata({**META, "num_classes": str(k), "thing_ids": "[0]"})
    cls, masks = _random_outputs(q, k, (8, 10), seed=q * k)
    geo = dict(padded_hw=(32, 40), image_hw=(29, 38), output_hw=output_hw)
    out = postprocess(cls, masks, task="semantic", meta=meta, **geo)
    ref = _torch_upstream_semseg(cls, masks, (32, 40), (29, 38), output_hw, before_inference=False)
    assert out.keys() == {"sem_seg"} and out["sem_seg"].shape == (k, *output_hw)
    np.testing.assert_allclose(out["sem_seg"], ref, rtol=0, atol=1e-5)
    if output_hw != (29, 38):
        # the order matters: resizing the logits before the sigmoid (panoptic configs) gives other values
        other = _torch_upstream_semseg(cls, masks, (32, 40), (29, 38), output_hw, before_inference=True)
        assert np.abs(other - ref).max() > 1e-3


def test_dispatcher_panoptic_config():
    meta = PostprocessConfig(
        num_classes=4, thing_ids=(0, 1), detections_per_image=5, semantic_on=True, instance_on=True, panoptic_on=True
    )
    cls, masks = _random_outputs(8, 4, (8, 10), seed=11)
    geo = dict(padded_hw=(32, 40), image_hw=(30, 33), output_hw=(45, 50))
    sem = postprocess(cls, masks, task="semantic", meta=meta, **geo)["sem_seg"]
    ref = _torch_upstream_semseg(cls, masks, (32, 40), (30, 33), (45, 50), before_inference=True)
    np.testing.assert_allclose(sem, ref, rtol=0, atol=1e-5)

    resized = masks_to_output(masks, (32, 40), (30, 33), (45, 50))
    pan = postprocess(cls, masks, task="panoptic", meta=meta, **geo)
    seg, info = panoptic_inference(cls, resized, thing_ids=(0, 1))
    assert pan.keys() == {"panoptic_seg", "segments_info"} and len(info) > 0
    np.testing.assert_array_equal(pan["panoptic_seg"], seg)
    assert pan["segments_info"] == info

    inst = postprocess(cls, masks, task="instance", meta=meta, **geo)["instances"]
    ref_inst = instance_inference(cls, resized, num_classes=4, topk=5, thing_ids=(0, 1))
    assert set(inst["pred_classes"].tolist()) <= {0, 1}  # panoptic on: things only
    for key in ("pred_masks", "scores", "pred_classes", "pred_boxes"):
        np.testing.assert_array_equal(inst[key], ref_inst[key])
    assert inst["pred_masks"].shape[-2:] == (45, 50)


def test_dispatcher_instance_only_config_keeps_all_classes():
    meta = PostprocessConfig(
        num_classes=4, thing_ids=(0,), detections_per_image=10, semantic_on=False, instance_on=True, panoptic_on=False
    )
    cls, masks = _random_outputs(8, 4, (8, 10), seed=12)
    geo = dict(padded_hw=(32, 40), image_hw=(32, 40), output_hw=(32, 40))
    inst = postprocess(cls, masks, task="instance", meta=meta, **geo)
    assert len(inst["instances"]["scores"]) == 10
    assert set(inst["instances"]["pred_classes"].tolist()) - {0}  # no thing filter without panoptic


def test_dispatcher_errors():
    meta = PostprocessConfig.from_metadata(META)
    cls, masks = _random_outputs(4, 4, (8, 10), seed=13)
    geo = dict(padded_hw=(32, 40), image_hw=(32, 40), output_hw=(32, 40), meta=meta)
    with pytest.raises(ZsdError, match="'panoptic' is not enabled"):
        postprocess(cls, masks, task="panoptic", **geo)
    with pytest.raises(ValueError, match="task must be one of"):
        postprocess(cls, masks, task="depth", **geo)
    with pytest.raises(ZsdError, match="5 classes"):
        postprocess(np.zeros((4, 6), np.float32), masks, task="semantic", **geo)
    bad = masks.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ZsdError, match="non-finite"):
        postprocess(cls, bad, task="semantic", **geo)
    with pytest.raises(ValueError, match="same Q"):
        postprocess(cls, masks[:3], task="semantic", **geo)
