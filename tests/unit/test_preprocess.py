"""Tests for zsdeploy.runtime.preprocess against a torch re-statement of upstream's test-time input path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.preprocess import Batch, preprocess, resize_shortest_edge, resized_shape

from helpers import FIXTURES

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]
# The project's copy of ../shared/golden/cases/pading_panoptic.npz (the upstream input image and outputs).
GOLDEN = FIXTURES / "pading_panoptic_golden.npz"


def _img(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------- upstream, re-stated in torch


def _upstream_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    # detectron2 ResizeShortestEdge.get_output_shape, as documented (short side set exactly, then capped).
    scale = short / min(h, w)
    nh, nw = (float(short), scale * w) if h < w else (scale * h, float(short))
    if max(nh, nw) > max_size:
        s = max_size / max(nh, nw)
        nh, nw = nh * s, nw * s
    return int(nh + 0.5), int(nw + 0.5)


def _upstream_batch(images: list[np.ndarray], short: int, max_size: int, div: int = 32) -> torch.Tensor:
    """Upstream: PIL bilinear resize, float CHW, (x - mean) / std, THEN zero-pad to a multiple of `div`."""
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    ts = []
    for im in images:
        if short > 0:
            nh, nw = _upstream_shape(im.shape[0], im.shape[1], short, max_size)
            im = np.asarray(Image.fromarray(im).resize((nw, nh), Image.Resampling.BILINEAR))
        ts.append((torch.as_tensor(im.astype("float32").transpose(2, 0, 1)) - mean) / std)
    H = max(t.shape[1] for t in ts)
    W = max(t.shape[2] for t in ts)
    H, W = (H + div - 1) // div * div, (W + div - 1) // div * div
    return torch.stack([F.pad(t, [0, W - t.shape[2], 0, H - t.shape[1]], value=0.0) for t in ts])


def _graph_normalise(b: Batch) -> torch.Tensor:
    """What our exported graph does first: (x - mean) / std with float32 constants."""
    x = torch.from_numpy(b.tensor)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


# ------------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize(
    "hw,short,max_size,expect",
    [
        ((480, 640), 800, 1333, (800, 1067)),  # 640 * 800/480 = 1066.67
        ((427, 640), 800, 1333, (800, 1199)),  # 1199.06
        ((640, 427), 800, 1333, (1199, 800)),
        ((600, 600), 800, 1333, (800, 800)),
        ((500, 2000), 800, 1333, (333, 1333)),  # long side capped: 800 * 1333/3200 = 333.25
        ((2000, 500), 800, 1333, (1333, 333)),
        ((480, 640), 640, 2560, (640, 853)),  # semantic config: 853.33
        ((1000, 1500), 800, 1333, (800, 1200)),  # downscale
        ((11, 13), 800, 1333, (800, 945)),  # 945.45
        ((300, 450), 0, 1333, (300, 450)),  # short_edge 0: no resize
        # 800 * (1333/1600) = 666.4999... in float: upstream keeps the short side at exactly 800.0 before the
        # cap; computing it as scale * 11 would round the other way (667)
        ((11, 22), 800, 1333, (666, 1333)),
        ((22, 11), 800, 1333, (1333, 666)),
    ],
)
def test_resized_shape_known_values(hw: tuple[int, int], short: int, max_size: int, expect: tuple[int, int]) -> None:
    assert resized_shape(*hw, short, max_size) == expect


def test_resized_shape_matches_upstream_on_many_sizes() -> None:
    rng = np.random.default_rng(0)
    for h, w in rng.integers(1, 3000, (2000, 2)):
        for short, mx in ((800, 1333), (640, 2560), (512, 512)):
            assert resized_shape(int(h), int(w), short, mx) == _upstream_shape(int(h), int(w), short, mx)


def test_resized_shape_no_cap_and_bad_args() -> None:
    assert resized_shape(100, 5000, 200, None) == (200, 10000)
    with pytest.raises(ValueError):
        resized_shape(0, 10, 800, 1333)
    with pytest.raises(ValueError):
        resized_shape(10, 10, -1, 1333)
    with pytest.raises(ValueError):
        resized_shape(10, 10, 800, 0)


@pytest.mark.parametrize("hw,short,max_size", [((37, 53), 64, 1000), ((240, 320), 100, 1333), ((97, 61), 80, 90)])
def test_resize_is_pil_bilinear(hw: tuple[int, int], short: int, max_size: int) -> None:
    im = _img(*hw, seed=hw[0])
    out = resize_shortest_edge(im, short, max_size)
    nh, nw = _upstream_shape(*hw, short, max_size)
    assert out.shape == (nh, nw, 3) and out.dtype == np.uint8
    assert np.array_equal(out, np.asarray(Image.fromarray(im).resize((nw, nh), Image.Resampling.BILINEAR)))


def test_resize_downscale_antialiases() -> None:
    # PIL's bilinear widens its filter when shrinking; plain bilinear interpolation would not: a 1-pixel
    # checkerboard shrunk 4x must come out flat grey, not a checkerboard of 0/255.
    check = ((np.indices((400, 400)).sum(0) % 2) * 255).astype(np.uint8)
    out = resize_shortest_edge(np.repeat(check[..., None], 3, 2), 100, 1333)
    assert out.shape == (100, 100, 3)
    assert np.abs(out.astype(int) - 127.5).max() <= 2


def test_short_edge_zero_is_identity() -> None:
    im = _img(33, 47)
    assert resize_shortest_edge(im, 0, 1333) is im


def test_resize_rejects_bad_input_and_degenerate_sizes() -> None:
    with pytest.raises(ValueError):
        resize_shortest_edge(np.zeros((4, 4, 3), np.float32), 8, 100)
    with pytest.raises(ValueError):
        resize_shortest_edge(np.zeros((4, 4), np.uint8), 8, 100)
    with pytest.raises(ZsdError) as ei:
        resize_shortest_edge(np.zeros((1, 5000, 3), np.uint8), 800, 1333)  # height would round to 0
    assert "too elongated" in ei.value.problem and ei.value.fix


# ------------------------------------------------------------------------------------------------ batches


def test_single_image_matches_upstream_exactly() -> None:
    im = _img(300, 451, seed=1)
    b = preprocess([im], short_edge=800, max_size=1333, pixel_mean=MEAN)
    assert b.tensor.dtype == np.float32 and b.tensor.flags.c_contiguous
    assert b.image_sizes == [(800, 1203)] and b.original_sizes == [(300, 451)]
    assert b.padded_hw == (800, 1216) and b.tensor.shape == (1, 3, 800, 1216)
    ref = _upstream_batch([im], 800, 1333)
    # mean-pad then normalise (ours) == normalise then zero-pad (upstream), bit for bit
    assert torch.equal(_graph_normalise(b), ref)


def test_batch_padding_matches_upstream_exactly() -> None:
    ims = [_img(300, 451, seed=2), _img(500, 333, seed=3), _img(64, 64, seed=4)]
    b = preprocess(ims, short_edge=400, max_size=600, pixel_mean=MEAN)
    assert b.original_sizes == [(300, 451), (500, 333), (64, 64)]
    # 451 * 400/300 = 601.3 > 600 and 500 * 400/333 = 600.6 > 600: both capped by max_size
    assert b.image_sizes == [(399, 600), (600, 400), (400, 400)]
    assert b.padded_hw == (608, 608) and b.tensor.shape == (3, 3, 608, 608)
    assert torch.equal(_graph_normalise(b), _upstream_batch(ims, 400, 600))
    # Pixel content of each image is its resized uint8 pixels, as float, top-left; padding is the mean.
    for i, (h, w) in enumerate(b.image_sizes):
        r = resize_shortest_edge(ims[i], 400, 600)
        assert np.array_equal(b.tensor[i, :, :h, :w], r.transpose(2, 0, 1).astype(np.float32))
        pad = np.ones((608, 608), bool)
        pad[:h, :w] = False
        for c in range(3):
            assert np.all(b.tensor[i, c][pad] == np.float32(MEAN[c]))
    assert np.all(_graph_normalise(b).numpy()[2, :, 400:, :] == 0.0)


def test_size_divisibility_variants() -> None:
    im = _img(50, 70)
    assert preprocess([im], short_edge=0, max_size=None, size_divisibility=0, pixel_mean=MEAN).padded_hw == (50, 70)
    assert preprocess([im], short_edge=0, max_size=None, size_divisibility=1, pixel_mean=MEAN).padded_hw == (50, 70)
    assert preprocess([im], short_edge=0, max_size=None, size_divisibility=32, pixel_mean=MEAN).padded_hw == (64, 96)
    assert preprocess([_img(64, 96)], short_edge=0, max_size=None, pixel_mean=MEAN).padded_hw == (64, 96)


def test_fixed_hw_pads_to_exactly_that_size() -> None:
    im = _img(300, 400)
    b = preprocess([im], short_edge=320, max_size=640, pixel_mean=MEAN, fixed_hw=(512, 512))
    assert b.image_sizes == [(320, 427)] and b.padded_hw == (512, 512) and b.tensor.shape == (1, 3, 512, 512)
    assert np.all(b.tensor[0, 1, 320:, :] == np.float32(MEAN[1]))
    assert np.all(b.tensor[0, 2, :, 427:] == np.float32(MEAN[2]))


def test_fixed_hw_too_small_says_how_to_fix() -> None:
    with pytest.raises(ZsdError) as ei:
        preprocess([_img(10, 10), _img(300, 400)], short_edge=800, max_size=1333, pixel_mean=MEAN, fixed_hw=(800, 800))
    e = ei.value
    assert "image #1 (300x400, resized to 800x1067" in e.problem and "fixed input of 800x800" in e.problem
    assert e.fix is not None and "--height/--width" in e.fix and "800x1088" in e.fix and "--dynamic" in e.fix


@pytest.mark.parametrize("h, w", [(480, 640), (640, 480), (1080, 1920), (3000, 40), (40, 3000), (60, 75)])
def test_fit_keeps_the_aspect_ratio_and_fills_the_canvas(h: int, w: int) -> None:
    """fit=True: upstream's size where it fits, else scaled down to touch the canvas on one side, aspect ratio
    kept to the rounding; the pixels are PIL bilinear of the original (one resize), the rest is the pixel mean."""
    im = _img(h, w, seed=h + w)
    canvas = (128, 160)
    b = preprocess([im], short_edge=800, max_size=1333, pixel_mean=MEAN, fixed_hw=canvas, fit=True)
    rh, rw = b.image_sizes[0]
    assert b.padded_hw == canvas and b.original_sizes == [(h, w)]
    scale = min(128 / h, 160 / w)  # as large as the canvas allows, each side rounded once
    assert abs(rh - h * scale) <= 0.5 + 1e-9 and abs(rw - w * scale) <= 0.5 + 1e-9 and (rh == 128 or rw == 160)
    ref = np.asarray(Image.fromarray(im).resize((rw, rh), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(b.tensor[0, :, :rh, :rw], ref.astype(np.float32))
    pad = np.ones((128, 160), bool)
    pad[:rh, :rw] = False
    for c in range(3):
        assert np.all(b.tensor[0, c][pad] == np.float32(MEAN[c]))


def test_fit_leaves_images_that_fit_exactly_as_upstream() -> None:
    im = _img(60, 75)
    kw = dict(short_edge=100, max_size=1333, pixel_mean=MEAN, fixed_hw=(128, 160))
    a, b = preprocess([im], **kw), preprocess([im], **kw, fit=True)
    assert a.image_sizes == b.image_sizes == [(100, 125)] and np.array_equal(a.tensor, b.tensor)


def test_golden_input_without_resize() -> None:
    chw = np.load(GOLDEN)["image"]  # (3, 256, 320) uint8, fed to upstream without resizing
    b = preprocess([np.ascontiguousarray(chw.transpose(1, 2, 0))], short_edge=0, max_size=None, pixel_mean=MEAN)
    assert b.padded_hw == (256, 320) and b.image_sizes == [(256, 320)]
    assert np.array_equal(b.tensor[0], chw.astype(np.float32))


def test_preprocess_argument_errors() -> None:
    with pytest.raises(ValueError):
        preprocess([], short_edge=800, max_size=1333, pixel_mean=MEAN)
    with pytest.raises(ValueError):
        preprocess([_img(8, 8)], short_edge=800, max_size=1333, pixel_mean=MEAN[:2])
    with pytest.raises(ValueError):
        bad = _img(8, 8).astype(np.float32)
        preprocess([bad], short_edge=800, max_size=1333, pixel_mean=MEAN)
    with pytest.raises(ValueError):
        preprocess([_img(8, 8)], short_edge=0, max_size=None, pixel_mean=MEAN, fixed_hw=(0, 8))
