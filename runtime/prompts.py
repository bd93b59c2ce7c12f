"""Prompt templates and prompt ensembling for ZegFormer's class text embeddings (no torch: usable by the runtime).

Per class, as upstream ZegFormer (`zeroshot_classifier`): format every template with the class name -- a name that
contains ", " is a list of synonyms and every template is formatted with every synonym (templates outer, synonyms
inner) -- encode all prompts with the CLIP text tower, L2-normalise each, average, L2-normalise the mean.

Template sets (MODEL.PROMPT_ENSEMBLE_TYPE): "single", "imagenet_select" (8), "imagenet" (the 80 templates of
OpenAI's ImageNet prompt-engineering notebook); "clip" is the 32-template set (upstream
IMAGENET_TEMPLATES_SELECT_CLIP) that gives `text_features_test_clip` for the CLIP crop classifier.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .errors import ZsdError

SINGLE_TEMPLATES: tuple[str, ...] = ("A photo of a {} in the scene",)
IMAGENET_SELECT_TEMPLATES: tuple[str, ...] = (
    'itap of a {}.', 'a bad photo of the {}.', 'a origami {}.', 'a photo of the large {}.',
    'a {} in a video game.', 'art of the {}.', 'a photo of the small {}.',
    'A photo of a {} in the scene',
)
IMAGENET_TEMPLATES: tuple[str, ...] = (
    'a bad photo of a {}.', 'a photo of many {}.', 'a sculpture of a {}.',
    'a photo of the hard to see {}.', 'a low resolution photo of the {}.', 'a rendering of a {}.',
    'graffiti of a {}.', 'a bad photo of the {}.', 'a cropped photo of the {}.', 'a tattoo of a {}.',
    'the embroidered {}.', 'a photo of a hard to see {}.', 'a bright photo of a {}.',
    'a photo of a clean {}.', 'a photo of a dirty {}.', 'a dark photo of the {}.', 'a drawing of a {}.',
    'a photo of my {}.', 'the plastic {}.', 'a photo of the cool {}.', 'a close-up photo of a {}.',
    'a black and white photo of the {}.', 'a painting of the {}.', 'a painting of a {}.',
    'a pixelated photo of the {}.', 'a sculpture of the {}.', 'a bright photo of the {}.',
    'a cropped photo of a {}.', 'a plastic {}.', 'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.', 'a blurry photo of the {}.', 'a photo of the {}.',
    'a good photo of the {}.', 'a rendering of the {}.', 'a {} in a video game.', 'a photo of one {}.',
    'a doodle of a {}.', 'a close-up photo of the {}.', 'a photo of a {}.', 'the origami {}.',
    'the {} in a video game.', 'a sketch of a {}.', 'a doodle of the {}.', 'a origami {}.',
    'a low resolution photo of a {}.', 'the toy {}.', 'a rendition of the {}.',
    'a photo of the clean {}.', 'a photo of a large {}.', 'a rendition of a {}.',
    'a photo of a nice {}.', 'a photo of a weird {}.', 'a blurry photo of a {}.', 'a cartoon {}.',
    'art of a {}.', 'a sketch of the {}.', 'a embroidered {}.', 'a pixelated photo of a {}.',
    'itap of the {}.', 'a jpeg corrupted photo of the {}.', 'a good photo of a {}.', 'a plushie {}.',
    'a photo of the nice {}.', 'a photo of the small {}.', 'a photo of the weird {}.', 'the cartoon {}.',
    'art of the {}.', 'a drawing of the {}.', 'a photo of the large {}.',
    'a black and white photo of a {}.', 'the plushie {}.', 'a dark photo of a {}.', 'itap of a {}.',
    'graffiti of the {}.', 'a toy {}.', 'itap of my {}.', 'a photo of a cool {}.',
    'a photo of a small {}.', 'a tattoo of the {}.',
)
CLIP_CROP_TEMPLATES: tuple[str, ...] = (
    'a bad photo of the {}.', 'a photo of the large {}.', 'a photo of the small {}.',
    'a cropped photo of a {}.', 'This is a photo of a {}', 'This is a photo of a small {}',
    'This is a photo of a medium {}', 'This is a photo of a large {}', 'This is a masked photo of a {}',
    'This is a masked photo of a small {}', 'This is a masked photo of a medium {}',
    'This is a masked photo of a large {}', 'This is a cropped photo of a {}',
    'This is a cropped photo of a small {}', 'This is a cropped photo of a medium {}',
    'This is a cropped photo of a large {}', 'A photo of a {} in the scene',
    'a bad photo of the {} in the scene', 'a photo of the large {} in the scene',
    'a photo of the small {} in the scene', 'a cropped photo of a {} in the scene',
    'a photo of a masked {} in the scene', 'There is a {} in the scene', 'There is the {} in the scene',
    'This is a {} in the scene', 'This is the {} in the scene', 'This is one {} in the scene',
    'There is a masked {} in the scene', 'There is the masked {} in the scene',
    'This is a masked {} in the scene', 'This is the masked {} in the scene',
    'This is one masked {} in the scene',
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "single": SINGLE_TEMPLATES,
    "imagenet_select": IMAGENET_SELECT_TEMPLATES,
    "imagenet": IMAGENET_TEMPLATES,
    "clip": CLIP_CROP_TEMPLATES,
}


def templates_for(kind: str | Sequence[str]) -> tuple[str, ...]:
    """A template set by name (see TEMPLATE_SETS) or an explicit list of '{}' templates."""
    if isinstance(kind, str):
        if kind not in TEMPLATE_SETS:
            raise ZsdError(f"unknown prompt ensemble type {kind!r}.", f"choose one of {sorted(TEMPLATE_SETS)}.")
        return TEMPLATE_SETS[kind]
    templates = tuple(kind)
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise ZsdError(f"prompt templates must each contain '{{}}' exactly once (bad: {bad[:3]}).",
                       "write templates like 'a photo of a {}.'.")
    return templates


def validate_class_names(names: Sequence[str]) -> list[str]:
    """Reject an empty vocabulary, empty names and duplicates (after trimming spaces), naming the offenders."""
    names = list(names)
    if not names:
        raise ZsdError("the vocabulary is empty.", "give at least one class name.")
    empty = [i for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()]
    if empty:
        raise ZsdError(f"class name(s) at position(s) {empty[:10]} are empty.", "remove the empty names.")
    seen: dict[str, int] = {}
    dups = []
    for i, n in enumerate(names):
        key = " ".join(n.split()).lower()
        if key in seen:
            dups.append(f"{n!r} (positions {seen[key]} and {i})")
        else:
            seen[key] = i
    if dups:
        raise ZsdError(f"duplicate class name(s): {', '.join(dups[:10])}.",
                       "each class must appear once (CLIP lower-cases names, so 'Cat' and 'cat' are the same).")
    return names


def prompts_for_class(name: str, templates: Sequence[str]) -> list[str]:
    """Upstream's prompt list of one class (synonyms split on ', ')."""
    if ", " in name:
        synonyms = name.split(", ")
        return [t.format(s) for t in templates for s in synonyms]
    return [t.format(name) for t in templates]


def class_text_embeddings(names: Sequence[str], templates: str | Sequence[str],
                          tokenize: Callable[[list[str]], np.ndarray],
                          encode: Callable[[np.ndarray], np.ndarray], batch_size: int = 256,
                          trim: bool = True) -> np.ndarray:
    """float32 [C, D]: the L2-normalised prompt-ensemble embedding of each class.

    tokenize: list of prompts -> int64 [N, 77] (e.g. `ClipTokenizer(...).tokenize`, which raises on over-long
    prompts); encode: int64 [N, 77] -> [N, D] embeddings (the text_encoder graph, normalised or not).
    """
    names = validate_class_names(names)
    tpl = templates_for(templates)
    prompts = [prompts_for_class(n, tpl) for n in names]
    flat = [p for ps in prompts for p in ps]
    ids = tokenize(flat)
    chunks = []
    for i in range(0, len(flat), batch_size):
        chunk = ids[i:i + batch_size]
        if trim:
            # The text tower is causal and reads the end-of-text position (the largest id), so the zero columns
            # after the longest prompt's EOT do not change the result: drop them (77 -> ~10 tokens per prompt).
            chunk = np.ascontiguousarray(chunk[:, :int(chunk.argmax(axis=1).max()) + 1])
        chunks.append(np.asarray(encode(chunk), dtype=np.float64))
    feats = np.concatenate(chunks, axis=0)
    feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
    out, start = [], 0
    for ps in prompts:
        mean = feats[start:start + len(ps)].mean(axis=0)
        out.append(mean / np.linalg.norm(mean))
        start += len(ps)
    return np.stack(out).astype(np.float32)
