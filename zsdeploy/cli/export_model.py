"""`export-model`: trace PADing (or ZegFormer) to a self-describing ONNX graph."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from zsdeploy.export.models.msdeformattn import LOWERINGS
from zsdeploy.export.onnx_export import DEFAULT_OPSET, say
from zsdeploy.export.precision import CALIB_METHODS, DEFAULT_CALIB_SCENES, DEFAULT_ISLANDS, PRECISIONS, \
    PrecisionOptions
from zsdeploy.export.precision_islands import BY_NAME
from zsdeploy.export.zegformer_precision import ZEGFORMER_FP16_ISLANDS
from zsdeploy.families import MODELS, ExportRequest, convert_precision
from zsdeploy.runtime.cli_core import ArgumentParser, run_main
from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.options import TASKS


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="export-model",
        description="Export a trained PADing / ZegFormer model (official checkpoint + upstream config) to ONNX.",
        epilog="Example: export-model --model pading --task panoptic --weights model_final.pth "
               "--height 800 --width 1216 --output pading_panoptic.onnx",
    )
    p.add_argument("--model", choices=MODELS.names(),
                   help="model family (required unless --from-onnx): " + "; ".join(
                       f"{n}: {MODELS.get(n).summary}" for n in MODELS.names()))
    p.add_argument("--task", choices=TASKS,
                   help="PADing: released model to build (selects configs/pading/<task>.yaml and class list; "
                        "default panoptic); ZegFormer is semantic only")
    p.add_argument("--config", help="upstream YAML config (detectron2 schema; _BASE_ is followed); for ZegFormer "
                                    "also a released name, e.g. cocostuff_r101_gzss (default cocostuff_r101)")
    p.add_argument("--weights", help="detectron2 checkpoint .pth/.pkl, or `demo` (PADing: the demo model zsdeploy "
                                     "trained on generated scenes, with configs/pading/demo_panoptic.yaml); without it, "
                                     "deterministic stand-in weights")
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
                   help="MSDeformAttn lowering: gridsample (portable, default), plugin (zsdeploy TensorRT plugin; "
                        "also the fastest CPU path: OpenVINO runs it with zsdeploy's extension), nvidia (TensorRT's "
                        "MultiscaleDeformableAttnPlugin_TRT v2; OpenVINO runs it too)")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    z = p.add_argument_group("ZegFormer")
    z.add_argument("--clip", help="OpenAI's CLIP file (ViT-B-16.pt, TorchScript) or a state dict in its key layout; "
                                  "needed with --weights unless the checkpoint carries CLIP (gzss checkpoints)")
    z.add_argument("--clip-bpe", help="CLIP's bpe_simple_vocab_16e6.txt.gz, to embed the default vocabulary at "
                                      "export time (else $ZSD_CLIP_BPE or an installed open_clip/clip package)")
    z.add_argument("--no-default-embeddings", action="store_true",
                   help="do not store the default vocabulary's text embeddings in the bundle")
    q = p.add_argument_group("precision (see zsdeploy.export.precision and zsdeploy.export.zegformer_precision)")
    q.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="graph precision: fp32 (default); fp16 (onnxconverter-common, float32 inputs/outputs kept); "
                        "int8 (explicit Q/DQ, onnxruntime.quantization, per-channel weights, calibrated; PADing "
                        "only). The graph is exported in fp32 first and converted; TensorRT builds it as a strongly "
                        "typed network. ZegFormer bundles: fp16 converts the segmenter and the CLIP crop classifier; "
                        "the text encoder stays fp32 (it runs once per vocabulary and its embeddings are cached); "
                        "int8 is refused (no calibration story for the CLIP crops yet)")
    q.add_argument("--fp32-islands", metavar="LIST|none|default",
                   help=f"blocks kept in fp32: comma list of {', '.join(BY_NAME)}; none; or default "
                        f"(PADing fp16: {','.join(DEFAULT_ISLANDS['fp16'])}; PADing int8: "
                        f"{','.join(DEFAULT_ISLANDS['int8'])}, measured by python -m "
                        f"zsdeploy.benchmarks.precision_sensitivity (zsd-bench precision); ZegFormer fp16: {','.join(ZEGFORMER_FP16_ISLANDS)})")
    q.add_argument("--calib", metavar="DIR", help="int8: folder of representative images (unreadable ones are listed "
                                                  "and skipped); default: generated small-target scenes")
    q.add_argument("--calib-scenes", type=int, default=DEFAULT_CALIB_SCENES,
                   help=f"int8 without --calib: number of generated calibration scenes "
                        f"(default {DEFAULT_CALIB_SCENES})")
    q.add_argument("--calib-method", default="minmax", choices=list(CALIB_METHODS),
                   help="int8 calibration: minmax (default; keeps rare large activations), percentile (99.999), "
                        "entropy")
    q.add_argument("--from-onnx", metavar="M.onnx",
                   help="convert this fp32 export to --precision instead of tracing a model again")
    p.add_argument("--output", required=True, help="output path: a .onnx file (PADing) or a bundle directory "
                                                   "(ZegFormer)")
    return p


def precision_options(args: argparse.Namespace) -> PrecisionOptions:
    return PrecisionOptions(args.precision, args.fp32_islands, args.calib, args.calib_scenes, args.calib_method)


def export_request(args: argparse.Namespace) -> ExportRequest:
    return ExportRequest(
        output=Path(args.output), task=args.task, config=args.config, weights=args.weights, standin=args.standin,
        height=args.height, width=args.width, batch=args.batch, dynamic=args.dynamic, opset=args.opset,
        msda=args.msda, simplify=not args.no_simplify, clip=args.clip, clip_bpe=args.clip_bpe,
        embed_defaults=not args.no_default_embeddings, precision=precision_options(args))


def run(args: argparse.Namespace) -> Path:
    if args.from_onnx:
        return run_convert(args)
    if args.model is None:
        raise ZsdError("--model is missing.", f"pass --model {'|'.join(MODELS.names())} (or --from-onnx M.onnx to "
                                              "convert an existing export).")
    return MODELS.get(args.model).export(export_request(args), say)


def run_convert(args: argparse.Namespace) -> Path:
    """`--from-onnx M.onnx --precision P`: an existing fp32 export converted; nothing is traced."""
    given = [f for f, v in (("--model", args.model), ("--task", args.task), ("--config", args.config),
                            ("--weights", args.weights), ("--standin", args.standin), ("--height", args.height),
                            ("--width", args.width), ("--dynamic", args.dynamic), ("--clip", args.clip)) if v]
    if given:
        raise ZsdError(f"--from-onnx converts an existing export; {', '.join(given)} would be ignored.",
                       f"drop {', '.join(given)} (they were fixed when {args.from_onnx} was exported).")
    return convert_precision(Path(args.from_onnx), Path(args.output), precision_options(args), say)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()

    def body() -> int:
        run(args)
        say(f"total {time.perf_counter() - t0:.1f} s")
        return 0

    return run_main("export-model", body)


if __name__ == "__main__":
    sys.exit(main())
