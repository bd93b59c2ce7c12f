"""`export-triton`: write a Triton Inference Server model repository for a zsdeploy export."""
from __future__ import annotations

import argparse
import sys

from zsdeploy.families import describe_triton_repository, write_triton_repository
from zsdeploy.runtime.cli_core import ArgumentParser, run_main
from zsdeploy.runtime.options import TASKS
from zsdeploy.runtime.serving.repository import BACKENDS, DEFAULT_MAX_BATCH, RepositoryOptions


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="export-triton",
        description="Write a Triton model repository for a PADing export: an ensemble IMAGE (encoded image bytes) "
                    "-> pre-processing -> network -> post-processing -> id_map (int32 label/panoptic/instance ids) "
                    "+ segments (the JSON trt-infer writes). Pre/post-processing run zsdeploy.runtime in Triton's "
                    "Python backend, so served results equal trt-infer's. For a ZegFormer bundle: one Python-backend "
                    "model taking IMAGE plus an optional CLASSES string (the vocabulary of the request, "
                    "comma-separated; default the bundle's), returning id_map, scores and segments. An existing "
                    "repository written by export-triton at --output is replaced as a whole.",
        epilog="Examples: export-triton --model pading_panoptic.onnx --output triton_repo --backend python "
               "--dynamic-batching;  export-triton --model zegformer_bundle/ --output triton_repo --clip-bpe "
               "bpe_simple_vocab_16e6.txt.gz",
    )
    p.add_argument("--model", required=True, help="a PADing .onnx (export-model) or .plan (build-engine; its .json "
                                                  "sidecar must be next to it), or a ZegFormer bundle directory")
    p.add_argument("--output", required=True, help="the model repository directory to write")
    p.add_argument("--backend", choices=BACKENDS,
                   help="how Triton runs the network: tensorrt (platform tensorrt_plan, GPU), onnxruntime or "
                        "openvino (Triton's CPU backends), python (zsdeploy's own backend inside the Python "
                        "backend, for Triton builds without a native one). Default: tensorrt for .plan, "
                        "onnxruntime for .onnx")
    p.add_argument("--max-batch", type=int,
                   help=f"max_batch_size (dynamic exports: default {DEFAULT_MAX_BATCH}; static exports: their batch)")
    p.add_argument("--instances", type=int, default=1, help="instance_group count of every model (default 1)")
    p.add_argument("--dynamic-batching", action="store_true",
                   help="let Triton batch concurrent requests of the same shape on the network model")
    p.add_argument("--max-queue-delay-us", type=int, default=0,
                   help="dynamic batching: how long a request may wait for others (default 0)")
    p.add_argument("--task", choices=TASKS,
                   help="post-processing to serve (default: the model's task)")
    p.add_argument("--name", help="name of the ensemble to request (default <model>_<task>, e.g. pading_panoptic)")
    p.add_argument("--threads", type=int, help="CPU threads of the network (onnxruntime, openvino, python)")
    z = p.add_argument_group("ZegFormer bundles (vocabulary per request)")
    z.add_argument("--clip-bpe", help="CLIP's bpe_simple_vocab_16e6.txt.gz, copied into the repository to embed "
                                      "new class names (default: $ZSD_CLIP_BPE or an installed open_clip's; "
                                      "without one only the bundle's default vocabulary is served)")
    z.add_argument("--max-classes", type=int, help="most class names in one request's CLASSES (default 1000)")
    z.add_argument("--vocab-cache", type=int,
                   help="vocabularies kept embedded in each model instance, least recently used dropped first "
                        "(default 16)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = RepositoryOptions(backend=args.backend, max_batch=args.max_batch, instances=args.instances,
                             dynamic_batching=args.dynamic_batching, max_queue_delay_us=args.max_queue_delay_us,
                             task=args.task, name=args.name, threads=args.threads, clip_bpe=args.clip_bpe,
                             max_classes=args.max_classes, vocab_cache=args.vocab_cache)

    def body() -> int:
        out = write_triton_repository(args.model, args.output, opts)
        print(f"export-triton: wrote {out}: {describe_triton_repository(args.model, out)}")
        return 0

    return run_main("export-triton", body)


if __name__ == "__main__":
    sys.exit(main())
