"""ZegFormer at run time: a bundle directory, a vocabulary chosen when it runs, and CLIP score fusion.

A bundle (written by `export-model --model zegformer`) holds `segmenter`, `text_encoder` and, for gzss configs,
`crop_classifier` graphs, each as `.onnx` and optionally as a TensorRT `.plan` built next to it (used when present
and TensorRT is importable), plus `bundle.json` (runtime.artifacts.bundle_manifest: the typed contract that
lists the files and says how to use them) and the default vocabulary's embeddings. The vocabulary is any
list of class names: it is embedded once with the bundle's text encoder and prompt ensembles, cached in
`<bundle>/.vocab_cache/`, and fed to the segmenter (and crop classifier) as `text_embeddings`.

Precision: a bundle exported with `--precision fp16` holds fp16 segmenter and crop-classifier graphs (bundle.json
and each graph's metadata say so: `BundleManifest.graph_precision`); their inputs and outputs stay float32, so they
run here exactly as fp32 graphs do (ONNX Runtime and OpenVINO read them as they are, TensorRT builds them strongly
typed). The text encoder is fp32 in every bundle.

Seen/unseen (for the gzss fusion): a name equal (case- and space-insensitive) to a class the model was trained on
(`seen_ids` of the default vocabulary) is seen; every other name is unseen, i.e. novel.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts.bundle_manifest import (  # noqa: F401  (BUNDLE_FILE, is_bundle: public names of this module too)
    BUNDLE_FILE,
    GRAPHS,
    REEXPORT,
    BundleManifest,
    bundle_root,
    is_bundle,
    read_bundle_manifest,
)
from .backends import load_backend
from .backends.base import Backend
from .backends.registry import BACKEND_SPECS
from .errors import ZsdError
from .files import atomic_write
from .options import runtime_precision
from .artifacts.onnx_metadata import ModelInfo
from .pipeline import Pipeline
from .postprocess import softmax, postprocess
from .preprocess import Batch
from .prompts import class_text_embeddings, validate_class_names

CACHE_DIR = ".vocab_cache"
#: Embedding more prompts than this (two text-encoder batches) shows a progress bar.
EMBED_PROGRESS_MIN_PROMPTS = 512
# ZegFormer's fixed ensembling weight (upstream `ensembling_weight`).
ENSEMBLING_LAMBDA = 2.0 / 3.0


# ------------------------------------------------------------------------------------------------ vocabulary
@dataclass(frozen=True)
class Vocabulary:
    names: tuple[str, ...]
    seen_ids: tuple[int, ...]
    unseen_ids: tuple[int, ...]
    source: str  # "default", "--classes", or a file path


def parse_class_names(text: str) -> list[str]:
    """`--classes "cat,dog, fire truck"` -> names (spaces around commas trimmed). Synonym lists ("a, b" as one
    class) need --classes-file, where each line is one class."""
    names = [n.strip() for n in text.split(",")]
    if all(not n for n in names):
        raise ZsdError("--classes is empty.", 'give class names separated by commas, e.g. --classes "cat,dog".')
    empty = [i + 1 for i, n in enumerate(names) if not n]
    if empty:
        raise ZsdError(f"--classes has an empty name at position(s) {empty} (two commas in a row, or a trailing "
                       "comma).", "remove the extra commas.")
    return names


def read_class_file(path: str | os.PathLike) -> list[str]:
    """Class names from a file: a JSON list of strings, or text with one class per line (blank lines and lines
    starting with '#' are skipped; "name, synonym, ..." on one line is one class with synonyms, as upstream)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ZsdError(f"--classes-file {p} does not exist.", "pass a text file with one class name per line.") \
            from None
    except (OSError, UnicodeDecodeError) as e:
        raise ZsdError(f"--classes-file {p} cannot be read as UTF-8 text ({e}).",
                       "pass a UTF-8 text file with one class name per line, or a JSON list of names.") from None
    if p.suffix == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise ZsdError(f"--classes-file {p} is not valid JSON ({e}).", "write a JSON list of strings.") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ZsdError(f"--classes-file {p} must hold a JSON list of strings.", 'e.g. ["cat", "dog"].')
        return names
    names = [line.strip() for line in text.splitlines()]
    return [n for n in names if n and not n.startswith("#")]


def _key(name: str) -> str:
    return " ".join(name.split()).lower()


def make_vocabulary(names: Sequence[str], info: ModelInfo, source: str) -> Vocabulary:
    """Validate names (empty vocabulary, empty or duplicate names are errors) and split them into seen/unseen."""
    names = validate_class_names(names)
    trained = {_key(info.class_names[i]) for i in info.seen_ids}
    seen = tuple(i for i, n in enumerate(names) if _key(n) in trained)
    unseen = tuple(i for i in range(len(names)) if i not in set(seen))
    return Vocabulary(tuple(names), seen, unseen, source)


def default_vocabulary(info: ModelInfo) -> Vocabulary:
    return Vocabulary(info.class_names, info.seen_ids, info.unseen_ids, "default")


def check_text_embeddings(arr: np.ndarray, num_classes: int, text_dim: int, source: str) -> np.ndarray:
    """float32 [C, D], finite, rows L2-normalised: anything else is an error that names the source."""
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape != (num_classes, text_dim):
        raise ZsdError(f"text embeddings from {source} have shape {list(arr.shape)}, but the vocabulary has "
                       f"{num_classes} classes and the model's text space is {text_dim}-d (expected "
                       f"[{num_classes}, {text_dim}]).",
                       "embed the vocabulary with this bundle's text encoder (trt-infer does this from class "
                       "names), one row per class in class order.")
    if not np.isfinite(arr).all():
        raise ZsdError(f"text embeddings from {source} contain NaN or inf.", "recompute them.")
    norms = np.linalg.norm(arr.astype(np.float64), axis=1)
    if np.abs(norms - 1).max() > 1e-3:
        raise ZsdError(f"text embeddings from {source} are not L2-normalised (row norms {norms.min():.4g}.."
                       f"{norms.max():.4g}); the segmenter expects unit rows as upstream.",
                       "normalise each row (x / ||x||) or let trt-infer compute them.")
    return np.ascontiguousarray(arr, dtype=np.float32)


# ------------------------------------------------------------------------------------------------ the bundle
class ZegFormerBundle:
    """The graphs of one bundle directory behind backends (loaded lazily: the text encoder only when a vocabulary
    must be embedded, the crop classifier only for gzss configs)."""

    def __init__(self, path: str | os.PathLike, *, plugin_lib: str | None = None, threads: int | None = None,
                 prefer_engines: bool = True, say: Callable[[str], None] | None = None,
                 backends: dict[str, Backend] | None = None, backend: str = "auto", precision: str = "fp32",
                 verify: bool = False) -> None:
        """backends: graph name -> an already built backend to use instead of the bundle's file (e.g. the PyTorch
        reference of the segmenter for benchmarks); other graphs load from the bundle. backend / precision: as in
        load_backend, for every graph (a backend of .onnx graphs never uses the .plan files). verify: compare each
        graph's sha256 with bundle.json when it is first opened (its size always is; see
        runtime.artifacts.bundle_manifest for why hashing is opt-in)."""
        root = bundle_root(path)
        if root is None:
            raise ZsdError(f"{path} is not a ZegFormer bundle (no {BUNDLE_FILE}).",
                           "pass the directory export-model --model zegformer wrote.")
        self.root = root
        self.manifest: BundleManifest = read_bundle_manifest(root)
        self._verify = verify
        self._verified: set[str] = set()  # graphs whose sha256 was checked
        self._plugin_lib, self._threads, self._prefer_engines = plugin_lib, threads, prefer_engines
        self._backend_choice, self._precision = backend, runtime_precision(precision)  # f32: the old spelling
        if backend in BACKEND_SPECS and BACKEND_SPECS[backend].runs == "onnx":  # a graph backend: no .plan files
            self._prefer_engines = False
        self._say = say or (lambda m: print(m, file=sys.stderr))
        self._backends: dict[str, Backend] = dict(backends or {})
        self.segmenter = self.backend("segmenter")
        self.info: ModelInfo = self.segmenter.info
        self.gzss = self.manifest.gzss
        self.text_dim = self.manifest.clip.text_dim

    def _onnx_path(self, graph: str) -> Path:
        """The graph's .onnx, checked against bundle.json (size; sha256 once when verifying)."""
        verify = self._verify and graph not in self._verified
        path = self.manifest.graph_file(self.root, graph, verify=verify)
        if verify:
            self._verified.add(graph)
        return path

    def graph_path(self, graph: str) -> Path:
        onnx_path = self._onnx_path(graph)
        plan = onnx_path.with_suffix(".plan")
        if self._prefer_engines and plan.is_file():
            from .artifacts.sidecar import check_plan_source, read_sidecar
            from .tensorrt.loader import import_tensorrt

            try:
                import_tensorrt()
            except ZsdError as e:
                self._say(f"note: {plan.name} is ignored ({e.problem}); using {onnx_path.name} instead.")
                return onnx_path
            check_plan_source(read_sidecar(plan), bundle=self.root)  # a plan of an older export: refused
            return plan
        return onnx_path

    def backend(self, graph: str) -> Backend:
        if graph not in self._backends:
            # the text encoder stays fp32 (OpenVINO hint; its graph is fp32 in every bundle too): it runs once per
            # vocabulary and its embeddings are cached for all runs
            self._backends[graph] = load_backend(self.graph_path(graph), plugin_lib=self._plugin_lib,
                                                 threads=self._threads, backend=self._backend_choice,
                                                 precision="fp32" if graph == "text_encoder" else self._precision,
                                                 say=self._say)
        return self._backends[graph]

    def close(self) -> None:
        for b in self._backends.values():
            b.close()
        self._backends.clear()

    # -------------------------------------------------------------------------------------- text embeddings
    def templates(self, kind: str) -> tuple[str, ...]:
        prompts = self.manifest.prompts
        return prompts.clip_templates if kind == "text_embeddings_clip" else prompts.templates

    def text_embeddings(self, vocab: Vocabulary, kind: str = "text_embeddings", *,
                        bpe_path: str | os.PathLike | None = None, use_cache: bool = True) -> np.ndarray:
        """[C, D] embeddings of `vocab` for `kind` ("text_embeddings": the segmenter's prompt ensemble;
        "text_embeddings_clip": the crop classifier's 32 templates): the bundle's stored default, the cache, or
        computed with the text encoder (then cached)."""
        templates = self.templates(kind)
        if vocab.names == self.manifest.classes.names and kind in self.manifest.embeddings:
            stored = self.manifest.embeddings_file(self.root, kind)  # size and sha256 as exported
            try:
                arr = np.load(stored, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise ZsdError(f"{stored} is unreadable ({e}).", REEXPORT) from None
            return check_text_embeddings(arr, len(vocab.names), self.text_dim, str(stored))
        cache = self._cache_path(vocab.names, templates)
        if use_cache and cache.is_file():
            try:
                with np.load(cache, allow_pickle=False) as z:
                    if tuple(str(n) for n in z["names"]) == vocab.names:
                        return check_text_embeddings(z["embeddings"], len(vocab.names), self.text_dim, str(cache))
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache entry is recomputed and rewritten
        from .tokenizer import ClipTokenizer

        tokenizer = ClipTokenizer(bpe_path)
        encoder = self.backend("text_encoder")

        from tqdm import tqdm

        self._say(f"embedding {len(vocab.names)} class name(s) x {len(templates)} prompt template(s) "
                  f"({kind}) with {encoder.name}")
        n_prompts = len(vocab.names) * len(templates)
        # A long vocabulary (thousands of names x ~80 prompts) takes minutes: show progress over the prompts.
        bar = tqdm(total=n_prompts, unit="prompt", desc=f"embedding {kind}", file=sys.stderr, mininterval=1.0,
                   disable=n_prompts <= EMBED_PROGRESS_MIN_PROMPTS)

        def encode(ids: np.ndarray) -> np.ndarray:
            out = encoder.infer({"token_ids": ids.astype(np.int64)})["text_embeddings"]
            bar.update(len(ids))
            return out

        with bar:
            arr = check_text_embeddings(class_text_embeddings(vocab.names, templates, tokenizer.tokenize, encode),
                                        len(vocab.names), self.text_dim, "the text encoder")
        if use_cache:
            try:
                cache.parent.mkdir(exist_ok=True)
                atomic_write(cache, lambda f: np.savez(f, names=np.array(vocab.names), embeddings=arr))
            except (OSError, ZsdError) as e:  # read-only bundle, disk full, ...: run without a cache
                why = e.problem.rstrip(".") if isinstance(e, ZsdError) else (e.strerror or str(e))
                self._say(f"note: the embeddings could not be cached in {cache.parent} ({why}); continuing "
                          "without a cache (they are recomputed next time; --no-cache skips this attempt).")
        return arr

    def _cache_path(self, names: Sequence[str], templates: Sequence[str]) -> Path:
        encoder = self.graph_path("text_encoder")
        st = encoder.stat()
        key = json.dumps({"names": list(names), "templates": list(templates), "encoder": encoder.name,
                          "encoder_stat": [st.st_size, st.st_mtime_ns],
                          "clip_sha256": self.manifest.made_from.clip_sha256 or ""}, ensure_ascii=False)
        return self.root / CACHE_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"


# ------------------------------------------------------------------------------------------------ fusion
def fuse_scores(class_logits: np.ndarray, clip_logits: np.ndarray | None, *, seen_ids: Sequence[int],
                unseen_ids: Sequence[int], ensembling: bool, ensembling_all_cls: bool) -> np.ndarray:
    """Per-query class probabilities [Q, C] of upstream ZegFormer (one image).

    No CLIP logits: softmax(class_logits) without void. With them (gzss), CLIP's logits get ZegFormer's void
    logit appended; then ENSEMBLING: p = p_zeg^l * mean_seen(p_clip)^(1-l) on seen classes (CLIP's seen
    probabilities replaced by their mean over seen classes) and p_zeg^(1-l) * p_clip^l on unseen ones, l = 2/3;
    ENSEMBLING_ALL_CLS: p_zeg^(1-l) * p_clip^l everywhere; neither: CLIP alone, softmax over C+1 without void.
    """
    p_zeg = softmax(class_logits)[:, :-1]
    if clip_logits is None:
        return p_zeg
    clip_full = np.concatenate([np.asarray(clip_logits, np.float32), class_logits[:, -1:]], axis=1)
    p_clip = softmax(clip_full)[:, :-1]
    lam = np.float32(ENSEMBLING_LAMBDA)
    one = np.float32(1.0)
    if ensembling:
        seen = np.asarray(list(seen_ids), dtype=np.int64)
        unseen = np.asarray(list(unseen_ids), dtype=np.int64)
        scores = p_zeg.copy()
        if seen.size:
            mean_seen = p_clip[:, seen].mean(axis=1, keepdims=True)
            scores[:, seen] = p_zeg[:, seen] ** lam * mean_seen ** (one - lam)
        if unseen.size:
            scores[:, unseen] = p_zeg[:, unseen] ** (one - lam) * p_clip[:, unseen] ** lam
        return scores
    if ensembling_all_cls:
        return p_zeg ** (one - lam) * p_clip ** lam
    return p_clip


class ZegFormerSegmenter(Pipeline):
    """Pipeline over a bundle with a vocabulary: images -> segmenter (+ crop classifier) -> fused semantic maps."""

    def __init__(self, bundle: ZegFormerBundle, vocabulary: Vocabulary, text_embeddings: np.ndarray,
                 text_embeddings_clip: np.ndarray | None = None, task: str | None = None,
                 short_edge: int | None = None, max_size: int | None = None) -> None:
        super().__init__(bundle.segmenter, task, short_edge, max_size)
        self.bundle = bundle
        self.vocabulary = vocabulary
        n = len(vocabulary.names)
        self.text_embeddings = check_text_embeddings(text_embeddings, n, bundle.text_dim, "text_embeddings")
        self.text_embeddings_clip = None
        if bundle.gzss:
            if text_embeddings_clip is None:
                raise ZsdError("this bundle's config uses the CLIP crop classifier, which needs the vocabulary "
                               "embedded with CLIP's 32 crop templates too.",
                               "pass text_embeddings_clip (ZegFormerBundle.text_embeddings(vocab, "
                               "'text_embeddings_clip')).")
            self.text_embeddings_clip = check_text_embeddings(text_embeddings_clip, n, bundle.text_dim,
                                                              "text_embeddings_clip")
        # Results are reported in the run's vocabulary, not the export's.
        self.info = replace(bundle.info, num_classes=n, class_names=vocabulary.names, class_colors=(),
                            thing_ids=(), seen_ids=vocabulary.seen_ids, unseen_ids=vocabulary.unseen_ids)
        self.post = replace(self.post, num_classes=n, thing_ids=())
        fusion = bundle.manifest.fusion
        self.ensembling = fusion.ensembling
        self.ensembling_all_cls = fusion.ensembling_all_cls
        self.gzero_calibrate = fusion.gzero_calibrate

    @classmethod
    def from_bundle(cls, bundle: ZegFormerBundle, vocabulary: Vocabulary | None = None, *,
                    bpe_path: str | os.PathLike | None = None, use_cache: bool = True,
                    task: str | None = None, short_edge: int | None = None,
                    max_size: int | None = None) -> ZegFormerSegmenter:
        vocab = vocabulary or default_vocabulary(bundle.info)
        emb = bundle.text_embeddings(vocab, "text_embeddings", bpe_path=bpe_path, use_cache=use_cache)
        emb_clip = (bundle.text_embeddings(vocab, "text_embeddings_clip", bpe_path=bpe_path, use_cache=use_cache)
                    if bundle.gzss else None)
        return cls(bundle, vocab, emb, emb_clip, task, short_edge, max_size)

    def infer(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        n = batch.tensor.shape[0]
        x = np.ascontiguousarray(self._fill_static_batch(batch.tensor), dtype=np.float32)
        out = self.backend.infer({"images": x, "text_embeddings": self.text_embeddings})
        return out["class_logits"][:n], out["mask_logits"][:n]

    def infer_extra(self, batch: Batch, class_logits: np.ndarray, mask_logits: np.ndarray) -> dict[str, np.ndarray]:
        if self.text_embeddings_clip is None:
            return {}
        n = batch.tensor.shape[0]
        sizes = np.array(batch.image_sizes, dtype=np.int64)
        feeds = {
            "images": np.ascontiguousarray(self._fill_static_batch(batch.tensor), dtype=np.float32),
            "image_sizes": self._fill_static_batch(sizes),
            "mask_logits": np.ascontiguousarray(self._fill_static_batch(mask_logits), dtype=np.float32),
            "text_embeddings_clip": self.text_embeddings_clip,
        }
        return {"clip_logits": self.bundle.backend("crop_classifier").infer(feeds)["clip_logits"][:n]}

    def postprocess(self, class_logits: np.ndarray, mask_logits: np.ndarray, batch: Batch, i: int,
                    task: str | None = None, extra: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        clip = (extra or {}).get("clip_logits")
        scores = fuse_scores(np.asarray(class_logits[i], np.float32), None if clip is None else clip[i],
                             seen_ids=self.vocabulary.seen_ids, unseen_ids=self.vocabulary.unseen_ids,
                             ensembling=self.ensembling, ensembling_all_cls=self.ensembling_all_cls)
        out = postprocess(class_logits[i], mask_logits[i], task=task or self.task, padded_hw=batch.padded_hw,
                          image_hw=batch.image_sizes[i], output_hw=batch.original_sizes[i], meta=self.post,
                          class_scores=scores)
        if self.gzero_calibrate > 0 and self.vocabulary.seen_ids:
            # upstream lowers seen-class scores after the resize to the output size
            out["sem_seg"][list(self.vocabulary.seen_ids)] -= np.float32(self.gzero_calibrate)
        return out


def open_zegformer(path: str | os.PathLike, *, classes: str | None = None, classes_file: str | None = None,
                   text_embeddings_file: str | None = None, bpe_path: str | os.PathLike | None = None,
                   plugin_lib: str | None = None, threads: int | None = None, use_cache: bool = True,
                   task: str | None = None, short_edge: int | None = None,
                   say: Callable[[str], None] | None = None, backend: str = "auto",
                   precision: str = "fp32") -> ZegFormerSegmenter:
    """One call for the CLI and the Python API: a bundle + a vocabulary (default, --classes or --classes-file) ->
    a ready ZegFormerSegmenter."""
    if classes is not None and classes_file is not None:
        raise ZsdError("--classes and --classes-file were both given.", "give one of them.")
    bundle = ZegFormerBundle(path, plugin_lib=plugin_lib, threads=threads, say=say, backend=backend,
                             precision=precision)
    if classes is not None:
        vocab = make_vocabulary(parse_class_names(classes), bundle.info, "--classes")
    elif classes_file is not None:
        vocab = make_vocabulary(read_class_file(classes_file), bundle.info, str(classes_file))
    else:
        vocab = default_vocabulary(bundle.info)
    if text_embeddings_file is None:
        return ZegFormerSegmenter.from_bundle(bundle, vocab, bpe_path=bpe_path, use_cache=use_cache, task=task,
                                              short_edge=short_edge)
    if bundle.gzss:
        raise ZsdError("--text-embeddings cannot be used with a CLIP crop-classifier (gzss) bundle: it needs a "
                       "second embedding set (CLIP's 32 crop templates).",
                       "give class names instead (--classes / --classes-file); trt-infer embeds them.")
    try:
        arr = np.load(text_embeddings_file, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ZsdError(f"--text-embeddings {text_embeddings_file} is not a readable .npy array ({e}).",
                       "save a float32 [C, 512] array with numpy.save.") from None
    return ZegFormerSegmenter(bundle, vocab, check_text_embeddings(arr, len(vocab.names), bundle.text_dim,
                                                                   str(text_embeddings_file)), None, task,
                              short_edge)
