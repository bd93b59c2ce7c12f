"""What the test modules share, in one place (a test module never imports another): where the checkout, its test
fixtures and the data beside it (`../shared`, never committed; a user's machine has none, so tests that need it skip
naming what is missing) are; CLIP's BPE file; numeric checks; a tiny ONNX model with zsdeploy metadata, the tiny CLIP,
a test bundle.json and the golden post-processing cases; a degraded benchmark backend; the TensorRT / GPU guards.

Imported by most test modules and by conftest.py: keep it light (torch, onnx and the exporters are imported inside the
functions that need them)."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from zsdeploy.runtime.artifacts.bundle_manifest import (BundleClasses, BundleClip, BundleExporter, BundleFile,
                                                        BundleFusion, BundleInput, BundleManifest, BundlePrompts,
                                                        BundleSource)
from zsdeploy.runtime.backends.base import Backend
from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.postprocess import resize_bilinear
from zsdeploy.runtime.tensorrt.loader import import_tensorrt

if TYPE_CHECKING:
    from zsdeploy.export.models.clip import CLIP, CLIPSpec

#: tests/ (this file's folder; the test modules sit one level below, in unit/, integration/, cli/ and gpu/)
TESTS = Path(__file__).resolve().parent
#: the checkout's root (pyproject.toml, configs/, scripts/, benchmarks/, plugins_trt/)
REPO = TESTS.parent
#: committed test data (tests/fixtures/README.md says where each file comes from)
FIXTURES = TESTS / "fixtures"
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


# ---------------------------------------------------------------------------------------------- numeric checks
def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def assert_ran(results: list[subprocess.CompletedProcess], commands: int) -> list[subprocess.CompletedProcess]:
    """Every command of a prefetched job ran and exited 0 (a failed one stops the job: its stderr is shown)."""
    for r in results:
        assert r.returncode == 0, f"{' '.join(map(str, r.args))}\n{r.stderr[-3000:]}"
    assert len(results) == commands, [r.args for r in results]
    return results


def read_manifest(path: Path) -> dict[str, tuple[int, ...]]:
    """A state-dict manifest (tests/fixtures/*_manifest_*.tsv): key TAB shape (`AxBxC`, empty for a scalar)."""
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            key, _, shape = line.partition("\t")
            rows[key] = tuple(int(v) for v in shape.split("x")) if shape else ()
    return rows


#: the file name of the static `export-model --msda plugin` graph in the session's pading_graphs job (conftest.py)
PADING_PLUGIN_ONNX = "pading_plugin.onnx"


# ------------------------------------------------------------------------------------------------- CLIP's BPE
BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"


def _bpe_path() -> Path | None:
    env = os.environ.get("ZSD_CLIP_BPE")
    for p in ([Path(env)] if env else []) + [shared_path("clip", BPE_NAME)]:
        if p is not None and p.is_file():
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
    import onnx
    from onnx import helper, numpy_helper

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
    import onnx
    from onnx import helper, numpy_helper

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


# ------------------------------------------------------------------------------------------------ tiny CLIP
def tiny_clip_spec() -> CLIPSpec:
    """Small but structurally complete: real vocabulary and context, ViT-B/16 patching at 224, 512-d embeddings."""
    from zsdeploy.export.models.clip import CLIPSpec

    return CLIPSpec(embed_dim=512, image_resolution=224, vision_layers=2, vision_width=64, vision_patch_size=16,
                    context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                    transformer_layers=2)


def tiny_clip(seed: int = 0) -> CLIP:
    """A CLIP of tiny_clip_spec() with seeded random weights (layer-norm gains around 1)."""
    import torch

    from zsdeploy.export.models.clip import CLIP

    g = torch.Generator().manual_seed(seed)
    model = CLIP(tiny_clip_spec()).eval()
    model.load_state_dict({k: torch.randn(v.shape, generator=g) * (0.02 if v.dim() > 1 else 0.1) + (
        1.0 if k.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight"))
        else 0.0) for k, v in model.state_dict().items()})
    return model


# ---------------------------------------------------------------------------------------- a test bundle.json
BUNDLE_GRAPH_FILES = {"segmenter": "segmenter.onnx", "text_encoder": "text_encoder.onnx",
                      "crop_classifier": "crop_classifier.onnx"}


def bundle_manifest(graphs: dict[str, BundleFile], embeddings: dict[str, BundleFile]) -> BundleManifest:
    """A format-2 ZegFormer bundle manifest (voc_r50_gzss-like, 64x96 static) listing `graphs` and `embeddings`."""
    return BundleManifest(
        graphs=graphs, embeddings=embeddings,
        classes=BundleClasses(names=("cat", "dog", "café table"), seen_ids=(0, 2), unseen_ids=(1,), thing_ids=(0, 1),
                              colors=((1, 2, 3), (4, 5, 6), (7, 8, 9)), source="test"),
        prompts=BundlePrompts("single", ("a photo of a {}.",), ("a {}.", "the {}.")),
        fusion=BundleFusion(clip_classification=True, ensembling=True, ensembling_all_cls=False,
                            ensembling_lambda=2 / 3, gzero_calibrate=0.1),
        input=BundleInput(dynamic=False, batch=1, height=64, width=96),
        clip=BundleClip("ViT-B/16", 512, 77, "clip-bpe-49408"),
        made_from=BundleSource(config="voc_r50_gzss.yaml", weights="model_final.pth", standin_weights=False,
                               weights_sha256="ab" * 32, clip_weights="standin", standin_clip=True,
                               clip_sha256=None),
        exporter=BundleExporter("zsdeploy-0.1.0", "2.13.0", 18),
    )


# Parsing never opens the listed files, so a manifest alone (with invented sizes and hashes) serves the field tests.
MANIFEST_DOC = bundle_manifest({g: BundleFile(f, 10, "0" * 64) for g, f in BUNDLE_GRAPH_FILES.items()},
                               {"text_embeddings": BundleFile("text_embeddings.npy", 20, "1" * 64)}).to_json()


# -------------------------------------------------------------------------- golden post-processing cases
COCO_PANOPTIC_THINGS = tuple(range(80))  # contiguous ids of the 80 COCO things (they come first)


def load_postproc_golden(task: str) -> dict[str, np.ndarray]:
    """Upstream's post-processing inputs and outputs for `task` (tests/fixtures/postproc_*.npz)."""
    with np.load(FIXTURES / f"postproc_{task}.npz") as z:
        return {k: z[k] for k in z.files}


def check_semseg(sem: np.ndarray, ref: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(sem.argmax(axis=0), ref["sem_seg_argmax"])
    np.testing.assert_allclose(sem.max(axis=0), ref["sem_seg_max"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(sem[ref["sem_seg_channels"]], ref["sem_seg_channel_values"], rtol=0, atol=1e-5)


def _instance_table(masks, classes, scores, boxes) -> dict[tuple, tuple]:
    """(class, mask bytes) -> (score, box); asserts the keys are unique so set comparison is sound."""
    table = {}
    for m, c, s, b in zip(masks, classes, scores, boxes):
        key = (int(c), np.asarray(m).astype(bool).tobytes())
        assert key not in table, "duplicate (class, mask): compare as multisets instead"
        table[key] = (float(s), np.asarray(b, dtype=np.float32))
    return table


def check_instances(inst: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    assert inst["pred_masks"].dtype == np.bool_
    assert inst["scores"].dtype == np.float32 and inst["pred_classes"].dtype == np.int64
    assert inst["pred_boxes"].dtype == np.float32 and inst["pred_boxes"].shape == (len(inst["scores"]), 4)
    ours = _instance_table(inst["pred_masks"], inst["pred_classes"], inst["scores"], inst["pred_boxes"])
    gold = _instance_table(
        ref["instances_pred_masks"], ref["instances_pred_classes"], ref["instances_scores"], ref["instances_pred_boxes"]
    )
    assert len(ours) == len(gold) == len(ref["instances_scores"])
    assert ours.keys() == gold.keys()
    for key, (score, box) in gold.items():
        assert abs(ours[key][0] - score) <= 1e-5, key[0]
        np.testing.assert_array_equal(ours[key][1], box)


# ------------------------------------------------------------------------------------- a degraded backend
class HalfResolution(Backend):
    """A real degradation: the wrapped model runs on a 2x2-average-pooled input (as an export at half resolution
    would), and its mask logits are bilinearly upsampled back to the stride-4 grid of the full input."""

    name = "half-res"

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.info = inner.info
        self.input_names, self.output_names = inner.input_names, inner.output_names

    def input_shape(self, name):
        return self.inner.input_shape(name)

    def infer(self, feeds):
        x = feeds["images"]
        b, c, h, w = x.shape
        small = np.ascontiguousarray(x.reshape(b, c, h // 2, 2, w // 2, 2).mean((3, 5)), dtype=np.float32)
        out = self.inner.infer({"images": small})
        m = out["mask_logits"]
        q = m.shape[1]
        up = resize_bilinear(m.reshape(b * q, *m.shape[2:]), (h // 4, w // 4)).reshape(b, q, h // 4, w // 4)
        return {"class_logits": out["class_logits"], "mask_logits": up.astype(np.float32)}


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


# ------------------------------------------------------------------------------------------ real mounts
def mount(*args: str) -> None:
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount here ({(r.stderr or r.stdout).strip()}): needs root with CAP_SYS_ADMIN")


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@contextlib.contextmanager
def read_only(folder: Path, where: Path) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    mount("--bind", str(folder), str(where))
    try:
        mount("-o", "remount,bind,ro", str(where))
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
