"""Training and held-out data for the demo model: generated scenes (runtime.scenes) with exact targets."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from zsdeploy.runtime.scenes import scene_seed, generate_scene

#: Scene parameters shared by training and the held-out set (the "training resolution").
SCENE_SIZE = (256, 256)
SCENE_OBJECTS = 16
SCENE_OBJECT_SIZES = (8.0, 110.0)  # sqrt(area) in px: ~55 % small, ~38 % medium, ~7 % large things at 256x256

#: Held-out scenes are `synthetic.write_scenes` / `zsd-bench --dataset synthetic:N --seed HELDOUT_SEED` scenes;
#: training scenes come from TRAIN_SEED, and any scene seed of the first HELDOUT_GUARD held-out scenes is skipped.
HELDOUT_SEED = 20261201
TRAIN_SEED = 7
HELDOUT_GUARD = 1000

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)


def heldout_seeds(n: int = HELDOUT_GUARD) -> set[int]:
    return {scene_seed(HELDOUT_SEED, i) for i in range(n)}


@dataclass
class Sample:
    image: np.ndarray  # float32 (3, H, W) RGB 0..255, padded with the pixel mean
    classes: np.ndarray  # int64 (N,) contiguous COCO-panoptic ids
    masks: np.ndarray  # bool (N, H, W)


def heldout_scene(i: int):
    """Held-out scene i (the same scene zsd-bench builds for `--dataset synthetic:N --seed HELDOUT_SEED`)."""
    h, w = SCENE_SIZE
    return generate_scene(scene_seed(HELDOUT_SEED, i), h, w, n_objects=SCENE_OBJECTS, size_range=SCENE_OBJECT_SIZES)


def targets_of(panoptic: np.ndarray, segments: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Per visible segment: its class and mask (things one each, stuff one per class, as Mask2Former trains)."""
    classes, masks = [], []
    for s in segments:
        m = panoptic == s["id"]
        if m.any():
            classes.append(int(s["category_id"]))
            masks.append(m)
    if not masks:
        return np.zeros((0,), np.int64), np.zeros((0,) + panoptic.shape, bool)
    return np.asarray(classes, np.int64), np.stack(masks)


def training_sample(scene_seed: int, rng: np.random.Generator, out_hw: tuple[int, int] = SCENE_SIZE,
                    scale_range: tuple[float, float] = (0.75, 1.5),
                    size_range: tuple[float, float] = SCENE_OBJECT_SIZES) -> Sample:
    """One augmented training sample: a scene at the training resolution, scale-jittered (image bilinear, labels
    nearest), randomly cropped or padded (pixel mean, no targets) to `out_hw`, randomly flipped."""
    h, w = out_hw
    scene = generate_scene(scene_seed, h, w, n_objects=SCENE_OBJECTS, size_range=size_range)
    scale = math.exp(rng.uniform(math.log(scale_range[0]), math.log(scale_range[1])))
    sh, sw = max(8, int(round(h * scale))), max(8, int(round(w * scale)))
    image = np.asarray(Image.fromarray(scene.image).resize((sw, sh), Image.Resampling.BILINEAR), np.float32)
    pan = np.asarray(Image.fromarray(scene.panoptic).resize((sw, sh), Image.Resampling.NEAREST), np.int32)
    # crop (when larger) at a random offset, then pad (when smaller) bottom/right as the runtime does
    y0 = int(rng.integers(0, max(sh - h, 0) + 1))
    x0 = int(rng.integers(0, max(sw - w, 0) + 1))
    image, pan = image[y0:y0 + h, x0:x0 + w], pan[y0:y0 + h, x0:x0 + w]
    canvas = np.broadcast_to(PIXEL_MEAN, (h, w, 3)).copy()
    canvas[: image.shape[0], : image.shape[1]] = image
    pan_canvas = np.zeros((h, w), np.int32)
    pan_canvas[: pan.shape[0], : pan.shape[1]] = pan
    if rng.random() < 0.5:
        canvas, pan_canvas = canvas[:, ::-1], pan_canvas[:, ::-1]
    classes, masks = targets_of(pan_canvas, scene.segments)
    return Sample(np.ascontiguousarray(canvas.transpose(2, 0, 1)), classes, np.ascontiguousarray(masks))
