"""Writing a Segmentation to disk: label/id PNG, JSON with names/scores/boxes, overlay, raw npz."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write, file_group, write_json_atomic
from .imageio import save_png
from .artifacts.onnx_metadata import ModelInfo
from .pipeline import Segmentation


def output_stems(paths: list[Path]) -> dict[Path, str]:
    """The name each input's outputs get: its stem (`x.png` -> `x.json`), or, when inputs of one run share a stem
    (x.png and x.jpg; compared case-insensitively for case-insensitive file systems), the whole file name
    (`x.png.json`, `x.jpg.json`), so that no result overwrites another."""
    stems = {p: p.stem for p in paths}
    while True:  # a full name may equal another input's stem (x.png.jpg has stem x.png): repeat until unique
        counts = Counter(v.casefold() for v in stems.values())
        clash = {p for p, v in stems.items() if counts[v.casefold()] > 1 and v != p.name}
        if not clash:
            return stems
        stems.update({p: p.name for p in clash})


def _bbox_xywh(mask: np.ndarray) -> list[int]:
    ys = np.flatnonzero(mask.any(1))
    xs = np.flatnonzero(mask.any(0))
    if len(ys) == 0:
        return [0, 0, 0, 0]
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def describe(seg: Segmentation, info: ModelInfo) -> tuple[np.ndarray, dict[str, Any]]:
    """The label/id map to save and the JSON document for one image."""
    names = info.class_names
    doc: dict[str, Any] = {"task": seg.task, "height": seg.output_hw[0], "width": seg.output_hw[1],
                           "model": info.model, "standin_weights": info.standin_weights}
    r = seg.results
    if seg.task == "semantic":
        sem = r["sem_seg"]
        labels = sem.argmax(0).astype(np.int32)
        ids, counts = np.unique(labels, return_counts=True)
        doc["classes"] = [{"category_id": int(c), "name": names[c], "pixels": int(n),
                           "unseen": int(c) in info.unseen_ids} for c, n in zip(ids, counts)]
        return labels, doc
    if seg.task == "panoptic":
        pan = r["panoptic_seg"]
        segments = []
        for s in r["segments_info"]:
            m = pan == s["id"]
            segments.append({**{k: (bool(v) if k == "isthing" else int(v)) for k, v in s.items()},
                             "name": names[s["category_id"]], "area": int(m.sum()), "bbox": _bbox_xywh(m),
                             "unseen": int(s["category_id"]) in info.unseen_ids})
        doc["segments_info"] = segments
        return pan.astype(np.int32), doc
    inst = r["instances"]
    order = np.argsort(-inst["scores"], kind="stable")
    id_map = np.zeros(seg.output_hw, np.int32)
    # Paint lowest score first so the best instance owns overlapping pixels; id = rank + 1.
    for rank, i in reversed(list(enumerate(order))):
        id_map[inst["pred_masks"][i]] = rank + 1
    doc["instances"] = [{"id": k + 1, "category_id": int(inst["pred_classes"][i]),
                         "name": names[int(inst["pred_classes"][i])], "score": float(inst["scores"][i]),
                         "bbox_xyxy": [float(v) for v in inst["pred_boxes"][i]],
                         "area": int(inst["pred_masks"][i].sum()),
                         "unseen": int(inst["pred_classes"][i]) in info.unseen_ids} for k, i in enumerate(order)]
    return id_map, doc


_RESULT_PNG = re.compile(r"(.+)_(semantic|panoptic|instance|vis)\.png")


def is_earlier_result(path: Path) -> bool:
    """Whether `path` is a PNG that write_outputs wrote (`<stem>_<task>.png` or `<stem>_vis.png` beside the
    `<stem>.json` that names it): an output folder used as the next run's input must not feed results back in."""
    m = _RESULT_PNG.fullmatch(path.name)
    if m is None:
        return False
    try:
        doc = json.loads(path.with_name(m.group(1) + ".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict) or not isinstance(doc.get("label_png"), str) or "task" not in doc:
        return False
    return path.name in (doc["label_png"], f"{m.group(1)}_vis.png")


def without_earlier_results(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(inputs, skipped): the listed images minus the results of an earlier run in the same folder."""
    earlier = [is_earlier_result(p) for p in paths]
    return [p for p, e in zip(paths, earlier) if not e], [p for p, e in zip(paths, earlier) if e]


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def write_outputs(seg: Segmentation, info: ModelInfo, out_dir: Path, stem: str, *, rgb: np.ndarray | None = None,
                  vis: bool = False, save_raw: bool = False, vis_score_threshold: float = 0.5,
                  extra: dict[str, Any] | None = None) -> list[Path]:
    """Write `<stem>_<task>.png`, `<stem>.json`, and optionally `<stem>_vis.png` / `<stem>_raw.npz`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    label_map, doc = describe(seg, info)
    if extra:
        doc.update(extra)
    written = []
    with file_group() as group:  # all of this image's files, or none of them (the earlier run's stay)
        png = out_dir / f"{stem}_{seg.task}.png"
        doc["label_png"] = png.name
        doc["label_png_encoding"] = save_png(group.path(png), label_map)
        written.append(png)
        if vis and rgb is not None:
            from .visualize import overlay

            kwargs: dict[str, Any] = {}
            if seg.task == "semantic":
                kwargs["semantic"] = label_map
            elif seg.task == "panoptic":
                kwargs["panoptic"], kwargs["segments"] = label_map, seg.results["segments_info"]
            else:
                kwargs["instances"] = seg.results["instances"]
                kwargs["score_threshold"] = vis_score_threshold
            vis_path = out_dir / f"{stem}_vis.png"
            save_png(group.path(vis_path), overlay(rgb, class_names=info.class_names, **kwargs))
            written.append(vis_path)
        if save_raw:
            raw = out_dir / f"{stem}_raw.npz"
            save_npz_atomic(group.path(raw), class_logits=seg.class_logits, mask_logits=seg.mask_logits,
                            image_hw=np.array(seg.image_hw), padded_hw=np.array(seg.padded_hw),
                            output_hw=np.array(seg.output_hw), **seg.extra_raw)
            written.append(raw)
        js = out_dir / f"{stem}.json"
        write_json_atomic(group.path(js), doc)
        written.append(js)
    return written
