"""Shared fixtures: stand-in PADing models and ONNX exports are built once per session (exports take ~30 s)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parent.parent

# Keep CPU tests predictable on 2-core CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# OpenVINO's compiled-model cache (and other zsdeploy caches) go to a per-session temp folder, not ~/.cache.
os.environ.setdefault("ZSD_CACHE_DIR", tempfile.mkdtemp(prefix="zsd-test-cache-"))


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="session")
def pading_panoptic():
    from zsdeploy.export.pading_export import build_pading

    return build_pading("panoptic")


@pytest.fixture(scope="session")
def onnx_exports(tmp_path_factory, pading_panoptic):
    """Static (batch 1, 128x160), static (batch 2, 96x192) and dynamic exports of stand-in PADing panoptic."""
    from zsdeploy.export.onnx_export import ExportShape, check_and_simplify, save_atomic, set_metadata, trace_to_onnx
    from zsdeploy.export.pading_export import pading_metadata

    out = tmp_path_factory.mktemp("onnx")
    paths = {}
    for name, shape in {
        "static_b1": ExportShape(128, 160, 1, False),
        "static_b2": ExportShape(96, 192, 2, False),
        "dynamic": ExportShape(dynamic=True),
    }.items():
        proto = check_and_simplify(trace_to_onnx(pading_panoptic.model, shape, opset=18, msda="gridsample"))
        set_metadata(proto, pading_metadata(pading_panoptic, shape, opset=18, msda="gridsample"))
        paths[name] = out / f"{name}.onnx"
        save_atomic(proto, paths[name])
    return paths


@pytest.fixture(scope="session")
def zegformer_bundle(tmp_path_factory):
    """`export-model --model zegformer` run as a person runs it, once per session: the gzss config (static
    1x3x256x320 = the golden case's size), stand-in R101 and a small CLIP (ViT-B/16 layout, 512-d) with the real
    BPE vocabulary when it is available. Returns (bundle dir, CLIP file, export stdout lines)."""
    import subprocess
    import sys

    import torch
    from test_clip import tiny_clip
    from test_tokenizer import BPE

    d = tmp_path_factory.mktemp("zegformer")
    clip_file = d / "clip_small.pt"
    torch.save(tiny_clip(seed=2).state_dict(), clip_file)
    cmd = [sys.executable, "-m", "zsdeploy.export.cli", "--model", "zegformer", "--config", "cocostuff_r101_gzss",
           "--clip", str(clip_file), "--height", "256", "--width", "320", "--output", str(d / "bundle")]
    cmd += ["--clip-bpe", str(BPE)] if BPE is not None else ["--no-default-embeddings"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d / "bundle", clip_file, proc.stdout.splitlines()
