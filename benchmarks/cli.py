"""`zsd-bench`: accuracy against PyTorch per object size, latency/throughput, and a regression gate.

    zsd-bench accuracy --model M.onnx --reference pytorch --dataset synthetic:8 --output out/acc
    zsd-bench latency  --model M.onnx --backends torch,onnxruntime --sizes 512x512 --batch 1,2 --output out/lat
    zsd-bench compare  out/acc_fp32/report.json out/acc_fp16/report.json out/acc_int8/report.json --output out/cmp
    zsd-bench check    --baseline benchmarks/baselines/ci_cpu.json --current out/lat/report.json out/acc/report.json

Exit status: 0 pass, 1 accuracy limit broken / regression, 2 usage or input error (never read as a regression),
130 interrupted, 70 internal error (a bug: the traceback is printed; please report it).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from zsdeploy.runtime.errors import ZsdError

from .report_io import progress, say, write_report


EXIT_INTERNAL = 70  # BSD EX_SOFTWARE: distinct from 1 (regression) and 2 (bad input)
# top-level module -> the zsdeploy extra that installs it
OPTIONAL_PACKAGES = {"torch": "export", "fvcore": "export", "onnxslim": "export", "onnxscript": "export",
                     "pycocotools": "bench", "matplotlib": "bench", "onnxruntime_extensions": "plugins",
                     "cuda": "gpu"}


def _reference(args: argparse.Namespace, task: str, meta: dict[str, str] | None = None, family: str = "pading"):
    """The PyTorch reference of an export (its registered family's `torch_reference`)."""
    from zsdeploy.runtime.families import MODELS

    if getattr(args, "reference", "pytorch") != "pytorch":
        raise ZsdError(f"--reference {args.reference} is not supported.", "use --reference pytorch.")
    return MODELS.get(family).torch_reference(task, meta, config=args.config, weights=args.weights,
                                              threads=args.threads)


# zsd-bench accuracy --backend NAME -> (load_backend backend, precision)
ACCURACY_BACKENDS = {"auto": ("auto", "f32"), "onnxruntime": ("onnxruntime", "f32"), "openvino": ("openvino", "f32"),
                     "openvino-bf16": ("openvino", "bf16"), "tensorrt": ("tensorrt", "f32")}


def _load(path: str, threads: int | None, backend: str = "auto", precision: str = "f32"):
    from zsdeploy.runtime.backends import load_backend

    if precision == "bf16":
        from zsdeploy.runtime.backends.openvino_backend import bf16_support

        ok, why = bf16_support()
        if not ok:  # a bf16 accuracy row measured in f32 would be a false statement
            raise ZsdError(f"--backend openvino-bf16 needs a CPU that computes bf16, but {why}.",
                           "measure --backend openvino (f32) on this machine, or run on a CPU with AMX / AVX512-BF16.")
    return load_backend(path, threads=threads, backend=backend, precision=precision)


# ------------------------------------------------------------------------------------------------ accuracy
def cmd_accuracy(args: argparse.Namespace) -> int:
    from zsdeploy.runtime.zegformer import bundle_root

    from .accuracy import (
        apply_tolerances,
        load_tolerances,
        markdown,
        run_accuracy,
        summary_lines,
    )
    from .datasets import open_dataset

    tol = load_tolerances(args.tolerances)
    # Cheap checks first, so that a malformed dataset or an unusable --output fails before models load.
    from zsdeploy.runtime.results_io import check_output_dir

    try:
        lo, hi = (float(v) for v in args.object_sizes.split(","))
    except ValueError:
        raise ZsdError(f"--object-sizes {args.object_sizes!r} is not two numbers lo,hi.", "pass e.g. 6,60.") from None
    size_range = (lo, hi)
    ds = open_dataset(args.dataset, scene_size=args.scene_size, seed=args.seed, size_range=size_range,
                      n_objects=args.objects)
    check_output_dir(args.output)
    segmenters = None
    if bundle_root(args.model) is not None:
        (_, backend, make_be), (_, reference, make_ref) = _zegformer_pair(args, "onnxruntime")
        segmenters = (make_be, make_ref)
    else:
        from zsdeploy.runtime.families import family_for

        family, _ = family_for(args.model)  # refuses a graph that runs only inside a bundle
        backend = _load(args.model, args.threads, *ACCURACY_BACKENDS[args.backend])
        reference = _reference(args, backend.info.task, backend.info.raw, family.name)
    say(f"zsd-bench accuracy: {backend.name} ({args.model}) vs {reference.name} on {args.dataset} ({len(ds)} images)")
    report = run_accuracy(backend, reference, ds, short_edge=args.short_edge, instance_ref_score=args.instance_score,
                          progress=lambda it: progress(iterable=it, total=len(ds), desc="accuracy", unit="img"),
                          segmenters=segmenters)
    report["model"]["path"] = str(args.model)
    if getattr(args, "backend", "auto") == "openvino-bf16":
        report["backend"] = "openvino-bf16"
        report["model"].update(runtime_precision="bf16", runtime="OpenVINO")
    apply_tolerances(report, tol)
    out = Path(args.output)
    write_report(out, "report.json", report)
    write_report(out, "report.md", markdown(report))
    for n in report["notes"]:
        say(f"note: {n}")
    for line in summary_lines(report):
        say(line)
    say(f"wrote {out / 'report.json'} and {out / 'report.md'}")
    return 0 if report["passed"] else 1


# ------------------------------------------------------------------------------------------------ latency
def _pading_backends(args: argparse.Namespace, names: list[str]) -> tuple[list, list[dict[str, str]]]:
    """torch / onnxruntime / tensorrt runners of one PADing export (or engine)."""
    from .latency import CPU_DEVICE_NOTE, NamedBackend, device_memory_in_use

    backends: list[NamedBackend] = []
    unavailable: list[dict[str, str]] = []
    task = None
    model = None
    if "onnxruntime" in names:
        if not args.model or not args.model.endswith(".onnx"):
            raise ZsdError("--backends onnxruntime needs --model M.onnx.", "pass the ONNX file export-model wrote.")
        model = _load(args.model, args.threads, "onnxruntime")  # auto would pick OpenVINO where installed
        on_gpu = "CUDAExecutionProvider" in getattr(model, "providers", ())
        backends.append(NamedBackend("onnxruntime", model, device_note=(
            "ONNX Runtime CUDA EP: not measured (its memory arena is not attributable)" if on_gpu
            else CPU_DEVICE_NOTE)))
    if "tensorrt" in names:
        plan = args.engine or (args.model if args.model and not args.model.endswith(".onnx") else None)
        if not plan:
            unavailable.append({"backend": "tensorrt", "reason": "no engine given (--engine M.plan)"})
        else:
            try:
                before, why = device_memory_in_use()  # before the engine allocates anything on the GPU
                trt = _load(plan, None)
                backends.append(NamedBackend("tensorrt", trt, device_baseline=before, device_note=why))
                model = model or trt
            except (ZsdError, ImportError, OSError) as e:
                unavailable.append({"backend": "tensorrt", "reason": str(e)})
    from .latency import parse_ints, parse_sizes, peer_backends  # openvino, openvino-bf16, torch-compile

    peers, missing = peer_backends(names, args.model, threads=args.threads, sizes=parse_sizes(args.sizes),
                                   batches=parse_ints(args.batch, "--batch"), info=model.info if model else None,
                                   int8_model=args.int8_model, msda_model=args.msda_model,
                                   msda_int8_model=args.msda_int8_model,
                                   reference=lambda i: _reference(args, i.task if i else (args.task or "panoptic"),
                                                                  i.raw if i else None))
    backends += peers
    unavailable += missing
    model = model or next((p.backend for p in peers if p.name.startswith("openvino")), None)
    info = model.info if model else None
    if "torch" in names or "upstream" in names:
        task = info.task if info else (args.task or "panoptic")
        torch_ref = _reference(args, task, info.raw if info else None, info.model if info else "pading")
        if "torch" in names:
            backends.insert(0, NamedBackend("torch", torch_ref))
        if "upstream" in names:  # the research code end to end: torch eager + upstream's torch post-processing
            backends.append(_upstream_post_peer("upstream", torch_ref))
    if "openvino-bf16-upstream-post" in names:  # OpenVINO bf16 used by hand, with upstream's post-processing
        ov = next((p.backend for p in peers if p.name == "openvino-bf16"), None)
        if ov is None:
            from .latency import openvino_unavailable

            why = openvino_unavailable("bf16") if args.model and args.model.endswith(".onnx") else "needs --model M.onnx"
            if why:
                unavailable.append({"backend": "openvino-bf16-upstream-post", "reason": why})
            else:
                ov = _load(args.model, args.threads, "openvino", "bf16")
        if ov is not None:
            backends.append(_upstream_post_peer("openvino-bf16-upstream-post", ov))
    return backends, unavailable


def _upstream_post_peer(name: str, backend):
    from .latency import NamedBackend
    from .upstream_post import UpstreamPostSegmenter

    return NamedBackend(name, backend, make_segmenter=lambda policy, task: UpstreamPostSegmenter(backend, task, policy))


def _zegformer_segmenter_factory(args: argparse.Namespace, bundle):
    """policy -> the bundle's ZegFormerSegmenter on its default vocabulary, resized by `policy`."""
    from zsdeploy.runtime.zegformer import ZegFormerSegmenter

    def make(policy, task=None):
        return ZegFormerSegmenter.from_bundle(bundle, bpe_path=args.clip_bpe, task=task,
                                              short_edge=policy.short_edge, max_size=policy.max_size)
    return make


def _zegformer_torch_bundle(args: argparse.Namespace):
    """The bundle with its segmenter (and crop classifier) replaced by PyTorch twins built from the config and
    weights its manifest names (the text encoder stays the bundle's, for vocabularies without stored embeddings)."""
    from zsdeploy.runtime.zegformer import ZegFormerBundle, bundle_root, read_bundle_manifest

    try:
        from zsdeploy.export.torch_backend import TorchBackend
    except ImportError as e:
        raise ZsdError(f"the PyTorch reference needs torch ({e}).", "pip install 'zsdeploy[export]'.") from None
    manifest = read_bundle_manifest(bundle_root(args.model))
    twins = TorchBackend.zegformer(manifest.made_from.as_metadata(), args.weights, args.clip, args.config,
                                   threads=args.threads)
    return ZegFormerBundle(args.model, backends=twins, say=say)


def _zegformer_pair(args: argparse.Namespace, backend_name: str):
    """((name, segmenter backend, factory) of `backend_name`, (same) of the PyTorch twins) for a bundle."""
    from zsdeploy.runtime.zegformer import ZegFormerBundle

    torch_bundle = _zegformer_torch_bundle(args)  # first: a wrong --clip/--weights fails before loading graphs
    bundle = ZegFormerBundle(args.model, threads=args.threads, prefer_engines=backend_name == "tensorrt", say=say)
    return ((backend_name, bundle.segmenter, _zegformer_segmenter_factory(args, bundle)),
            ("torch", torch_bundle.segmenter, _zegformer_segmenter_factory(args, torch_bundle)))


def _zegformer_backends(args: argparse.Namespace, names: list[str]) -> tuple[list, list[dict[str, str]]]:
    """Runners of a ZegFormer bundle: each measured as its ZegFormerSegmenter (segmenter + CLIP crop classifier for
    gzss configs + fusion) on the bundle's default vocabulary; torch = the PyTorch twins of the same graphs."""
    from zsdeploy.runtime.zegformer import ZegFormerBundle, bundle_root, read_bundle_manifest

    from .latency import CPU_DEVICE_NOTE, NamedBackend, device_memory_in_use

    def named(name: str, bundle: ZegFormerBundle, **kw) -> NamedBackend:
        return NamedBackend(name, bundle.segmenter, make_segmenter=_zegformer_segmenter_factory(args, bundle), **kw)

    backends, unavailable = [], []
    if "onnxruntime" in names:
        backends.append(named("onnxruntime", ZegFormerBundle(args.model, threads=args.threads, prefer_engines=False,
                                                             say=say, backend="onnxruntime"),
                              device_note=CPU_DEVICE_NOTE))
    from .latency import openvino_unavailable

    for name, precision in (("openvino", "f32"), ("openvino-bf16", "bf16")):
        why = openvino_unavailable(precision) if name in names else None
        if name in names and why is None:
            backends.append(named(name, ZegFormerBundle(args.model, threads=args.threads, prefer_engines=False,
                                                        say=say, backend="openvino", precision=precision)))
        elif name in names:
            unavailable.append({"backend": name, "reason": why})
    for name in ("torch-compile", "upstream", "openvino-bf16-upstream-post"):
        if name in names:
            unavailable.append({"backend": name, "reason": "measured for PADing exports only"})
    if "tensorrt" in names:
        root = bundle_root(args.model)
        segmenter_onnx = root / read_bundle_manifest(root).graphs["segmenter"].file
        if not segmenter_onnx.with_suffix(".plan").is_file():
            unavailable.append({"backend": "tensorrt", "reason": f"no segmenter.plan in {root} (build-engine "
                                                                  "each bundle graph to <graph>.plan next to it)"})
        else:
            try:
                before, why = device_memory_in_use()
                bundle = ZegFormerBundle(args.model, say=say)
                if bundle.segmenter.name != "tensorrt":
                    raise ZsdError("TensorRT is not available here.", "install TensorRT.")
                backends.append(named("tensorrt", bundle, device_baseline=before, device_note=why))
            except (ZsdError, ImportError, OSError) as e:
                unavailable.append({"backend": "tensorrt", "reason": str(e)})
    if "torch" in names:
        backends.insert(0, named("torch", _zegformer_torch_bundle(args)))
    return backends, unavailable


def cmd_latency(args: argparse.Namespace) -> int:
    from .latency import (
        device_notes,
        markdown,
        markdown_table,
        parse_ints,
        parse_sizes,
        plot,
        run_latency,
    )

    sizes = parse_sizes(args.sizes)
    batches = parse_ints(args.batch, "--batch")
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    from .latency import PEERS

    unknown = set(names) - set(PEERS)
    if unknown:
        raise ZsdError(f"unknown --backends {sorted(unknown)}.", f"choose from {', '.join(PEERS)}.")
    from zsdeploy.runtime.results_io import check_output_dir

    check_output_dir(args.output)  # before any model loads
    from zsdeploy.runtime.zegformer import bundle_root

    if args.model and bundle_root(args.model) is not None:
        backends, unavailable = _zegformer_backends(args, names)
    else:
        backends, unavailable = _pading_backends(args, names)
    if not backends:
        raise ZsdError("no backend to measure: " + "; ".join(f"{u['backend']}: {u['reason']}" for u in unavailable),
                       "pass --backends torch,onnxruntime with --model M.onnx.")
    for u in unavailable:
        say(f"skipping {u['backend']}: {u['reason']}")
    say(f"zsd-bench latency: {', '.join(b.name for b in backends)} at {args.sizes}, batch {args.batch}, "
         f"warm-up {args.warmup}, {args.repeat} timed runs")
    report = run_latency(backends, sizes, batches, warmup=args.warmup, repeat=args.repeat, task=args.task,
                         progress=lambda **kw: progress(**kw))
    report["model"] = args.model
    report["unavailable"] = unavailable
    if not report["results"]:
        raise ZsdError("no (backend, size, batch) combination could run: " +
                       "; ".join(f"{s['backend']} {s['size']} b{s['batch']}: {s['reason']}" for s in report["skipped"]),
                       "a static model runs only at its own --sizes/--batch; export with --dynamic for others.")
    out = Path(args.output)
    png = plot(report, out / "latency.png")
    report["plot"] = str(png) if png else None
    write_report(out, "report.json", report)
    write_report(out, "report.md", markdown(report, png.name if png else None))
    say(markdown_table(report))
    for s in report["skipped"]:
        say(f"skipped {s['backend']} at {s['size']} batch {s['batch']}: {s['reason']}")
    say("device memory: " + "; ".join(device_notes(report)))
    for k, v in report["gate"]["speedup"].items():
        say(f"speed-up {k}: {v:.2f}x")
    say(f"wrote {out / 'report.json'}, {out / 'report.md'}" + (f", {png}" if png else ""))
    return 0


# ------------------------------------------------------------------------------------------------ check
def cmd_check(args: argparse.Namespace) -> int:
    from .accuracy import load_tolerances
    from .gate import compare, load_gate, table, verdict

    tol = load_tolerances(args.tolerances)
    rows = compare(load_gate(args.baseline), load_gate(args.current), tol)
    if not rows:
        raise ZsdError(f"the baseline {' '.join(args.baseline)} has no speed-up or accuracy values to compare.",
                       "pass a baseline written by zsd-bench merge (or report.json files with a 'gate' section).")
    say(table(rows))
    ok, text = verdict(rows)
    say(f"verdict: {text}")
    if args.output:
        write_report(Path(args.output).parent, Path(args.output).name,
                     {"rows": rows, "passed": ok, "verdict": text})
    return 0 if ok else 1


def cmd_merge(args: argparse.Namespace) -> int:
    from .gate import load_gate

    gate = load_gate(args.inputs)
    doc = {"kind": "baseline", "sources": args.inputs, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "gate": gate}
    write_report(Path(args.output).parent, Path(args.output).name, doc)
    say(f"wrote {args.output} ({len(gate['speedup'])} speed-ups, {len(gate['accuracy'])} accuracy values)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare, load_report, markdown, plot

    reports = [load_report(p) for p in args.reports]
    if not 0 <= args.baseline < len(reports):
        raise ZsdError(f"--baseline {args.baseline} is not the index of one of the {len(reports)} reports.",
                       f"pass 0..{len(reports) - 1} (0 = the first report).")
    cmp = compare(reports, baseline=args.baseline)
    out = Path(args.output)
    png = plot(cmp, out / "compare.png")
    cmp["plot"] = str(png) if png else None
    write_report(out, "compare.json", cmp)
    write_report(out, "compare.md", markdown(cmp, png.name if png else None))
    for row in cmp["rows"]:
        gt = row["vs_ground_truth"].get("small", {})
        delta = row["delta_vs_baseline"].get("small", {})
        vs_gt = (f"vs ground truth small PQ {gt['panoptic.pq']:.2f} ({delta['panoptic.pq']:+.2f}), "
                 f"AP {gt['instance.ap']:.2f} ({delta['instance.ap']:+.2f}); "
                 if gt.get("panoptic.pq") is not None and gt.get("instance.ap") is not None else "")
        ref = row["vs_reference"]["small"]
        say(f"  {row['label']}: {vs_gt}vs reference small PQ "
             + (f"{ref['panoptic.pq']:.2f}" if ref.get("panoptic.pq") is not None else "N/A"))
    say(f"wrote {out / 'compare.json'}, {out / 'compare.md'}" + (f", {png}" if png else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zsd-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--weights", help="checkpoint for the PyTorch reference (default: the stand-in weights)")
        sp.add_argument("--config", help="upstream YAML config for the PyTorch reference")
        sp.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime")
        sp.add_argument("--clip", help="ZegFormer bundles: the CLIP file the bundle was exported with (for the torch "
                                       "reference, unless the bundle used the stand-in CLIP)")
        sp.add_argument("--clip-bpe", help="ZegFormer bundles without stored default embeddings: CLIP's BPE file")
        sp.add_argument("--output", required=True, help="output directory")

    a = sub.add_parser("accuracy", help="backend vs PyTorch reference (and ground truth), per object size bucket")
    a.add_argument("--model", required=True, help=".onnx (ONNX Runtime) or .plan (TensorRT), or a ZegFormer bundle "
                                                  "directory (semantic agreement; no ground-truth comparison)")
    a.add_argument("--reference", default="pytorch", help="reference implementation (pytorch)")
    a.add_argument("--dataset", default="synthetic:8",
                   help="synthetic[:N] | folder:DIR | coco-panoptic:JSON,PNG_DIR,IMG_DIR | coco-instances:JSON,IMG_DIR | "
                        "semantic:IMG_DIR,LABEL_DIR (default synthetic:8)")
    a.add_argument("--tolerances", help="tolerance YAML (default benchmarks/tolerances/default.yaml)")
    a.add_argument("--scene-size", default="256x320", help="synthetic scene size HxW (default 256x320)")
    a.add_argument("--object-sizes", default="6,60", help="synthetic object sqrt(area) range lo,hi px (default 6,60)")
    a.add_argument("--objects", type=int, default=30, help="objects per synthetic scene (default 30)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--short-edge", type=int, default=None,
                   help="resize short edge (default: the model metadata's; a static model that cannot hold it gets "
                        "the largest that fits, recorded in the report)")
    a.add_argument("--instance-score", type=float, default=0.5,
                   help="reference instances with at least this score are the ground truth of instance AP vs reference")
    a.add_argument("--backend", default="auto", choices=list(ACCURACY_BACKENDS),
                   help="runtime of a PADing .onnx / .plan: auto (.onnx -> onnxruntime, .plan -> tensorrt), onnxruntime, "
                        "openvino (f32), openvino-bf16 (bf16 inference precision: CPUs with AMX / AVX512-BF16), "
                        "tensorrt")
    common(a)
    a.set_defaults(func=cmd_accuracy)

    lat = sub.add_parser("latency", help="latency/throughput, torch baseline and backends interleaved")
    lat.add_argument("--model", help=".onnx for onnxruntime (or .plan for tensorrt), or a ZegFormer bundle directory")
    lat.add_argument("--engine", help=".plan for tensorrt when --model is the .onnx")
    lat.add_argument("--int8-model", help="the Q/DQ graph of --model (export-model --from-onnx M.onnx --precision int8) "
                                          "for the openvino-int8 / openvino-int8-bf16 peers")
    lat.add_argument("--msda-model", help="the --msda plugin export of the same model (export-model ... --msda plugin) "
                                          "for the openvino-msda / openvino-msda-bf16 peers: OpenVINO runs its "
                                          "MSDeformAttn nodes with zsdeploy's extension (the fastest CPU path)")
    lat.add_argument("--msda-int8-model", help="the Q/DQ graph of --msda-model (export-model --from-onnx M_msda.onnx "
                                               "--precision int8) for openvino-msda-int8 / openvino-msda-int8-bf16")
    lat.add_argument("--backends", default="torch,onnxruntime",
                     help="comma list of torch, torch-compile, onnxruntime, openvino, openvino-bf16 (CPUs with AMX / "
                          "AVX512-BF16), openvino-int8, openvino-int8-bf16 (with --int8-model), openvino-msda, "
                          "openvino-msda-bf16 (with --msda-model), openvino-msda-int8, openvino-msda-int8-bf16 (with "
                          "--msda-int8-model), tensorrt; torch-compile and openvino* for PADing .onnx only; peers with "
                          "upstream's PyTorch post-processing: upstream (torch eager network: the research code end "
                          "to end), openvino-bf16-upstream-post (OpenVINO bf16 used by hand)")
    lat.add_argument("--sizes", default="512x512", help="network input sizes HxW, comma-separated")
    lat.add_argument("--batch", default="1", help="batch sizes, comma-separated")
    lat.add_argument("--warmup", type=int, default=2)
    lat.add_argument("--repeat", type=int, default=10)
    lat.add_argument("--task", default=None, help="post-processing task (default: the model's)")
    common(lat)
    lat.set_defaults(func=cmd_latency)

    c = sub.add_parser("check", help="regression gate on within-run ratios vs a committed baseline")
    c.add_argument("--baseline", nargs="+", required=True, help="baseline JSON(s) (reports or a merged baseline)")
    c.add_argument("--current", nargs="+", required=True, help="current report.json file(s)")
    c.add_argument("--tolerances", help="tolerance YAML (its `check` section)")
    c.add_argument("--output", help="also write the verdict as JSON here")
    c.set_defaults(func=cmd_check)

    # The fp32-island sensitivity pass (zsdeploy.benchmarks.precision_sensitivity, a measurement over the converter);
    # `zsd-bench precision ARGS` forwards ARGS to it (see main), this entry only lists it in --help.
    sub.add_parser("precision", add_help=False,
                   help="which fp32 islands an fp16/int8 graph needs, measured per size bucket "
                        "(zsd-bench precision --help)")

    cp = sub.add_parser("compare", help="accuracy reports side by side (e.g. fp32 / fp16 / int8 graphs), with the "
                                        "change vs a baseline run and a plot of the small-bucket loss")
    cp.add_argument("reports", nargs="+", help="report.json files of zsd-bench accuracy runs on the same dataset")
    cp.add_argument("--baseline", type=int, default=0, help="index of the baseline report (default 0: the first)")
    cp.add_argument("--output", required=True, help="output directory (compare.json, compare.md, compare.png)")
    cp.set_defaults(func=cmd_compare)

    m = sub.add_parser("merge", help="merge the gate sections of reports into one baseline JSON")
    m.add_argument("inputs", nargs="+")
    m.add_argument("--output", required=True)
    m.set_defaults(func=cmd_merge)

    # `zsd-bench serve`: Triton serving throughput / latency (its own module: benchmarks/serving_bench.py).
    from zsdeploy.benchmarks.serving_bench import add_parser as add_serve_parser

    add_serve_parser(sub)

    # `zsd-bench video`: pipelined video frames/s vs sequential and the network alone (benchmarks/video_bench.py)
    from zsdeploy.benchmarks.video_bench import add_parser as add_video_parser

    add_video_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["precision"]:
        from zsdeploy.benchmarks.precision_sensitivity import main as precision_main

        return precision_main(argv[1:], prog="zsd-bench precision")
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        rc = args.func(args)
    except ZsdError as e:
        print(f"zsd-bench: error: {e}", file=sys.stderr)
        return e.exit_code
    except ModuleNotFoundError as e:
        # An optional dependency: name the extra that provides it (exit 2, a setup problem, not a regression).
        err = ZsdError(f"zsd-bench {args.cmd} needs the Python package {e.name}, which is not installed.",
                       f"pip install 'zsdeploy[{OPTIONAL_PACKAGES.get((e.name or '').split('.')[0], 'bench')}]'.")
        print(f"zsd-bench: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("zsd-bench: interrupted; report files already written are complete (each is written whole), the "
              "others were not written.", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - a bug must not exit 1, which a CI gate reads as a regression
        import traceback

        traceback.print_exc()
        print("zsd-bench: internal error (a bug in zsdeploy, not a regression): please report it with the "
              "traceback above.", file=sys.stderr)
        return EXIT_INTERNAL
    if args.cmd in ("accuracy", "latency"):
        say(f"done in {time.perf_counter() - t0:.1f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
