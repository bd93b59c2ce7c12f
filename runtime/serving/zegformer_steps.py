"""What the served ZegFormer model does, free of Triton: a request's images + optional vocabulary (CLASSES) -> the
semantic label map, the winning class's score per pixel and the JSON trt-infer writes. models.ZegFormerModel wraps
this for Triton's Python backend; keeping it here lets it be read and tested without a server.

The vocabulary of a request is embedded once with the bundle's text encoder and kept in the server process, least
recently used vocabulary evicted first (VocabularyCache). Nothing is written into the model repository (it may be
read-only, e.g. a mounted volume): the bundle's on-disk vocabulary cache is not used.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ZsdError
from ..files import json_default
from .steps import decode_image

ZEGFORMER_STEP_FORMAT = "zsdeploy-triton-zegformer/1"
DEFAULT_VOCAB_CACHE = 16
DEFAULT_MAX_CLASSES = 1000
CLASSES_INPUT = "CLASSES"


@dataclass(frozen=True)
class ZegFormerStep:
    """zsdeploy_step.json of a served ZegFormer bundle (paths relative to the model's version directory)."""

    bundle: str  # the copied bundle directory
    clip_bpe: str | None  # the copied CLIP BPE file; None: $ZSD_CLIP_BPE / an installed open_clip in the server
    task: str
    max_images: int  # images per request
    max_classes: int  # names per request vocabulary
    vocab_cache: int  # vocabularies kept embedded in the server process
    threads: int | None

    def to_json(self) -> str:
        return json.dumps({"format": ZEGFORMER_STEP_FORMAT, **self.__dict__}, indent=1) + "\n"

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ZegFormerStep:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        if doc.pop("format", None) != ZEGFORMER_STEP_FORMAT:
            raise ZsdError(f"{path} is not a zsdeploy ZegFormer step file.",
                           "write the repository again with export-triton.")
        return cls(**doc)


def parse_request_classes(value: np.ndarray | None, max_classes: int) -> list[str] | None:
    """The CLASSES input of a request (one BYTES element: comma-separated names, like trt-infer's --classes) ->
    names; None when the request has no CLASSES (the bundle's default vocabulary)."""
    if value is None:
        return None
    items = np.asarray(value, dtype=np.object_).reshape(-1)
    if items.size != 1:
        raise ZsdError(f"CLASSES has {items.size} elements; it takes one string of comma-separated class names.",
                       'send CLASSES as a BYTES tensor of shape [1], e.g. [b"cat,dog,fire truck"].')
    raw = items[0]
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else str(raw)
    except UnicodeDecodeError as e:
        raise ZsdError(f"CLASSES is not UTF-8 text ({e}).", "send the class names encoded as UTF-8.") from None
    names = [n.strip() for n in text.split(",")]
    if all(not n for n in names):
        raise ZsdError("the request's vocabulary (CLASSES) is empty.",
                       'send at least one class name, e.g. "cat,dog", or leave CLASSES out for the bundle\'s '
                       "default vocabulary.")
    empty = [i + 1 for i, n in enumerate(names) if not n]
    if empty:
        raise ZsdError(f"CLASSES has an empty name at position(s) {empty} (two commas in a row, or a trailing "
                       "comma).", "remove the extra commas.")
    if len(names) > max_classes:
        raise ZsdError(f"CLASSES has {len(names)} names; this model takes at most {max_classes} per request (each "
                       "new vocabulary is embedded while the model waits).",
                       f"send {max_classes} names or fewer, or write the repository with a larger "
                       "--max-classes.")
    return names


class VocabularyCache:
    """vocabulary (tuple of names) -> a ready ZegFormerSegmenter, least recently used evicted beyond `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._items: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: tuple[str, ...], make: Callable[[], Any]) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        value = make()  # a failure (bad name, no BPE file) caches nothing
        self._items[key] = value
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)


class ZegFormerService:
    """One served bundle: the default vocabulary's segmenter, the per-request vocabularies (cached), and the
    segmentation of a request's images exactly as trt-infer runs it (one image per network call)."""

    def __init__(self, version_dir: str | os.PathLike[str], step: ZegFormerStep,
                 say: Callable[[str], None] | None = None) -> None:
        from ..zegformer import ZegFormerBundle

        self.step = step
        root = Path(version_dir)
        self.bpe = root / step.clip_bpe if step.clip_bpe else None
        self.say = say or (lambda _m: None)
        self.bundle = ZegFormerBundle(root / step.bundle, threads=step.threads, say=self.say)
        self.cache = VocabularyCache(step.vocab_cache)
        self._default: Any = None

    def close(self) -> None:
        self.bundle.close()

    def _segmenter(self, vocab: Any) -> Any:
        from ..zegformer import ZegFormerSegmenter

        try:
            return ZegFormerSegmenter.from_bundle(self.bundle, vocab, bpe_path=self.bpe, use_cache=False,
                                                  task=self.step.task)
        except ZsdError as e:
            if self.bpe is None and "BPE" in (e.problem or ""):
                raise ZsdError(f"this model cannot embed new class names: {e.problem}",
                               "write the repository again with export-triton --clip-bpe FILE (the file is copied "
                               "into it), or set ZSD_CLIP_BPE in the server's environment; the bundle's default "
                               "vocabulary (no CLASSES) needs no BPE file when the bundle stores its "
                               "embeddings.") from None
            raise

    def segmenter_for(self, names: Sequence[str] | None) -> Any:
        """The segmenter of a request's vocabulary (None: the bundle's default)."""
        from ..zegformer import default_vocabulary, make_vocabulary

        if names is None:
            if self._default is None:
                self._default = self._segmenter(default_vocabulary(self.bundle.info))
            return self._default
        vocab = make_vocabulary(names, self.bundle.info, CLASSES_INPUT)  # empty / duplicate names: refused here
        return self.cache.get(vocab.names, lambda: self._segmenter(vocab))

    def segment(self, blobs: Sequence[bytes], names: Sequence[str] | None,
                ) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
        """Encoded images + vocabulary -> (label map int32 [B,Hmax,Wmax], score float32 [B,Hmax,Wmax], JSON docs).

        Image i's maps are [i, :height, :width] (the rest is -1 / NaN: images of one request may differ in size);
        its JSON is trt-infer's document (results_io.describe) plus the vocabulary, as trt-infer writes it."""
        from ..results_io import describe

        if not blobs:
            raise ZsdError("the request has no image.", "send IMAGE as a BYTES tensor of shape [N, 1], N >= 1.")
        if len(blobs) > self.step.max_images:
            raise ZsdError(f"the request has {len(blobs)} images; this model takes at most {self.step.max_images} "
                           "per request.", f"send {self.step.max_images} images or fewer per request, or write the "
                                           "repository with a larger --max-batch.")
        rgbs = [decode_image(b, i) for i, b in enumerate(blobs)]  # every image is checked before any work
        seg = self.segmenter_for(names)
        vocab = seg.vocabulary
        labels, scores, docs = [], [], []
        for rgb in rgbs:  # one image per call, as trt-infer's default --batch 1 (padding never mixes images)
            result = seg([rgb])[0]
            label_map, doc = describe(result, seg.info)
            doc["vocabulary"] = {"source": vocab.source, "names": list(vocab.names),
                                 "unseen_ids": list(vocab.unseen_ids)}
            labels.append(label_map)
            scores.append(result.results["sem_seg"].max(axis=0).astype(np.float32))
            docs.append(json.dumps(doc, default=json_default).encode())
        h = max(m.shape[0] for m in labels)
        w = max(m.shape[1] for m in labels)
        label_out = np.full((len(labels), h, w), -1, np.int32)
        score_out = np.full((len(labels), h, w), np.nan, np.float32)
        for i, (m, s) in enumerate(zip(labels, scores)):
            label_out[i, :m.shape[0], :m.shape[1]] = m
            score_out[i, :s.shape[0], :s.shape[1]] = s
        return label_out, score_out, docs
