"""PADing (CVPR 2023) and the demo PADing zsdeploy trained: one-graph artifacts (.onnx / .plan)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.options import TASKS

from .base import ExportRequest, ModelFamily, OpenOptions, Say, check_shape, register_family

if TYPE_CHECKING:
    from zsdeploy.runtime.pipeline import Pipeline


@register_family
class PADingFamily(ModelFamily):
    name = "pading"
    summary = "PADing (CVPR 2023): Mask2Former R50 + MSDeformAttn; panoptic, instance, semantic; fixed classes"
    tasks = TASKS
    standin_variants = ("golden", "diverse")
    default_hw = (800, 1216)
    default_weights: str | None = None

    def export(self, req: ExportRequest, say: Say = print) -> Path:
        from zsdeploy.export.pading_export import export_pading

        check_shape(req)
        given = req.given("clip", "clip_bpe")
        if given:
            raise ZsdError(f"{', '.join(given)}: a ZegFormer option; PADing has no CLIP.", f"drop {', '.join(given)}.")
        if not req.embed_defaults:
            raise ZsdError("--no-default-embeddings is a ZegFormer option (PADing has no vocabulary).",
                           "drop --no-default-embeddings.")
        weights = req.weights if req.weights is not None else self.default_weights
        if req.standin and weights:
            raise ZsdError(f"--standin {req.standin} picks stand-in weights, but --weights is given.",
                           "drop --standin (or --weights).")
        h, w = req.height or self.default_hw[0], req.width or self.default_hw[1]
        return export_pading(req.output, task=req.task or "panoptic", config=req.config, weights=weights,
                             standin=req.standin or "golden", height=h, width=w, batch=req.batch,
                             dynamic=req.dynamic, opset=req.opset, msda=req.msda, simplify=req.simplify,
                             precision=req.precision, say=say)

    def open_pipeline(self, path: str | os.PathLike, opts: OpenOptions) -> Pipeline:
        from zsdeploy.runtime.backends import load_backend
        from zsdeploy.runtime.pipeline import Pipeline

        backend = load_backend(path, plugin_lib=opts.plugin_lib, threads=opts.threads, backend=opts.backend,
                               precision=opts.precision)
        vocab = opts.vocabulary_options()
        if vocab:
            raise ZsdError(f"{', '.join(vocab)}: a {backend.info.model} model has a fixed class list; only "
                           "ZegFormer bundles take a vocabulary at run time.", f"drop {', '.join(vocab)}.")
        return Pipeline(backend, opts.task, opts.short_edge)

    def torch_reference(self, task: str, meta: dict[str, str] | None, *, config: str | None = None,
                        weights: str | None = None, threads: int | None = None) -> Any:
        """PADing in PyTorch: `weights`, else what the export recorded (the demo checkpoint, or the same stand-in
        rule)."""
        try:
            from zsdeploy.export.torch_backend import TorchBackend
        except ImportError as e:
            raise ZsdError(f"the PyTorch reference needs torch ({e}).", "pip install 'zsdeploy[export]'.") from None
        from zsdeploy.runtime.artifacts.onnx_metadata import standin_variant_of

        meta = meta or {}
        if weights is None and meta.get("weights") == "demo":
            weights = "demo"  # an export of the shipped demo model: its reference is the same demo checkpoint
        elif weights is None and meta.get("standin_weights") == "false":
            # A trained export against the stand-in reference would "fail" on every metric for no fault of its own.
            raise ZsdError(f"the model was exported with weights {meta.get('weights')!r}, but no --weights was given, "
                           "so the PyTorch reference would use stand-in weights.",
                           "pass --weights with the checkpoint the model was exported from.")
        return TorchBackend.pading(task, config, weights, standin=standin_variant_of(meta), threads=threads)


@register_family
class DemoPADingFamily(PADingFamily):
    """The demo PADing zsdeploy trained on generated scenes (benchmarks/demo_model): real, small, shipped."""

    name = "pading-demo"
    summary = ("the demo PADing trained by zsdeploy on generated scenes (half-width R50, 133 COCO classes, "
               "17 MiB; export/demo_weights/MODEL_CARD.md); exports as a pading model")
    tasks = ("panoptic",)
    default_hw = (256, 256)
    default_weights = "demo"

    def export(self, req: ExportRequest, say: Say = print) -> Path:
        if req.weights not in (None, "demo") or req.standin:
            raise ZsdError("--model pading-demo exports the shipped demo weights.",
                           "drop --weights/--standin, or use --model pading --weights CKPT.")
        return super().export(req, say)
