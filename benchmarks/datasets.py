"""Benchmark datasets: generated small-target scenes, a folder of images, COCO-panoptic files given by path.

`--dataset` specs:
    synthetic[:N]                      N generated scenes (default 8), exact panoptic ground truth
    folder:DIR                         every image under DIR, no ground truth
    coco-panoptic:JSON,PNG_DIR,IMG_DIR COCO panoptic annotations (RGB id PNGs) and their images
    coco-instances:JSON,IMG_DIR        COCO instance annotations (polygons or RLE, decoded with pycocotools)
    semantic:IMG_DIR,LABEL_DIR         semantic label PNGs (contiguous class ids, 255 = ignore), matched by file stem
Nothing is downloaded. Every kind becomes the same Sample: a panoptic id map + segments (instances are painted
largest first, so a small object overlapped by a large one keeps its pixels; a semantic class is one stuff segment).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from zsdeploy.runtime.errors import ZsdError


@dataclass
class Sample:
    name: str
    image: np.ndarray  # uint8 (H, W, 3) RGB
    panoptic: np.ndarray | None = None  # int (H, W) segment ids, 0 = void
    segments: list[dict[str, Any]] = field(default_factory=list)  # id, category_id (contiguous), isthing, iscrowd

    @property
    def has_gt(self) -> bool:
        return self.panoptic is not None


@dataclass
class Dataset:
    spec: str
    kind: str
    samples: list[Any]  # lazily loaded: callables returning Sample
    has_gt: bool

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        for make in self.samples:
            yield make()


def _parse_hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ZsdError(f"size {text!r} is not HxW.", "write sizes like 128x160.") from None
    return h, w


def open_dataset(spec: str, *, scene_size: str = "256x320", seed: int = 0,
                 size_range: tuple[float, float] = (6, 60), n_objects: int = 30) -> Dataset:
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        from zsdeploy.runtime.scenes import scene_seed, generate_scene

        try:
            n = int(arg) if arg else 8
        except ValueError:
            raise ZsdError(f"--dataset {spec}: {arg!r} is not a number of scenes.", "use e.g. synthetic:8.") from None
        if n < 1:
            raise ZsdError(f"--dataset {spec}: need at least one scene.", "use e.g. synthetic:8.")
        h, w = _parse_hw(scene_size)

        def make(i: int) -> Sample:
            s = generate_scene(scene_seed(seed, i), h, w, n_objects=n_objects, size_range=size_range)
            segs = [{"id": g["id"], "category_id": g["category_id"], "isthing": bool(g["isthing"]), "iscrowd": 0}
                    for g in s.segments]
            return Sample(f"scene_{i:04d}", s.image, s.panoptic, segs)

        return Dataset(spec, "synthetic", [lambda i=i: make(i) for i in range(n)], True)
    if kind == "folder":
        from zsdeploy.runtime.imageio import list_images, load_image

        if not arg or not Path(arg).is_dir():
            raise ZsdError(f"--dataset {spec}: {arg or '(empty)'} is not a directory.",
                           "use folder:DIR with a directory of images.")
        try:
            paths = list_images(arg)
        except ZsdError as e:
            raise ZsdError(f"--dataset {spec}: {e.problem}", e.fix) from None
        if not paths:
            raise ZsdError(f"--dataset {spec}: no images found.", "point folder: at a directory of images.")
        return Dataset(spec, "folder", [lambda p=p: Sample(p.stem, load_image(p).rgb) for p in paths], False)
    if kind == "coco-panoptic":
        return _coco_panoptic(spec, arg)
    if kind == "coco-instances":
        return _coco_instances(spec, arg)
    if kind == "semantic":
        return _semantic(spec, arg)
    raise ZsdError(f"unknown --dataset {spec!r}.",
                   "use synthetic[:N], folder:DIR, coco-panoptic:JSON,PNG_DIR,IMG_DIR, coco-instances:JSON,IMG_DIR "
                   "or semantic:IMG_DIR,LABEL_DIR.")


def _paths(spec: str, arg: str, what: tuple[tuple[str, bool], ...], usage: str) -> list[Path]:
    """Split and check the comma-separated paths of a dataset spec: (description, is_directory) per path."""
    parts = arg.split(",")
    if len(parts) != len(what) or not all(parts):
        raise ZsdError(f"--dataset {spec}: expected {len(what)} comma-separated paths.", f"use {usage}.")
    paths = [Path(p) for p in parts]
    for p, (desc, is_dir) in zip(paths, what):
        if not p.exists():
            raise ZsdError(f"--dataset {spec}: the {desc} {p} does not exist.", f"check the paths ({usage}).")
        if p.is_dir() != is_dir:
            raise ZsdError(f"--dataset {spec}: {p} should be a {'directory' if is_dir else 'file'}.",
                           f"the order is {usage}.")
    return paths


def _read_json(path: Path, what: str) -> dict[str, Any]:
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZsdError(f"{path} is not JSON ({e}).", f"pass a {what}.") from None
    except OSError as e:
        raise ZsdError(f"{path} cannot be read ({e.strerror or e}).", "check the path and its permissions.") from None
    if not isinstance(doc, dict):
        raise ZsdError(f"{path} is not a {what} (no top-level object).", f"pass a {what}.")
    return doc


_TYPE_NAMES = {int: "an integer", str: "a string", list: "a list", dict: "an object", float: "a number"}


def _records(doc: dict[str, Any], path: Path, key: str, fields: dict[str, tuple[type, ...]], what: str,
             *, required: bool = True) -> list[dict[str, Any]]:
    """doc[key] checked up front as a list of objects with `fields` of the given JSON types, so that a malformed
    file is refused at once with the record and field named (not as a KeyError minutes into a benchmark)."""
    recs = doc.get(key)
    if recs is None and not required:
        return []
    fix = f"pass a well-formed {what}."
    if not isinstance(recs, list):
        got = "missing" if recs is None else f"{type(recs).__name__}, not a list"
        raise ZsdError(f"{path}: the '{key}' list is {got}.", fix)
    for i, r in enumerate(recs):
        if not isinstance(r, dict):
            raise ZsdError(f"{path}: {key}[{i}] is {type(r).__name__}, not an object.", fix)
        for f, types in fields.items():
            if f not in r:
                raise ZsdError(f"{path}: {key}[{i}] has no '{f}' field.", fix)
            v = r[f]
            if isinstance(v, bool) or not isinstance(v, types):
                want = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
                raise ZsdError(f"{path}: {key}[{i}].{f} is {_json_repr(v)}, not {want}.", fix)
    return recs


def _json_repr(v: Any, limit: int = 40) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_files_exist(directory: Path, names: list[str], what: str, spec: str) -> None:
    """Every file the annotations name must be there before the run starts (not fail after N images)."""
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise ZsdError(f"--dataset {spec}: {len(missing)} of {len(names)} {what} named in the JSON are missing from "
                       f"{directory} (e.g. {', '.join(missing[:3])}).",
                       "check that the directory belongs to the JSON (same split), or remove those entries.")


def _import_pycocotools():
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise ZsdError("coco-instances datasets need the Python package pycocotools (to decode polygons and RLE), "
                       "which is not installed.", "pip install 'zsdeploy[bench]' (or pip install pycocotools).") \
            from None
    return mask_utils


def _coco_instances(spec: str, arg: str) -> Dataset:
    from zsdeploy.runtime.imageio import load_image

    usage = "coco-instances:instances.json,IMAGE_DIR"
    js, img_dir = _paths(spec, arg, (("instances JSON", False), ("image directory", True)), usage)
    mask_utils = _import_pycocotools()
    what = "COCO instances JSON (instances_val2017.json)"
    doc = _read_json(js, what)
    cats = _records(doc, js, "categories", {"id": (int,)}, what)
    anns = _records(doc, js, "annotations", {"image_id": (int, str), "category_id": (int,),
                                             "segmentation": (list, dict)}, what)
    all_images = _records(doc, js, "images", {"id": (int, str), "file_name": (str,)}, what)
    for i, a in enumerate(anns):
        seg = a["segmentation"]
        if isinstance(seg, dict) and not ({"counts", "size"} <= set(seg)):
            raise ZsdError(f"{js}: annotations[{i}].segmentation is an object without 'counts' and 'size' (RLE).",
                           f"pass a well-formed {what}.")
    to_contig, _ = category_mapping(cats)
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    image_ids = {im["id"] for im in all_images}
    orphans = [a for a in anns if a["image_id"] not in image_ids]
    if orphans:  # dropping them would change every metric without a word
        shown = ", ".join(repr(i) for i in sorted({a["image_id"] for a in orphans}, key=str)[:5])
        raise ZsdError(f"{js}: {len(orphans)} of {len(anns)} annotations refer to image ids that are not among the "
                       f"JSON's images (e.g. {shown}).",
                       "pass the complete JSON of the split (its images list every annotated image), or remove those "
                       "annotations yourself if leaving them out is intended.")
    images = [im for im in all_images if im["id"] in by_image]
    if not images:
        raise ZsdError(f"{js} has no annotated images.", "pass a COCO instances JSON with annotations.")
    _check_files_exist(img_dir, [im["file_name"] for im in images], "images", spec)

    def make(im: dict[str, Any]) -> Sample:
        rgb = load_image(img_dir / im["file_name"]).rgb
        h, w = rgb.shape[:2]
        if (im.get("height", h), im.get("width", w)) != (h, w):
            raise ZsdError(f"{im['file_name']}: the JSON says {im.get('height')}x{im.get('width')} but the image is "
                           f"{h}x{w}.", "check that IMAGE_DIR belongs to the JSON's split.")
        pan = np.zeros((h, w), np.int64)
        segs = []
        anns = by_image[im["id"]]
        decoded = []
        for k, a in enumerate(anns):
            cid = int(a["category_id"])
            if cid not in to_contig:
                raise ZsdError(f"{js}: annotation {a.get('id', k)} has category {cid}, which is not in the JSON's "
                               "categories.", "pass the JSON the annotations belong to.")
            where = f"{js}: annotation {a.get('id', k)} of {im['file_name']}"
            decoded.append((_decode_segmentation(mask_utils, a["segmentation"], h, w, where), k, a, cid))
        for m, k, a, cid in sorted(decoded, key=lambda t: -int(t[0].sum())):  # largest first
            pan[m] = k + 1
            segs.append({"id": k + 1, "category_id": to_contig[cid], "isthing": True,
                         "iscrowd": int(a.get("iscrowd", 0))})
        present = set(np.unique(pan).tolist())
        return Sample(Path(im["file_name"]).stem, rgb, pan, [g for g in segs if g["id"] in present])

    return Dataset(spec, "coco-instances", [lambda im=im: make(im) for im in images], True)


def _decode_segmentation(mask_utils: Any, seg: Any, h: int, w: int, where: str) -> np.ndarray:
    """One COCO segmentation (polygons, RLE with compressed or list counts) as a (h, w) bool mask; a malformed or
    impossible one (wrong size, counts that do not cover the image, garbage) is the user's file, named, not a bug."""
    fix = "fix or remove that annotation (COCO RLE: size [height, width] of the image; counts cover every pixel)."
    try:
        if isinstance(seg, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        else:
            if list(seg.get("size", [])) != [h, w]:
                raise ZsdError(f"{where}: its RLE size is {seg.get('size')!r}, the image is [{h}, {w}].", fix)
            counts = seg["counts"]
            if isinstance(counts, list):  # uncompressed RLE
                if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != h * w:
                    raise ZsdError(f"{where}: its RLE counts must be non-negative integers summing to {h * w} "
                                   f"(height x width).", fix)
                rle = mask_utils.frPyObjects(seg, h, w)
            else:
                rle = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
        mask = mask_utils.decode(rle)
    except ZsdError:
        raise
    except Exception as e:  # noqa: BLE001 (pycocotools raises ValueError, TypeError, OverflowError, ...)
        raise ZsdError(f"{where}: its segmentation cannot be decoded ({type(e).__name__}: {str(e)[:120]}).",
                       fix) from None
    if mask.shape[:2] != (h, w) or mask.max(initial=0) > 1:
        raise ZsdError(f"{where}: its RLE does not decode to a {h}x{w} binary mask (counts that do not add up).", fix)
    return mask.reshape(h, w).astype(bool)


def _semantic(spec: str, arg: str, ignore: int = 255) -> Dataset:
    from zsdeploy.runtime.imageio import list_images, load_image, read_png

    usage = "semantic:IMAGE_DIR,LABEL_DIR"
    img_dir, label_dir = _paths(spec, arg, (("image directory", True), ("label directory", True)), usage)
    labels = {p.stem: p for p in sorted(label_dir.iterdir()) if p.suffix.lower() == ".png"}
    pairs = [(img, labels[img.stem]) for img in list_images(str(img_dir)) if img.stem in labels]
    if not pairs:
        raise ZsdError(f"--dataset {spec}: no image in {img_dir} has a label PNG of the same name in {label_dir}.",
                       "label files are <image stem>.png with one class id per pixel.")

    def make(img_path: Path, label_path: Path) -> Sample:
        rgb = load_image(img_path).rgb
        lab = read_png(label_path)
        if lab.ndim != 2:
            raise ZsdError(f"{label_path} has {lab.shape[2]} channels; a semantic label PNG has one (class ids).",
                           "pass single-channel label PNGs (e.g. detectron2's *_detectron2 label maps).")
        if lab.shape != rgb.shape[:2]:
            raise ZsdError(f"{label_path}: labels {lab.shape} and image {rgb.shape[:2]} differ in size.",
                           "check that LABEL_DIR belongs to IMAGE_DIR.")
        pan = np.zeros(lab.shape, np.int64)
        segs = []
        for c in np.unique(lab):
            if int(c) == ignore:
                continue
            pan[lab == c] = int(c) + 1
            segs.append({"id": int(c) + 1, "category_id": int(c), "isthing": False, "iscrowd": 0})
        return Sample(img_path.stem, rgb, pan, segs)

    return Dataset(spec, "semantic", [lambda a=a, b=b: make(a, b) for a, b in pairs], True)


# COCO panoptic category ids of the 133 classes, in the contiguous order of the PADing panoptic model.
COCO_PANOPTIC_CLASS_LIST = Path(__file__).resolve().parent.parent / "configs" / "classes" / "coco_panoptic_133.json"


def _coco_panoptic_ids() -> list[int]:
    import json

    path = COCO_PANOPTIC_CLASS_LIST
    if not path.is_file():  # installed (non-editable): configs ship as the zsdeploy.configs package
        import zsdeploy.configs as configs_pkg

        path = Path(configs_pkg.__file__).resolve().parent / "classes" / "coco_panoptic_133.json"
    return [int(i) for i in json.loads(path.read_text())["dataset_ids"]]


def category_mapping(categories: list[dict[str, Any]]) -> tuple[dict[int, int], str]:
    """JSON category id -> contiguous class id of the model, and how it was decided.

    * our own synthetic datasets (every category carries "coco_id") already use contiguous ids;
    * COCO panoptic ids (all of them among COCO's 133): their position in COCO's category list — what detectron2
      does for the full file, and still right for a JSON that lists only the categories it uses;
    * other ids: position in ascending id order (detectron2's rule for a dataset registered from its own JSON).
    """
    ids = [int(c["id"]) for c in categories]
    if categories and all("coco_id" in c for c in categories):
        return {i: i for i in ids}, "contiguous ids (zsdeploy synthetic dataset)"
    coco = _coco_panoptic_ids()
    if ids and set(ids) <= set(coco):
        return {i: coco.index(i) for i in ids}, "COCO panoptic category ids"
    return {i: k for k, i in enumerate(sorted(ids))}, "category ids in ascending order"


def _coco_panoptic(spec: str, arg: str) -> Dataset:
    from zsdeploy.runtime.imageio import load_image, read_png, rgb_to_id

    parts = arg.split(",")
    if len(parts) != 3 or not all(parts):
        raise ZsdError(f"--dataset {spec}: expected three comma-separated paths.",
                       "use coco-panoptic:panoptic.json,PANOPTIC_PNG_DIR,IMAGE_DIR.")
    js, png_dir, img_dir = (Path(p) for p in parts)
    for p, what in ((js, "panoptic JSON"), (png_dir, "panoptic PNG directory"), (img_dir, "image directory")):
        if not p.exists():
            raise ZsdError(f"--dataset {spec}: the {what} {p} does not exist.", "check the three paths.")
    for p, is_dir in ((js, False), (png_dir, True), (img_dir, True)):
        if p.is_dir() != is_dir:
            raise ZsdError(f"--dataset {spec}: {p} should be a {'directory' if is_dir else 'file'}.",
                           "the order is coco-panoptic:JSON,PANOPTIC_PNG_DIR,IMAGE_DIR.")
    what = "COCO panoptic JSON (panoptic_val2017.json)"
    doc = _read_json(js, what)
    cats = _records(doc, js, "categories", {"id": (int,)}, what)
    to_contig, _ = category_mapping(cats)
    # COCO's own JSON marks things on the category, not on the segment (our synthetic files do both).
    cat_isthing = {int(c["id"]): bool(c.get("isthing", 0)) for c in cats}
    images = {im["id"]: im for im in _records(doc, js, "images", {"id": (int, str), "file_name": (str,)}, what,
                                               required=False)}
    checked = _records(doc, js, "annotations", {"image_id": (int, str), "file_name": (str,),
                                                "segments_info": (list,)}, what)
    for i, a in enumerate(checked):
        _records(a, js, "segments_info", {"id": (int,), "category_id": (int,)}, what)
        for s in a["segments_info"]:
            if int(s["category_id"]) not in to_contig:
                raise ZsdError(f"{js}: segment {s['id']} of {a['file_name']} has category {s['category_id']}, which "
                               "is not in the JSON's categories.", "pass the JSON the PNGs were written with.")

    def make(ann: dict[str, Any]) -> Sample:
        im = images.get(ann["image_id"], {})
        img_name = im.get("file_name") or Path(ann["file_name"]).with_suffix(".jpg").name
        rgb = load_image(img_dir / img_name).rgb
        png = read_png(png_dir / ann["file_name"])
        if png.ndim != 3 or png.shape[2] != 3:
            raise ZsdError(f"{png_dir / ann['file_name']} is not an RGB panoptic PNG (shape {png.shape}).",
                           "pass the COCO panoptic PNG directory (ids encoded as R + 256 G + 256^2 B).")
        pan = rgb_to_id(png).astype(np.int64)
        segs = []
        for s in ann["segments_info"]:
            cid = int(s["category_id"])
            if cid not in to_contig:
                raise ZsdError(f"{js}: segment {s['id']} of {ann['file_name']} has category {cid}, which is not "
                               "in the JSON's categories.", "pass the JSON the PNGs were written with.")
            segs.append({"id": int(s["id"]), "category_id": to_contig[cid],
                         "isthing": bool(s.get("isthing", cat_isthing[cid])), "iscrowd": int(s.get("iscrowd", 0))})
        if pan.shape != rgb.shape[:2]:
            raise ZsdError(f"{ann['file_name']}: panoptic PNG {pan.shape} and image {rgb.shape[:2]} differ in size.",
                           "check that PNG_DIR and IMG_DIR belong to the same split.")
        return Sample(Path(img_name).stem, rgb, pan, segs)

    anns = checked
    if not anns:
        raise ZsdError(f"{js} has no annotations.", "pass a COCO panoptic JSON.")
    _check_files_exist(png_dir, [a["file_name"] for a in anns], "panoptic PNGs", spec)
    _check_files_exist(img_dir, [images.get(a["image_id"], {}).get("file_name")
                                 or Path(a["file_name"]).with_suffix(".jpg").name for a in anns], "images", spec)
    return Dataset(spec, "coco-panoptic", [lambda a=a: make(a) for a in anns], True)


def semantic_from_panoptic(panoptic: np.ndarray, segments: list[dict[str, Any]], ignore: int = 255) -> np.ndarray:
    """Contiguous class id per pixel (ignore for void and crowd)."""
    out = np.full(panoptic.shape, ignore, np.int64)
    for s in segments:
        if not s.get("iscrowd", 0):
            out[panoptic == int(s["id"])] = int(s["category_id"])
    return out
