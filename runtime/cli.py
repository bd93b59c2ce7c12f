"""`trt-infer`: segment images with an exported model (.onnx via ONNX Runtime, .plan via TensorRT)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import ZsdError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trt-infer",
        description="Segment images with a zsdeploy model: an ONNX file (ONNX Runtime, CPU or CUDA) or a TensorRT "
                    "engine (.plan, GPU). Writes per image a label/id PNG and a JSON; optionally an overlay and the "
                    "raw network outputs.",
        epilog="Example: trt-infer --model pading_panoptic.onnx --input photos/ --output results/ --vis",
    )
    p.add_argument("--model", required=True,
                   help=".onnx (export-model) or .plan (build-engine), or a ZegFormer bundle directory")
    p.add_argument("--input", required=True, help="an image file or a directory of images")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--task", choices=["semantic", "panoptic", "instance"],
                   help="post-processing to run (default: the model's task)")
    p.add_argument("--short-edge", type=int,
                   help="resize images to this short edge instead of the model's (min_size_test); 0 = no resize")
    p.add_argument("--batch", type=int, default=1, help="images per inference call (default 1)")
    p.add_argument("--vis", action="store_true", help="also write <name>_vis.png overlays")
    p.add_argument("--vis-score-threshold", type=float, default=0.5, help="instances below are not drawn (0.5)")
    p.add_argument("--save-raw", action="store_true", help="also write <name>_raw.npz with the raw outputs")
    p.add_argument("--plugin-lib", help="libzsdeploy_plugins.so for engines with plugin nodes")
    p.add_argument("--threads", type=int, help="CPU threads for ONNX Runtime")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    z = p.add_argument_group("ZegFormer bundles (open vocabulary)")
    z.add_argument("--classes", help='the vocabulary, comma-separated, e.g. "corgi,fire truck,traffic cone" '
                                     "(default: the bundle's). Names the model was trained on count as seen, all "
                                     "others as unseen")
    z.add_argument("--classes-file", help="the vocabulary from a file: one class per line ('a, b' = synonyms of "
                                          "one class; '#' comments) or a JSON list")
    z.add_argument("--text-embeddings", help="precomputed float32 [C,512] .npy for the vocabulary, instead of "
                                             "embedding the names (not for gzss bundles)")
    z.add_argument("--clip-bpe", help="CLIP's bpe_simple_vocab_16e6.txt.gz for embedding new names (else "
                                      "$ZSD_CLIP_BPE or an installed open_clip/clip package)")
    z.add_argument("--no-cache", action="store_true",
                   help="do not read or write the vocabulary embedding cache (<bundle>/.vocab_cache)")
    return p


def open_segmenter(args: argparse.Namespace):
    """A Segmenter for --model: a ZegFormer bundle (with its vocabulary) or a single PADing graph/engine."""
    from .pipeline import Segmenter
    from .zegformer import bundle_root, open_zegformer

    if bundle_root(args.model) is not None:
        return open_zegformer(args.model, classes=args.classes, classes_file=args.classes_file,
                              text_embeddings_file=args.text_embeddings, bpe_path=args.clip_bpe,
                              plugin_lib=args.plugin_lib, threads=args.threads, use_cache=not args.no_cache,
                              task=args.task, short_edge=args.short_edge)
    zeg_only = [f for f, v in (("--classes", args.classes), ("--classes-file", args.classes_file),
                               ("--text-embeddings", args.text_embeddings)) if v is not None]
    from .backends import load_backend

    backend = load_backend(args.model, plugin_lib=args.plugin_lib, threads=args.threads)
    if backend.info.model == "zegformer":
        graph = backend.info.raw.get("graph", "?")
        raise ZsdError(f"{args.model} is the {graph} graph of a ZegFormer bundle, which runs only with the rest of "
                       "the bundle (bundle.json, text encoder, vocabulary embeddings).",
                       "pass the bundle directory export-model --model zegformer wrote.")
    if zeg_only:
        raise ZsdError(f"{', '.join(zeg_only)}: a {backend.info.model} model has a fixed class list; only ZegFormer "
                       "bundles take a vocabulary at run time.", f"drop {', '.join(zeg_only)}.")
    return Segmenter(backend, args.task, args.short_edge)


def run(args: argparse.Namespace) -> int:
    from .imageio import list_images, load_image
    from .results_io import write_outputs

    if args.batch < 1:
        raise ZsdError(f"--batch {args.batch} must be >= 1.", "pass --batch 1 or more.")
    paths = list_images(args.input)
    out_dir = Path(args.output)
    segmenter = open_segmenter(args)
    backend, info = segmenter.backend, segmenter.info
    if info.standin_weights:
        print("note: this model was exported with untrained stand-in weights; its predictions are meaningless.",
              file=sys.stderr)
    vocab = getattr(segmenter, "vocabulary", None)
    if vocab is not None:
        print(f"vocabulary: {len(vocab.names)} classes ({vocab.source}; {len(vocab.seen_ids)} seen, "
              f"{len(vocab.unseen_ids)} unseen)", file=sys.stderr)
    from tqdm import tqdm

    failures: list[str] = []
    done = 0
    t0 = time.perf_counter()
    bar = tqdm(total=len(paths), unit="img", disable=args.quiet or len(paths) < 2, file=sys.stderr)
    for start in range(0, len(paths), args.batch):
        chunk = paths[start:start + args.batch]
        loaded = []
        for p in chunk:
            try:
                img = load_image(p)
            except ZsdError as e:
                if len(paths) == 1:
                    raise
                failures.append(f"{p}: {e}")
                bar.update(1)
                continue
            for note in img.notes:
                print(f"note: {note}", file=sys.stderr)
            loaded.append(img)
        if not loaded:
            continue
        for img, seg in zip(loaded, segmenter([im.rgb for im in loaded])):
            write_outputs(seg, info, out_dir, img.path.stem, rgb=img.rgb, vis=args.vis, save_raw=args.save_raw,
                          vis_score_threshold=args.vis_score_threshold,
                          extra={"image": str(img.path), "backend": backend.name,
                                 "timings_ms": {k: round(v, 2) for k, v in seg.timings_ms.items()},
                                 **({"vocabulary": {"source": vocab.source, "names": list(vocab.names),
                                                    "unseen_ids": list(vocab.unseen_ids)}} if vocab else {})})
            done += 1
            bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - t0
    rate = done / elapsed if elapsed > 0 else float("nan")
    print(f"trt-infer: {done}/{len(paths)} image(s) segmented ({segmenter.task}) with {backend.name} in "
          f"{elapsed:.1f} s ({rate:.2f} images/s); results in {out_dir}")
    if failures:
        print(f"trt-infer: {len(failures)} image(s) could not be read and were skipped:", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ZsdError as e:
        print(f"trt-infer: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("trt-infer: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
