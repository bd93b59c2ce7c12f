"""The Python API behind every CLI verb (export-model, build-engine, trt-infer, export-triton); zsd-bench's
measurements are `zsdeploy.benchmarks.accuracy.run_accuracy` and `zsdeploy.benchmarks.latency.run_latency`.

Everything raises `zsdeploy.runtime.errors.ZsdError` (problem + fix) for input the caller can correct; torch is
imported only by `export_model`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from zsdeploy.families import MODELS, ExportRequest, OpenOptions, family_for
from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.pipeline import Pipeline, Segmentation

PathLike = str | os.PathLike


def export_model(model: str, output: PathLike, *, precision: str = "fp32", fp32_islands: str | None = None,
                 calib: PathLike | None = None, say: Callable[[str], None] = print, **options: Any) -> Path:
    """`export-model --model MODEL --output OUTPUT ...`: trace a registered model family (pading, pading-demo,
    zegformer) to ONNX (a .onnx file, or a bundle directory for ZegFormer). `options` are ExportRequest fields
    (task, config, weights, standin, height, width, batch, dynamic, opset, msda, simplify, clip, clip_bpe,
    embed_defaults)."""
    from zsdeploy.export.precision import PrecisionOptions

    popts = PrecisionOptions(precision, fp32_islands, None if calib is None else str(calib))
    return MODELS.get(model).export(ExportRequest(output=Path(output), precision=popts, **options), say)


def build_engine(onnx: PathLike, output: PathLike, *, precision: str | None = None,
                 profile: Iterable[str] = (), say: Callable[[str], None] = print, **options: Any) -> list[Any]:
    """`build-engine --onnx ONNX --output PLAN ...`: TensorRT engine(s) + sidecar(s) (needs TensorRT and a GPU); a
    bundle directory gets one engine per graph. `profile`: NAME:MIN:OPT:MAX strings; `options`: BuildOptions fields
    (plugin_lib, workspace_mb, ...). Returns one BuildResult per engine."""
    from zsdeploy.families import build_engines
    from zsdeploy.runtime.tensorrt.preflight import BuildOptions
    from zsdeploy.runtime.tensorrt.profiles import parse_profile

    return build_engines(BuildOptions(Path(onnx), Path(output), precision=precision, profile=parse_profile(profile),
                                      **options), say)


def open_pipeline(model: PathLike, **options: Any) -> Pipeline:
    """What trt-infer runs: an .onnx, a .plan or a ZegFormer bundle as a Pipeline (callable on a list of RGB uint8
    images). `options` are OpenOptions fields (task, short_edge, backend, precision, threads, plugin_lib, classes,
    classes_file, text_embeddings, clip_bpe, use_cache)."""
    family, _ = family_for(model)
    return family.open_pipeline(Path(model), OpenOptions(**options))


def segment_files(model: PathLike | Pipeline, images: PathLike | Sequence[PathLike], *, batch: int = 1,
                  failures: list[tuple[Path, ZsdError]] | None = None, **options: Any) -> list[Segmentation]:
    """Segment image files as trt-infer does (EXIF orientation applied, batches of `batch`); one Segmentation per
    file that could be segmented, in order. `images`: one path (a file, or a folder: its images, as trt-infer lists
    them) or a sequence of file paths.

    Without `failures`, the first image that cannot be read or segmented raises its ZsdError. With a list, each such
    image is recorded there as (path, error) and skipped: a bad image costs only its own result, as in trt-infer.
    """
    from zsdeploy.runtime.image_run import segment_images

    from zsdeploy.runtime.imageio import list_images

    if isinstance(images, (str, os.PathLike)):
        paths = list_images(images)
    elif isinstance(images, Sequence) and all(isinstance(p, (str, os.PathLike)) for p in images):
        paths = [Path(p) for p in images]
    else:
        raise TypeError(f"segment_files: images must be a path (str or os.PathLike: an image file or a folder) or a "
                        f"sequence of paths, got {type(images).__name__}"
                        + ("" if not isinstance(images, Sequence) else " holding other objects")
                        + " (for decoded arrays, call the Pipeline: open_pipeline(model)(arrays))")
    pipeline = model if isinstance(model, Pipeline) else open_pipeline(model, **options)
    record = None if failures is None else (lambda path, error: failures.append((path, error)))
    return [seg for _, seg in segment_images(pipeline, paths, batch=batch, isolate=failures is not None,
                                             on_failure=record)]


def export_triton(model: PathLike, output: PathLike, **options: Any) -> Path:
    """`export-triton --model MODEL --output REPO ...`: a Triton model repository (RepositoryOptions fields)."""
    from zsdeploy.families import write_triton_repository
    from zsdeploy.runtime.serving.repository import RepositoryOptions

    return write_triton_repository(model, output, RepositoryOptions(**options))
