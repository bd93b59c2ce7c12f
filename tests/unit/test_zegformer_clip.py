"""ZegFormer's CLIP crop classifier: the box rule and RoIAlign against literal per-sample references, the
ONNX graph against PyTorch, and the gzss fusion reference."""
from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from helpers import rel_l2, tiny_clip
from zsdeploy.export.models.zegformer_clip import (
    CLIPCropClassifier,
    mask_boxes,
    roi_align_aligned,
    semantic_inference,
)


def upstream_boxes(binary: torch.Tensor) -> torch.Tensor:
    """The box code of upstream MaskFormer.forward, written out step by step (cumsum + argmax/argmin)."""
    _, h, w = binary.shape
    cumsum_x = torch.cumsum(binary.sum(dim=1), dim=1).float()
    xmaxs = torch.argmax(cumsum_x, dim=1, keepdim=True)
    cumsum_x[cumsum_x == 0] = np.inf
    xmins = torch.argmin(cumsum_x, dim=1, keepdim=True)
    cumsum_y = torch.cumsum(binary.sum(dim=2), dim=1).float()
    ymaxs = torch.argmax(cumsum_y, dim=1, keepdim=True)
    cumsum_y[cumsum_y == 0] = np.inf
    ymins = torch.argmin(cumsum_y, dim=1, keepdim=True)
    areas = (ymaxs - ymins) * (xmaxs - xmins)
    ymaxs[areas == 0] = h
    ymins[areas == 0] = 0
    xmaxs[areas == 0] = w
    xmins[areas == 0] = 0
    return torch.cat((xmins, ymins, xmaxs, ymaxs), 1).float()


def reference_roi_align(image: np.ndarray, box, out: int) -> np.ndarray:
    """torchvision roi_align (aligned=True, spatial_scale 1, sampling_ratio -1), one sample at a time."""
    c, h, w = image.shape
    x1, y1, x2, y2 = (float(v) for v in box)
    sx, sy = x1 - 0.5, y1 - 0.5
    rw, rh = x2 - x1, y2 - y1
    bw, bh = rw / out, rh / out
    gw, gh = math.ceil(rw / out), math.ceil(rh / out)
    count = max(gw * gh, 1)
    res = np.zeros((c, out, out))

    def sample(y, x):
        if y < -1.0 or y > h or x < -1.0 or x > w:
            return np.zeros(c)
        y, x = max(y, 0.0), max(x, 0.0)
        yl, xl = int(y), int(x)
        if yl >= h - 1:
            yl = yh = h - 1
            y = float(yl)
        else:
            yh = yl + 1
        if xl >= w - 1:
            xl = xh = w - 1
            x = float(xl)
        else:
            xh = xl + 1
        ly, lx = y - yl, x - xl
        hy, hx = 1 - ly, 1 - lx
        return hy * hx * image[:, yl, xl] + hy * lx * image[:, yl, xh] + ly * hx * image[:, yh, xl] \
            + ly * lx * image[:, yh, xh]

    for ph in range(out):
        for pw in range(out):
            acc = np.zeros(c)
            for iy in range(gh):
                y = sy + ph * bh + (iy + 0.5) * bh / gh
                for ix in range(gw):
                    acc += sample(y, sx + pw * bw + (ix + 0.5) * bw / gw)
            res[:, ph, pw] = acc / count
    return res


def test_box_rule_matches_upstream_including_ties():
    h, w = 9, 13
    masks = torch.zeros(8, h, w, dtype=torch.bool)
    masks[1, 4, 6] = True  # one pixel -> zero area -> whole image
    masks[2, 3, 2:9] = True  # one row -> zero area
    masks[3, 1:7, 5] = True  # one column -> zero area
    masks[4, 2:5, 3:7] = True  # a rectangle
    masks[5, 0, 0] = masks[5, 8, 12] = True  # two far corners
    masks[6, 2:7, 1] = masks[6, 6, 1:10] = True  # L shape
    masks[7] = True  # everything
    g = torch.Generator().manual_seed(0)
    masks = torch.cat([masks, torch.rand(24, h, w, generator=g) > 0.85])
    got = mask_boxes(masks)
    torch.testing.assert_close(got, upstream_boxes(masks), rtol=0, atol=0)
    assert got[0].tolist() == [0, 0, w, h] and got[4].tolist() == [3, 2, 6, 4] and got[5].tolist() == [0, 0, 12, 8]


@pytest.mark.parametrize("box", [
    (3.0, 2.0, 6.0, 4.0),  # small: 1 sample per bin
    (0.0, 0.0, 30.0, 20.0),  # whole image (upstream's degenerate-box replacement)
    (0.0, 0.0, 29.0, 19.0),  # last pixels
    (5.0, 1.0, 27.0, 18.0),  # > out: several samples per bin
    (12.0, 7.0, 13.0, 16.0),  # thin
])
def test_roi_align_matches_per_sample_reference(box):
    g = torch.Generator().manual_seed(1)
    image = torch.randn(1, 3, 20, 30, generator=g)
    out = 7
    got = roi_align_aligned(image, torch.tensor([box]), out)[0].numpy()
    ref = reference_roi_align(image[0].numpy().astype(np.float64), box, out)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # a larger max_grid than needed changes nothing (extra samples are masked out)
    more = roi_align_aligned(image, torch.tensor([box]), out, max_grid=9)[0].numpy()
    np.testing.assert_allclose(more, got, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def classifier():
    from zsdeploy.export.models.zegformer import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD

    return CLIPCropClassifier(tiny_clip(seed=3), CLIP_PIXEL_MEAN, CLIP_PIXEL_STD).eval()


def _inputs(b=1, h=64, w=96, q=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, h, w, generator=g) * 255
    sizes = torch.tensor([[h - 5, w - 17]] * b, dtype=torch.int64)
    # blobby masks: low-resolution noise upsampled, some queries empty
    masks = F.interpolate(torch.randn(b, q, 4, 6, generator=g) * 4 - 1, size=(h // 4, w // 4), mode="bilinear")
    masks[:, :5] = -10.0
    text = F.normalize(torch.randn(7, 512, generator=g), dim=-1)
    return images, sizes, masks, text


def test_crops_are_masked_boxed_clip_images(classifier):
    images, sizes, masks, _ = _inputs(q=6, seed=1)
    crops = classifier.crops(images, sizes, masks)
    assert crops.shape == (6, 3, 224, 224)
    # an empty mask crops the whole (zeroed) image: all zeros
    assert crops[0].abs().max() == 0
    # a query whose mask covers everything: the crop is the CLIP-normalised image, zero outside the valid region
    full = masks.clone()
    full[:, 5] = 10.0
    crop = classifier.crops(images, sizes, full)[5]
    clip_img = (images[0] - classifier.clip_mean[0]) / classifier.clip_std[0]
    clip_img[:, sizes[0, 0]:] = 0
    clip_img[:, :, sizes[0, 1]:] = 0
    ref = reference_roi_align(clip_img.numpy().astype(np.float64), (0, 0, 95, 63), 224)
    np.testing.assert_allclose(crop.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_crop_classifier_onnx_matches_pytorch(classifier):
    from zsdeploy.export.onnx_export import check_and_simplify
    from zsdeploy.export.zegformer_export import trace_graph

    images, sizes, masks, text = _inputs()
    proto = check_and_simplify(trace_graph(
        classifier, (images, sizes, masks, text), opset=18,
        input_names=("images", "image_sizes", "mask_logits", "text_embeddings_clip"), output_names=("clip_logits",),
        dynamic_shapes=(None, None, None, {0: torch.export.Dim("num_classes", min=1, max=65536)})))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    images, sizes, masks, text = _inputs(seed=5)
    text = text[:3]
    got = sess.run(None, {"images": images.numpy(), "image_sizes": sizes.numpy(), "mask_logits": masks.numpy(),
                          "text_embeddings_clip": text.numpy()})[0]
    with torch.inference_mode():
        ref = classifier(images, sizes, masks, text).numpy()
    assert got.shape == ref.shape == (1, 100, 3)
    assert rel_l2(got, ref) < 1e-4


def test_semantic_inference_fusion_rules():
    g = torch.Generator().manual_seed(2)
    q, c = 6, 5
    cls = torch.randn(q, c + 1, generator=g) * 3
    clip = torch.randn(q, c, generator=g) * 3
    masks = torch.randn(q, 4, 6, generator=g)
    seen, unseen = (0, 1, 2), (3, 4)
    common = {"padded_hw": (16, 24), "image_hw": (15, 20), "out_hw": (30, 40)}
    plain = semantic_inference(cls, masks, **common)
    m = F.interpolate(masks[None], size=(16, 24), mode="bilinear", align_corners=False)[0].sigmoid()
    expected = torch.einsum("qc,qhw->chw", F.softmax(cls, -1)[:, :-1], m)[:, :15, :20]
    expected = F.interpolate(expected[None], size=(30, 40), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(plain, expected)

    fused = semantic_inference(cls, masks, clip_logits=clip, seen_ids=seen, unseen_ids=unseen, ensembling=True,
                               gzero_calibrate=0.1, **common)
    p_zeg = F.softmax(cls, -1)[:, :-1]
    p_clip = F.softmax(torch.cat((clip, cls[:, -1:]), 1), -1)[:, :-1]
    p = torch.empty_like(p_zeg)
    seen_mean = p_clip[:, list(seen)].mean(1, keepdim=True)
    p[:, list(seen)] = p_zeg[:, list(seen)] ** (2 / 3) * seen_mean ** (1 / 3)
    p[:, list(unseen)] = p_zeg[:, list(unseen)] ** (1 / 3) * p_clip[:, list(unseen)] ** (2 / 3)
    expected = torch.einsum("qc,qhw->chw", p, m)[:, :15, :20]
    expected = F.interpolate(expected[None], size=(30, 40), mode="bilinear", align_corners=False)[0]
    expected[list(seen)] -= 0.1
    torch.testing.assert_close(fused, expected)

    clip_only = semantic_inference(cls, masks, clip_logits=clip, seen_ids=seen, unseen_ids=unseen, **common)
    expected = torch.einsum("qc,qhw->chw", p_clip, m)[:, :15, :20]
    expected = F.interpolate(expected[None], size=(30, 40), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(clip_only, expected)
