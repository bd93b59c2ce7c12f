"""The Triton repository of a ZegFormer bundle: one Python-backend model that takes the vocabulary per request.

Layout for the default name `zegformer_semantic`:
    REPO/zegformer_semantic/config.pbtxt     IMAGE (BYTES [N,1]) + CLASSES (BYTES [1], optional) -> id_map, scores,
                                             segments; max_batch_size 0 (a request's images share its vocabulary)
    REPO/zegformer_semantic/1/model.py       the shim importing zsdeploy.runtime.serving.models.ZegFormerModel
    REPO/zegformer_semantic/1/bundle/        a copy of the bundle's files (bundle.json, graphs, stored embeddings,
                                             TensorRT plans + sidecars built next to the graphs)
    REPO/zegformer_semantic/1/bpe_simple_vocab_16e6.txt.gz   CLIP's BPE file, to embed new names (when found)
    REPO/zegformer_semantic/1/zsdeploy_step.json             runtime.serving.zegformer_steps.ZegFormerStep
    REPO/.zsdeploy-triton.json               what the repository was written from (also marks it as ours)
Why not an ensemble: see ZegFormerModel's docstring. Files are copied, never linked: the repository must be
self-contained (it is mounted into containers and copied to other machines).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from ..artifacts.bundle_manifest import BUNDLE_FILE, BundleManifest, read_bundle_manifest
from ..files import publish, staging_dir
from ..errors import ZsdError
from .pbtxt import ModelConfig, Tensor
from .repository import (MODEL_PY_SHIM, DEFAULT_MAX_BATCH, MARKER, MARKER_FORMAT, RepositoryOptions, carry_foreign_entries,
                         check_common_options, check_output, kept_note, sha256_of, write_text)
from .zegformer_steps import DEFAULT_MAX_CLASSES, DEFAULT_VOCAB_CACHE, ZegFormerStep

BUNDLE_DIR = "bundle"


def _check_bundle_options(opts: RepositoryOptions, bundle: Path) -> None:
    check_common_options(opts)
    refused = []
    if opts.backend not in (None, "python"):
        refused.append((f"--backend {opts.backend}", "the bundle runs in one Python-backend model (zsdeploy's own "
                                                     "backends: ONNX Runtime, or TensorRT for plans built next to "
                                                     "the graphs)"))
    if opts.dynamic_batching:
        refused.append(("--dynamic-batching", "requests with different vocabularies cannot share a network call"))
    if opts.task not in (None, "semantic"):
        refused.append((f"--task {opts.task}", "ZegFormer is a semantic segmentation model"))
    if refused:
        raise ZsdError(f"{'; '.join(f'{flag}: {why}' for flag, why in refused)} ({bundle} is a ZegFormer bundle).",
                       f"drop {', '.join(flag.split()[0] for flag, _ in refused)}.")


def _bundle_files(bundle: Path) -> tuple[BundleManifest, list[str]]:
    """The files a served bundle needs, relative to it: bundle.json, the graphs, the stored default embeddings,
    and each graph's TensorRT plan + sidecar where build-engine made one. Checked against bundle.json (sizes and
    sha256) first: a damaged bundle is refused here, not at the first request."""
    manifest = read_bundle_manifest(bundle, verify=True)
    files = [BUNDLE_FILE, *(f.file for f in manifest.graphs.values()), *(f.file for f in manifest.embeddings.values())]
    for g in manifest.graphs.values():
        plan = Path(g.file).with_suffix(".plan")
        if (bundle / plan).is_file():
            files += [str(plan)] + ([f"{plan}.json"] if (bundle / f"{plan}.json").is_file() else [])
    return manifest, files


def _find_bpe(opts: RepositoryOptions) -> Path | None:
    from ..tokenizer import find_bpe_vocab

    if opts.clip_bpe is not None:
        return find_bpe_vocab(opts.clip_bpe)  # a named file that is missing is an error
    try:
        return find_bpe_vocab(None)
    except ZsdError:
        return None


def write_zegformer_repository(bundle: Path, out: Path, opts: RepositoryOptions) -> Path:
    """Write the repository serving the ZegFormer bundle `bundle` (see the module docstring); returns `out`."""
    _check_bundle_options(opts, bundle)
    name = opts.name or "zegformer_semantic"
    check_output(out)
    manifest, files = _bundle_files(bundle)
    bpe = _find_bpe(opts)
    if bpe is None and not manifest.embeddings:
        raise ZsdError(f"{bundle} stores no default embeddings and CLIP's BPE file was not found, so the served "
                       "model could embed no vocabulary at all.",
                       "pass --clip-bpe FILE (OpenAI CLIP's bpe_simple_vocab_16e6.txt.gz; it is copied into the "
                       "repository), or set $ZSD_CLIP_BPE.")
    gpu = any(f.endswith(".plan") for f in files)
    step = ZegFormerStep(bundle=BUNDLE_DIR, clip_bpe=bpe.name if bpe else None, task="semantic",
                         max_images=opts.max_batch or DEFAULT_MAX_BATCH,
                         max_classes=opts.max_classes or DEFAULT_MAX_CLASSES,
                         vocab_cache=opts.vocab_cache or DEFAULT_VOCAB_CACHE, threads=opts.threads)
    config = ModelConfig(
        name, 0,
        [Tensor("IMAGE", "bytes", (-1, 1)), Tensor("CLASSES", "bytes", (1,), optional=True)],
        [Tensor("id_map", "int32", (-1, -1, -1)), Tensor("scores", "fp32", (-1, -1, -1)),
         Tensor("segments", "bytes", (-1, 1))],
        backend="python", instance_count=opts.instances, instance_kind="KIND_GPU" if gpu else "KIND_CPU")

    with staging_dir(out) as tmp:
        version = tmp / name / "1"
        for f in files:
            (version / BUNDLE_DIR / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle / f, version / BUNDLE_DIR / f)
        if bpe is not None:
            shutil.copyfile(bpe, version / bpe.name)
        write_text(version / "model.py", MODEL_PY_SHIM.format(role="ZegFormer", cls="ZegFormerModel"))
        write_text(version / "zsdeploy_step.json", step.to_json())
        write_text(tmp / name / "config.pbtxt", config.text())
        kept = carry_foreign_entries(out, tmp, {name})
        write_text(tmp / MARKER, json.dumps({
            "format": MARKER_FORMAT, "source": str(bundle.resolve()), "kept": kept,
            "source_sha256": sha256_of(bundle / BUNDLE_FILE), "kind": "bundle", "network_backend": "python",
            "max_batch_size": 0, "max_images": step.max_images, "task": "semantic", "models": {"model": name},
            "clip_bpe": bpe is not None, "default_embeddings": sorted(manifest.embeddings),
            "options": asdict(opts)}, indent=1) + "\n")
        publish(tmp, out, "the model repository")
    return out


def describe_zegformer_repository(out: Path) -> str:
    """One sentence on what a repository written by `write_zegformer_repository` serves (export-triton prints it)."""
    marker = json.loads((out / MARKER).read_text())
    vocab = ("CLASSES (optional BYTES [1]: comma-separated class names; absent = the bundle's default vocabulary)"
             if marker["clip_bpe"] else
             "CLASSES (optional; CLIP's BPE file was not found, so new names need $ZSD_CLIP_BPE in the server's "
             "environment: pass --clip-bpe to copy it into the repository)")
    return (f"model {marker['models']['model']!r} (ZegFormer, Python backend, up to {marker['max_images']} images per "
            f"request). Inputs IMAGE (encoded image bytes, BYTES [N,1]) and {vocab}; outputs id_map (INT32 [N,H,W] "
            "class index), scores (FP32 [N,H,W]) and segments (JSON)." + kept_note(marker))
