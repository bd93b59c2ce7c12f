"""Tests for zsdeploy.runtime.scenes: determinism, size control, label consistency, dataset files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from zsdeploy.runtime.scenes import (
    COCO_PANOPTIC_COCO_IDS,
    COCO_PANOPTIC_NAMES,
    UNSEEN_PANOPTIC_CLASSES,
    Scene,
    area_bucket,
    generate_scene,
    sample_image,
    write_scenes,
)
from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.imageio import load_image, read_png, rgb_to_id

from helpers import REPO


@pytest.fixture(scope="module")
def scene() -> Scene:
    return generate_scene(11)


def _same(a: Scene, b: Scene) -> bool:
    return (
        np.array_equal(a.image, b.image)
        and np.array_equal(a.panoptic, b.panoptic)
        and np.array_equal(a.semantic, b.semantic)
        and np.array_equal(a.instance_masks, b.instance_masks)
        and a.segments == b.segments
    )


def test_deterministic_by_seed(scene: Scene) -> None:
    assert _same(scene, generate_scene(11))
    other = generate_scene(12)
    assert not np.array_equal(scene.image, other.image) and not np.array_equal(scene.panoptic, other.panoptic)


def test_types_and_shapes(scene: Scene) -> None:
    assert scene.image.dtype == np.uint8 and scene.image.shape == (512, 512, 3)
    assert scene.panoptic.dtype == np.int32 and scene.panoptic.shape == (512, 512)
    assert scene.semantic.dtype == np.uint8 and scene.semantic.shape == (512, 512)
    n = len(scene.things)
    assert scene.instance_masks.dtype == bool and scene.instance_masks.shape == (n, 512, 512)
    s = generate_scene(3, height=200, width=300, n_objects=10, size_range=(6, 20))
    assert s.image.shape == (200, 300, 3) and s.panoptic.shape == (200, 300)


@pytest.mark.parametrize("seed", [0, 1, 11])
def test_panoptic_consistent_with_segments(seed: int) -> None:
    sc = generate_scene(seed)
    ids = [s["id"] for s in sc.segments]
    assert len(ids) == len(set(ids)) and 0 not in ids
    assert set(np.unique(sc.panoptic).tolist()) == set(ids)  # every pixel labelled, no stale segment
    assert not np.any(sc.semantic == 255)
    thing_k = 0
    for s in sc.segments:
        m = sc.panoptic == s["id"]
        assert int(m.sum()) == s["area"] > 0
        ys, xs = np.nonzero(m)
        assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert np.all(sc.semantic[m] == s["category_id"])
        assert s["isthing"] == (s["category_id"] < 80) and s["iscrowd"] == 0
        if s["isthing"]:
            assert np.array_equal(sc.instance_masks[thing_k], m)
            assert s["area"] <= s["full_area"]
            thing_k += 1
    assert thing_k == sc.instance_masks.shape[0]
    # Stuff: one segment per class present; things: z strictly increasing (paint order)
    stuff = [s["category_id"] for s in sc.segments if not s["isthing"]]
    assert len(stuff) == len(set(stuff)) >= 2
    z = [s["z"] for s in sc.things]
    assert z == sorted(z) and len(set(z)) == len(z)


def test_occlusion_keeps_min_visible_fraction() -> None:
    for seed in range(3):
        sc = generate_scene(seed, n_objects=80, size_range=(10, 60), min_visible=0.6)
        assert len(sc.things) >= 40  # crowded, but most objects still find a place
        for s in sc.things:
            assert 0.6 * s["full_area"] <= s["area"] <= s["full_area"]
        assert any(s["area"] < s["full_area"] for s in sc.things)  # occlusion actually happens


def test_default_scene_places_most_objects(scene: Scene) -> None:
    assert len(scene.things) >= 36  # 40 requested
    shapes = {s["shape"] for s in scene.things}
    assert len(shapes) >= 4


@pytest.mark.parametrize(
    "size_range,bucket",
    [((6, 31), "small"), ((33, 95), "medium"), ((97, 150), "large")],
)
def test_size_range_controls_full_area(size_range: tuple[int, int], bucket: str) -> None:
    lo, hi = size_range
    sc = generate_scene(5, height=640, width=640, n_objects=25, size_range=size_range, min_visible=1.0)
    assert len(sc.things) >= 5
    for s in sc.things:
        assert lo * lo <= s["full_area"] <= hi * hi
        assert s["area"] == s["full_area"]  # min_visible=1.0: nothing is occluded
        assert area_bucket(s["area"]) == bucket


def test_size_mix_hits_all_buckets() -> None:
    counts: Counter[str] = Counter()
    for seed in range(3):
        sc = generate_scene(seed, n_objects=40, size_range=(6, 160))
        counts.update(area_bucket(s["area"]) for s in sc.things)
    assert counts["small"] > counts["medium"] > counts["large"] > 0  # log-uniform sizes favour small


def test_area_bucket_edges() -> None:
    assert area_bucket(0) == "small" and area_bucket(1023) == "small" and area_bucket(1024) == "medium"
    assert area_bucket(9215) == "medium" and area_bucket(9216) == "large"


def test_image_looks_plausible(scene: Scene) -> None:
    img = scene.image.astype(np.float32)
    assert img.std() > 20  # textured, not flat
    # stuff regions are visually distinct from each other (mean colours differ)
    means = [img[scene.panoptic == s["id"]].mean(0) for s in scene.segments if not s["isthing"] and s["area"] > 500]
    assert len(means) >= 2
    d = min(np.abs(a - b).max() for i, a in enumerate(means) for b in means[i + 1 :])
    assert d > 10
    # each stuff region is textured inside (not a flat fill)
    for s in scene.segments:
        if not s["isthing"] and s["area"] > 500:
            assert img[scene.panoptic == s["id"]].std(0).max() > 3


def test_class_table_matches_coco_panoptic() -> None:
    expect = {
        19: "cow", 23: "giraffe", 28: "suitcase", 29: "frisbee", 36: "skateboard", 51: "carrot", 76: "scissors",
        83: "cardboard", 97: "playingfield", 99: "river", 100: "road", 116: "tree-merged",
        119: "sky-other-merged", 125: "grass-merged",
    }  # fmt: skip
    assert tuple(sorted(expect)) == UNSEEN_PANOPTIC_CLASSES
    for k, v in expect.items():
        assert COCO_PANOPTIC_NAMES[k] == v
    assert COCO_PANOPTIC_NAMES[0] == "person" and COCO_PANOPTIC_NAMES[2] == "car"
    assert COCO_PANOPTIC_COCO_IDS[0] == 1 and COCO_PANOPTIC_COCO_IDS[119] == 187 and COCO_PANOPTIC_COCO_IDS[125] == 193
    assert set(COCO_PANOPTIC_COCO_IDS) == set(COCO_PANOPTIC_NAMES)


def test_class_table_matches_project_class_list() -> None:
    # configs/classes/coco_panoptic_133.json is the class list the exported PADing model carries.
    path = REPO / "configs" / "classes" / "coco_panoptic_133.json"
    names = json.loads(path.read_text())["names"]
    assert len(names) == 133
    for k, v in COCO_PANOPTIC_NAMES.items():
        assert names[k] == v, (k, v, names[k])


def test_class_selection_respected() -> None:
    sc = generate_scene(4, thing_classes=[19, 23], stuff_classes=[119, 125])
    assert {s["category_id"] for s in sc.things} <= {19, 23}
    assert {s["category_id"] for s in sc.segments if not s["isthing"]} <= {119, 125}
    assert {c["id"] for c in sc.categories} == {19, 23, 119, 125}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"thing_classes": [90]},
        {"stuff_classes": [5]},
        {"thing_classes": []},
        {"thing_classes": [1, 1]},
        {"size_range": (10, 5)},
        {"size_range": (6, 600)},
        {"height": 8},
        {"min_visible": 1.5},
    ],
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate_scene(0, **kwargs)


def test_write_scenes_dataset(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    js = write_scenes(out, 2, seed=7, height=160, width=192, n_objects=12, size_range=(6, 30))
    assert js == out / "panoptic.json"
    doc = json.loads(js.read_text())
    assert [im["file_name"] for im in doc["images"]] == ["000000.png", "000001.png"]
    assert doc["info"]["params"]["size_range"] == [6, 30]
    cats = {c["id"]: c for c in doc["categories"]}
    assert cats[19]["name"] == "cow" and cats[19]["isthing"] == 1 and cats[19]["coco_id"] == 21
    assert cats[119]["isthing"] == 0
    for im, ann in zip(doc["images"], doc["annotations"]):
        assert ann["image_id"] == im["id"] and (im["height"], im["width"]) == (160, 192)
        sc = generate_scene(im["seed"], height=160, width=192, n_objects=12, size_range=(6, 30))
        assert np.array_equal(read_png(out / "images" / im["file_name"]), sc.image)
        assert np.array_equal(rgb_to_id(read_png(out / "panoptic" / ann["file_name"])), sc.panoptic)
        assert np.array_equal(read_png(out / "semantic" / ann["file_name"]), sc.semantic)
        assert [s["id"] for s in ann["segments_info"]] == [s["id"] for s in sc.segments]
        assert all(s["isthing"] in (0, 1) for s in ann["segments_info"])
    assert doc["images"][0]["seed"] != doc["images"][1]["seed"]
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    # the same call reproduces the same files
    js2 = write_scenes(tmp_path / "ds2", 2, seed=7, height=160, width=192, n_objects=12, size_range=(6, 30))
    assert js2.read_text() == js.read_text()
    assert (tmp_path / "ds2" / "images" / "000001.png").read_bytes() == (out / "images" / "000001.png").read_bytes()


def test_sample_image(tmp_path: Path) -> None:
    p = sample_image(tmp_path / "demo.png", seed=3, height=128, width=160)
    li = load_image(p)
    assert li.rgb.shape == (128, 160, 3) and not li.converted
    assert np.array_equal(li.rgb, generate_scene(3, height=128, width=160).image)
    with pytest.raises(ZsdError):
        sample_image(tmp_path / "demo.jpg")
