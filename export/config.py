"""Upstream (detectron2/yacs schema) configs: read with fvcore's CfgNode, `_BASE_` included.

Upstream YAMLs sometimes carry `!!python/object/apply:eval` for training-only keys (e.g. MIN_SIZE_TRAIN in
Base-COCOStuff-171.yaml). detectron2 evaluates them (`allow_unsafe=True`); we never execute code from a config:
python tags load as None and the keys they set are reported, which is safe because no inference key uses them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from fvcore.common.config import CfgNode

from ..runtime.artifacts.onnx_metadata import InferenceSettings
from ..runtime.errors import ZsdError
from ..runtime.options import TASKS
from .models.pading import PADingSpec

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
if not (CONFIG_DIR / "pading").is_dir():  # installed (non-editable): configs ship as package data
    import zsdeploy.configs as _configs_pkg

    CONFIG_DIR = Path(_configs_pkg.__file__).resolve().parent

PADING_TASKS = TASKS  # PADing post-processes all three (runtime/options.py)

# detectron2's ResNet defaults (both models' backbones read these keys).
DETECTRON2_RESNET_DEFAULTS: dict[str, Any] = {
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 64,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 256,
    "MODEL.RESNETS.STRIDE_IN_1X1": True,
    "MODEL.RESNETS.NUM_GROUPS": 1,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 64,
    "MODEL.RESNETS.RES5_DILATION": 1,
    "MODEL.RESNETS.NORM": "FrozenBN",
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": [False, False, False, False],
}

# detectron2 / Mask2Former defaults for every key inference reads (the released YAMLs rely on some of them).
_DEFAULTS: dict[str, Any] = {
    "MODEL.META_ARCHITECTURE": "PADing",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
    **DETECTRON2_RESNET_DEFAULTS,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 133,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": 256,
    "MODEL.SEM_SEG_HEAD.MASK_DIM": 256,
    "MODEL.SEM_SEG_HEAD.NORM": "GN",
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "MSDeformAttnPixelDecoder",
    "MODEL.SEM_SEG_HEAD.IN_FEATURES": ["res2", "res3", "res4", "res5"],
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": ["res3", "res4", "res5"],
    "MODEL.SEM_SEG_HEAD.COMMON_STRIDE": 4,
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 6,
    "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": "MultiScaleMaskedTransformerDecoder",
    "MODEL.MASK_FORMER.HIDDEN_DIM": 256,
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 100,
    "MODEL.MASK_FORMER.NHEADS": 8,
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 2048,
    "MODEL.MASK_FORMER.DEC_LAYERS": 10,
    "MODEL.MASK_FORMER.PRE_NORM": False,
    "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ": False,
    "MODEL.MASK_FORMER.SIZE_DIVISIBILITY": 32,
    "MODEL.MASK_FORMER.TEST.SEMANTIC_ON": True,
    "MODEL.MASK_FORMER.TEST.INSTANCE_ON": False,
    "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": False,
    "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": 0.8,
    "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD": 0.8,
    "MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": False,
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "INPUT.FORMAT": "RGB",
    "DATASETS.TEST": [],
    "TEST.DETECTIONS_PER_IMAGE": 100,
}


class _NoCodeLoader(yaml.SafeLoader):
    """SafeLoader that turns python/* tags into None instead of executing them."""

    unsafe_tags: list[str] = []


def _python_tag(loader: _NoCodeLoader, suffix: str, node: yaml.Node) -> None:
    loader.unsafe_tags.append(f"!!python/{suffix} at line {node.start_mark.line + 1}")
    return None


_NoCodeLoader.add_multi_constructor("tag:yaml.org,2002:python/", _python_tag)


class UpstreamCfgNode(CfgNode):
    """CfgNode whose YAML loading (with `_BASE_`) never executes code embedded in the file."""

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False, *, _chain: tuple[str, ...] = ()) -> dict:
        real = os.path.realpath(filename)
        if real in _chain:
            loop = " -> ".join(os.path.basename(p) for p in (*_chain[_chain.index(real):], real))
            raise ZsdError(f"config {_chain[0]}: its _BASE_ chain loops ({loop}).",
                           f"remove or correct the _BASE_ line of {os.path.basename(_chain[-1])}.")
        with open(filename, encoding="utf-8") as f:
            cfg = yaml.load(f, Loader=_NoCodeLoader) or {}
        if not isinstance(cfg, dict):
            raise ZsdError(f"config {filename} holds a YAML {type(cfg).__name__}, not a mapping of keys.",
                           "pass an upstream detectron2-style YAML config (keys such as MODEL, INPUT, TEST).")
        base = cfg.pop("_BASE_", None)
        if base is None:
            return cfg
        base = os.path.expanduser(base)
        if not os.path.isabs(base):
            base = os.path.join(os.path.dirname(filename), base)
        merged = cls.load_yaml_with_base(base, _chain=(*_chain, real))
        _deep_merge(cfg, merged)
        return merged


def _deep_merge(src: dict, dst: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(v, dst[k])
        else:
            dst[k] = v


def _node_from_dotted(values: dict[str, Any]) -> dict:
    tree: dict = {}
    for dotted, value in values.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def load_config(path: str | os.PathLike, defaults: dict[str, Any] | None = None, *,
                example: str = "configs/pading/panoptic.yaml", kind: str = "detectron2-style") -> CfgNode:
    """Upstream YAML (with `_BASE_`) merged over inference defaults (PADing's unless `defaults` is given).

    `example` and `kind` only word the error messages for the model family the caller loads.
    """
    path = Path(path)
    if not path.is_file():
        raise ZsdError(f"config file {path} does not exist.",
                       f"pass an upstream {kind} YAML (e.g. {example}) with --config.")
    _NoCodeLoader.unsafe_tags = []
    try:
        loaded = UpstreamCfgNode.load_yaml_with_base(str(path))
    except (yaml.YAMLError, OSError) as e:
        raise ZsdError(f"config {path} is not a readable YAML file ({e}).",
                       f"pass an upstream {kind} YAML config.") from None
    if not isinstance(loaded, dict):
        raise ZsdError(f"config {path} does not hold a mapping of keys.", f"pass an upstream {kind} YAML.")
    cfg = UpstreamCfgNode(_node_from_dotted(_DEFAULTS if defaults is None else defaults))
    cfg.set_new_allowed(True)  # yacs does not pass new_allowed down to child nodes
    try:
        cfg.merge_from_other_cfg(UpstreamCfgNode(loaded))
    except (ValueError, KeyError, TypeError, AssertionError) as e:  # yacs: type mismatches, bad nesting
        tags = f" (its {', '.join(_NoCodeLoader.unsafe_tags)} tags were not executed)" if _NoCodeLoader.unsafe_tags \
            else ""
        text = str(e)
        why = (f"the value of {text.rsplit('for config key:', 1)[1].strip()} has another type than the defaults'"
               if "for config key:" in text else " ".join(text.split())[:200])
        raise ZsdError(f"config {path} does not fit the {kind} schema{tags}: {why}.",
                       f"pass an upstream {kind} YAML whose keys have the types of {example}'s.") from None
    cfg.ignored_python_tags = list(_NoCodeLoader.unsafe_tags)  # type: ignore[attr-defined]
    return cfg


def cfg_get(cfg: CfgNode, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def released_config(model: str, task: str) -> Path:
    """Path of the YAML shipped for a released model (`configs/<model>/<task>.yaml`)."""
    path = CONFIG_DIR / model / f"{task}.yaml"
    if not path.is_file():
        raise ZsdError(f"no released config for {model} {task} in {CONFIG_DIR}.",
                       f"choose --task from {PADING_TASKS} or pass --config.")
    return path


def test_settings(cfg: CfgNode) -> InferenceSettings:
    """The config's test-time settings, as the export records them."""
    t = cfg.MODEL.MASK_FORMER.TEST
    min_size = cfg.INPUT.MIN_SIZE_TEST
    return InferenceSettings(
        min_size_test=int(min_size[0] if isinstance(min_size, (list, tuple)) else min_size),
        max_size_test=int(cfg.INPUT.MAX_SIZE_TEST),
        size_divisibility=int(cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY),
        semantic_on=bool(t.SEMANTIC_ON),
        instance_on=bool(t.INSTANCE_ON),
        panoptic_on=bool(t.PANOPTIC_ON),
        object_mask_threshold=float(t.OBJECT_MASK_THRESHOLD),
        overlap_threshold=float(t.OVERLAP_THRESHOLD),
        detections_per_image=int(cfg.TEST.DETECTIONS_PER_IMAGE),
        # Mask2Former: resize masks before inference when instance or panoptic is on.
        sem_seg_postprocess_before_inference=bool(
            t.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or t.PANOPTIC_ON or t.INSTANCE_ON),
    )


def pading_spec(cfg: CfgNode) -> PADingSpec:
    """Validate that the config describes the architecture we implement and extract its parameters."""
    checks = {
        "MODEL.RESNETS.NUM_GROUPS": 1, "MODEL.RESNETS.RES5_DILATION": 1,
        "MODEL.RESNETS.DEFORM_ON_PER_STAGE": [False, False, False, False],
        "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "MSDeformAttnPixelDecoder",
        "MODEL.SEM_SEG_HEAD.IN_FEATURES": ["res2", "res3", "res4", "res5"],
        "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": ["res3", "res4", "res5"],
        "MODEL.SEM_SEG_HEAD.COMMON_STRIDE": 4, "MODEL.SEM_SEG_HEAD.NORM": "GN",
        "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": "MultiScaleMaskedTransformerDecoder",
        "MODEL.MASK_FORMER.PRE_NORM": False, "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ": False,
    }
    unsupported = [
        f"{k}={cfg_get(cfg, k)!r} (supported: {v!r})" for k, v in checks.items() if list_or(cfg_get(cfg, k)) != v
    ]
    # The bottleneck width is RES2_OUT_CHANNELS / 4 (detectron2: NUM_GROUPS * WIDTH_PER_GROUP; 64 in the released
    # configs, 32 in the half-width demo model).
    if cfg.MODEL.RESNETS.DEPTH in (50, 101) and \
            4 * cfg.MODEL.RESNETS.WIDTH_PER_GROUP != cfg.MODEL.RESNETS.RES2_OUT_CHANNELS:
        unsupported.append(f"MODEL.RESNETS.WIDTH_PER_GROUP={cfg.MODEL.RESNETS.WIDTH_PER_GROUP} with "
                           f"RES2_OUT_CHANNELS={cfg.MODEL.RESNETS.RES2_OUT_CHANNELS} (supported: width = out / 4)")
    if cfg.MODEL.RESNETS.DEPTH not in (18, 34, 50, 101):
        unsupported.append(f"MODEL.RESNETS.DEPTH={cfg.MODEL.RESNETS.DEPTH} (supported: 18, 34, 50, 101)")
    elif cfg.MODEL.RESNETS.DEPTH in (18, 34) and cfg.MODEL.RESNETS.RES2_OUT_CHANNELS != 64:
        unsupported.append(f"MODEL.RESNETS.RES2_OUT_CHANNELS={cfg.MODEL.RESNETS.RES2_OUT_CHANNELS} with "
                           f"DEPTH={cfg.MODEL.RESNETS.DEPTH} (BasicBlock ResNets need 64)")
    if cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM != cfg.MODEL.MASK_FORMER.HIDDEN_DIM:
        unsupported.append("SEM_SEG_HEAD.CONVS_DIM != MASK_FORMER.HIDDEN_DIM (needs the decoder input_proj)")
    raise_if_unsupported("PADing", unsupported)
    return PADingSpec(
        num_classes=int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES),
        enc_layers=int(cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS),
        # DEC_LAYERS counts the prediction on the learnable queries too.
        dec_layers=int(cfg.MODEL.MASK_FORMER.DEC_LAYERS) - 1,
        **mask_former_spec_fields(cfg),
    )


def raise_if_unsupported(model: str, unsupported: list[str]) -> None:
    """One error naming every config value the implementation does not cover."""
    if unsupported:
        raise ZsdError(f"the config asks for an architecture zsdeploy's {model} does not implement: "
                       + "; ".join(unsupported) + ".",
                       f"use a released {model} config (configs/{model.lower()}/*.yaml) or one that differs only in "
                       "class count, layer counts, sizes or thresholds.")


def mask_former_spec_fields(cfg: Any) -> dict[str, Any]:
    """The spec fields PADing (Mask2Former) and ZegFormer (MaskFormer) read the same way: ResNet, head widths,
    query decoder sizes, pixel normalisation."""
    return {
        "depth": int(cfg.MODEL.RESNETS.DEPTH),
        "stem_out_channels": int(cfg.MODEL.RESNETS.STEM_OUT_CHANNELS),
        "res2_out_channels": int(cfg.MODEL.RESNETS.RES2_OUT_CHANNELS),
        "stride_in_1x1": bool(cfg.MODEL.RESNETS.STRIDE_IN_1X1),
        "conv_dim": int(cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM),
        "mask_dim": int(cfg.MODEL.SEM_SEG_HEAD.MASK_DIM),
        "hidden_dim": int(cfg.MODEL.MASK_FORMER.HIDDEN_DIM),
        "num_queries": int(cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES),
        "nheads": int(cfg.MODEL.MASK_FORMER.NHEADS),
        "dim_feedforward": int(cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD),
        "pixel_mean": tuple(float(v) for v in cfg.MODEL.PIXEL_MEAN),
        "pixel_std": tuple(float(v) for v in cfg.MODEL.PIXEL_STD),
    }


def list_or(v: Any) -> Any:
    return list(v) if isinstance(v, (list, tuple)) else v
