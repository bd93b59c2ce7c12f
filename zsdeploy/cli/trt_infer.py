"""`trt-infer`: segment images with an exported model (.onnx via ONNX Runtime, .plan via TensorRT)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from zsdeploy.families import OpenOptions, open_pipeline
from zsdeploy.runtime.cli_core import ArgumentParser, add_precision_argument, run_main
from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime import options
from zsdeploy.runtime.options import TASKS


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="trt-infer",
        description="Segment images with a zsdeploy model: an ONNX file (ONNX Runtime, CPU or CUDA) or a TensorRT "
                    "engine (.plan, GPU). Writes per image a label/id PNG and a JSON; optionally an overlay and the "
                    "raw network outputs.",
        epilog="Example: trt-infer --model pading_panoptic.onnx --input photos/ --output results/ --vis",
    )
    p.add_argument("--model", required=True,
                   help=".onnx (export-model) or .plan (build-engine), or a ZegFormer bundle directory")
    p.add_argument("--input", required=True, help="an image file or a directory of images; or a video file (.mp4 "
                                                  ".avi .mov .mkv .webm .m4v), camera index (0) or stream URL")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--task", choices=TASKS,
                   help="post-processing to run (default: the model's task)")
    p.add_argument("--short-edge", type=int,
                   help="resize images to this short edge instead of the model's (min_size_test); 0 = no resize. "
                        "Without it a static-shape model fits each image to its canvas (aspect ratio kept); with it, "
                        "images that do not fit are skipped")
    p.add_argument("--batch", type=int, default=1, help="images per inference call (default 1)")
    p.add_argument("--vis", action="store_true", help="also write <name>_vis.png overlays")
    p.add_argument("--vis-score-threshold", type=float, help="with --vis and --task instance: instances below "
                                                             "are not drawn (default 0.5)")
    p.add_argument("--save-raw", action="store_true", help="also write <name>_raw.npz with the raw outputs")
    p.add_argument("--plugin-lib", help="libzsdeploy_plugins.so for engines with plugin nodes")
    p.add_argument("--threads", type=int, help="CPU threads for ONNX Runtime / OpenVINO")
    p.add_argument("--backend", choices=options.BACKENDS, default="auto",
                   help="runtime for the model (default auto: .plan -> tensorrt; .onnx -> onnxruntime, which starts at "
                        "once, or openvino with --precision bf16). On Intel CPUs --backend openvino is faster after "
                        "its first compile (cached): see README, CPU backends")
    add_precision_argument(p, "how the model computes: fp32 (default) = as the graph or engine says; bf16 = "
                              "OpenVINO's bf16 inference precision (needs AMX or AVX512-BF16; else fp32 with a "
                              "note). fp16 / int8 are graph precisions, chosen by export-model / build-engine "
                              "--precision")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    v = p.add_argument_group("video files, cameras and streams (frame_NNNNNN.json per frame; --vis: <name>_vis.mp4)")
    v.add_argument("--max-frames", type=int, help="stop after this many frames (exit 0)")
    v.add_argument("--every", type=int, help="process every N-th frame of the source (default 1)")
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


def open_options(args: argparse.Namespace) -> OpenOptions:
    return OpenOptions(task=args.task, short_edge=args.short_edge, backend=args.backend, precision=args.precision,
                       threads=args.threads, plugin_lib=args.plugin_lib, classes=args.classes,
                       classes_file=args.classes_file, text_embeddings=args.text_embeddings, clip_bpe=args.clip_bpe,
                       use_cache=not args.no_cache)


def open_segmenter(args: argparse.Namespace):
    """The Pipeline for --model, opened by its registered model family (zsdeploy.families)."""
    return open_pipeline(args.model, open_options(args))


def _check_options(args: argparse.Namespace) -> None:
    """Refuse contradictory or out-of-range options before anything is loaded (nothing is silently replaced)."""
    if args.batch < 1:
        raise ZsdError(f"--batch {args.batch} must be >= 1.", "pass --batch 1 or more.")
    if args.threads is not None and args.threads < 1:
        raise ZsdError(f"--threads {args.threads} must be >= 1.", "pass --threads 1 or more (or leave it out).")
    if args.short_edge is not None and args.short_edge < 0:
        raise ZsdError(f"--short-edge {args.short_edge} must be >= 0.", "pass 0 (no resize) or a size in pixels.")
    if args.vis_score_threshold is not None:
        if not args.vis:
            raise ZsdError("--vis-score-threshold only affects --vis overlays, but --vis is not given.",
                           "add --vis, or drop --vis-score-threshold.")
        if not 0.0 <= args.vis_score_threshold <= 1.0:
            raise ZsdError(f"--vis-score-threshold {args.vis_score_threshold} is not a score (0..1).",
                           "pass a value between 0 and 1, e.g. 0.5.")


class _RunState:
    """What a run has done so far, so that an interruption or a failed write can say it truthfully."""

    def __init__(self, total: int, out_dir: Path) -> None:
        self.total, self.out_dir, self.done = total, out_dir, 0
        self.failures: list[str] = []

    def written(self) -> str:
        if self.done == 0:
            return f"no result was written to {self.out_dir}"
        return (f"the results of {self.done} of {self.total} image(s) in {self.out_dir} are complete (each file is "
                "written whole)")


def run(args: argparse.Namespace, state: _RunState | None = None) -> int:
    from zsdeploy.runtime.image_run import failure_line, segment_images
    from zsdeploy.runtime.imageio import list_images
    from zsdeploy.runtime.files import check_output_dir
    from zsdeploy.runtime.results_io import output_stems, without_earlier_results, write_outputs

    _check_options(args)
    from zsdeploy.runtime.video import VideoRunOptions, is_video_source, refuse_video_options, run_video

    if is_video_source(args.input):  # a video file, camera index or stream URL: the pipelined video path
        opts = VideoRunOptions(args.input, args.output, every=args.every, max_frames=args.max_frames,
                               batch=args.batch, vis=args.vis, save_raw=args.save_raw,
                               vis_score_threshold=args.vis_score_threshold, quiet=args.quiet)
        return run_video(opts, state if state is not None else _RunState(0, Path(args.output)),
                         lambda: open_segmenter(args))
    refuse_video_options(args.input, args.every, args.max_frames)
    paths = list_images(args.input)
    if Path(args.input).is_dir():
        paths, earlier = without_earlier_results(paths)
        if earlier:
            print(f"note: skipped {len(earlier)} result image(s) of an earlier trt-infer run in {args.input} "
                  f"(e.g. {earlier[0].name}, named by the .json beside it): results are not inputs.", file=sys.stderr)
        if not paths:
            raise ZsdError(f"{args.input} holds only results of an earlier trt-infer run ({len(earlier)} image(s)).",
                           "pass the folder of the original images.")
    single = len(paths) == 1  # one image: its failure is the run's error (exit 2), not a partial result
    out_dir = check_output_dir(args.output)  # before the (slow) model load: a bad --output fails at once
    stems = output_stems(paths)
    if not single and any(stems[p] != p.stem for p in paths):
        print("note: some inputs share a file stem (e.g. x.png and x.jpg); their outputs are named after the whole "
              "file name (x.png.json, x.jpg_<task>.png, ...) so that none overwrites another.", file=sys.stderr)
    state = state if state is not None else _RunState(len(paths), out_dir)
    state.total, state.out_dir = len(paths), out_dir
    segmenter = open_segmenter(args)
    backend, info = segmenter.backend, segmenter.info
    for note in segmenter.run_notes(args.batch, args.vis_score_threshold):  # also checks the options against it
        print(f"note: {note}", file=sys.stderr)
    vocab = getattr(segmenter, "vocabulary", None)
    if vocab is not None:
        print(f"vocabulary: {len(vocab.names)} classes ({vocab.source}; {len(vocab.seen_ids)} seen, "
              f"{len(vocab.unseen_ids)} unseen)", file=sys.stderr)
    from tqdm import tqdm

    vis_threshold = 0.5 if args.vis_score_threshold is None else args.vis_score_threshold
    t0 = time.perf_counter()
    bar = tqdm(total=len(paths), unit="img", disable=args.quiet or single, file=sys.stderr)

    def failed(path: Path, error: ZsdError) -> None:
        state.failures.append(failure_line(path, error))
        bar.update(1)

    def note(text: str) -> None:
        print(text if text.startswith("note:") else f"note: {text}", file=sys.stderr)

    for img, seg in segment_images(segmenter, paths, batch=args.batch, isolate=not single, on_failure=failed,
                                   on_note=note):
        try:
            write_outputs(seg, info, out_dir, stems[img.path], rgb=img.rgb, vis=args.vis,
                          save_raw=args.save_raw, vis_score_threshold=vis_threshold,
                          extra={"image": str(img.path), "backend": backend.name,
                                 "timings_ms": {k: round(v, 2) for k, v in seg.timings_ms.items()},
                                 **({"vocabulary": {"source": vocab.source, "names": list(vocab.names),
                                                    "unseen_ids": list(vocab.unseen_ids)}} if vocab else {})})
        except ZsdError as e:  # the output location broke mid-run (disk full, removed): stop, keep what is done
            bar.close()
            err = ZsdError(f"{e.problem} The run stopped at {img.path}; {state.written()}.", e.fix)
            err.exit_code = 3 if state.done else 2
            raise err from None
        state.done += 1
        bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - t0
    rate = state.done / elapsed if elapsed > 0 else float("nan")
    print(f"trt-infer: {state.done}/{len(paths)} image(s) segmented ({segmenter.task}) with {backend.name} in "
          f"{elapsed:.1f} s ({rate:.2f} images/s); results in {out_dir}")
    if state.failures:
        print(f"trt-infer: {len(state.failures)} image(s) failed and were skipped (the others' results are kept):",
              file=sys.stderr)
        for f in state.failures:
            print(f"  {f}", file=sys.stderr)
        if state.done == 0:
            raise ZsdError(f"none of the {len(paths)} image(s) could be segmented (reasons above).",
                           "fix or remove the images listed above.")
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    state = _RunState(0, Path(args.output))
    return run_main("trt-infer", lambda: run(args, state), state.written)


if __name__ == "__main__":
    sys.exit(main())
