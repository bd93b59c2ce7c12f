"""ZegFormer: config, build (checkpoint + CLIP), metadata, and the export bundle.

A bundle is a directory of self-describing ONNX graphs:
- `segmenter.onnx`: images [B,3,H,W] (RGB 0..255, padded with the pixel mean) + text_embeddings [C,512]
  -> class_logits [B,Q,C+1] (void last), mask_logits [B,Q,H/4,W/4]. C is dynamic: the vocabulary is chosen
  at run time.
- `text_encoder.onnx`: token_ids [N,L<=77] int64 (CLIP BPE, see runtime.tokenizer) -> L2-normalised [N,512].
- `crop_classifier.onnx` (configs with CLIP_CLASSIFICATION, "gzss"): images, image_sizes [B,2], the segmenter's
  mask_logits and text_embeddings_clip [C,512] -> clip_logits [B,Q,C] (see models/zegformer_clip.py); the fusion
  with class_logits is post-processing (`models.zegformer_clip.semantic_inference` is its PyTorch reference).
- `bundle.json`: what the bundle holds and how to use it (graphs and embeddings with their sizes and sha256s,
  default vocabulary, prompt templates, fusion settings, what it was made from): format "zsdeploy-bundle/2",
  written and read only by runtime.artifacts.bundle_manifest.
- `text_embeddings.npy` (+ `text_embeddings_clip.npy` for gzss configs): the default vocabulary embedded with the
  config's prompt ensemble, when CLIP's BPE vocabulary file is available at export time.

Graphs are fp32, or with `precision` fp16 the segmenter and crop classifier are converted after tracing
(export.zegformer_precision; the text encoder stays fp32); bundle.json and each graph's metadata record it.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch

from ..runtime.artifacts.bundle_manifest import (
    EMBEDDINGS,
    BundleClasses,
    BundleClip,
    BundleExporter,
    BundleFusion,
    BundleInput,
    BundleManifest,
    BundlePrompts,
    BundleSource,
    GraphPrecision,
    describe_file,
    write_bundle_manifest,
)
from ..runtime.artifacts.onnx_metadata import ExportRecord, InferenceSettings, metadata_of
from ..runtime.errors import ZsdError
from ..runtime.prompts import TEMPLATE_SETS, class_text_embeddings
from . import checkpoint
from .classes import ClassList, load_class_list
from .config import (
    CONFIG_DIR,
    DETECTRON2_RESNET_DEFAULTS,
    cfg_get,
    list_or,
    load_config,
    mask_former_spec_fields,
    raise_if_unsupported,
)
from .models.clip import CLIP, CLIPSpec, CLIPTextEncoder, build_clip
from .models.zegformer import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, ZegFormer, ZegFormerSpec
from .onnx_export import (
    DEFAULT_OPSET,
    EXPORTER_VERSION,
    SUPPORTED_OPSETS,
    ExportShape,
    convert_opset,
    quiet_exporter,
    check_and_simplify,
    input_facts,
    provenance,
    save_atomic,
    set_metadata,
)
from .bundle_write import check_bundle_target, publish, staging_dir
from .standin import STANDIN_WARNING, load_standin

if TYPE_CHECKING:
    from .precision import PrecisionOptions

# Checkpoint keys inference never reads (see ../shared/golden/manifests/NOTES.md).
ZEGFORMER_TRAINING_ONLY = ("criterion.",)
# In gzss checkpoints CLIP rides along under this prefix; it is loaded from --clip instead (or from here).
ZEGFORMER_CLIP_IN_CHECKPOINT = ("sem_seg_head.predictor.clip_model.",)

RELEASED_CONFIGS = {
    "cocostuff_r101": "COCO-Stuff 156 seen classes, R101 (zegformer_R101_bs32_60k_vit16_coco-stuff.yaml)",
    "cocostuff_r101_gzss": "COCO-Stuff 171 classes + CLIP crop classifier (..._coco-stuff_gzss_eval.yaml)",
    "cocostuff_r50": "COCO-Stuff 156 seen classes, R50",
    "cocostuff_r50_gzss": "COCO-Stuff 171 classes + CLIP crop classifier, R50",
    "voc_r101": "PASCAL VOC 15 seen classes, R101",
    "voc_r101_gzss": "PASCAL VOC 20 classes + CLIP crop classifier (ensembling), R101",
    "voc_r50_gzss": "PASCAL VOC 20 classes, CLIP crop classifier alone (no ensembling), R50",
    "ade847_r50": "ADE20K-full 572 seen classes, R50",
    "ade847_r50_gzss": "ADE20K-full 847 classes + CLIP crop classifier, R50",
}
DEFAULT_CONFIG = "cocostuff_r101"

# detectron2 defaults + ZegFormer's add_mask_former_config, for every key inference reads.
_DEFAULTS: dict[str, Any] = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.BACKBONE.NAME": "build_resnet_backbone",
    "MODEL.PIXEL_MEAN": [103.530, 116.280, 123.675],
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
    **DETECTRON2_RESNET_DEFAULTS,
    "MODEL.RESNETS.OUT_FEATURES": ["res4"],
    "MODEL.SEM_SEG_HEAD.NAME": "SemSegFPNHead",
    "MODEL.SEM_SEG_HEAD.IN_FEATURES": ["p2", "p3", "p4", "p5"],
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 54,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": 128,
    "MODEL.SEM_SEG_HEAD.MASK_DIM": 256,
    "MODEL.SEM_SEG_HEAD.NORM": "GN",
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "BasePixelDecoder",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 0,
    "MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON": "datasets/ADE20K_2021_17_01/ADE20K_847.json",
    "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON": "datasets/ADE20K_2021_17_01/ADE20K_847.json",
    "MODEL.SEM_SEG_HEAD.CLIP_CLASSIFICATION": False,
    "MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED": "ViT-B/32",
    "MODEL.SEM_SEG_HEAD.WORDVEC": False,
    "MODEL.SEM_SEG_HEAD.TEMPERATURE": 0.01,
    "MODEL.PROMPT_ENSEMBLE_TYPE": "single",
    "MODEL.CLIP_PIXEL_MEAN": list(CLIP_PIXEL_MEAN),
    "MODEL.CLIP_PIXEL_STD": list(CLIP_PIXEL_STD),
    "MODEL.CLIP_CLS_STYLE": "cropmask",
    "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "res5",
    "MODEL.MASK_FORMER.DEEP_SUPERVISION": True,
    "MODEL.MASK_FORMER.HIDDEN_DIM": 256,
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 100,
    "MODEL.MASK_FORMER.NHEADS": 8,
    "MODEL.MASK_FORMER.DROPOUT": 0.1,
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 2048,
    "MODEL.MASK_FORMER.ENC_LAYERS": 0,
    "MODEL.MASK_FORMER.DEC_LAYERS": 6,
    "MODEL.MASK_FORMER.PRE_NORM": False,
    "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ": False,
    "MODEL.MASK_FORMER.SIZE_DIVISIBILITY": 32,
    "MODEL.MASK_FORMER.GZERO_CALIBRATE": -1.0,
    "MODEL.MASK_FORMER.ENSEMBLING": False,
    "MODEL.MASK_FORMER.ENSEMBLING_ALL_CLS": False,
    "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": False,
    "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": 0.0,
    "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD": 0.0,
    "MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": False,
    "INPUT.FORMAT": "BGR",
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "DATASETS.TEST": [],
    "TEST.AUG.ENABLED": False,
}

# Default vocabulary by class count (the released configs' TEST_CLASS_JSON): list file and which part of it.
_CLASS_LISTS_BY_COUNT = {
    156: ("coco_stuff_171_zegformer", "seen"), 171: ("coco_stuff_171_zegformer", "all"),
    15: ("voc_20", "seen"), 20: ("voc_20", "all"),
    572: ("ade_847", "seen"), 847: ("ade_847", "all"),
}
_CLIP_NAMES = {"ViT-B/16": (16, 224), "ViT-B/32": (32, 224)}  # patch size, input resolution


# ------------------------------------------------------------------------------------------------------ config
def released_zegformer_config(name: str = DEFAULT_CONFIG) -> Path:
    path = CONFIG_DIR / "zegformer" / f"{name}.yaml"
    if not path.is_file():
        raise ZsdError(f"no released ZegFormer config {name!r} in {CONFIG_DIR / 'zegformer'}.",
                       f"choose one of {sorted(RELEASED_CONFIGS)} or pass --config FILE.")
    return path


def resolve_zegformer_config(config: str | os.PathLike | None) -> Path:
    """None -> the default released config; a released name (e.g. "cocostuff_r101_gzss") -> its file; else a path."""
    if config is None:
        return released_zegformer_config()
    if isinstance(config, str) and config in RELEASED_CONFIGS and not Path(config).exists():
        return released_zegformer_config(config)
    return Path(config)


def load_zegformer_config(path: str | os.PathLike):
    """Upstream ZegFormer YAML (with `_BASE_`) over detectron2 + ZegFormer defaults; embedded Python is never run."""
    return load_config(path, _DEFAULTS, example="configs/zegformer/cocostuff_r101.yaml",
                       kind="ZegFormer (detectron2 schema)")


def zegformer_spec(cfg) -> ZegFormerSpec:
    """Validate that the config describes the architecture we implement and extract its parameters."""
    checks = {
        "MODEL.META_ARCHITECTURE": "MaskFormer",
        "MODEL.BACKBONE.NAME": "build_resnet_backbone",
        "MODEL.RESNETS.NUM_GROUPS": 1, "MODEL.RESNETS.WIDTH_PER_GROUP": 64, "MODEL.RESNETS.RES5_DILATION": 1,
        "MODEL.RESNETS.NORM": "FrozenBN",
        "MODEL.RESNETS.DEFORM_ON_PER_STAGE": [False, False, False, False],
        "MODEL.RESNETS.OUT_FEATURES": ["res2", "res3", "res4", "res5"],
        "MODEL.SEM_SEG_HEAD.NAME": "ZegFormerHead",
        "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "BasePixelDecoder",
        "MODEL.SEM_SEG_HEAD.IN_FEATURES": ["res2", "res3", "res4", "res5"],
        "MODEL.SEM_SEG_HEAD.WORDVEC": False,
        "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "res5",
        "MODEL.MASK_FORMER.ENC_LAYERS": 0,
        "MODEL.CLIP_CLS_STYLE": "cropmask",
        "INPUT.FORMAT": "RGB",
        "TEST.AUG.ENABLED": False,
    }
    unsupported = [f"{k}={cfg_get(cfg, k)!r} (supported: {v!r})" for k, v in checks.items()
                   if list_or(cfg_get(cfg, k)) != v]
    if cfg.MODEL.RESNETS.DEPTH not in (50, 101):
        unsupported.append(f"MODEL.RESNETS.DEPTH={cfg.MODEL.RESNETS.DEPTH} (supported: 50, 101)")
    if cfg.MODEL.SEM_SEG_HEAD.NORM not in ("GN", ""):
        unsupported.append(f"MODEL.SEM_SEG_HEAD.NORM={cfg.MODEL.SEM_SEG_HEAD.NORM!r} (supported: 'GN', '')")
    if str(cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED) not in _CLIP_NAMES:
        unsupported.append(f"MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED={cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED!r} "
                           f"(supported: {sorted(_CLIP_NAMES)}; the text space must be 512-d)")
    if cfg.MODEL.MASK_FORMER.ENSEMBLING and cfg.MODEL.MASK_FORMER.ENSEMBLING_ALL_CLS:
        unsupported.append("both MASK_FORMER.ENSEMBLING and ENSEMBLING_ALL_CLS (upstream asserts one at most)")
    if cfg.MODEL.PROMPT_ENSEMBLE_TYPE not in ("single", "imagenet_select", "imagenet"):
        unsupported.append(f"MODEL.PROMPT_ENSEMBLE_TYPE={cfg.MODEL.PROMPT_ENSEMBLE_TYPE!r} "
                           "(supported: single, imagenet_select, imagenet)")
    raise_if_unsupported("ZegFormer", unsupported)
    return ZegFormerSpec(
        norm=str(cfg.MODEL.SEM_SEG_HEAD.NORM),
        dec_layers=int(cfg.MODEL.MASK_FORMER.DEC_LAYERS),
        pre_norm=bool(cfg.MODEL.MASK_FORMER.PRE_NORM),
        enforce_input_proj=bool(cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ),
        text_dim=512,
        **mask_former_spec_fields(cfg),
    )


@dataclass(frozen=True)
class ZegFormerSettings:
    """Inference settings outside the graphs (pre-processing, CLIP branch, fusion), for the metadata."""

    num_classes: int
    inference: InferenceSettings  # what every export records (ZegFormer: semantic only)
    prompt_ensemble_type: str
    temperature: float
    clip_pretrained: str
    clip_classification: bool
    clip_cls_style: str
    clip_pixel_mean: tuple[float, ...]
    clip_pixel_std: tuple[float, ...]
    ensembling: bool
    ensembling_all_cls: bool
    gzero_calibrate: float
    test_dataset: str


def zegformer_settings(cfg) -> ZegFormerSettings:
    t = cfg.MODEL.MASK_FORMER.TEST
    min_size = cfg.INPUT.MIN_SIZE_TEST
    datasets = list_or(cfg.DATASETS.TEST)
    return ZegFormerSettings(
        num_classes=int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES),
        inference=InferenceSettings(
            min_size_test=int(min_size[0] if isinstance(min_size, (list, tuple)) else min_size),
            max_size_test=int(cfg.INPUT.MAX_SIZE_TEST),
            size_divisibility=int(cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY),
            semantic_on=True, instance_on=False, panoptic_on=False,
            object_mask_threshold=float(t.OBJECT_MASK_THRESHOLD),
            overlap_threshold=float(t.OVERLAP_THRESHOLD),
            # detectron2's TEST.DETECTIONS_PER_IMAGE default, recorded for completeness (semantic does not use it)
            detections_per_image=100,
            # MaskFormer: SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or PANOPTIC_ON.
            sem_seg_postprocess_before_inference=bool(t.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or t.PANOPTIC_ON)),
        prompt_ensemble_type=str(cfg.MODEL.PROMPT_ENSEMBLE_TYPE),
        temperature=float(cfg.MODEL.SEM_SEG_HEAD.TEMPERATURE),
        clip_pretrained=str(cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED),
        clip_classification=bool(cfg.MODEL.SEM_SEG_HEAD.CLIP_CLASSIFICATION),
        clip_cls_style=str(cfg.MODEL.CLIP_CLS_STYLE),
        clip_pixel_mean=tuple(float(v) for v in cfg.MODEL.CLIP_PIXEL_MEAN),
        clip_pixel_std=tuple(float(v) for v in cfg.MODEL.CLIP_PIXEL_STD),
        ensembling=bool(cfg.MODEL.MASK_FORMER.ENSEMBLING),
        ensembling_all_cls=bool(cfg.MODEL.MASK_FORMER.ENSEMBLING_ALL_CLS),
        gzero_calibrate=float(cfg.MODEL.MASK_FORMER.GZERO_CALIBRATE),
        test_dataset=str(datasets[0]) if datasets else "",
    )


def zegformer_classes(num_classes: int) -> tuple[ClassList, str | None]:
    """The default vocabulary for a released class count (seen part, or all with the unseen split)."""
    if num_classes not in _CLASS_LISTS_BY_COUNT:
        generic = ClassList(tuple(f"class_{i}" for i in range(num_classes)), (True,) * num_classes, (), (),
                            "generic")
        return generic, (f"no released class list has {num_classes} classes; the default vocabulary is written "
                         "as class_<i> (give the real names at run time)")
    name, part = _CLASS_LISTS_BY_COUNT[num_classes]
    full = load_class_list(name)
    if part == "all":
        return full, None
    keep = [i for i in range(len(full.names)) if i not in set(full.unseen)]
    return ClassList(
        names=tuple(full.names[i] for i in keep), isthing=tuple(full.isthing[i] for i in keep), unseen=(),
        colors=tuple(full.colors[i] for i in keep) if full.colors else (), source=f"{full.source} (seen classes)",
    ), None


# ------------------------------------------------------------------------------------------------------- build
@dataclass
class BuiltZegFormer:
    model: ZegFormer
    spec: ZegFormerSpec
    settings: ZegFormerSettings
    classes: ClassList
    config_path: Path
    weights: str  # "standin" or the checkpoint path
    sha256: str
    clip: CLIP | None
    clip_spec: CLIPSpec | None
    clip_source: str  # "standin", a file path, or "" (none)
    clip_sha256: str
    notes: list[str] = field(default_factory=list)


def build_zegformer(config: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
                    clip: str | os.PathLike | None = None, *, need_clip: bool = True) -> BuiltZegFormer:
    """ZegFormer (eval mode) + its CLIP ViT, from an upstream config, a detectron2 checkpoint and OpenAI's CLIP file.

    - config: an upstream YAML path, a released name (RELEASED_CONFIGS), or None for cocostuff_r101.
    - weights None: deterministic stand-in weights (the rule of the golden fixtures); then clip None gives a
      stand-in CLIP ViT-B/16 too.
    - with weights, CLIP comes from `clip` (OpenAI's ViT-B-16.pt or a state dict), or from the checkpoint itself
      when it holds `sem_seg_head.predictor.clip_model.*` (gzss checkpoints); need_clip=False skips CLIP.
    """
    path = resolve_zegformer_config(config)
    if need_clip and clip is None and weights is not None:
        _require_clip_in_checkpoint(weights)
    cfg = load_zegformer_config(path)
    spec = zegformer_spec(cfg)
    settings = zegformer_settings(cfg)
    classes, class_note = zegformer_classes(settings.num_classes)
    notes = [f"config: ignored {t} (training-only, never executed)" for t in getattr(cfg, "ignored_python_tags", [])]
    if class_note:
        notes.append(class_note)
    model = ZegFormer(spec).eval()
    if weights is None:
        load_standin(model)
        built = BuiltZegFormer(model, spec, settings, classes, path, "standin", "", None, None, "", "", notes)
    else:
        report = checkpoint.load_into(model, weights, ZEGFORMER_TRAINING_ONLY + ZEGFORMER_CLIP_IN_CHECKPOINT)
        notes += report.notes
        notes.append(f"checkpoint: {report.used} tensors used, {len(report.dropped)} dropped (training-only or CLIP)")
        built = BuiltZegFormer(model, spec, settings, classes, path, str(weights), report.sha256, None, None, "",
                               "", notes)
    if need_clip:
        _attach_clip(built, clip, weights)
    return built


def _require_clip_in_checkpoint(weights) -> None:
    if not any(k.startswith(ZEGFORMER_CLIP_IN_CHECKPOINT[0]) for k in checkpoint.read_state_dict(weights)):
        raise ZsdError(
            "ZegFormer's text encoder is OpenAI CLIP, which is not in this checkpoint.",
            "pass --clip ViT-B-16.pt (OpenAI's CLIP file named by MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED).")


def _attach_clip(built: BuiltZegFormer, clip, weights) -> None:
    source = clip
    if clip is None and weights is not None:
        source = weights
        built.notes.append(f"CLIP: read from the checkpoint ({ZEGFORMER_CLIP_IN_CHECKPOINT[0]}*)")
    model, cspec, sha = build_clip(source)
    patch, res = _CLIP_NAMES[built.settings.clip_pretrained]
    if (cspec.vision_patch_size, cspec.image_resolution, cspec.embed_dim) != (patch, res, built.spec.text_dim):
        raise ZsdError(
            f"the CLIP file is a ViT with {cspec.vision_patch_size}-pixel patches at {cspec.image_resolution}px and "
            f"{cspec.embed_dim}-d embeddings, but the config names {built.settings.clip_pretrained} "
            f"({patch}-pixel patches at {res}px, {built.spec.text_dim}-d).",
            f"pass OpenAI's {built.settings.clip_pretrained.replace('/', '-')}.pt, the CLIP this model was "
            "trained with.")
    built.clip, built.clip_spec = model, cspec
    built.clip_source = "standin" if source is None else str(source)
    built.clip_sha256 = sha


# ---------------------------------------------------------------------------------------------------- metadata
def zegformer_metadata(built: BuiltZegFormer, shape: ExportShape, *, graph: str, opset: int,
                       files: dict[str, str] | None = None) -> ExportRecord:
    """What one bundle graph records about itself (every graph carries the model-level facts; `graph` says which)."""
    s, c = built.settings, built.classes
    meta: dict[str, object] = {
        "graph": graph,
        "clip_weights": "standin" if built.clip_source == "standin" else Path(built.clip_source).name,
        "clip_sha256": built.clip_sha256,
        "standin_clip": built.clip_source == "standin",
        "clip_model": s.clip_pretrained,
        "text_dim": built.spec.text_dim,
        "void_class": "last",
        "clip_pixel_mean": list(s.clip_pixel_mean),
        "clip_pixel_std": list(s.clip_pixel_std),
        "logit_scale": float(built.model.sem_seg_head.predictor.logit_scale.exp().item()),
        "prompt_ensemble_type": s.prompt_ensemble_type,
        "prompt_templates": list(TEMPLATE_SETS[s.prompt_ensemble_type]),
        "clip_prompt_templates": list(TEMPLATE_SETS["clip"]),
        "tokenizer": "clip-bpe-49408",
        "context_length": 77,
        "clip_classification": s.clip_classification,
        "clip_cls_style": s.clip_cls_style,
        "ensembling": s.ensembling,
        "ensembling_all_cls": s.ensembling_all_cls,
        "ensembling_lambda": 2.0 / 3.0,
        "gzero_calibrate": s.gzero_calibrate,
    }
    if graph == "segmenter":
        meta.update({
            "input_name": "images",
            "input_names": ["images", "text_embeddings"],
            "output_names": ["class_logits", "mask_logits"],
            "text_embeddings": "[C, text_dim] float32, L2-normalised prompt-ensemble CLIP text embeddings "
                               "(one row per class, in class order); C is dynamic",
        })
    elif graph == "text_encoder":
        meta.update({
            "input_names": ["token_ids"],
            "output_names": ["text_embeddings"],
            "token_ids": "[N, L] int64 CLIP BPE ids (49406, ids..., 49407, zeros), L <= 77: the tower is causal, so "
                         "columns after the last end-of-text token may be dropped without changing the result",
        })
    elif graph == "crop_classifier":
        meta.update({
            "input_name": "images",
            "input_names": ["images", "image_sizes", "mask_logits", "text_embeddings_clip"],
            "output_names": ["clip_logits"],
            "image_sizes": "[B, 2] int64: valid (height, width) of each padded image (CLIP input is zero outside)",
            "text_embeddings_clip": "[C, text_dim] float32, L2-normalised CLIP text embeddings with the 'clip' "
                                    "(32-template) prompt ensemble; C is dynamic",
            "clip_logits": "[B, Q, C] = exp(CLIP logit_scale) * normalised crop embedding @ text_embeddings_clip^T; "
                           "fusion with class_logits (void appended, softmax, seen-mean, exponents, gzero "
                           "calibration) is post-processing",
        })
    if files:
        meta["bundle_files"] = files
    weights = "standin" if built.weights == "standin" else Path(built.weights).name
    return ExportRecord(
        model="zegformer", task="semantic",
        provenance=provenance(weights=weights, checkpoint_sha256=built.sha256, config_path=built.config_path,
                              opset=opset),
        classes=c.facts(), input=input_facts(shape, built.spec.pixel_mean, built.spec.pixel_std),
        settings=s.inference, num_queries=built.spec.num_queries, extra=meta)


# ------------------------------------------------------------------------------------------------------ export
def trace_graph(module: torch.nn.Module, args: tuple[torch.Tensor, ...], *, opset: int,
                input_names: tuple[str, ...], output_names: tuple[str, ...],
                dynamic_shapes: tuple | None) -> onnx.ModelProto:
    """torch.export + the dynamo ONNX exporter, with per-input dynamic dims (any input may be dynamic even when
    the image is static: the vocabulary size always is)."""
    if opset not in SUPPORTED_OPSETS:
        raise ZsdError(f"--opset {opset} is not supported.", f"choose one of {list(SUPPORTED_OPSETS)} (default 18).")
    with torch.no_grad(), quiet_exporter():
        program = torch.onnx.export(
            module, args, dynamo=True, opset_version=opset, input_names=list(input_names),
            output_names=list(output_names), dynamic_shapes=dynamic_shapes, external_data=False, optimize=True,
            verbose=False)
    proto = program.model_proto
    if {o.domain: o.version for o in proto.opset_import}.get("", None) != opset:
        proto = convert_opset(proto, opset)
    _name_dims(proto)
    return proto


_DIM_NAMES = {"images": {0: "batch", 2: "height", 3: "width"}, "text_embeddings": {0: "num_classes"},
              "token_ids": {0: "num_texts", 1: "num_tokens"}, "image_sizes": {0: "batch"},
              "mask_logits": {0: "batch", 2: "height/4", 3: "width/4"}, "text_embeddings_clip": {0: "num_classes"}}


def _name_dims(proto: onnx.ModelProto) -> None:
    for vi in proto.graph.input:
        for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
            name = _DIM_NAMES.get(vi.name, {}).get(axis)
            if name and not dim.HasField("dim_value"):
                dim.dim_param = name


def export_segmenter(built: BuiltZegFormer, shape: ExportShape, *, opset: int = DEFAULT_OPSET,
                     simplify: bool = True) -> onnx.ModelProto:
    shape.validate()
    batch = max(2, shape.batch) if shape.dynamic else shape.batch  # dynamo specialises a dynamic batch of 1
    hw = (shape.height, shape.width) if not shape.dynamic else (256, 320)
    images = torch.rand(batch, 3, *hw, generator=torch.Generator().manual_seed(0)) * 255
    text = torch.nn.functional.normalize(torch.randn(3, built.spec.text_dim, generator=torch.Generator()
                                                     .manual_seed(1)), dim=-1)
    classes = torch.export.Dim("num_classes", min=1, max=65536)
    if shape.dynamic:
        b = torch.export.Dim("batch", min=1, max=256)
        h = torch.export.Dim("h32", min=1, max=256)
        w = torch.export.Dim("w32", min=1, max=256)
        dyn = ({0: b, 2: 32 * h, 3: 32 * w}, {0: classes})
    else:
        dyn = (None, {0: classes})
    proto = trace_graph(built.model, (images, text), opset=opset, input_names=("images", "text_embeddings"),
                        output_names=("class_logits", "mask_logits"), dynamic_shapes=dyn)
    return check_and_simplify(proto, simplify=simplify)


def export_text_encoder(built: BuiltZegFormer, *, opset: int = DEFAULT_OPSET,
                        simplify: bool = True) -> onnx.ModelProto:
    if built.clip is None:
        raise ZsdError("no CLIP model was built.", "build with need_clip=True and a --clip file.")
    encoder = CLIPTextEncoder(built.clip).eval()
    n_ctx = built.clip_spec.context_length
    ids = torch.zeros(3, n_ctx, dtype=torch.int64)
    for row, body in enumerate(([320, 1929], [320, 2368, 530], [22697])):
        ids[row, :len(body) + 2] = torch.tensor([49406, *body, 49407])
    texts = torch.export.Dim("num_texts", min=1, max=65536)
    # The token axis is dynamic too (<= context length): trailing padding columns may be dropped (causal tower).
    tokens = torch.export.Dim("num_tokens", min=2, max=n_ctx)
    proto = trace_graph(encoder, (ids[:, :8],), opset=opset, input_names=("token_ids",),
                        output_names=("text_embeddings",), dynamic_shapes=({0: texts, 1: tokens},))
    return check_and_simplify(proto, simplify=simplify)


def export_crop_classifier(built: BuiltZegFormer, shape: ExportShape, *, opset: int = DEFAULT_OPSET,
                           simplify: bool = True) -> onnx.ModelProto:
    """The gzss CLIP crop classifier graph (see models/zegformer_clip.py) for the segmenter's input shape.

    RoIAlign's adaptive sampling grid is bounded by ceil(longest padded side / 224): from the static size, or
    from INPUT.MAX_SIZE_TEST (rounded up to the size divisibility) for a dynamic graph.
    """
    from .models.zegformer_clip import CLIPCropClassifier

    if built.clip is None:
        raise ZsdError("no CLIP model was built.", "build with need_clip=True and a --clip file.")
    shape.validate()
    s = built.settings
    res = built.clip_spec.image_resolution
    if shape.dynamic:
        div = max(s.inference.size_divisibility, 32)
        longest = -(-s.inference.max_size_test // div) * div
    else:
        longest = max(shape.height, shape.width)
    module = CLIPCropClassifier(built.clip, s.clip_pixel_mean, s.clip_pixel_std,
                                max_grid=max(1, -(-longest // res))).eval()
    batch = max(2, shape.batch) if shape.dynamic else shape.batch
    hw = (shape.height, shape.width) if not shape.dynamic else (256, 320)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, *hw, generator=g) * 255
    sizes = torch.tensor([list(hw)] * batch, dtype=torch.int64)
    masks = torch.randn(batch, built.spec.num_queries, hw[0] // 4, hw[1] // 4, generator=g)
    text = torch.nn.functional.normalize(torch.randn(3, built.clip_spec.embed_dim, generator=g), dim=-1)
    classes = torch.export.Dim("num_classes", min=1, max=65536)
    if shape.dynamic:
        b = torch.export.Dim("batch", min=1, max=256)
        h = torch.export.Dim("h32", min=1, max=256)
        w = torch.export.Dim("w32", min=1, max=256)
        dyn = ({0: b, 2: 32 * h, 3: 32 * w}, {0: b}, {0: b, 2: 8 * h, 3: 8 * w}, {0: classes})
    else:
        dyn = (None, None, None, {0: classes})
    proto = trace_graph(module, (images, sizes, masks, text), opset=opset,
                        input_names=("images", "image_sizes", "mask_logits", "text_embeddings_clip"),
                        output_names=("clip_logits",), dynamic_shapes=dyn)
    return check_and_simplify(proto, simplify=simplify)


def default_text_embeddings(built: BuiltZegFormer, bpe_path: str | os.PathLike | None,
                            templates: str) -> np.ndarray:
    """The default vocabulary embedded with PyTorch CLIP (prompt ensemble `templates`), float32 [C, 512]."""
    from ..runtime.tokenizer import ClipTokenizer

    tokenizer = ClipTokenizer(bpe_path)
    encoder = CLIPTextEncoder(built.clip).eval()

    def encode(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return encoder(torch.from_numpy(ids)).numpy()

    return class_text_embeddings(list(built.classes.names), templates, tokenizer.tokenize, encode)


def export_zegformer(output: str | os.PathLike, *, config: str | os.PathLike | None = None,
                     weights: str | os.PathLike | None = None, clip: str | os.PathLike | None = None,
                     height: int = 640, width: int = 640, batch: int = 1, dynamic: bool = False,
                     opset: int = DEFAULT_OPSET, simplify: bool = True, clip_bpe: str | os.PathLike | None = None,
                     embed_defaults: bool = True, precision: PrecisionOptions | None = None,
                     say: Callable[[str], None] = print) -> Path:
    """Write a ZegFormer bundle directory (see the module docstring) and return its path.

    `clip_bpe`: CLIP's bpe_simple_vocab_16e6.txt.gz (else $ZSD_CLIP_BPE or an installed open_clip/clip package);
    when none is found the default-vocabulary embeddings are skipped with a note (the graphs are written anyway).
    `precision`: an export.precision.PrecisionOptions (None = fp32); fp16 converts the segmenter and the crop
    classifier, the text encoder stays fp32 (export.zegformer_precision).
    """
    from .onnx_export import Progress
    from .zegformer_precision import convert_graph, zegformer_precision_options

    out = Path(output)
    if out.suffix == ".onnx":
        raise ZsdError(f"--output {out}: a ZegFormer export is a bundle DIRECTORY of graphs, not one .onnx file.",
                       f"use --output {out.with_suffix('')}.")
    popts = zegformer_precision_options(precision)  # wrong precision flags fail now, not after minutes of tracing
    check_bundle_target(out)  # before the slow build: a bad --output fails at once
    shape = ExportShape(height, width, batch, dynamic)
    shape.validate()
    cfg_path = resolve_zegformer_config(config)
    gzss = zegformer_settings(load_zegformer_config(cfg_path)).clip_classification
    reduced = popts.precision != "fp32"
    progress = Progress(4 + int(embed_defaults) + int(gzss) + int(reduced), say)
    with progress.step("building ZegFormer and CLIP"):
        built = build_zegformer(cfg_path, weights, clip)
    for note in built.notes:
        say(f"  note: {note}")
    if built.weights == "standin":
        say(STANDIN_WARNING)
    files = {"segmenter": "segmenter.onnx", "text_encoder": "text_encoder.onnx"}
    embeddings: dict[str, np.ndarray] = {}
    if embed_defaults:
        with progress.step(f"embedding the default vocabulary ({len(built.classes.names)} classes, "
                           f"'{built.settings.prompt_ensemble_type}' prompts)"):
            try:
                embeddings["text_embeddings"] = default_text_embeddings(
                    built, clip_bpe, built.settings.prompt_ensemble_type)
                if built.settings.clip_classification:
                    embeddings["text_embeddings_clip"] = default_text_embeddings(built, clip_bpe, "clip")
            except ZsdError as e:
                if "BPE vocabulary" not in e.problem:
                    raise
                say(f"  note: default text embeddings skipped: {e.problem} The runtime computes them from "
                    "class names when it has the vocabulary file.")
        for name in embeddings:
            files[name] = f"{name}.npy"
    dims = "dynamic batch/H/W" if shape.dynamic else f"{shape.batch}x3x{shape.height}x{shape.width}"
    with progress.step(f"tracing the segmenter ({dims}, dynamic class count, opset {opset}; ~1 min)"):
        seg = export_segmenter(built, shape, opset=opset, simplify=simplify)
    with progress.step("tracing the CLIP text encoder (dynamic number of texts)"):
        txt = export_text_encoder(built, opset=opset, simplify=simplify)
    crop = None
    if built.settings.clip_classification:
        files["crop_classifier"] = "crop_classifier.onnx"
        with progress.step("tracing the CLIP crop classifier (masked box crops -> ViT image tower)"):
            crop = export_crop_classifier(built, shape, opset=opset, simplify=simplify)
    graphs = {"segmenter": seg, "text_encoder": txt, **({"crop_classifier": crop} if crop is not None else {})}
    for graph, proto in graphs.items():
        set_metadata(proto, zegformer_metadata(built, shape, graph=graph, opset=opset, files=files))
    with progress.step(f"converting the segmenter{' and crop classifier' if crop is not None else ''} to "
                       f"{popts.precision} (text encoder fp32)") if reduced else contextlib.nullcontext():
        # every graph records its precision (fp32 too), as PADing exports do
        graphs = {g: convert_graph(p, g, popts, where=f"the {g} graph", say=say) for g, p in graphs.items()}
    with progress.step(f"writing {out}/"), staging_dir(out) as stage:
        # Every file goes to a hidden sibling folder first; the bundle appears (or replaces the old one) whole.
        for graph, proto in graphs.items():
            save_atomic(proto, stage / files[graph])
        for name, arr in embeddings.items():
            np.save(stage / files[name], arr)
        precisions = {g: GraphPrecision.from_metadata(metadata_of(p)) for g, p in graphs.items()}
        write_bundle_manifest(stage, zegformer_bundle_manifest(built, shape, opset=opset, stage=stage, files=files,
                                                               precisions=precisions))
        interrupted = publish(stage, out)
    if interrupted:
        say(f"  note: an interrupt arrived while the bundle was put in place; it was held until {out} was complete.")
    say(f"exported bundle {out}: " + ", ".join(sorted(files.values())))
    if reduced:
        say("  precision: " + ", ".join(f"{g} {p.describe()}" for g, p in precisions.items()))
    if built.weights == "standin":
        say(STANDIN_WARNING)
    return out


def zegformer_bundle_manifest(built: BuiltZegFormer, shape: ExportShape, *, opset: int, stage: Path,
                              files: dict[str, str],
                              precisions: Mapping[str, GraphPrecision] | None = None) -> BundleManifest:
    """The bundle.json of a bundle whose `files` (graph or embeddings name -> file name) are written in `stage`
    (their sizes and sha256s are taken now); `precisions`: graph name -> its precision (None: not recorded)."""
    s, c = built.settings, built.classes
    standin, standin_clip = built.weights == "standin", built.clip_source == "standin"
    precisions = precisions or {}
    described = {name: describe_file(stage, file, precisions.get(name)) for name, file in files.items()}
    return BundleManifest(
        graphs={g: f for g, f in described.items() if g not in EMBEDDINGS},
        embeddings={k: f for k, f in described.items() if k in EMBEDDINGS},
        classes=BundleClasses(names=c.names, seen_ids=c.seen, unseen_ids=c.unseen, thing_ids=c.thing_ids,
                              colors=c.colors, source=c.source),
        prompts=BundlePrompts(ensemble_type=s.prompt_ensemble_type,
                              templates=tuple(TEMPLATE_SETS[s.prompt_ensemble_type]),
                              clip_templates=tuple(TEMPLATE_SETS["clip"])),
        fusion=BundleFusion(clip_classification=s.clip_classification, ensembling=s.ensembling,
                            ensembling_all_cls=s.ensembling_all_cls, ensembling_lambda=2.0 / 3.0,
                            gzero_calibrate=s.gzero_calibrate),
        input=BundleInput(dynamic=shape.dynamic, batch=None if shape.dynamic else shape.batch,
                          height=None if shape.dynamic else shape.height,
                          width=None if shape.dynamic else shape.width),
        clip=BundleClip(model=s.clip_pretrained, text_dim=built.spec.text_dim,
                        context_length=built.clip_spec.context_length if built.clip_spec else 77,
                        tokenizer="clip-bpe-49408"),
        made_from=BundleSource(config=built.config_path.name,
                               weights="standin" if standin else Path(built.weights).name, standin_weights=standin,
                               weights_sha256=built.sha256 or None,
                               clip_weights="standin" if standin_clip else Path(built.clip_source).name,
                               standin_clip=standin_clip, clip_sha256=built.clip_sha256 or None),
        exporter=BundleExporter(version=EXPORTER_VERSION, torch_version=torch.__version__, opset=opset),
    )
