"""Shared fixtures: stand-in PADing models and ONNX exports are built once per session (exports take ~30 s)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parent.parent

# Keep CPU tests predictable on 2-core CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")


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
