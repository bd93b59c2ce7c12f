"""What a model family is, the registry of families, and how an artifact on disk finds its family.

A family owns everything that differs between models (detectron2's registry, MMDeploy's Task): its export, how its
artifacts open as a Pipeline, its PyTorch reference, its precision conversion, its TensorRT engine builds and its
Triton repository. export-model, build-engine, trt-infer, export-triton and zsd-bench ask the family (`MODELS`,
`family_for`, `bundle_family`) and never branch on a model name or on "is this a bundle?"; that question is
answered here once. Heavy parts (torch, TensorRT) are imported inside the methods that need them.

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

from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.options import runtime_precision
from zsdeploy.runtime.registry import Registry

if TYPE_CHECKING:
    from zsdeploy.export.precision import PrecisionOptions
    from zsdeploy.runtime.artifacts.onnx_metadata import ModelInfo
    from zsdeploy.runtime.pipeline import Pipeline
    from zsdeploy.runtime.serving.repository import RepositoryOptions
    from zsdeploy.runtime.tensorrt.builder import BuildResult
    from zsdeploy.runtime.tensorrt.preflight import BuildOptions

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
    precision: PrecisionOptions | None = None  # None = fp32

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
    precision: str = "fp32"  # runtime precision: fp32 | bf16 (f32, the old spelling, is normalised to fp32)
    threads: int | None = None
    plugin_lib: str | None = None
    # open-vocabulary families only
    classes: str | None = None
    classes_file: str | None = None
    text_embeddings: str | None = None
    clip_bpe: str | None = None
    use_cache: bool = True
    say: Say | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", runtime_precision(self.precision))

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


class BundleFamily(ModelFamily):
    """A family whose artifact is a directory of graphs (bundle.json + graphs): it converts, builds and serves the
    directory as a whole. One-graph artifacts (.onnx / .plan) need none of this: the generic paths serve them."""

    artifact = "bundle"

    @abstractmethod
    def convert_precision(self, bundle: Path, output: Path, precision: PrecisionOptions, say: Say = print) -> Path:
        """`export-model --from-onnx BUNDLE --precision P`: a new bundle with its graphs converted."""

    @abstractmethod
    def build_engines(self, opts: BuildOptions, say: Say = print) -> list[BuildResult]:
        """`build-engine --onnx BUNDLE`: a TensorRT engine for each graph, next to it."""

    @abstractmethod
    def write_triton_repository(self, bundle: Path, output: Path, opts: RepositoryOptions) -> Path:
        """`export-triton --model BUNDLE`: a Triton repository serving the bundle."""

    @abstractmethod
    def describe_triton_repository(self, repository: Path) -> str:
        """One sentence on what the repository `write_triton_repository` wrote serves."""


MODELS: Registry[ModelFamily] = Registry("model")


def register_family(cls: type[ModelFamily]) -> type[ModelFamily]:
    """Class decorator: register one instance of a ModelFamily subclass under its `name`."""
    MODELS.register(cls.name)(cls())
    return cls


def check_shape(req: ExportRequest) -> None:
    """--height/--width/--batch/--dynamic as every exporter takes them."""
    from zsdeploy.export.onnx_export import check_shape_flags

    check_shape_flags(req.height, req.width, req.batch, req.dynamic)


# ------------------------------------------------------------------------------------------------ artifacts
def bundle_family(path: str | os.PathLike, *, whole: bool = False) -> BundleFamily | None:
    """The family whose bundle `path` is, else None (a one-graph artifact, or nothing there).

    `whole=False` also answers for the bundle's segmenter graph (`bundle/segmenter.onnx` runs as its bundle);
    `whole=True` only for the directory itself (build-engine and export-triton treat a single graph as one graph).
    bundle.json belongs to the one family that writes bundles (ZegFormer); a second bundle family would be told
    apart by the manifest's model field.
    """
    from zsdeploy.runtime.artifacts.bundle_manifest import bundle_root, is_bundle

    p = Path(path)
    if not (is_bundle(p) if whole else bundle_root(p) is not None):
        return None
    return next(f for f in map(MODELS.get, MODELS) if isinstance(f, BundleFamily))


def artifact_info(path: str | os.PathLike) -> ModelInfo:
    """The metadata of an .onnx or a .plan (its sidecar's copy of the ONNX metadata)."""
    from zsdeploy.runtime.artifacts.onnx_metadata import ModelInfo, read_onnx_metadata
    from zsdeploy.runtime.backends import ENGINE_SUFFIXES

    p = Path(path)
    if p.suffix in ENGINE_SUFFIXES:
        from zsdeploy.runtime.artifacts.sidecar import read_sidecar

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
    p = Path(path)
    if not p.exists():
        raise ZsdError(f"--model {p} does not exist.", "pass the .onnx / .plan / bundle export-model wrote.")
    bundled = bundle_family(p)
    if bundled is not None:
        return bundled, None
    info = artifact_info(p)
    family = family_of(info)
    family.check_single_graph(info, p)
    return family, info


def open_pipeline(path: str | os.PathLike, opts: OpenOptions | None = None) -> Pipeline:
    """Any zsdeploy artifact (.onnx, .plan, bundle directory) as a ready Pipeline, through its family."""
    family, _ = family_for(path)
    return family.open_pipeline(Path(path), opts or OpenOptions())


def convert_precision(source: str | os.PathLike, output: str | os.PathLike, precision: PrecisionOptions,
                      say: Say = print) -> Path:
    """`export-model --from-onnx`: a bundle through its family, else the one graph (a foreign fp32 ONNX without
    zsdeploy metadata converts too)."""
    family = bundle_family(source)
    if family is not None:
        return family.convert_precision(Path(source), Path(output), precision, say)
    from zsdeploy.export.precision import convert_onnx_file

    return convert_onnx_file(Path(source), Path(output), precision, say)


def build_engines(opts: BuildOptions, say: Say = print) -> list[BuildResult]:
    """`build-engine`: every engine of the artifact `opts.onnx` (preflight checks a one-graph model first)."""
    family = bundle_family(opts.onnx, whole=True)
    if family is not None:
        return family.build_engines(opts, say)
    from zsdeploy.runtime.tensorrt.builder import build_engine

    return [build_engine(opts, say=say)]


def write_triton_repository(model: str | os.PathLike, output: str | os.PathLike,
                            opts: RepositoryOptions | None = None) -> Path:
    """`export-triton`: the Triton repository of a bundle (its family's writer) or of a one-graph export."""
    from zsdeploy.runtime.serving.repository import RepositoryOptions, write_repository

    from zsdeploy.runtime.backends import ENGINE_SUFFIXES

    opts = opts or RepositoryOptions()
    family = bundle_family(model, whole=True)
    if family is not None:
        return family.write_triton_repository(Path(model), Path(output), opts)
    if Path(model).is_file() and Path(model).suffix in (".onnx", *ENGINE_SUFFIXES):
        family_for(model)  # a graph that runs only inside its bundle is refused by its family
    return write_repository(model, output, opts)


def describe_triton_repository(model: str | os.PathLike, repository: Path) -> str:
    """What the repository export-triton wrote for `model` serves (its writer's own description)."""
    family = bundle_family(model, whole=True)
    if family is not None:
        return family.describe_triton_repository(repository)
    from zsdeploy.runtime.serving.repository import describe_repository

    return describe_repository(repository)
