"""`build-engine`: build a TensorRT engine (.plan + .plan.json sidecar) from an exported ONNX model.

A thin layer over `zsdeploy.families.build_engines` (a bundle's family builds each of its graphs; one graph goes to
`zsdeploy.runtime.tensorrt.builder.build_engine`): the CLI only parses arguments.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from zsdeploy.families import build_engines
from zsdeploy.runtime.cli_core import ArgumentParser, run_main
from zsdeploy.runtime.tensorrt.plugins import PLUGIN_LIBRARY_NAME
from zsdeploy.runtime.tensorrt.precision import PRECISIONS
from zsdeploy.runtime.tensorrt.preflight import BuildOptions
from zsdeploy.runtime.tensorrt.profiles import parse_profile


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="build-engine",
        description="Build a TensorRT engine from an ONNX model written by export-model. Writes the .plan and a "
                    "JSON sidecar (<plan>.json: model metadata, TensorRT version, GPU, precision, profiles) that "
                    "trt-infer checks before running it.",
        epilog="Examples:\n"
               "  build-engine --onnx pading.onnx --output pading_fp16.plan --precision fp16 "
               f"--plugin-lib build/{PLUGIN_LIBRARY_NAME}\n"
               "  build-engine --onnx pading_dyn.onnx --output pading_dyn.plan --precision fp16 \\\n"
               "      --profile images:1x3x512x512:1x3x800x1216:2x3x1344x1344 --timing-cache pading.cache\n"
               "  build-engine --onnx pading.onnx --output pading_int8.plan --precision int8 --calib-images val2017/\n"
               "  export-model --from-onnx pading.onnx --precision int8 --output pading_int8.onnx && \\\n"
               "      build-engine --onnx pading_int8.onnx --output pading_int8.plan  # strongly typed (TRT 10/11)\n"
               "  build-engine --onnx zegformer_bundle/ --output zegformer_bundle/ --precision fp16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--onnx", required=True, help="input .onnx (with zsdeploy metadata, from export-model), or a "
                                                 "ZegFormer bundle directory (every graph -> <graph>.plan)")
    p.add_argument("--output", required=True, help="output engine (.plan / .engine); the sidecar is <output>.json. "
                                                   "For a bundle: the bundle directory itself")
    p.add_argument("--precision", default=None, choices=list(PRECISIONS),
                   help="default: as the graph says. A graph from export-model --precision fp16|int8 carries its "
                        "precision and is built as a strongly typed network (TensorRT >= 10; the only way on 11). "
                        "On an fp32 graph, fp16 / int8 use the builder flags (int8: entropy calibration, fp16 for "
                        "layers without int8), which only TensorRT <= 10 has (e.g. JetPack 6's 10.3)")
    p.add_argument("--calib-images", help="int8: folder of representative images (pre-processed like inference)")
    p.add_argument("--calib-cache", help="int8: calibration cache to read/write (default <output stem>.calib)")
    p.add_argument("--calib-max-images", type=int, default=512, help="int8: use at most this many images (512)")
    p.add_argument("--profile", action="append", default=[], metavar="NAME:MIN:OPT:MAX",
                   help="optimisation profile of one input, shapes as NxCxHxW, e.g. "
                        "images:1x3x512x512:1x3x800x1216:2x3x1344x1344 (repeat per input). Default: the static "
                        "shape, or for a dynamic model batch 1 and H/W from its resize policy")
    p.add_argument("--plugin-lib", help=f"{PLUGIN_LIBRARY_NAME} (needed for graphs exported with --msda plugin); "
                                        "loaded before parsing")
    p.add_argument("--workspace", type=int, default=4096, metavar="MB", help="builder workspace limit (4096 MiB)")
    p.add_argument("--timing-cache", help="TensorRT timing cache file: read if present, written after the build")
    p.add_argument("--device", type=int, default=0, help="CUDA device index (0)")
    p.add_argument("--verbose", action="store_true", help="print all TensorRT messages")
    return p


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(
        onnx=Path(args.onnx), output=Path(args.output), precision=args.precision,
        calib_images=_path(args.calib_images), calib_cache=_path(args.calib_cache),
        calib_max_images=args.calib_max_images, profile=parse_profile(args.profile),
        plugin_lib=_path(args.plugin_lib), workspace_mb=args.workspace, timing_cache=_path(args.timing_cache),
        device=args.device, verbose=args.verbose,
    )


def _say(msg: str) -> None:
    print(msg, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()

    def body() -> int:
        for result in build_engines(options_from_args(args), say=_say):
            _say(f"wrote {result.plan} ({result.size_bytes / 2**20:.1f} MiB) and {result.sidecar.name}")
        _say(f"done in {time.perf_counter() - t0:.1f} s")
        return 0

    return run_main("build-engine", body, lambda: "no engine was written")


if __name__ == "__main__":
    sys.exit(main())
