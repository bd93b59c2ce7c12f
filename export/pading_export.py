"""PADing: build from config + checkpoint, and describe the exported graph (metadata_props)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint, config
from .classes import classes_for
from .models.pading import PADing, PADingSpec
from ..runtime.artifacts.onnx_metadata import ExportRecord, InferenceSettings
from .onnx_export import ExportShape, input_facts, provenance
from .standin import STANDIN_VARIANTS, load_standin


@dataclass
class BuiltModel:
    model: torch.nn.Module
    spec: PADingSpec
    settings: InferenceSettings
    task: str
    config_path: Path
    weights: str  # "standin" or the checkpoint path
    sha256: str
    notes: list[str]
    standin: str = ""  # stand-in variant ("golden" or "diverse") when weights == "standin"


#: `--weights demo`: the demo PADing trained by zsdeploy (benchmarks/demo_model) and the config it was trained with.
DEMO_WEIGHTS_NAME = "demo"
DEMO_CONFIG_NAME = "demo_panoptic"


def demo_weights_path() -> Path:
    """The shipped demo checkpoint (package data of zsdeploy.export, in export/demo_weights/ with its model card)."""
    from importlib import resources

    return Path(str(resources.files("zsdeploy.export") / "demo_weights" / "demo_panoptic.pth"))


def build_pading(task: str, config_path: str | Path | None = None, weights: str | Path | None = None,
                 standin: str = "golden") -> BuiltModel:
    """PADing in eval mode with a checkpoint, or deterministic stand-in weights when `weights` is None.

    `weights="demo"` is the demo model zsdeploy trained on generated scenes (with its config
    configs/pading/demo_panoptic.yaml unless `config_path` is given). `standin` picks the stand-in variant
    (zsdeploy.export.standin): "golden" (the golden-fixture rule) or "diverse" (queries made to differ, so
    panoptic/instance outputs are non-empty); ignored with `weights`."""
    from ..runtime.errors import ZsdError

    if task not in config.PADING_TASKS:
        raise ZsdError(f"unknown PADing task {task!r}.", f"choose --task from {config.PADING_TASKS}.")
    if standin not in STANDIN_VARIANTS:
        raise ZsdError(f"unknown stand-in variant {standin!r}.",
                       f"choose --standin from {', '.join(STANDIN_VARIANTS)}.")
    if weights is not None and str(weights) == DEMO_WEIGHTS_NAME and not Path(str(weights)).is_file():
        weights = demo_weights_path()
        if not weights.is_file():
            raise ZsdError(f"the demo weights are missing from this installation ({weights}).",
                           "reinstall zsdeploy (the wheel ships them), or pass a checkpoint with --weights.")
        config_path = config_path or config.released_config("pading", DEMO_CONFIG_NAME)
    path = Path(config_path) if config_path else config.released_config("pading", task)
    cfg = config.load_config(path)
    spec = config.pading_spec(cfg)
    model = PADing(spec).eval()
    notes = [f"config: ignored {t} (training-only, never executed)" for t in getattr(cfg, "ignored_python_tags", [])]
    if weights is None:
        load_standin(model, standin)
        return BuiltModel(model, spec, config.test_settings(cfg), task, path, "standin", "", notes, standin)
    report = checkpoint.load_into(model, weights, checkpoint.PADING_TRAINING_ONLY)
    notes += report.notes
    notes.append(f"checkpoint: {report.used} tensors used, {len(report.dropped)} training-only dropped")
    return BuiltModel(model, spec, config.test_settings(cfg), task, path, str(weights), report.sha256, notes)


def pading_metadata(built: BuiltModel, shape: ExportShape, *, opset: int, msda: str) -> ExportRecord:
    """What a PADing graph records about itself (runtime.artifacts.onnx_metadata's typed record)."""
    classes, class_note = classes_for(built.task, built.spec.num_classes)
    standin = built.weights == "standin"
    label = ("standin" if standin else DEMO_WEIGHTS_NAME if Path(built.weights) == demo_weights_path()
             else Path(built.weights).name)
    return ExportRecord(
        model="pading", task=built.task,
        provenance=provenance(weights=label, checkpoint_sha256=built.sha256, config_path=built.config_path,
                              opset=opset),
        classes=classes.facts(class_note),
        input=input_facts(shape, built.spec.pixel_mean, built.spec.pixel_std),
        settings=built.settings, num_queries=built.spec.num_queries,
        extra={
            "input_name": "images",
            "output_names": ["class_logits", "mask_logits"],
            "msda_lowering": msda,
            # which stand-in rule, so `zsd-bench accuracy` rebuilds the same reference (absent in older exports: golden)
            "standin_variant": (built.standin or "golden") if standin else "",
        })


def export_pading(output: str | Path, *, task: str = "panoptic", config: str | Path | None = None,
                  weights: str | Path | None = None, standin: str = "golden", height: int = 800, width: int = 1216,
                  batch: int = 1, dynamic: bool = False, opset: int | None = None, msda: str = "gridsample",
                  simplify: bool = True, precision: object = None, say: Callable[[str], None] = print) -> Path:
    """Build PADing (checkpoint or stand-in), trace it to ONNX with its metadata, convert it to `precision`
    (an export.precision.PrecisionOptions; None = fp32) and write `output` atomically. What `export-model
    --model pading` runs; returns the written path."""
    from ..runtime.errors import ZsdError
    from .onnx_export import DEFAULT_OPSET, Progress, check_and_simplify, save_atomic, set_metadata, trace_to_onnx
    from .precision import PrecisionOptions, check_options, convert
    from ..runtime.files import check_output_file
    from .standin import STANDIN_WARNING

    output = Path(output)
    opset = DEFAULT_OPSET if opset is None else opset
    if output.suffix != ".onnx":
        raise ZsdError(f"--output {output} should end in .onnx.", f"use --output {output.with_suffix('.onnx')}.")
    shape = ExportShape(height, width, batch, dynamic)
    shape.validate()
    popts = precision if isinstance(precision, PrecisionOptions) else PrecisionOptions()
    check_options(popts)  # wrong precision flags fail now, not after a minute of tracing
    check_output_file(output)  # so does a read-only, full or impossible --output
    progress = Progress(4 if popts.precision == "fp32" else 5, say)
    with progress.step(f"building PADing {task}" + ("" if weights else f" ({standin} stand-in)")):
        built = build_pading(task, config, weights, standin=standin)
    for note in built.notes:
        say(f"  note: {note}")
    if built.weights == "standin":
        say(STANDIN_WARNING)
    dims = "dynamic batch/H/W" if shape.dynamic else f"{shape.batch}x3x{shape.height}x{shape.width}"
    with progress.step(f"tracing to ONNX ({dims}, opset {opset}, MSDeformAttn as {msda}; ~1 min)"):
        proto = trace_to_onnx(built.model, shape, opset=opset, msda=msda)
    with progress.step("checking, inferring shapes" + (" and simplifying (onnxslim)" if simplify else "")):
        proto = check_and_simplify(proto, simplify=simplify)
    set_metadata(proto, pading_metadata(built, shape, opset=opset, msda=msda))
    if popts.precision == "fp32":
        proto = convert(proto, popts)  # records precision fp32
    else:
        with progress.step(f"converting to {popts.precision}"):
            proto = convert(proto, popts, where="the exported graph", say=say)
    with progress.step(f"writing {output}"):
        save_atomic(proto, output)
    say(f"exported {output} ({output.stat().st_size / 2**20:.1f} MiB, {len(proto.graph.node)} nodes)")
    if built.weights == "standin":
        say(STANDIN_WARNING)
    return output
