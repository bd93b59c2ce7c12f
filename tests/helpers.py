"""What the test modules share, in one place: finding data that lives beside the checkout (`../shared`, never
committed; a user's machine has none, so tests that need it skip naming what is missing), CLIP's BPE file, a tiny ONNX
model with zsdeploy metadata, and the TensorRT / GPU guards."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.tensorrt.loader import import_tensorrt

REPO = Path(__file__).resolve().parent.parent
#: NVIDIA's TensorRT headers, CLIP's BPE file, golden references, docs: data beside the checkout, not in it
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path | None:
    """A file or folder under ../shared, or None where this machine has none."""
    p = SHARED.joinpath(*parts)
    return p if p.exists() else None


def require_shared(*parts: str, what: str) -> Path:
    """A path under ../shared, or skip the test naming what is missing and why."""
    p = shared_path(*parts)
    if p is None:
        pytest.skip(f"{what} not found at {SHARED.joinpath(*parts)} (data beside the checkout that zsdeploy does not "
                    "ship; a user's machine has none)")
    return p


# ------------------------------------------------------------------------------------------------- CLIP's BPE
BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"


def _bpe_path() -> Path | None:
    env = os.environ.get("ZSD_CLIP_BPE")
    for p in ([Path(env)] if env else []) + [SHARED / "clip" / BPE_NAME]:
        if p.is_file():
            return p
    return None


BPE = _bpe_path()
needs_bpe = pytest.mark.skipif(BPE is None, reason=f"CLIP's {BPE_NAME} not found ($ZSD_CLIP_BPE or ../shared/clip/); "
                                                   "zsdeploy does not ship it")


# ----------------------------------------------------------------------------- a tiny PADing-like ONNX model
CLASS_NAMES = ["person", "car", "sky", "grass"]


def metadata(dynamic: bool = False, batch: int = 1, h: int = 64, w: int = 96, msda: str = "gridsample") -> dict:
    return {
        "model": "pading", "task": "panoptic", "num_classes": str(len(CLASS_NAMES)),
        "class_names": json.dumps(CLASS_NAMES), "pixel_mean": json.dumps([123.675, 116.28, 103.53]),
        "min_size_test": "800", "max_size_test": "1333", "size_divisibility": "32",
        "dynamic": "true" if dynamic else "false", "static_batch": "" if dynamic else str(batch),
        "static_height": "" if dynamic else str(h), "static_width": "" if dynamic else str(w),
        "input_name": "images", "msda_lowering": msda,
    }


def write_tiny_onnx(path: Path, *, with_metadata: bool = True, dynamic: bool = False,
                    plugin: str | None = None) -> Path:
    """images [N,3,H,W] -> Conv3x3 -> mask_logits [N,4,H,W]; ReduceMean -> class_logits [N,4].

    `plugin` adds a node of that op type (enough for the checks that run before TensorRT parses the graph).
    """
    dims = ["batch", 3, "height", "width"] if dynamic else [1, 3, 64, 96]
    images = helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, dims)
    masks = helper.make_tensor_value_info("mask_logits", onnx.TensorProto.FLOAT, None)
    logits = helper.make_tensor_value_info("class_logits", onnx.TensorProto.FLOAT, None)
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32) / 100, "w")
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    nodes = [helper.make_node("Conv", ["images", "w"], ["mask_logits"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("ReduceMean", ["mask_logits", "axes"], ["class_logits"], keepdims=0, name="mean")]
    opsets = [helper.make_opsetid("", 18)]
    if plugin is not None:
        nodes.append(helper.make_node(plugin, ["mask_logits"], ["extra"], domain="zsdeploy", name="msda_0",
                                      plugin_version="1", plugin_namespace="zsdeploy"))
        opsets.append(helper.make_opsetid("zsdeploy", 1))
    graph = helper.make_graph(nodes, "tiny", [images], [logits, masks], [weight, axes])
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    if with_metadata:
        for k, v in metadata(dynamic).items():
            model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """build-engine in a fresh interpreter, as a user runs it (exit code, stderr)."""
    return subprocess.run([sys.executable, "-m", "zsdeploy.cli.build_engine", *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def explicit_copy(src, dst, kind: str):
    """The tiny graph made explicit: int8 (Q/DQ on the conv input) or fp16 (a Cast to float16 and back)."""
    model = onnx.load(str(src))
    conv = model.graph.node[0]
    if kind == "int8":
        model.graph.initializer.extend([numpy_helper.from_array(np.array(0.5, np.float32), "s"),
                                        numpy_helper.from_array(np.array(0, np.int8), "z")])
        q = helper.make_node("QuantizeLinear", ["images", "s", "z"], ["q"], name="q")
        dq = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq")
    else:
        q = helper.make_node("Cast", ["images"], ["q"], to=onnx.TensorProto.FLOAT16, name="to16")
        dq = helper.make_node("Cast", ["q"], ["dq"], to=onnx.TensorProto.FLOAT, name="to32")
    conv.input[0] = "dq"
    nodes = [q, dq, *model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return dst


# ------------------------------------------------------------------------------------------- TensorRT + GPU
def require_tensorrt_gpu():
    """Skip (naming what is missing) unless TensorRT, cuda-python and a GPU are all usable."""
    try:
        trt = import_tensorrt()
    except ZsdError as e:
        pytest.skip(e.problem)
    from zsdeploy.runtime import cuda_utils

    try:
        cuda_utils.device_info(0)
    except ZsdError as e:
        pytest.skip(f"no usable CUDA GPU / cuda-python: {e.problem}")
    return trt
