"""Exports the tests make through the Python API (not export-model), run in a child process by tests/prefetch.py.

    python tests/build_artifacts.py onnx_exports OUT        static_b1/static_b2/dynamic.onnx of stand-in PADing
    python tests/build_artifacts.py pading_lowerings OUT    the plugin/nvidia lowerings traced directly (128x160)
    python tests/build_artifacts.py tiny_clip OUT           clip_small.pt: helpers.tiny_clip(seed=2)
    python tests/build_artifacts.py zegformer_dynamic OUT CLIP   dynamic cocostuff_r101 bundle (export_zegformer)
"""
from __future__ import annotations

import sys
from pathlib import Path

# The shapes of conftest.onnx_exports (ExportShape arguments).
PADING_EXPORTS = {"static_b1": (128, 160, 1, False), "static_b2": (96, 192, 2, False), "dynamic": (None, None, 1, True)}
# The (msda, dynamic) graphs test_plugin_lowering traces itself (the others come from export-model and onnx_exports).
TRACED_LOWERINGS = (("nvidia", False), ("plugin", True), ("nvidia", True))


def lowering_file(out: Path, msda: str, dynamic: bool) -> Path:
    return out / f"pading_{msda}_{'dynamic' if dynamic else 'static'}.onnx"


def onnx_exports(out: Path) -> None:
    from zsdeploy.export.onnx_export import ExportShape, check_and_simplify, save_atomic, set_metadata, trace_to_onnx
    from zsdeploy.export.pading_export import build_pading, pading_metadata

    built = build_pading("panoptic")
    for name, (h, w, b, dynamic) in PADING_EXPORTS.items():
        shape = ExportShape(dynamic=True) if dynamic else ExportShape(h, w, b, False)
        proto = check_and_simplify(trace_to_onnx(built.model, shape, opset=18, msda="gridsample"))
        set_metadata(proto, pading_metadata(built, shape, opset=18, msda="gridsample"))
        save_atomic(proto, out / f"{name}.onnx")


def pading_lowerings(out: Path) -> None:
    from zsdeploy.export.onnx_export import ExportShape, check_and_simplify, save_atomic, trace_to_onnx
    from zsdeploy.export.pading_export import build_pading

    model = build_pading("panoptic").model
    for msda, dynamic in TRACED_LOWERINGS:
        proto = trace_to_onnx(model, ExportShape(128, 160, 1, dynamic), opset=18, msda=msda,
                              output_names=("class_logits", "mask_logits"))
        save_atomic(check_and_simplify(proto), lowering_file(out, msda, dynamic))


def tiny_clip(out: Path) -> None:
    import torch
    from helpers import tiny_clip as make

    torch.save(make(seed=2).state_dict(), out / "clip_small.pt")


def zegformer_dynamic(out: Path, clip: str) -> None:
    from helpers import BPE
    from zsdeploy.export.zegformer_export import export_zegformer

    export_zegformer(out / "bundle", config="cocostuff_r101", clip=Path(clip), dynamic=True, clip_bpe=BPE,
                     embed_defaults=BPE is not None, say=lambda _: None)


if __name__ == "__main__":
    kind, folder, *rest = sys.argv[1:]
    {"onnx_exports": onnx_exports, "pading_lowerings": pading_lowerings, "tiny_clip": tiny_clip,
     "zegformer_dynamic": zegformer_dynamic}[kind](Path(folder), *rest)
