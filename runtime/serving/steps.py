"""What the Python steps of a served model do, free of Triton: decode + pre-process a request's images, run the
network, post-process to the id map + JSON trt-infer writes. models.py wraps these for Triton's Python backend;
keeping them here lets them be read and tested without a server."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..backends.base import Backend
from ..errors import ZsdError
from ..files import json_default
from ..artifacts.onnx_metadata import ModelInfo
from ..pipeline import Segmentation, Pipeline
from ..preprocess import Batch

#: image_info columns, per image: resized (valid) size, original size, padded size of the batch tensor.
IMAGE_INFO = ("image_h", "image_w", "orig_h", "orig_w", "padded_h", "padded_w")
STEP_FORMAT = "zsdeploy-triton-step/1"


class MetadataBackend(Backend):
    """A backend that only carries an export's metadata: pre/post steps need the Pipeline's settings, not its
    network (which runs in its own Triton model)."""

    name = "metadata"
    input_names = ("images",)
    output_names = ("class_logits", "mask_logits")

    def __init__(self, info: ModelInfo) -> None:
        self.info = info

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("the network runs in the repository's network model, not in a pre/post step")

    def input_shape(self, name: str) -> tuple[int | str | None, ...]:
        return ()


def read_step_file(path: str | os.PathLike[str]) -> tuple[ModelInfo, str]:
    """The export metadata and task a pre/post step was written with (zsdeploy_step.json)."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if doc.get("format") != STEP_FORMAT:
        raise ZsdError(f"{path} is not a zsdeploy step file (format {doc.get('format')!r}).",
                       "write the repository again with export-triton.")
    return ModelInfo.from_metadata(doc["metadata"], str(path)), str(doc["task"])


def step_segmenter(info: ModelInfo, task: str) -> Pipeline:
    """The Pipeline whose pre/post-processing trt-infer would run for this export and task."""
    return Pipeline(MetadataBackend(info), task=task)


def decode_image(data: bytes, index: int) -> np.ndarray:
    """Encoded image bytes -> uint8 RGB (H, W, 3), through the same load_image trt-infer uses (EXIF orientation,
    mode conversion, truncation and decompression-bomb checks), so served and trt-infer inputs are identical."""
    from ..imageio import load_image

    fd, tmp = tempfile.mkstemp(prefix="zsd-triton-", suffix=".img")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            return load_image(tmp).rgb
        except ZsdError as e:  # name the request's image, not our temporary file
            where = f"image #{index} of the request"
            raise ZsdError((e.problem or "").replace(tmp, where), e.fix) from None
    finally:
        os.unlink(tmp)


def preprocess_request(seg: Pipeline, blobs: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """A request's encoded images -> (images float32 [B,3,H,W], image_info int32 [B,6])."""
    rgbs = [decode_image(b, i) for i, b in enumerate(blobs)]
    batch = seg.preprocess(rgbs)
    info = np.array([[*hw, *ohw, *batch.padded_hw] for hw, ohw in zip(batch.image_sizes, batch.original_sizes)],
                    dtype=np.int32)
    return batch.tensor, info


def run_network(seg: Pipeline, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The network on a pre-processed batch, as trt-infer runs it (a static batch is filled with copies)."""
    hw = (int(images.shape[2]), int(images.shape[3]))
    return seg.infer(Batch(images, [], [], hw))


def postprocess_request(seg: Pipeline, class_logits: np.ndarray, mask_logits: np.ndarray,
                        image_info: np.ndarray) -> tuple[np.ndarray, list[bytes]]:
    """Raw outputs of one request -> (id map int32 [B, Hmax, Wmax], JSON documents).

    Image i's map is id_map[i, :orig_h, :orig_w] (the rest is -1, since images of one request may differ in size);
    its JSON is the document trt-infer writes (results_io.describe: segments/instances/classes with names,
    scores, boxes, unseen flags)."""
    from ..results_io import describe

    info = np.asarray(image_info, dtype=np.int64)
    if info.ndim != 2 or info.shape[1] != len(IMAGE_INFO) or info.shape[0] != class_logits.shape[0]:
        raise ZsdError(f"image_info has shape {list(info.shape)}, expected [{class_logits.shape[0]}, "
                       f"{len(IMAGE_INFO)}] ({', '.join(IMAGE_INFO)}).", "send requests to the ensemble model.")
    padded = (int(info[0, 4]), int(info[0, 5]))
    batch = Batch(np.empty((0,), np.float32), [(int(r[0]), int(r[1])) for r in info],
                  [(int(r[2]), int(r[3])) for r in info], padded)
    maps, docs = [], []
    for i in range(info.shape[0]):
        results = seg.postprocess(class_logits, mask_logits, batch, i)
        s = Segmentation(seg.task, batch.original_sizes[i], results, class_logits[i], mask_logits[i],
                         batch.image_sizes[i], padded)
        label_map, doc = describe(s, seg.info)
        maps.append(label_map)
        docs.append(json.dumps(doc, default=json_default).encode())
    h = max(m.shape[0] for m in maps)
    w = max(m.shape[1] for m in maps)
    out = np.full((len(maps), h, w), -1, np.int32)
    for i, m in enumerate(maps):
        out[i, :m.shape[0], :m.shape[1]] = m
    return out, docs
