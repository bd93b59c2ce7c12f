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
    p.add_argument("--model", required=True, choices=["pading", "zegformer"], help="model family")
    p.add_argument("--task", choices=["panoptic", "instance", "semantic"],
                   help="PADing: released model to build (selects configs/pading/<task>.yaml and class list; "
                        "default panoptic); ZegFormer is semantic only")
    p.add_argument("--config", help="upstream YAML config (detectron2 schema; _BASE_ is followed); for ZegFormer "
                                    "also a released name, e.g. cocostuff_r101_gzss (default cocostuff_r101)")
    p.add_argument("--weights", help="detectron2 checkpoint .pth/.pkl; without it, deterministic stand-in weights")
    p.add_argument("--standin", choices=["golden", "diverse"],
                   help="PADing stand-in weights when no --weights: golden (the golden-fixture rule, default; its "
                        "queries are nearly identical, so panoptic/instance outputs are empty) or diverse (queries "
                        "made to differ: several segments per image, so benchmarks can measure PQ/AP)")
    p.add_argument("--height", type=int, help="static input height, multiple of 32 (default 800 PADing, 640 "
                                              "ZegFormer)")
    p.add_argument("--width", type=int, help="static input width, multiple of 32 (default 1216 PADing, 640 "
                                             "ZegFormer)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    p.add_argument("--batch", type=int, default=1, help="static batch size (default 1)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, 17..21 (default {DEFAULT_OPSET})")
    p.add_argument("--msda", default="gridsample", choices=list(LOWERINGS),
                   help="MSDeformAttn lowering: gridsample (portable, default), plugin (zsdeploy TensorRT plugin), "
                        "nvidia (TensorRT's MultiscaleDeformableAttnPlugin_TRT v2)")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    z = p.add_argument_group("ZegFormer")
    z.add_argument("--clip", help="OpenAI's CLIP file (ViT-B-16.pt, TorchScript) or a state dict in its key layout; "
                                  "needed with --weights unless the checkpoint carries CLIP (gzss checkpoints)")
    z.add_argument("--clip-bpe", help="CLIP's bpe_simple_vocab_16e6.txt.gz, to embed the default vocabulary at "
                                      "export time (else $ZSD_CLIP_BPE or an installed open_clip/clip package)")
    z.add_argument("--no-default-embeddings", action="store_true",
                   help="do not store the default vocabulary's text embeddings in the bundle")
    p.add_argument("--output", required=True, help="output path: a .onnx file (PADing) or a bundle directory "
                                                   "(ZegFormer)")
    return p


def run(args: argparse.Namespace) -> Path:
    if args.model == "zegformer":
        return run_zegformer(args)
    return run_pading(args)


def run_zegformer(args: argparse.Namespace) -> Path:
    from .zegformer_export import export_zegformer

    if args.msda != "gridsample":
        raise ZsdError(f"--msda {args.msda}: ZegFormer has no MSDeformAttn (its pixel decoder is an FPN).",
                       "drop --msda for ZegFormer.")
    if args.standin == "diverse":
        raise ZsdError("--standin diverse is a PADing stand-in (diverse decoder queries for zsd-bench PQ/AP); "
                       "ZegFormer has only the golden stand-in.", "drop --standin for ZegFormer.")
    if args.task not in (None, "semantic"):
        raise ZsdError(f"--task {args.task}: ZegFormer is a semantic segmentation model.", "drop --task.")
    return export_zegformer(
        args.output, config=args.config, weights=args.weights, clip=args.clip,
        height=args.height or 640, width=args.width or 640, batch=args.batch, dynamic=args.dynamic,
        opset=args.opset, simplify=not args.no_simplify, clip_bpe=args.clip_bpe,
        embed_defaults=not args.no_default_embeddings, say=say)


def run_pading(args: argparse.Namespace) -> Path:
    from .pading_export import build_pading, pading_metadata

    for flag, value in (("--clip", args.clip), ("--clip-bpe", args.clip_bpe)):
        if value:
            raise ZsdError(f"{flag} is a ZegFormer option; PADing has no CLIP.", f"drop {flag}.")
    if args.standin and args.weights:
        raise ZsdError(f"--standin {args.standin} picks stand-in weights, but --weights is given.",
                       "drop --standin (or --weights).")
    args.task = args.task or "panoptic"
    args.height, args.width = args.height or 800, args.width or 1216
    output = Path(args.output)
    if output.suffix != ".onnx":
        raise ZsdError(f"--output {output} should end in .onnx.", f"use --output {output.with_suffix('.onnx')}.")
    shape = ExportShape(args.height, args.width, args.batch, args.dynamic)
    shape.validate()
    progress = Progress(4, say)
    standin = args.standin or "golden"
    with progress.step(f"building PADing {args.task}" + ("" if args.weights else f" ({standin} stand-in)")):
        built = build_pading(args.task, args.config, args.weights, standin=standin)
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
