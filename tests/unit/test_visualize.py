"""Tests for zsdeploy.runtime.visualize.overlay."""

from __future__ import annotations

import numpy as np
import pytest

from zsdeploy.runtime.visualize import class_color, instance_color, overlay

NAMES = [f"class{i}" for i in range(133)]
PLAIN = {"contours": False, "labels": False, "boxes": False}


def _img(h: int = 40, w: int = 50) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _blend(img: np.ndarray, colour: tuple[int, int, int], alpha: float) -> np.ndarray:
    mixed = (1 - alpha) * img.astype(np.float32) + alpha * np.array(colour, np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _pan() -> tuple[np.ndarray, list[dict]]:
    pan = np.zeros((40, 50), np.int32)
    pan[5:15, 5:20] = 3  # thing, class 7
    pan[20:30, 5:20] = 4  # thing, class 7 (second instance)
    pan[0:40, 30:50] = 9  # stuff, class 119
    segs = [
        {"id": 3, "category_id": 7, "isthing": True},
        {"id": 4, "category_id": 7, "isthing": True},
        {"id": 9, "category_id": 119, "isthing": False},
    ]
    return pan, segs


def test_colours_deterministic_and_distinct() -> None:
    assert class_color(5) == class_color(5)
    assert all(0 <= v <= 255 for c in range(133) for v in class_color(c))
    assert len({class_color(c) for c in range(133)}) == 133
    assert instance_color(7, 3) == instance_color(7, 3) != instance_color(7, 4)
    assert np.abs(np.subtract(instance_color(7, 3), class_color(7))).max() <= 40
    # pinned values: a palette change is a visible change for users, make it deliberate
    assert class_color(0) == (242, 12, 12)


def test_panoptic_fill_exact_and_outside_unchanged() -> None:
    img = _img()
    before = img.copy()
    pan, segs = _pan()
    out = overlay(img, panoptic=pan, segments=segs, class_names=NAMES, alpha=0.4, **PLAIN)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.array_equal(img, before)  # input not modified
    void = pan == 0
    assert np.array_equal(out[void], img[void])
    for s in segs:
        m = pan == s["id"]
        col = instance_color(7, s["id"]) if s["isthing"] else class_color(119)
        assert np.array_equal(out[m], _blend(img[m], col, 0.4))
    assert instance_color(7, 3) != instance_color(7, 4)  # two instances of one class are told apart
    assert np.array_equal(out, overlay(img, panoptic=pan, segments=segs, class_names=NAMES, alpha=0.4, **PLAIN))


def test_alpha_extremes() -> None:
    img = _img()
    pan, segs = _pan()
    assert np.array_equal(overlay(img, panoptic=pan, segments=segs, class_names=NAMES, alpha=0.0, **PLAIN), img)
    full = overlay(img, panoptic=pan, segments=segs, class_names=NAMES, alpha=1.0, **PLAIN)
    assert np.all(full[pan == 9] == np.array(class_color(119), np.uint8))
    with pytest.raises(ValueError):
        overlay(img, panoptic=pan, segments=segs, class_names=NAMES, alpha=1.5)


def test_semantic_ignore_untouched_and_contours() -> None:
    img = _img()
    sem = np.full((40, 50), 255, np.uint8)
    sem[10:20, 10:30] = 4
    out = overlay(img, semantic=sem, class_names=NAMES, alpha=0.5, labels=False)
    assert np.array_equal(out[sem == 255], img[sem == 255])
    col = np.array(class_color(4), np.uint8)
    # outline of the rectangle in full colour, interior blended
    assert np.all(out[10, 10:30] == col) and np.all(out[19, 10:30] == col) and np.all(out[10:20, 10] == col)
    assert np.array_equal(out[11:19, 11:29], _blend(img[11:19, 11:29], class_color(4), 0.5))


def test_labels_draw_text() -> None:
    img = np.zeros((60, 120, 3), np.uint8)
    sem = np.zeros((60, 120), np.uint8)
    sem[:, :] = 2
    plain = overlay(img, semantic=sem, class_names=NAMES, contours=False, labels=False)
    lab = overlay(img, semantic=sem, class_names=NAMES, contours=False, labels=True)
    changed = np.any(lab != plain, axis=2)
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 30  # a text box was drawn ...
    assert abs(xs.mean() - 60) < 12 and abs(ys.mean() - 30) < 8  # ... centred on the region


def test_instances_boxes_scores_and_order() -> None:
    img = _img(64, 64)
    masks = np.zeros((2, 64, 64), bool)
    masks[0, 10:30, 10:30] = True
    masks[1, 20:40, 20:40] = True  # overlaps mask 0
    inst = {"masks": masks, "labels": np.array([1, 2]), "scores": np.array([0.9, 0.3])}
    out = overlay(img, instances=inst, class_names=NAMES, alpha=0.5, **PLAIN)
    outside = ~masks.any(0)
    assert np.array_equal(out[outside], img[outside])
    # higher score drawn last -> on top in the overlap
    assert np.array_equal(out[25, 25], _blend(img[25:26, 25], instance_color(1, 0), 0.5)[0])
    assert np.array_equal(out[35, 35], _blend(img[35:36, 35], instance_color(2, 1), 0.5)[0])
    # threshold drops the low-scoring instance entirely
    thr = overlay(img, instances=inst, class_names=NAMES, score_threshold=0.5, **PLAIN)
    assert np.array_equal(thr[35, 35], img[35, 35])
    # boxes (from masks when not given) are drawn outside the masks, in the instance colour
    boxed = overlay(img, instances={**inst, "scores": np.array([0.9, 0.8])}, class_names=NAMES, contours=False,
                    labels=False, boxes=True)  # fmt: skip
    assert np.all(boxed[10, 10:30] == np.array(instance_color(1, 0), np.uint8))
    # detectron2-style attribute names work too
    class D:
        pred_masks = masks
        pred_classes = np.array([1, 2])
        scores = np.array([0.9, 0.3])

    assert np.array_equal(overlay(img, instances=D(), class_names=NAMES, **PLAIN), out)


def test_explicit_boxes_and_labels_with_score() -> None:
    img = np.zeros((80, 120, 3), np.uint8)
    masks = np.zeros((1, 80, 120), bool)
    masks[0, 40:50, 40:50] = True
    inst = {"masks": masks, "labels": [3], "scores": [0.5], "boxes": [[30.0, 35.0, 90.0, 70.0]]}
    out = overlay(img, instances=inst, class_names=NAMES, contours=False, labels=False, boxes=True)
    col = np.array(instance_color(3, 0), np.uint8)
    assert np.all(out[35, 30:90] == col) and np.all(out[69, 30:90] == col) and np.all(out[35:70, 89] == col)
    with_label = overlay(img, instances=inst, class_names=NAMES, contours=False, labels=True, boxes=True)
    diff = np.any(with_label != out, axis=2)
    ys, _ = np.nonzero(diff)
    assert diff.sum() > 30 and ys.max() <= 36  # the "class3 50%" tag sits above the box top


def test_legend_widens_output() -> None:
    img = _img()
    pan, segs = _pan()
    out = overlay(img, panoptic=pan, segments=segs, class_names=NAMES, legend=True)
    assert out.shape[0] == 40 and out.shape[1] > 50 and out.dtype == np.uint8
    assert np.array_equal(out[:, :50], overlay(img, panoptic=pan, segments=segs, class_names=NAMES))
    assert (out[:, 50:] != 255).any()  # swatches/text drawn


def test_errors() -> None:
    img = _img()
    pan, segs = _pan()
    with pytest.raises(ValueError):
        overlay(img, panoptic=pan, class_names=NAMES)  # no segments
    with pytest.raises(ValueError):
        overlay(img, panoptic=pan, segments=segs, class_names=NAMES[:10])  # class 119 unknown
    with pytest.raises(ValueError):
        overlay(img, semantic=np.zeros((3, 3), np.uint8), class_names=NAMES)
    with pytest.raises(ValueError):
        overlay(img.astype(np.float32), class_names=NAMES)  # type: ignore[arg-type]
