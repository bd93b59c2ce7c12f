"""The model registry: each model family registers how it is exported and how its artifacts open as a Pipeline.

export-model, trt-infer, export-triton and zsd-bench ask `MODELS` (or `family_of`) instead of branching on model
names. A family's export side imports torch lazily, so the runtime (ONNX Runtime / OpenVINO / TensorRT) never
needs it.

    family = MODELS.get("pading")
    family.export(ExportRequest(output=Path("m.onnx"), weights="model_final.pth"))
    pipeline = open_pipeline("m.onnx", OpenOptions(task="panoptic"))
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ZsdError
from .registry import Registry

if TYPE_CHECKING:
    from .artifacts.onnx_metadata import ModelInfo
    from .pipeline import Pipeline

Say = Callable[[str], None]


@dataclass(frozen=True)
class ExportRequest:
    """What `export-model` was asked for (None = the family's default)."""

    output: Path
    task: str | None = None
    config: str | None = None
    weights: str | None = None
    standin: str | None = None
    height: int | None = None
    width: int | None = None
    batch: int = 1
    dynamic: bool = False
    opset: int | None = None
    msda: str = "gridsample"
    simplify: bool = True
    clip: str | None = None
    clip_bpe: str | None = None
    embed_defaults: bool = True
    precision: Any = None  # export.precision.PrecisionOptions; None = fp32

    def given(self, *names: str) -> list[str]:
        """The CLI spellings of the options among `names` that were set (for "X is not an option of Y")."""
        defaults = ExportRequest(Path())
        return ["--" + n.replace("_", "-") for n in names if getattr(self, n) != getattr(defaults, n)]


@dataclass(frozen=True)
class OpenOptions:
    """How trt-infer / the Python API open an artifact (None = the artifact's own setting)."""

    task: str | None = None
    short_edge: int | None = None
    backend: str = "auto"
    precision: str = "f32"
    threads: int | None = None
    plugin_lib: str | None = None
    # open-vocabulary families only
    classes: str | None = None
    classes_file: str | None = None
    text_embeddings: str | None = None
    clip_bpe: str | None = None
    use_cache: bool = True
    say: Say | None = field(default=None, compare=False)

    def vocabulary_options(self) -> list[str]:
        return [flag for flag, v in (("--classes", self.classes), ("--classes-file", self.classes_file),
                                     ("--text-embeddings", self.text_embeddings), ("--clip-bpe", self.clip_bpe),
                                     ("--no-cache", None if self.use_cache else True)) if v is not None]


class ModelFamily(ABC):
    """One registered model. Subclasses set the class attributes and implement `export` / `open_pipeline`."""

    name: str = ""
    summary: str = ""
    tasks: tuple[str, ...] = ()
    artifact: str = "onnx"  # "onnx": one .onnx / .plan; "bundle": a directory of graphs
    open_vocabulary: bool = False  # classes chosen at run time (its class ids are not a fixed dataset's)
    standin_variants: tuple[str, ...] = ("golden",)

    @abstractmethod
    def export(self, req: ExportRequest, say: Say = print) -> Path:
        """Write the family's artifact for `req`; returns its path."""

    @abstractmethod
    def open_pipeline(self, path: str | os.PathLike, opts: OpenOptions) -> Pipeline:
        """The artifact at `path` as a Pipeline."""

    def check_single_graph(self, info: ModelInfo, path: str | os.PathLike) -> None:
        """Refuse a single graph that runs only as part of a bundle (nothing to check for one-graph families)."""

    def torch_reference(self, task: str, meta: dict[str, str] | None, *, config: str | None = None,
                        weights: str | None = None, threads: int | None = None) -> Any:
        """The PyTorch model an export of this family is compared with (zsd-bench), as a Backend."""
        raise ZsdError(f"zsd-bench has no single-graph PyTorch reference for {self.name}.",
                       "pass the whole artifact export-model wrote (a bundle directory for bundle families).")


MODELS: Registry[ModelFamily] = Registry("model")


def register_family(cls: type[ModelFamily]) -> type[ModelFamily]:
    """Class decorator: register one instance of a ModelFamily subclass under its `name`."""
    MODELS.register(cls.name)(cls())
    return cls


def _check_shape(req: ExportRequest) -> None:
    from ..export.onnx_export import check_shape_flags

    check_shape_flags(req.height, req.width, req.batch, req.dynamic)


@register_family
class PADingFamily(ModelFamily):
    name = "pading"
    summary = "PADing (CVPR 2023): Mask2Former R50 + MSDeformAttn; panoptic, instance, semantic; fixed classes"
    tasks = ("panoptic", "instance", "semantic")
    standin_variants = ("golden", "diverse")
    default_hw = (800, 1216)
    default_weights: str | None = None

    def export(self, req: ExportRequest, say: Say = print) -> Path:
        from ..export.pading_export import export_pading

        _check_shape(req)
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
        from .backends import load_backend
        from .pipeline import Pipeline

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
            from ..export.torch_backend import TorchBackend
        except ImportError as e:
            raise ZsdError(f"the PyTorch reference needs torch ({e}).", "pip install 'zsdeploy[export]'.") from None
        from .artifacts.onnx_metadata import standin_variant_of

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
               "17 MiB; benchmarks/demo_model/weights/MODEL_CARD.md); exports as a pading model")
    tasks = ("panoptic",)
    default_hw = (256, 256)
    default_weights = "demo"

    def export(self, req: ExportRequest, say: Say = print) -> Path:
        if req.weights not in (None, "demo") or req.standin:
            raise ZsdError("--model pading-demo exports the shipped demo weights.",
                           "drop --weights/--standin, or use --model pading --weights CKPT.")
        return super().export(req, say)


@register_family
class ZegFormerFamily(ModelFamily):
    name = "zegformer"
    summary = ("ZegFormer (CVPR 2022): MaskFormer + CLIP ViT-B/16 text encoder (+ crop classifier); semantic; "
               "vocabulary chosen at run time; exported as a bundle directory")
    tasks = ("semantic",)
    artifact = "bundle"
    open_vocabulary = True

    def export(self, req: ExportRequest, say: Say = print) -> Path:
        from ..export.zegformer_export import export_zegformer
        from ..export.zegformer_precision import zegformer_precision_options

        _check_shape(req)
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
        from .zegformer import open_zegformer

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


# ------------------------------------------------------------------------------------------------ artifacts
def _bundle_family() -> ModelFamily:
    # bundle.json belongs to the one family that writes bundles (ZegFormer); a second bundle family would be told
    # apart by the manifest's model field.
    return next(MODELS.get(n) for n in MODELS if MODELS.get(n).artifact == "bundle")


def artifact_info(path: str | os.PathLike) -> ModelInfo:
    """The metadata of an .onnx or a .plan (its sidecar's copy of the ONNX metadata)."""
    from .artifacts.onnx_metadata import ModelInfo, read_onnx_metadata
    from .backends import ENGINE_SUFFIXES

    p = Path(path)
    if p.suffix in ENGINE_SUFFIXES:
        from .artifacts.sidecar import read_sidecar

        return read_sidecar(p).info
    if p.suffix == ".onnx":
        return ModelInfo.from_metadata(read_onnx_metadata(p), str(p))
    if p.is_dir():
        raise ZsdError(f"{p} is a directory but not a zsdeploy bundle (no bundle.json).",
                       "pass an .onnx, a .plan or the bundle directory export-model wrote.")
    raise ZsdError(f"{p} is neither an ONNX model (.onnx), a TensorRT engine ({', '.join(ENGINE_SUFFIXES)}) nor "
                   "a bundle directory.", "pass the file or directory export-model or build-engine wrote.")


def family_of(info: ModelInfo) -> ModelFamily:
    """The registered family that reads an artifact with this metadata."""
    if info.model not in MODELS:
        raise ZsdError(f"the model was exported as {info.model!r}, which this zsdeploy has no family for.",
                       f"upgrade zsdeploy, or use a model of {', '.join(MODELS.names())}.")
    return MODELS.get(info.model)


def family_for(path: str | os.PathLike) -> tuple[ModelFamily, ModelInfo | None]:
    """(family, metadata) of an artifact; metadata is None for a bundle directory (its graphs carry it).
    A graph that runs only inside a bundle is refused here."""
    from .zegformer import bundle_root

    p = Path(path)
    if not p.exists():
        raise ZsdError(f"--model {p} does not exist.", "pass the .onnx / .plan / bundle export-model wrote.")
    if bundle_root(p) is not None:
        return _bundle_family(), None
    info = artifact_info(p)
    family = family_of(info)
    family.check_single_graph(info, p)
    return family, info


def open_pipeline(path: str | os.PathLike, opts: OpenOptions | None = None) -> Pipeline:
    """Any zsdeploy artifact (.onnx, .plan, bundle directory) as a ready Pipeline, through its family."""
    family, _ = family_for(path)
    return family.open_pipeline(Path(path), opts or OpenOptions())
