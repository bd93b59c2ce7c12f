"""ZegFormer (CVPR 2022): a bundle directory (segmenter, CLIP text encoder, crop classifier, bundle.json) whose
vocabulary is chosen at run time; converted, built, served and opened as a whole."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from zsdeploy.runtime.errors import ZsdError

from .base import BundleFamily, ExportRequest, OpenOptions, Say, check_shape, register_family

if TYPE_CHECKING:
    from zsdeploy.export.precision import PrecisionOptions
    from zsdeploy.runtime.artifacts.onnx_metadata import ModelInfo
    from zsdeploy.runtime.pipeline import Pipeline
    from zsdeploy.runtime.serving.repository import RepositoryOptions
    from zsdeploy.runtime.tensorrt.builder import BuildResult
    from zsdeploy.runtime.tensorrt.preflight import BuildOptions


@register_family
class ZegFormerFamily(BundleFamily):
    name = "zegformer"
    summary = ("ZegFormer (CVPR 2022): MaskFormer + CLIP ViT-B/16 text encoder (+ crop classifier); semantic; "
               "vocabulary chosen at run time; exported as a bundle directory")
    tasks = ("semantic",)
    open_vocabulary = True

    def export(self, req: ExportRequest, say: Say = print) -> Path:
        from zsdeploy.export.zegformer_export import export_zegformer
        from zsdeploy.export.zegformer_precision import zegformer_precision_options

        check_shape(req)
        # fp32 or fp16 (segmenter + crop classifier; the text encoder stays fp32); int8 is refused with its reason
        precision = zegformer_precision_options(req.precision)
        if req.msda != "gridsample":
            raise ZsdError(f"--msda {req.msda}: ZegFormer has no MSDeformAttn (its pixel decoder is an FPN).",
                           "drop --msda for ZegFormer.")
        if req.standin == "diverse":
            raise ZsdError("--standin diverse is a PADing stand-in (diverse decoder queries for zsd-bench PQ/AP); "
                           "ZegFormer has only the golden stand-in.", "drop --standin for ZegFormer.")
        if req.task not in (None, "semantic"):
            raise ZsdError(f"--task {req.task}: ZegFormer is a semantic segmentation model.", "drop --task.")
        extra = {} if req.opset is None else {"opset": req.opset}
        return export_zegformer(
            req.output, config=req.config, weights=req.weights, clip=req.clip,
            height=req.height or 640, width=req.width or 640, batch=req.batch, dynamic=req.dynamic,
            simplify=req.simplify, clip_bpe=req.clip_bpe, embed_defaults=req.embed_defaults, precision=precision,
            say=say, **extra)

    def open_pipeline(self, path: str | os.PathLike, opts: OpenOptions) -> Pipeline:
        from zsdeploy.runtime.zegformer import open_zegformer

        return open_zegformer(path, classes=opts.classes, classes_file=opts.classes_file,
                              text_embeddings_file=opts.text_embeddings, bpe_path=opts.clip_bpe,
                              plugin_lib=opts.plugin_lib, threads=opts.threads, use_cache=opts.use_cache,
                              task=opts.task, short_edge=opts.short_edge, backend=opts.backend,
                              precision=opts.precision, say=opts.say)

    def check_single_graph(self, info: ModelInfo, path: str | os.PathLike) -> None:
        graph = info.raw.get("graph", "?")
        raise ZsdError(f"{path} is the {graph} graph of a ZegFormer bundle, which runs only with the rest of "
                       "the bundle (bundle.json, text encoder, vocabulary embeddings).",
                       "pass the bundle directory export-model --model zegformer wrote.")

    def convert_precision(self, bundle: Path, output: Path, precision: PrecisionOptions, say: Say = print) -> Path:
        from zsdeploy.export.zegformer_precision import convert_zegformer_bundle

        return convert_zegformer_bundle(bundle, output, precision, say=say)

    def build_engines(self, opts: BuildOptions, say: Say = print) -> list[BuildResult]:
        from zsdeploy.runtime.bundle_engines import build_bundle

        return build_bundle(opts, say=say)

    def write_triton_repository(self, bundle: Path, output: Path, opts: RepositoryOptions) -> Path:
        from zsdeploy.runtime.serving.zegformer_repository import write_zegformer_repository

        return write_zegformer_repository(bundle, output, opts)

    def describe_triton_repository(self, repository: Path) -> str:
        from zsdeploy.runtime.serving.zegformer_repository import describe_zegformer_repository

        return describe_zegformer_repository(repository)
