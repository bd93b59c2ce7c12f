"""Optimisation profiles: `--profile NAME:MIN:OPT:MAX`, the defaults derived from the model's metadata, and the
checks of a profile against the ONNX inputs.

Plain Python (no TensorRT, no onnx import): the runner and the sidecar reader use `ShapeRange` too.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ZsdError

if TYPE_CHECKING:
    from ..artifacts.onnx_metadata import ModelInfo
    from .onnx_inspect import OnnxModel

__all__ = ["MIN_MAX_CLASSES", "TEXT_ENCODER_ROWS", "TEXT_INPUTS", "Profile", "Shape", "ShapeRange",
           "default_profile", "format_shape", "parse_profile", "profile_text", "resolve_profile"]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ShapeRange:
    """min / opt / max of one input in an optimisation profile."""

    min: Shape
    opt: Shape
    max: Shape

    def as_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(lo <= s <= hi for s, lo, hi in zip(shape, self.min, self.max))

    @property
    def is_static(self) -> bool:
        return self.min == self.opt == self.max

    @property
    def is_valid(self) -> bool:
        """Same rank everywhere and 1 <= min <= opt <= max per dimension."""
        return len(self.min) == len(self.opt) == len(self.max) and all(
            1 <= a <= b <= c for a, b, c in zip(self.min, self.opt, self.max))

    def as_arg(self, name: str) -> str:
        """The `--profile` argument that gives this range."""
        return f"{name}:" + ":".join(format_shape(s) for s in (self.min, self.opt, self.max))


Profile = dict[str, ShapeRange]


def format_shape(shape: Sequence[int | None]) -> str:
    """(1, 3, None, 64) -> "1x3x?x64"."""
    return "x".join("?" if s is None else str(s) for s in shape)


def profile_text(profile: Profile) -> str:
    return ", ".join(f"{n}: {format_shape(r.min)} / {format_shape(r.opt)} / {format_shape(r.max)}"
                     for n, r in profile.items())


def parse_profile(values: Iterable[str]) -> Profile:
    """Parse `--profile NAME:MIN:OPT:MAX` (shapes as 1x3x512x512), one per input."""
    profile: Profile = {}
    for text in values:
        parts = text.rsplit(":", 3)
        if len(parts) != 4 or not parts[0]:
            raise ZsdError(f"--profile {text!r} is not NAME:MIN:OPT:MAX.",
                           "write e.g. --profile images:1x3x512x512:1x3x800x1216:2x3x1344x1344 (one per input).")
        name, *shapes = parts
        try:
            mn, opt, mx = (tuple(int(d) for d in s.lower().split("x")) for s in shapes)
        except ValueError:
            raise ZsdError(f"--profile {text!r}: shapes must be integers joined by 'x'.",
                           "write e.g. --profile images:1x3x512x512:1x3x800x1216:2x3x1344x1344.") from None
        if name in profile:
            raise ZsdError(f"--profile gives input {name!r} twice.", "pass one --profile per input.")
        if not len(mn) == len(opt) == len(mx):
            raise ZsdError(f"--profile {text!r}: min, opt and max have different ranks.",
                           "give all three shapes with the same number of dimensions.")
        rng = ShapeRange(mn, opt, mx)
        if not rng.is_valid:
            raise ZsdError(f"--profile {text!r}: every dimension needs 1 <= min <= opt <= max.",
                           "order the three shapes as min:opt:max.")
        profile[name] = rng
    return profile


# --------------------------------------------------------------------------------------- default profiles


def _round_up(x: int, d: int) -> int:
    return -(-x // d) * d if d > 1 else x


# Dynamic non-image inputs of ZegFormer bundles (see export/zegformer_export.py) and their default ranges.
TEXT_INPUTS = ("text_embeddings", "text_embeddings_clip")  # [C, D]: the vocabulary size C is chosen at run time
MIN_MAX_CLASSES = 1024  # default profile max for C (ADE-847 fits); larger vocabularies need --profile
TEXT_ENCODER_ROWS = 256  # prompts per text-encoder call (runtime.prompts.class_text_embeddings batch_size)


def _image_range(info: ModelInfo, batch: int) -> ShapeRange:
    """[N,3,H,W] range from the resize policy (see default_profile)."""
    div = max(info.size_divisibility, 1)
    short, long_ = info.min_size_test, info.max_size_test
    # detectron2's ResizeShortestEdge of a 427x640 image (same arithmetic as runtime.preprocess.resized_shape).
    scale = short / 427
    oh, ow = float(short), 640 * scale
    if max(oh, ow) > long_:
        f = long_ / max(oh, ow)
        oh, ow = oh * f, ow * f
    opt_hw = (_round_up(int(oh + 0.5), div), _round_up(int(ow + 0.5), div))
    max_hw = (_round_up(long_, div),) * 2
    return ShapeRange((batch, 3, div, div), (batch, 3, *opt_hw), (batch, 3, *max_hw))


def default_profile(model: OnnxModel, names: Iterable[str] | None = None) -> Profile:
    """The profile used when no --profile is given.

    Static inputs: their shape. The dynamic image input ([N,3,H,W]): batch 1; H and W from the resize policy in
    the metadata: min = size_divisibility (any image the pre-processing produces is accepted), opt = the padded
    size of a 640x427 photo (COCO's most common shape) after ResizeShortestEdge(min_size_test, max_size_test), max
    = max_size_test rounded up to size_divisibility on both sides. ZegFormer bundle inputs: text embeddings
    [C, D] with C in 1..max(num_classes, 1024) (opt: the default vocabulary's size); token_ids [N, L] with N in
    1..256 and L in 2..77 (opt 256 x 16); image_sizes [N, 2] and mask_logits [N, Q, H/4, W/4] follow the image
    range. Other dynamic inputs need --profile.
    """
    info = model.info
    profile: Profile = {}
    image = model.inputs.get("images")
    batch = image[0] if image is not None and image[0] is not None else 1
    for name in model.inputs if names is None else names:
        dims = model.inputs[name]
        if all(d is not None for d in dims):
            static = tuple(int(d) for d in dims if d is not None)
            profile[name] = ShapeRange(static, static, static)
            continue
        if name in TEXT_INPUTS and len(dims) == 2 and dims[1] is not None:
            d, c = int(dims[1]), info.num_classes
            profile[name] = ShapeRange((1, d), (c, d), (max(c, MIN_MAX_CLASSES), d))
        elif name == "token_ids" and len(dims) == 2:
            n_ctx = dims[1] or 77
            profile[name] = ShapeRange((1, min(2, n_ctx)), (TEXT_ENCODER_ROWS, min(16, n_ctx)),
                                       (TEXT_ENCODER_ROWS, n_ctx))
        elif name == "image_sizes" and len(dims) == 2:
            profile[name] = ShapeRange((batch, 2), (batch, 2), (batch, 2))
        elif name == "mask_logits" and len(dims) == 4 and dims[1] is not None:
            img = _image_range(info, batch)
            q = int(dims[1])
            profile[name] = ShapeRange(*((s[0], q, s[2] // 4, s[3] // 4) for s in (img.min, img.opt, img.max)))
        elif len(dims) == 4 and dims[1] in (3, None):
            profile[name] = _image_range(info, dims[0] if dims[0] is not None else 1)
        else:
            raise ZsdError(f"input {name!r} has dynamic shape {format_shape(dims)} and no default profile.",
                           f"pass --profile {name}:MIN:OPT:MAX.")
    return profile


def resolve_profile(model: OnnxModel, overrides: Profile) -> Profile:
    """Default profile with --profile overrides, checked against the ONNX inputs."""
    unknown = sorted(set(overrides) - set(model.inputs))
    if unknown:
        raise ZsdError(f"--profile names input(s) {unknown} that {model.path.name} does not have.",
                       f"its inputs are {sorted(model.inputs)}.")
    profile = default_profile(model, [n for n in model.inputs if n not in overrides])
    profile.update(overrides)
    div = max(model.info.size_divisibility, 1)
    for name, rng in overrides.items():
        dims = model.inputs[name]
        if len(rng.min) != len(dims):
            raise ZsdError(f"--profile for {name!r} has rank {len(rng.min)}, the input has shape "
                           f"{format_shape(dims)}.", f"give {len(dims)} dimensions.")
        for axis, d in enumerate(dims):
            if d is not None and not rng.min[axis] == rng.opt[axis] == rng.max[axis] == d:
                what = "the model was exported with a static shape" if all(x is not None for x in dims) else \
                    f"dimension {axis} is fixed"
                raise ZsdError(f"--profile for {name!r} asks for {format_shape(rng.min)}..{format_shape(rng.max)} "
                               f"but {what}: {format_shape(dims)}.",
                               "drop --profile (the static shape is used), or re-export with export-model --dynamic.")
        if len(dims) == 4 and name == model.metadata.get("input_name", name):
            for shape in (rng.min, rng.opt, rng.max):
                if shape[2] % div or shape[3] % div:
                    raise ZsdError(f"--profile for {name!r}: H and W must be multiples of {div} (the model's "
                                   f"size_divisibility), got {format_shape(shape)}.",
                                   f"round them to multiples of {div}.")
    return profile
