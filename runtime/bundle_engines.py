"""TensorRT engines for a whole ZegFormer bundle: one `<graph>.plan` (+ sidecar) next to each `<graph>.onnx`.

`trt-infer --model BUNDLE` then runs the plans (it prefers them when TensorRT is importable, and refuses a plan
whose graph was re-exported since: artifacts.sidecar.check_plan_source). Every graph is checked (`preflight`:
metadata, profiles, output paths) before TensorRT builds the first one, so a wrong `--profile` fails in a second,
not after a 10-minute segmenter build.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .artifacts.bundle_manifest import GRAPHS, read_bundle_manifest
from .errors import ZsdError
from .tensorrt.builder import BuildResult, build_engine
from .tensorrt.loader import Say
from .tensorrt.onnx_inspect import inspect_onnx
from .tensorrt.preflight import BuildOptions, preflight


def bundle_jobs(opts: BuildOptions) -> list[tuple[str, BuildOptions]]:
    """(graph, its BuildOptions) for every graph of the bundle `opts.onnx`; `opts.profile` entries go to the graphs
    that have an input of that name (e.g. `images` to the segmenter and the crop classifier)."""
    root = opts.onnx
    manifest = read_bundle_manifest(root)
    if opts.output.resolve() != root.resolve():
        raise ZsdError(f"--output {opts.output}: a bundle's engines are written next to its graphs "
                       "(<graph>.plan), where trt-infer looks for them.", f"pass --output {root}.")
    if opts.precision == "int8":
        raise ZsdError("--precision int8 is not supported for ZegFormer bundles: calibration feeds images only, "
                       "but the segmenter also takes the vocabulary's text embeddings.",
                       "build the bundle with --precision fp16 (or fp32).")
    graphs = [g for g in GRAPHS if g in manifest.graphs]  # the manifest parser guarantees a segmenter
    jobs, used = [], set()
    for g in graphs:
        onnx_path = manifest.graph_file(root, g, verify=True)  # a plan built from a changed graph is silently wrong
        inputs = set(inspect_onnx(onnx_path).inputs)
        mine = {k: v for k, v in opts.profile.items() if k in inputs}
        used |= set(mine)
        jobs.append((g, replace(opts, onnx=onnx_path, output=onnx_path.with_suffix(".plan"), profile=mine)))
    unknown = sorted(set(opts.profile) - used)
    if unknown:
        raise ZsdError(f"--profile names input(s) {unknown} that no graph of the bundle has.",
                       "the inputs are images, text_embeddings (segmenter), token_ids (text_encoder), image_sizes, "
                       "mask_logits, text_embeddings_clip (crop_classifier).")
    return jobs


def build_bundle(opts: BuildOptions, say: Say = print) -> list[BuildResult]:
    """Check every graph, then build them one after the other (the timing cache, if any, is shared)."""
    jobs = bundle_jobs(opts)
    for graph, job in jobs:
        plan = preflight(job)
        shapes = ", ".join(f"{name} " + ":".join("x".join(map(str, s)) for s in (rng.min, rng.opt, rng.max))
                           for name, rng in plan.profile.items())
        say(f"checked {graph}: {Path(job.onnx).name} -> {job.output.name}; profile {shapes}")
    results = []
    for i, (graph, job) in enumerate(jobs, 1):
        say(f"[{i}/{len(jobs)}] building {graph} ({job.precision or 'precision as in the graph'})")
        results.append(build_engine(job, say))
    return results
