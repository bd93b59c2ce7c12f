"""`export-model`: trace PADing (or ZegFormer) to a self-describing ONNX graph."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..runtime.errors import ZsdError
from .models.msdeformattn import LOWERINGS
from .onnx_export import DEFAULT_OPSET, ExportShape, Progress, check_and_simplify, save_atomic, say, set_metadata, \
    trace_to_onnx


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="export-model",
        description="Export a trained PADing / ZegFormer model (official checkpoint + upstream config) to ONNX.",
        epilog="Example: export-model --model pading --task panoptic --weights model_final.pth "
               "--height 800 --width 1216 --output pading_panoptic.onnx",
    )
    p.add_argument("--model", required=True, choices=["pading"], help="model family")
    p.add_argument("--task", default="panoptic", choices=["panoptic", "instance", "semantic"],
                   help="released PADing model to build (selects configs/pading/<task>.yaml and class list)")
    p.add_argument("--config", help="upstream YAML config (detectron2 schema; _BASE_ is followed)")
    p.add_argument("--weights", help="detectron2 checkpoint .pth/.pkl; without it, deterministic stand-in weights")
    p.add_argument("--height", type=int, default=800, help="static input height, multiple of 32 (default 800)")
    p.add_argument("--width", type=int, default=1216, help="static input width, multiple of 32 (default 1216)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    p.add_argument("--batch", type=int, default=1, help="static batch size (default 1)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, 17..21 (default {DEFAULT_OPSET})")
    p.add_argument("--msda", default="gridsample", choices=list(LOWERINGS),
                   help="MSDeformAttn lowering: gridsample (portable, default), plugin (zsdeploy TensorRT plugin), "
                        "nvidia (TensorRT's MultiscaleDeformableAttnPlugin_TRT v2)")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    p.add_argument("--output", required=True, help="output .onnx path")
    return p


def run(args: argparse.Namespace) -> Path:
    from .pading_export import build_pading, pading_metadata

    output = Path(args.output)
    if output.suffix != ".onnx":
        raise ZsdError(f"--output {output} should end in .onnx.", f"use --output {output.with_suffix('.onnx')}.")
    shape = ExportShape(args.height, args.width, args.batch, args.dynamic)
    shape.validate()
    progress = Progress(4, say)
    with progress.step(f"building PADing {args.task}"):
        built = build_pading(args.task, args.config, args.weights)
    for note in built.notes:
        say(f"  note: {note}")
    if built.weights == "standin":
        from .standin import STANDIN_WARNING

        say(STANDIN_WARNING)
    dims = "dynamic batch/H/W" if shape.dynamic else f"{shape.batch}x3x{shape.height}x{shape.width}"
    with progress.step(f"tracing to ONNX ({dims}, opset {args.opset}, MSDeformAttn as {args.msda}; ~1 min)"):
        proto = trace_to_onnx(built.model, shape, opset=args.opset, msda=args.msda)
    with progress.step("checking, inferring shapes" + ("" if args.no_simplify else " and simplifying (onnxslim)")):
        proto = check_and_simplify(proto, simplify=not args.no_simplify)
    with progress.step(f"writing {output}"):
        set_metadata(proto, pading_metadata(built, shape, opset=args.opset, msda=args.msda))
        save_atomic(proto, output)
    size_mb = output.stat().st_size / 2**20
    say(f"exported {output} ({size_mb:.1f} MiB, {len(proto.graph.node)} nodes)")
    if built.weights == "standin":
        say(STANDIN_WARNING)
    return output


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        run(args)
    except ZsdError as e:
        print(f"export-model: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("export-model: interrupted; nothing was written.", file=sys.stderr)
        return 130
    say(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
