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

from zsdeploy.runtime.cli_core import ArgumentParser, run_main
from zsdeploy.runtime.errors import ZsdError

from .pairing import ACCURACY_BACKENDS
from .report_io import progress, say, write_report


# ------------------------------------------------------------------------------------------------ accuracy
def cmd_accuracy(args: argparse.Namespace) -> int:
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
    from zsdeploy.runtime.files import check_output_dir

    try:
        lo, hi = (float(v) for v in args.object_sizes.split(","))
    except ValueError:
        raise ZsdError(f"--object-sizes {args.object_sizes!r} is not two numbers lo,hi.", "pass e.g. 6,60.") from None
    size_range = (lo, hi)
    ds = open_dataset(args.dataset, scene_size=args.scene_size, seed=args.seed, size_range=size_range,
                      n_objects=args.objects)
    check_output_dir(args.output)
    from .pairing import pairing_for

    pairing, family = pairing_for(args.model)  # refuses a graph that runs only inside a bundle
    backend, reference, segmenters = pairing.accuracy_pair(args, family)
    say(f"zsd-bench accuracy: {backend.name} ({args.model}) vs {reference.name} on {args.dataset} ({len(ds)} images)")
    report = run_accuracy(backend, reference, ds, short_edge=args.short_edge, instance_ref_score=args.instance_score,
                          progress=lambda it: progress(iterable=it, total=len(ds), desc="accuracy", unit="img"),
                          segmenters=segmenters)
    report["model"]["path"] = str(args.model)
    runtime, precision = ACCURACY_BACKENDS[args.backend]
    if precision != "fp32":  # e.g. openvino-bf16: the graph run at a lower inference precision
        from zsdeploy.runtime.backends.registry import backend_spec

        report["backend"] = args.backend
        report["model"].update(runtime_precision=precision, runtime=backend_spec(runtime).title)
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
    from zsdeploy.runtime.files import check_output_dir

    check_output_dir(args.output)  # before any model loads
    from .pairing import pairing_for

    backends, unavailable = pairing_for(args.model)[0].latency_backends(args, names)
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
    base, cur = load_gate(args.baseline), load_gate(args.current)
    rows = compare(base, cur, tol)
    if not rows:
        raise ZsdError(f"the baseline {' '.join(args.baseline)} has no speed-up or accuracy values to compare.",
                       "pass a baseline written by zsd-bench merge (or report.json files with a 'gate' section).")
    if all(r["status"] == "MISSING" for r in rows):  # nothing in common: not a regression but a wrong file
        def keys(g: dict[str, dict[str, float]]) -> str:
            return "; ".join(f"{k}: {', '.join(sorted(v)[:3])}{', ...' if len(v) > 3 else ''}" for k, v in g.items()
                             if v) or "nothing"

        raise ZsdError(f"the current report(s) {' '.join(args.current)} measure none of the baseline's {len(rows)} "
                       f"checks (baseline has {keys(base)}; current has {keys(cur)}): they are reports of another "
                       "kind, model or backend set, so there is nothing to compare.",
                       "pass reports written by the same zsd-bench command (latency with latency, accuracy with "
                       "accuracy) for the model and backends the baseline was made from.")
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
    p = ArgumentParser(prog="zsd-bench", description=__doc__.split("\n\n")[0],
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
                        "openvino (fp32), openvino-bf16 (bf16 inference precision: CPUs with AMX / AVX512-BF16), "
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

    def body() -> int:
        rc = args.func(args)
        if args.cmd in ("accuracy", "latency"):
            say(f"done in {time.perf_counter() - t0:.1f} s")
        return rc

    return run_main("zsd-bench", body,
                    lambda: "report files already written are complete (each is written whole), the others were "
                            "not written")


if __name__ == "__main__":
    sys.exit(main())
