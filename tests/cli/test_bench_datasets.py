"""zsd-bench datasets given by path: `folder:DIR` and `coco-panoptic:JSON,PNG_DIR,IMG_DIR`.

A tiny COCO-panoptic dataset is written here the way COCO ships it (RGB-encoded segment-id PNGs, COCO category
ids, `isthing` on the categories only, a crowd segment, void pixels), read back through the loader, and run
end to end through `run_accuracy` with an oracle backend whose outputs reproduce the ground truth exactly.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from zsdeploy.benchmarks.accuracy import run_accuracy
from zsdeploy.benchmarks.datasets import open_dataset, semantic_from_panoptic
from zsdeploy.runtime.backends.base import Backend
from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.artifacts.onnx_metadata import ModelInfo

# COCO panoptic category id -> (contiguous id of the 133-class model, isthing); COCO ids are not contiguous.
CATS = {1: (0, True), 3: (2, True), 187: (119, False), 193: (125, False)}  # person, car, sky, grass
H, W = 128, 160


def _rgb_ids(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, (ids // 256) % 256, ids // 65536], -1).astype(np.uint8)


def _scenes() -> list[tuple[np.ndarray, list[dict]]]:
    """Two id maps of full-width bands on 4-row boundaries (stride-4 mask logits, bilinearly upsampled,
    reproduce them exactly), with ids that use all three PNG channels. Areas: image 0: sky 7040 (medium),
    person 640 (small), grass 10240 (large), car 1280 (medium), a crowd band 640, a void band 640; image 1:
    sky 14720 (large), person 640 (small), grass 4480 (medium), car 640 (small)."""
    sky, grass, person, car, crowd = 5_000_001, 6_000_002, 70_003, 3_290_342, 400_005
    a = np.full((H, W), grass, np.int64)
    a[:48] = sky
    a[8:12] = person
    a[64:72] = car
    a[104:108] = crowd
    a[108:112] = 0  # void
    segs_a = [{"id": sky, "category_id": 187, "iscrowd": 0}, {"id": grass, "category_id": 193, "iscrowd": 0},
              {"id": person, "category_id": 1, "iscrowd": 0}, {"id": car, "category_id": 3, "iscrowd": 0},
              {"id": crowd, "category_id": 1, "iscrowd": 1}]
    b = np.full((H, W), sky, np.int64)
    b[96:] = grass
    b[40:44] = person
    b[100:104] = car
    segs_b = [{"id": sky, "category_id": 187, "iscrowd": 0}, {"id": grass, "category_id": 193, "iscrowd": 0},
              {"id": person, "category_id": 1, "iscrowd": 0}, {"id": car, "category_id": 3, "iscrowd": 0}]
    return [(a, segs_a), (b, segs_b)]


def _image(ids: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (H, W, 3)) ^ (ids[..., None] % 251)).astype(np.uint8)


@pytest.fixture()
def coco_dir(tmp_path: Path) -> Path:
    (tmp_path / "panoptic").mkdir()
    (tmp_path / "images").mkdir()
    images, anns = [], []
    for i, (ids, segs) in enumerate(_scenes()):
        name = f"{i:012d}"
        Image.fromarray(_rgb_ids(ids)).save(tmp_path / "panoptic" / f"{name}.png")
        Image.fromarray(_image(ids, i)).save(tmp_path / "images" / f"{name}.png")  # lossless: exact comparison
        images.append({"id": 100 + i, "file_name": f"{name}.png", "height": H, "width": W})
        anns.append({"image_id": 100 + i, "file_name": f"{name}.png",
                     "segments_info": [dict(s, area=int((ids == s["id"]).sum())) for s in segs]})
    # Like COCO's panoptic_val2017.json: isthing on the categories, not on the segments.
    cats = [{"id": c, "name": f"c{c}", "isthing": int(t)} for c, (_, t) in CATS.items()]
    (tmp_path / "panoptic.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return tmp_path


def _spec(d: Path) -> str:
    return f"coco-panoptic:{d / 'panoptic.json'},{d / 'panoptic'},{d / 'images'}"


def test_coco_panoptic_ground_truth_is_read_exactly(coco_dir: Path) -> None:
    ds = open_dataset(_spec(coco_dir))
    assert (ds.kind, ds.has_gt, len(ds)) == ("coco-panoptic", True, 2)
    for i, (sample, (ids, segs)) in enumerate(zip(ds, _scenes())):
        assert sample.name == f"{i:012d}"
        assert np.array_equal(sample.image, _image(ids, i))
        assert np.array_equal(sample.panoptic, ids)  # ids up to 6_000_002 decoded from R + 256 G + 256^2 B
        assert [s["id"] for s in sample.segments] == [s["id"] for s in segs]
        for got, want in zip(sample.segments, segs):
            contiguous, thing = CATS[want["category_id"]]
            assert got["category_id"] == contiguous  # COCO id -> position in COCO's 133 categories
            assert got["isthing"] is thing  # from the category
            assert got["iscrowd"] == want["iscrowd"]
    first = next(iter(ds))
    sem = semantic_from_panoptic(first.panoptic, first.segments)
    assert sem[10, 10] == 0 and sem[70, 20] == 2 and sem[0, 0] == 119 and sem[127, 159] == 125
    assert (sem[104:112] == 255).all() and (sem != 255).sum() == H * W - 2 * 4 * W  # crowd and void ignored


def test_coco_panoptic_full_category_list_maps_like_detectron2(coco_dir: Path) -> None:
    # With all 133 COCO categories in the JSON the mapping is the same (position in ascending COCO id order).
    from zsdeploy.benchmarks.datasets import _coco_panoptic_ids, category_mapping

    ids = _coco_panoptic_ids()
    full, how = category_mapping([{"id": i} for i in ids])
    assert how == "COCO panoptic category ids" and full == {c: k for k, c in enumerate(sorted(ids))}
    assert full[1] == 0 and full[187] == 119 and full[200] == 132
    # Non-COCO ids: ascending order; our synthetic files (categories carry "coco_id"): ids kept.
    assert category_mapping([{"id": 500}, {"id": 12}])[0] == {12: 0, 500: 1}  # 12 and 500 are no COCO ids
    assert category_mapping([{"id": 119, "coco_id": 187}])[0] == {119: 119}


def test_coco_panoptic_bad_inputs_give_clear_errors(coco_dir: Path) -> None:
    d = coco_dir
    with pytest.raises(ZsdError, match="the panoptic PNG directory .*nope does not exist") as e:
        open_dataset(f"coco-panoptic:{d / 'panoptic.json'},{d / 'nope'},{d / 'images'}")
    assert "check the three paths" in (e.value.fix or "")
    with pytest.raises(ZsdError, match="expected three comma-separated paths"):
        open_dataset(f"coco-panoptic:{d / 'panoptic.json'},{d / 'panoptic'}")
    with pytest.raises(ZsdError, match="should be a directory"):  # JSON and PNG dir swapped
        open_dataset(f"coco-panoptic:{d / 'panoptic.json'},{d / 'panoptic.json'},{d / 'images'}")
    (d / "bad.json").write_text("{not json")
    with pytest.raises(ZsdError, match="is not JSON"):
        open_dataset(f"coco-panoptic:{d / 'bad.json'},{d / 'panoptic'},{d / 'images'}")
    doc = json.loads((d / "panoptic.json").read_text())
    (d / "empty.json").write_text(json.dumps(dict(doc, annotations=[])))
    with pytest.raises(ZsdError, match="has no annotations"):
        open_dataset(f"coco-panoptic:{d / 'empty.json'},{d / 'panoptic'},{d / 'images'}")
    # Errors inside a sample surface when it is loaded: unknown category, missing PNG, size mismatch, not RGB.
    doc["annotations"][0]["segments_info"][0]["category_id"] = 999
    (d / "cat.json").write_text(json.dumps(doc))
    with pytest.raises(ZsdError, match="has category 999, which is not in the JSON's categories"):
        next(iter(open_dataset(f"coco-panoptic:{d / 'cat.json'},{d / 'panoptic'},{d / 'images'}")))
    (d / "panoptic" / "000000000000.png").rename(d / "panoptic" / "moved.png")
    # A missing file is found when the dataset is opened, before any sample runs.
    with pytest.raises(ZsdError, match=r"1 of 2 panoptic PNGs named in the JSON are missing .*"
                                       r"\(e.g. 000000000000.png\)"):
        open_dataset(_spec(d))
    Image.fromarray(np.zeros((H // 2, W, 3), np.uint8)).save(d / "panoptic" / "000000000000.png")
    with pytest.raises(ZsdError, match="differ in size"):
        next(iter(open_dataset(_spec(d))))
    Image.fromarray(np.zeros((H, W), np.uint8)).save(d / "panoptic" / "000000000000.png")
    with pytest.raises(ZsdError, match="is not an RGB panoptic PNG"):
        next(iter(open_dataset(_spec(d))))


def test_folder_dataset(tmp_path: Path) -> None:
    imgs = {"b.png": _image(np.zeros((H, W), np.int64), 1), "a.png": _image(np.ones((H, W), np.int64), 2)}
    for n, a in imgs.items():
        Image.fromarray(a).save(tmp_path / n)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")
    ds = open_dataset(f"folder:{tmp_path}")
    assert (ds.kind, ds.has_gt, len(ds)) == ("folder", False, 2)
    samples = list(ds)
    assert [s.name for s in samples] == ["a", "b"]  # sorted, non-images and hidden files skipped
    assert all(s.panoptic is None and not s.has_gt for s in samples)
    assert np.array_equal(samples[0].image, imgs["a.png"]) and np.array_equal(samples[1].image, imgs["b.png"])
    with pytest.raises(ZsdError, match="is not a directory"):
        open_dataset(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(ZsdError, match="is not a directory"):
        open_dataset(f"folder:{tmp_path / 'a.png'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZsdError, match=r"--dataset folder:.*empty"):
        open_dataset(f"folder:{tmp_path / 'empty'}")


# ------------------------------------------------------------------------------ end to end with an oracle
@pytest.fixture(scope="module")
def pading_meta() -> dict[str, str]:
    """Metadata of a dynamic PADing panoptic export (built from the config only: no network, no weights)."""
    from zsdeploy.export import config
    from zsdeploy.export.onnx_export import ExportShape
    from zsdeploy.export.pading_export import BuiltModel, pading_metadata

    path = config.released_config("pading", "panoptic")
    cfg = config.load_config(path)
    built = BuiltModel(None, config.pading_spec(cfg), config.test_settings(cfg), "panoptic", path, "standin", "",
                       [], "golden")
    return pading_metadata(built, ExportShape(dynamic=True), opset=18, msda="gridsample").as_strings()


class Oracle(Backend):
    """Outputs that reproduce a known panoptic map: one query per (non-crowd) segment, class logit 20 on its
    class, mask logit +20 inside / -20 outside at stride 4; the other queries predict void."""

    def __init__(self, meta: dict[str, str], truth: list[tuple[np.ndarray, np.ndarray, list[dict]]],
                 name: str) -> None:
        self.info = ModelInfo.from_metadata(meta, name)
        self.name = name
        self.input_names, self.output_names = ("images",), ("class_logits", "mask_logits")
        self.truth = truth  # (image, panoptic, segments with contiguous category ids)

    def input_shape(self, name: str):
        return ("batch", 3, "height", "width")

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["images"][0]
        _, ph, pw = x.shape
        _, pan, segs = next(t for t in self.truth if np.array_equal(
            x[:, :t[0].shape[0], :t[0].shape[1]], t[0].transpose(2, 0, 1).astype(np.float32)))
        k = self.info.num_classes
        cls = np.zeros((100, k + 1), np.float32)
        cls[:, k] = 20.0  # void
        masks = np.full((100, ph // 4, pw // 4), -20.0, np.float32)
        grid = np.zeros((ph, pw), np.int64)
        grid[:pan.shape[0], :pan.shape[1]] = pan
        cells = grid[1::4, 1::4]
        for q, s in enumerate(x for x in segs if not x["iscrowd"]):
            cls[q, k], cls[q, s["category_id"]] = 0.0, 20.0
            masks[q][cells == s["id"]] = 20.0
        return {"class_logits": cls[None], "mask_logits": masks[None]}


def test_coco_panoptic_end_to_end_oracle_is_perfect(coco_dir: Path, pading_meta: dict[str, str]) -> None:
    ds = open_dataset(_spec(coco_dir))
    truth = [(s.image, s.panoptic, s.segments) for s in ds]
    report = run_accuracy(Oracle(pading_meta, truth, "oracle"), Oracle(pading_meta, truth, "oracle-ref"), ds,
                          short_edge=H)
    assert report["bucket_regions"] == "ground-truth segments" and report["resize"]["short_edge"] == H
    for side in ("reference", "backend"):
        g = report["vs_ground_truth"][side]
        # ground truth read correctly => the oracle is perfect against it in every bucket that has segments
        assert g["all"]["panoptic.pq"] == pytest.approx(100.0)
        assert g["all"]["semantic.pixel_agreement"] == 1.0
        assert g["all"]["instance.ap"] == pytest.approx(100.0) and g["all"]["instance.gt_instances"] == 4
        assert [g[b]["panoptic.segments"] for b in ("small", "medium", "large")] == [3, 3, 2]
        for b in ("small", "medium", "large"):
            assert g[b]["panoptic.pq"] == pytest.approx(100.0)
            assert g[b]["semantic.pixel_agreement"] == 1.0
    # pixels of each ground-truth bucket (crowd regions count for the raw-tensor/semantic comparison of the two
    # models): small = 3 bands + the crowd band of 640; large = grass of image 0 + sky of image 1
    vr = report["vs_reference"]
    assert (vr["small"]["pixels"], vr["large"]["pixels"]) == (4 * 640, 10240 + 14720)
    assert vr["all"]["panoptic.pq"] == pytest.approx(100.0) and vr["all"]["instance.ap"] == pytest.approx(100.0)


def test_folder_end_to_end_buckets_by_reference_segments(tmp_path: Path, coco_dir: Path,
                                                         pading_meta: dict[str, str]) -> None:
    truth = [(s.image, s.panoptic, s.segments) for s in open_dataset(_spec(coco_dir))]
    for i, (img, _, _) in enumerate(truth):
        Image.fromarray(img).save(tmp_path / f"img{i}.png")
    ds = open_dataset(f"folder:{tmp_path}")
    report = run_accuracy(Oracle(pading_meta, truth, "oracle"), Oracle(pading_meta, truth, "oracle-ref"), ds,
                          short_edge=H)
    assert "vs_ground_truth" not in report and report["bucket_regions"] == "reference panoptic segments"
    vr = report["vs_reference"]
    # the reference's segments are the ground truth's, minus crowd and void
    assert [vr[b]["panoptic.segments"] for b in ("small", "medium", "large")] == [3, 3, 2]
    assert vr["small"]["pixels"] == 3 * 640 and vr["large"]["pixels"] == 10240 + 14720
    assert all(vr[b]["panoptic.pq"] == pytest.approx(100.0) for b in ("small", "medium", "large", "all"))


# ------------------------------------------------------------------------------ COCO instances, semantic PNGs
def _coco_instances_dir(d: Path) -> Path:
    """Two images; image 1: a big dog (polygon) with a small person on top of it (compressed RLE), a crowd of
    persons (uncompressed RLE); image 2: one car. COCO instance category ids (dog 18, person 1, car 3)."""
    from pycocotools import mask as mask_utils

    (d / "images").mkdir(parents=True)
    for name, seed in (("a.jpg", 1), ("b.jpg", 2)):
        Image.fromarray(_image(np.zeros((H, W), np.int64), seed)).save(d / "images" / name, quality=95)
    small = np.zeros((H, W), np.uint8)
    small[40:50, 60:68] = 1  # 80 px inside the dog
    rle = mask_utils.encode(np.asfortranarray(small))
    rle["counts"] = rle["counts"].decode("ascii")
    crowd = np.zeros((H, W), np.uint8)
    crowd[100:120, 0:30] = 1
    flat = crowd.flatten(order="F")  # uncompressed RLE: run lengths of 0s and 1s in column-major order
    runs, cur, n = [], 0, 0
    for v in flat:
        if v == cur:
            n += 1
        else:
            runs.append(n)
            cur, n = v, 1
    runs.append(n)
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W},
                   {"id": 2, "file_name": "b.jpg", "height": H, "width": W},
                   {"id": 3, "file_name": "unannotated.jpg", "height": H, "width": W}],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 18, "iscrowd": 0,
             "segmentation": [[20.0, 20.0, 100.0, 20.0, 100.0, 80.0, 20.0, 80.0]]},
            {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": rle},
            {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 1,
             "segmentation": {"size": [H, W], "counts": runs}},
            {"id": 13, "image_id": 2, "category_id": 3, "iscrowd": 0,
             "segmentation": [[0.0, 0.0, 40.0, 0.0, 40.0, 30.0, 0.0, 30.0]]},
        ],
    }
    (d / "instances.json").write_text(json.dumps(doc))
    return d


def test_coco_instances_ground_truth(tmp_path: Path) -> None:
    d = _coco_instances_dir(tmp_path)
    ds = open_dataset(f"coco-instances:{d / 'instances.json'},{d / 'images'}")
    assert (ds.kind, ds.has_gt, len(ds)) == ("coco-instances", True, 2)  # the unannotated image is not a sample
    a, b = list(ds)
    by_id = {s["id"]: s for s in a.segments}
    # contiguous ids of the 133-class COCO model: person 0, car 2, dog 16; all things
    assert {s["id"]: s["category_id"] for s in a.segments} == {1: 16, 2: 0, 3: 0}
    assert all(s["isthing"] for s in a.segments) and by_id[3]["iscrowd"] == 1 and by_id[1]["iscrowd"] == 0
    # the small person painted over the dog keeps its 80 pixels; the dog's polygon covers the rest of its box
    assert (a.panoptic == 2).sum() == 80 and np.all(a.panoptic[40:50, 60:68] == 2)
    assert (a.panoptic == 3).sum() == 600 and np.all(a.panoptic[100:120, 0:30] == 3)
    dog = (a.panoptic == 1).sum()
    assert abs(dog + 80 - 81 * 61) <= 2 * (81 + 61)  # polygon rasterisation differs from the box only on its border
    assert [s["category_id"] for s in b.segments] == [2] and (b.panoptic == 1).sum() > 30 * 30
    with pytest.raises(ZsdError, match="expected 2 comma-separated paths"):
        open_dataset(f"coco-instances:{d / 'instances.json'}")
    with pytest.raises(ZsdError, match="should be a file"):
        open_dataset(f"coco-instances:{d / 'images'},{d / 'images'}")


@pytest.mark.parametrize("segmentation, message", [
    ({"size": [H, W], "counts": "garbage!!"}, "cannot be decoded"),
    ({"size": [H, W], "counts": [3, 100]}, f"summing to {H * W}"),
    ({"size": [9, 9], "counts": [81]}, f"its RLE size is [9, 9], the image is [{H}, {W}]"),
    ({"size": [H, W], "counts": 12}, "cannot be decoded"),
])
def test_coco_instances_malformed_rle_is_the_users_file(tmp_path: Path, segmentation, message) -> None:
    """Was: a garbage or impossible RLE reached pycocotools and zsd-bench exited 70 ("a bug") with its traceback."""
    d = _coco_instances_dir(tmp_path)
    doc = json.loads((d / "instances.json").read_text())
    doc["annotations"][1]["segmentation"] = segmentation
    (d / "instances.json").write_text(json.dumps(doc))
    ds = open_dataset(f"coco-instances:{d / 'instances.json'},{d / 'images'}")
    with pytest.raises(ZsdError, match=re.escape(message)) as e:
        list(ds)
    assert f"annotation {doc['annotations'][1]['id']} of a.jpg" in e.value.problem


def test_coco_instances_annotations_of_unknown_images_are_refused(tmp_path: Path) -> None:
    """Was: dropped without a word, so every metric changed and the run said PASS."""
    d = _coco_instances_dir(tmp_path)
    doc = json.loads((d / "instances.json").read_text())
    doc["annotations"].append({**doc["annotations"][0], "id": 99, "image_id": 42})
    (d / "instances.json").write_text(json.dumps(doc))
    with pytest.raises(ZsdError, match=r"1 of \d+ annotations refer to image ids that are not among the JSON's "
                                       r"images \(e.g. 42\)"):
        open_dataset(f"coco-instances:{d / 'instances.json'},{d / 'images'}")


def test_semantic_label_pngs(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    lab = np.full((H, W), 255, np.uint8)
    lab[:64] = 5
    lab[64:, :80] = 0
    lab[10:14, 10:14] = 170
    Image.fromarray(_image(np.zeros((H, W), np.int64), 3)).save(tmp_path / "img" / "x.jpg", quality=95)
    Image.fromarray(_image(np.zeros((H, W), np.int64), 4)).save(tmp_path / "img" / "no_label.jpg", quality=95)
    Image.fromarray(lab).save(tmp_path / "lab" / "x.png")
    ds = open_dataset(f"semantic:{tmp_path / 'img'},{tmp_path / 'lab'}")
    assert (ds.kind, ds.has_gt, len(ds)) == ("semantic", True, 1)
    (s,) = list(ds)
    assert sorted((g["id"], g["category_id"], g["isthing"]) for g in s.segments) == [
        (1, 0, False), (6, 5, False), (171, 170, False)]
    assert np.array_equal(semantic_from_panoptic(s.panoptic, s.segments), lab.astype(np.int64))
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "lab" / "x.png")
    with pytest.raises(ZsdError, match="has 3 channels"):
        next(iter(open_dataset(f"semantic:{tmp_path / 'img'},{tmp_path / 'lab'}")))
    Image.fromarray(np.zeros((H // 2, W), np.uint8)).save(tmp_path / "lab" / "x.png")
    with pytest.raises(ZsdError, match="differ in size"):
        next(iter(open_dataset(f"semantic:{tmp_path / 'img'},{tmp_path / 'lab'}")))
    with pytest.raises(ZsdError, match="no image in .* has a label PNG"):
        open_dataset(f"semantic:{tmp_path / 'img'},{tmp_path / 'img'}")


# ------------------------------------------------------------------------------------------------ zsd-bench CLI
def _bench(*args: str, env: dict | None = None, cwd: Path | None = None):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "zsdeploy.benchmarks.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})}, cwd=cwd, check=False)


def _break(doc: dict, how: str) -> dict:
    if how == "no_segments_info":
        del doc["annotations"][1]["segments_info"]
    elif how == "id_is_text":
        doc["annotations"][0]["segments_info"][2]["category_id"] = "person"
    elif how == "annotations_not_a_list":
        doc["annotations"] = {"0": doc["annotations"][0]}
    elif how == "top_level_list":
        return [doc]  # type: ignore[return-value]
    return doc


@pytest.mark.parametrize("how, match", [
    ("no_segments_info", "annotations[1] has no 'segments_info' field"),
    ("id_is_text", "segments_info[2].category_id is 'person', not an integer"),
    ("annotations_not_a_list", "the 'annotations' list is dict, not a list"),
    ("top_level_list", "no top-level object"),
    ("truncated", "is not JSON"),
    ("missing_image", "1 of 2 images named in the JSON are missing"),
])
def test_zsd_bench_malformed_dataset_is_a_user_error_not_a_regression(coco_dir: Path, tmp_path: Path, how, match):
    """Exit 2 (not 1, a regression) with the record and field named; checked before the model is even opened
    (the model file here is garbage: loading it first would give another error); no report is written."""
    js = coco_dir / "panoptic.json"
    if how == "truncated":
        js.write_text(js.read_text()[:200])
    elif how == "missing_image":
        (coco_dir / "images" / "000000000001.png").unlink()
    else:
        js.write_text(json.dumps(_break(json.loads(js.read_text()), how)))
    model = tmp_path / "m.onnx"
    model.write_bytes(b"garbage")
    out = tmp_path / "report"
    r = _bench("accuracy", "--model", str(model), "--dataset", _spec(coco_dir), "--output", str(out))
    assert r.returncode == 2, r.stderr
    [error] = [ln for ln in r.stderr.splitlines() if ln.startswith("zsd-bench: error: ")]
    assert match in error and "Fix:" in error and "Traceback" not in r.stderr
    assert not out.exists()


def test_zsd_bench_missing_optional_package_names_its_extra(tmp_path: Path) -> None:
    """pycocotools shadowed by an empty package of that name: `from pycocotools import mask` really fails."""
    d = _coco_instances_dir(tmp_path / "ds")
    fake = tmp_path / "shadow" / "pycocotools"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"garbage")
    r = _bench("accuracy", "--model", str(model), "--dataset", f"coco-instances:{d / 'instances.json'},{d / 'images'}",
               "--output", str(tmp_path / "out"), env={"PYTHONPATH": str(tmp_path / "shadow")})
    assert r.returncode == 2, r.stderr
    assert "pycocotools" in r.stderr and "pip install 'zsdeploy[bench]'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("content, match", [
    ('{"gate": {"speedup": {"onnxruntime/128x160/b1": "fast"}, "accuracy": {}}}', "are not numbers"),
    ('[1, 2]', "no 'gate' section"),
    ('{"gate": {"speedup": {}, "accuracy": {}}}', "no speed-up or accuracy values"),
])
def test_zsd_bench_check_malformed_reports_exit_2(tmp_path: Path, content, match) -> None:
    bad = tmp_path / "r.json"
    bad.write_text(content)
    r = _bench("check", "--baseline", str(bad), "--current", str(bad))
    assert r.returncode == 2, r.stdout + r.stderr
    assert match in r.stderr and "Traceback" not in r.stderr
