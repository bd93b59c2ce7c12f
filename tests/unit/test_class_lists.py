"""Class lists (configs/classes/*.json) and PADing inference configs (configs/pading/*.yaml).

The expected values below are the documented upstream facts (docs/UPSTREAM_PADING.md, UPSTREAM_ZEGFORMER.md),
re-checked against the upstream registration code; the JSON files must agree with them exactly.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from helpers import FIXTURES, REPO as ROOT

CLASSES = ROOT / "configs" / "classes"
PADING_CFG = ROOT / "configs" / "pading"
UPSTREAM_CFG = FIXTURES / "upstream_configs" / "pading"

SOURCE_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+@[0-9a-f]{40}:\S+$")


def load(name: str) -> dict:
    with open(CLASSES / name, encoding="utf-8") as f:
        return json.load(f)


ALL_FILES = {
    "coco_panoptic_133.json": 133,
    "coco_stuff_171.json": 171,
    "coco_stuff_171_zegformer.json": 171,
    "coco_zsi_65.json": 65,
    "voc_20.json": 20,
    "ade_847.json": 847,
}

PANOPTIC_UNSEEN = [19, 23, 28, 29, 36, 51, 76, 83, 97, 99, 100, 116, 119, 125]
PANOPTIC_UNSEEN_NAMES = [
    "cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard",
    "playingfield", "river", "road", "tree-merged", "sky-other-merged", "grass-merged",
]
STUFF_UNSEEN_NAMES = [
    "cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard",
    "clouds", "grass", "playingfield", "river", "road", "tree", "wall-concrete",
]
ZSI_UNSEEN_NAMES = [
    "bus", "dog", "cow", "elephant", "umbrella", "tie", "skateboard", "cup", "knife", "cake",
    "couch", "keyboard", "sink", "scissors", "airplane", "cat", "snowboard",
]
VOC_UNSEEN_NAMES = ["potted plant", "sheep", "sofa", "train", "tvmonitor"]


# ----------------------------------------------------------------------------------------------
# generic properties of every class list
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fname,count", sorted(ALL_FILES.items()))
def test_generic_properties(fname, count):
    d = load(fname)
    names = d["names"]
    assert len(names) == count
    assert all(isinstance(n, str) and n for n in names)
    assert len(set(names)) == count, "duplicate class names"
    assert len(d["dataset_ids"]) == count
    assert len(set(d["dataset_ids"])) == count, "duplicate dataset ids"
    unseen = d["unseen"]
    assert unseen == sorted(set(unseen))
    assert all(0 <= i < count for i in unseen)
    if "unseen_names" in d:
        assert d["unseen_names"] == [names[i] for i in unseen]
    if "isthing" in d:
        assert len(d["isthing"]) == count and all(isinstance(b, bool) for b in d["isthing"])
    if "colors" in d:
        colors = d["colors"]
        assert len(colors) == count
        for c in colors:
            assert len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c), c
    assert SOURCE_RE.match(d["source"]), d["source"]


# ----------------------------------------------------------------------------------------------
# PADing
# ----------------------------------------------------------------------------------------------
def test_coco_panoptic_133():
    d = load("coco_panoptic_133.json")
    assert d["num_things"] == 80
    assert d["isthing"] == [True] * 80 + [False] * 53  # 80 things first, then 53 stuff
    assert d["unseen"] == PANOPTIC_UNSEEN
    assert [d["names"][i] for i in PANOPTIC_UNSEEN] == PANOPTIC_UNSEEN_NAMES
    assert d["names"][:3] == ["person", "bicycle", "car"] and d["names"][-1] == "rug-merged"
    assert d["dataset_ids"][:3] == [1, 2, 3] and d["dataset_ids"][79] == 90 and d["dataset_ids"][80] == 92
    assert d["dataset_ids"][-1] == 200
    assert d["colors"][0] == [220, 20, 60]  # detectron2's person color
    assert "detectron2" in d["source"] and "register_coco_panoptic_zsp.py" in d["split_source"]


def test_coco_stuff_171():
    d = load("coco_stuff_171.json")
    assert d["unseen"] == list(range(156, 171))
    assert d["names"][156:] == STUFF_UNSEEN_NAMES
    assert sum(d["isthing"]) == 80  # the 80 COCO things (73 seen + 7 unseen)
    assert sum(d["isthing"][156:]) == 7
    assert d["coco_category_ids"] == [i + 1 for i in d["dataset_ids"]]
    assert d["names"][0] == "person" and d["dataset_ids"][0] == 0
    assert d["names"][155] == "wood" and d["dataset_ids"][155] == 181
    assert d["dataset_ids"][156:] == [20, 24, 32, 33, 40, 56, 86, 99, 105, 123, 144, 147, 148, 168, 171]
    # each part is in COCO id order
    assert d["dataset_ids"][:156] == sorted(d["dataset_ids"][:156])
    assert d["dataset_ids"][156:] == sorted(d["dataset_ids"][156:])
    assert max(d["dataset_ids"]) == 181 and min(d["dataset_ids"]) == 0


def test_coco_zsi_65():
    d = load("coco_zsi_65.json")
    assert d["unseen"] == list(range(48, 65))
    assert d["names"][48:] == ZSI_UNSEEN_NAMES
    assert all(d["isthing"])
    assert all(1 <= i <= 90 for i in d["dataset_ids"])
    pan = load("coco_panoptic_133.json")
    # every ZSI class is a COCO thing with the same COCO id and detectron2 color
    pan_by_name = {n: (i, c) for n, i, c in zip(pan["names"], pan["dataset_ids"], pan["colors"])}
    for n, i, c in zip(d["names"], d["dataset_ids"], d["colors"]):
        assert pan_by_name[n] == (i, c), n


def test_panoptic_and_stuff_unseen_things_agree():
    pan = load("coco_panoptic_133.json")
    stuff = load("coco_stuff_171.json")
    assert pan["unseen_names"][:7] == stuff["unseen_names"][:7]


# ----------------------------------------------------------------------------------------------
# ZegFormer
# ----------------------------------------------------------------------------------------------
def test_zegformer_coco_stuff_same_as_pading():
    z = load("coco_stuff_171_zegformer.json")
    p = load("coco_stuff_171.json")
    for key in ("names", "dataset_ids", "coco_category_ids", "isthing", "colors", "unseen", "unseen_names"):
        assert z[key] == p[key], key
    assert z["names"][156:] == STUFF_UNSEEN_NAMES


def test_voc_20():
    d = load("voc_20.json")
    assert d["unseen"] == [15, 16, 17, 18, 19]
    assert [d["names"][i] for i in d["unseen"]] == VOC_UNSEEN_NAMES
    assert d["dataset_ids"] == list(range(1, 21))
    assert d["names"][0] == "aeroplane"


def test_ade_847():
    d = load("ade_847.json")
    names = d["names"]
    assert len(d["unseen"]) == 275
    assert len(names) - len(d["unseen"]) == 572
    assert d["synonyms"] == [n.split(", ") for n in names]
    assert names[:2] == ["wall", "building, edifice"]
    freq = d["frequency"]
    assert set(freq) == {"frequent", "common", "rare"}
    assert d["unseen"] == [i for i, f in enumerate(freq) if f == "rare"]


# ----------------------------------------------------------------------------------------------
# PADing inference configs vs the original upstream YAMLs (with _BASE_ and the !!python tag)
# ----------------------------------------------------------------------------------------------
class _PyEval:
    """Stand-in for a `!!python/object/apply:eval [expr]` node: recorded, never executed."""

    def __init__(self, args):
        self.args = args

    def __eq__(self, other):
        return isinstance(other, _PyEval) and self.args == other.args


class _UpstreamLoader(yaml.SafeLoader):
    pass


def _construct_py_eval(loader, node):
    return _PyEval(loader.construct_sequence(node, deep=True))


_UpstreamLoader.add_constructor("tag:yaml.org,2002:python/object/apply:eval", _construct_py_eval)


def _merge(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_with_base(path: Path) -> dict:
    """detectron2/fvcore semantics: load _BASE_ (relative to the file) first, then merge this file over it."""
    with open(path, encoding="utf-8") as f:
        cfg = yaml.load(f, Loader=_UpstreamLoader) or {}
    base = cfg.pop("_BASE_", None)
    if base is not None:
        cfg = _merge(load_with_base(path.parent / base), cfg)
    return cfg


def _decode(v):
    """yacs decodes string values with literal_eval when possible ("(\"a\",)" -> tuple); tuples == lists."""
    if isinstance(v, str):
        try:
            v = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v
    if isinstance(v, tuple):
        v = list(v)
    return v


def _leaves(d: dict, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, prefix + (k,))
        else:
            yield ".".join(prefix + (k,)), v


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            raise KeyError(dotted)
        d = d[part]
    return d


# values the upstream code uses where the upstream YAMLs are silent
# (detectron2/config/defaults.py and PADing/config.py add_maskformer2_config)
DEFAULTS = {
    "MODEL.RESNETS.NORM": "FrozenBN",
    "MODEL.RESNETS.NUM_GROUPS": 1,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 64,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 256,
    "MODEL.RESNETS.RES5_DILATION": 1,
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": [False, False, False, False],
    "MODEL.RESNETS.DEFORM_MODULATED": False,
    "MODEL.RESNETS.DEFORM_NUM_GROUPS": 1,
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS": 4,
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS": 8,
    "MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": False,
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "TEST.DETECTIONS_PER_IMAGE": 100,
    "TEST.AUG.ENABLED": False,
}

# upstream MODEL.* keys that only matter for training (everything else under MODEL must be carried over)
TRAINING_ONLY = {
    "MODEL.WEIGHTS",
    "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT",
    "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT",
    "MODEL.MASK_FORMER.CLASS_WEIGHT",
    "MODEL.MASK_FORMER.MASK_WEIGHT",
    "MODEL.MASK_FORMER.DICE_WEIGHT",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS",
    "MODEL.MASK_FORMER.OVERSAMPLE_RATIO",
    "MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO",
    "MODEL.MASK_FORMER.TRANS_NUM_LAYER",
    "MODEL.MASK_FORMER.TRANS_MEMORY_NUM_QUERY",
    "MODEL.MASK_FORMER.TRANS_DROP_RATE",
    "MODEL.MASK_FORMER.VEC_PATH",
    "MODEL.MASK_FORMER.STRUCTURE_WEIGHT",
    "MODEL.MASK_FORMER.DROP_OUT_ED",
    "MODEL.MASK_FORMER.CLASS_ECO",
    "MODEL.MASK_FORMER.NUM_CHOOSE",
    "MODEL.MASK_FORMER.WEIGHT_1",
    "MODEL.MASK_FORMER.WEIGHT_2",
    "MODEL.MASK_FORMER.WEIGHT_3",
}

REQUIRED = [
    "MODEL.META_ARCHITECTURE", "MODEL.BACKBONE.NAME", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD",
    "MODEL.RESNETS.DEPTH", "MODEL.RESNETS.STEM_OUT_CHANNELS", "MODEL.RESNETS.STRIDE_IN_1X1",
    "MODEL.RESNETS.OUT_FEATURES", "MODEL.RESNETS.NORM", "MODEL.RESNETS.NUM_GROUPS",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "MODEL.RESNETS.RES2_OUT_CHANNELS", "MODEL.RESNETS.RES5_DILATION",
    "MODEL.SEM_SEG_HEAD.NAME", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "MODEL.SEM_SEG_HEAD.CONVS_DIM",
    "MODEL.SEM_SEG_HEAD.MASK_DIM", "MODEL.SEM_SEG_HEAD.NORM", "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME",
    "MODEL.SEM_SEG_HEAD.IN_FEATURES", "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES",
    "MODEL.SEM_SEG_HEAD.COMMON_STRIDE", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS",
    "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME", "MODEL.MASK_FORMER.HIDDEN_DIM",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "MODEL.MASK_FORMER.NHEADS", "MODEL.MASK_FORMER.DIM_FEEDFORWARD",
    "MODEL.MASK_FORMER.DEC_LAYERS", "MODEL.MASK_FORMER.PRE_NORM", "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ",
    "MODEL.MASK_FORMER.SIZE_DIVISIBILITY",
    "MODEL.MASK_FORMER.TEST.SEMANTIC_ON", "MODEL.MASK_FORMER.TEST.INSTANCE_ON",
    "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD",
    "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD",
    "MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE",
    "INPUT.FORMAT", "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST", "DATASETS.TEST", "TEST.DETECTIONS_PER_IMAGE",
]

TASKS = {
    # ours, upstream dir, class list, expected (min, max) test size, (semantic, instance, panoptic)
    "panoptic": ("panoptic-segmentation", "coco_panoptic_133.json", (800, 1333), (True, True, True)),
    "instance": ("instance-segmentation", "coco_zsi_65.json", (800, 1333), (False, True, False)),
    "semantic": ("semantic-segmentation", "coco_stuff_171.json", (640, 2560), (True, False, False)),
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_pading_config_self_contained(task):
    text = (PADING_CFG / f"{task}.yaml").read_text(encoding="utf-8")
    assert "!!python" not in text and "_BASE_" not in text.split("MODEL:", 1)[1]
    cfg = yaml.safe_load(text)
    assert "_BASE_" not in cfg
    for key in REQUIRED:
        _get(cfg, key)
    updir, classes, (mn, mx), flags = TASKS[task]
    assert _get(cfg, "MODEL.SEM_SEG_HEAD.NUM_CLASSES") == len(load(classes)["names"])
    assert (_get(cfg, "INPUT.MIN_SIZE_TEST"), _get(cfg, "INPUT.MAX_SIZE_TEST")) == (mn, mx)
    t = _get(cfg, "MODEL.MASK_FORMER.TEST")
    assert (t["SEMANTIC_ON"], t["INSTANCE_ON"], t["PANOPTIC_ON"]) == flags
    assert t["OVERLAP_THRESHOLD"] == 0.8 and t["OBJECT_MASK_THRESHOLD"] == 0.8
    assert _get(cfg, "MODEL.MASK_FORMER.DEC_LAYERS") == 10
    assert _get(cfg, "MODEL.PIXEL_MEAN") == [123.675, 116.28, 103.53]
    assert _get(cfg, "MODEL.PIXEL_STD") == [58.395, 57.12, 57.375]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_pading_config_matches_upstream(task):
    updir = TASKS[task][0]
    ours = yaml.safe_load((PADING_CFG / f"{task}.yaml").read_text(encoding="utf-8"))
    upstream = load_with_base(UPSTREAM_CFG / updir / "PADing.yaml")

    # every value we carry equals upstream's merged value, or the documented default where upstream is silent
    for key, value in _leaves(ours):
        try:
            up = _get(upstream, key)
        except KeyError:
            assert key in DEFAULTS, f"{key} is neither in the upstream config nor a known default"
            assert _decode(value) == DEFAULTS[key], key
        else:
            assert _decode(value) == _decode(up), (key, value, up)

    # nothing inference-relevant from upstream is dropped
    for key, _ in _leaves(upstream):
        relevant = key.startswith("MODEL.") and key not in TRAINING_ONLY
        relevant |= key in {"INPUT.FORMAT", "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST", "DATASETS.TEST",
                            "DATASETS.TRAIN", "TEST.DETECTIONS_PER_IMAGE", "TEST.AUG.ENABLED"}
        if relevant:
            _get(ours, key)


def test_upstream_semantic_base_has_python_eval_tag():
    """The original Base-COCOStuff-171.yaml uses `!!python/object/apply:eval`; the loader must cope without eval."""
    path = UPSTREAM_CFG / "semantic-segmentation" / "Base-COCOStuff-171.yaml"
    assert "!!python/object/apply:eval" in path.read_text(encoding="utf-8")
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg = load_with_base(UPSTREAM_CFG / "semantic-segmentation" / "PADing.yaml")
    assert cfg["INPUT"]["MIN_SIZE_TRAIN"] == _PyEval(["[int(x * 0.1 * 640) for x in range(5, 16)]"])
    assert cfg["INPUT"]["MIN_SIZE_TEST"] == 640 and cfg["INPUT"]["MAX_SIZE_TEST"] == 2560
