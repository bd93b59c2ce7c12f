"""Which blocks must stay fp32? Measure it: the small-bucket effect of each fp32 island candidate.

    python -m zsdeploy.benchmarks.precision_sensitivity --onnx pading_fp32.onnx --precision int8 \
        --scenes 4 --output sensitivity_int8.json        # also writes sensitivity_int8.md

For the precision asked for, on a few generated small-target scenes (ONNX Runtime, CPU, both graphs through the
same pre/post-processing as `zsd-bench accuracy`, the fp32 graph as the reference):
1. the naive conversion (no island),
2. each candidate island alone (precision_islands.CANDIDATES): what keeping it in fp32 buys,
3. greedily, candidates in order of their measured small-bucket mask-logit error, added one at a time until the
   loss is within the tolerance (small PQ and small AP vs the fp32 graph, in points) — the smallest set found so.
The report gives every measurement (PQ / AP / pixel agreement / mask-logit rel L2 per size bucket) and the chosen
set; pass it to export-model as `--fp32-islands a,b`. int8 is calibrated once (ONNX Runtime's range cache) and
re-quantized per island set, so every row uses the same calibration. Model-agnostic: islands are found by
topology, and any export with zsdeploy metadata works (the diverse stand-in, the trained demo model, a
checkpoint).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx

from zsdeploy.export.precision import PRECISIONS, QUANTIZED_OPS, PrecisionOptions, calibration_data, check_source, convert
from zsdeploy.export.precision_islands import BY_NAME, CANDIDATES, island_nodes
from zsdeploy.runtime.cli_core import ArgumentParser
from zsdeploy.runtime.errors import ZsdError

# Acceptance of issue 11 (small bucket, points vs fp32): fp16 within 0.5 PQ / 0.5 AP, int8 within 2 / 2.
DEFAULT_TOLERANCE = {"fp16": 0.5, "int8": 2.0}
Say = Callable[[str], None]


def _metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers the pass ranks by, from a run_accuracy report (backend = converted, reference = fp32)."""
    vr = report["vs_reference"]
    out: dict[str, Any] = {}
    for b in ("small", "medium", "large", "all"):
        r = vr.get(b, {})
        out[b] = {k: r.get(k) for k in ("panoptic.pq", "instance.ap", "semantic.pixel_agreement", "semantic.miou",
                                         "mask_logits.rel_l2")}
    out["all"]["class_logits.rel_l2"] = vr.get("all", {}).get("class_logits.rel_l2")
    return out


def small_loss(m: dict[str, Any]) -> float:
    """Points lost in the small bucket: the worse of PQ and AP vs the fp32 graph (N/A counts as no loss)."""
    s = m["small"]
    losses = [100.0 - float(s[k]) for k in ("panoptic.pq", "instance.ap") if s.get(k) is not None]
    return max(losses) if losses else 0.0


def measure(fp32: Path, candidate: Path, scenes: int, scene_size: str, threads: int = 1) -> dict[str, Any]:
    """ONNX Runtime accuracy of `candidate` vs `fp32` on `scenes` synthetic small-target scenes."""
    from .accuracy import run_accuracy
    from .datasets import open_dataset
    from zsdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    dataset = open_dataset(f"synthetic:{scenes}", scene_size=scene_size, seed=0)
    report = run_accuracy(OnnxRuntimeBackend(candidate, threads=threads), OnnxRuntimeBackend(fp32, threads=threads),
                          dataset)
    return _metrics(report)


def run_sensitivity(fp32_onnx: str | Path, precision: str, *, scenes: int = 4, scene_size: str | None = None,
                    tolerance: float | None = None, candidates: Sequence[str] | None = None,
                    calib_scenes: int = 4, calib_dir: str | None = None, keep_dir: str | Path | None = None,
                    max_islands: int = 4, say: Say = print) -> dict[str, Any]:
    """The sensitivity report (a dict, see module doc) for converting `fp32_onnx` to `precision`."""
    fp32 = Path(fp32_onnx)
    if precision not in PRECISIONS or precision == "fp32":
        raise ZsdError(f"--precision {precision}: the pass measures fp16 or int8.", "pass --precision fp16 or int8.")
    if not fp32.is_file():
        raise ZsdError(f"--onnx {fp32} does not exist.", "pass an fp32 .onnx written by export-model.")
    from zsdeploy.runtime.artifacts.onnx_metadata import ModelInfo, load_onnx_model, metadata_of

    model = load_onnx_model(fp32)
    check_source(model, precision, str(fp32))

    info = ModelInfo.from_metadata(metadata_of(model), str(fp32))
    if scene_size is None:
        scene_size = "x".join(map(str, info.static_hw)) if info.static_hw else "256x320"
    tol = DEFAULT_TOLERANCE[precision] if tolerance is None else float(tolerance)
    names = list(candidates) if candidates else [c.name for c in CANDIDATES]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ZsdError(f"unknown island candidate(s) {unknown}.", f"choose from {', '.join(BY_NAME)}.")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zsd-sens-") as tmp:
        work = Path(keep_dir) if keep_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cache = work / "calibration_ranges.json"
        calib = None
        if precision == "int8":
            calib = calibration_data(info, calib_dir=calib_dir, scenes=calib_scenes, say=say)
        rows: dict[str, dict[str, Any]] = {}

        def run(label: str, islands: Sequence[str]) -> dict[str, Any]:
            key = ",".join(islands) or "none"
            if key in rows:
                return rows[key]
            path = work / f"{precision}_{len(rows):02d}.onnx"
            opts = PrecisionOptions(precision, key, calib_scenes=calib_scenes) if precision == "int8" else \
                PrecisionOptions(precision, key)
            t = time.perf_counter()
            converted = convert(load_onnx_model(fp32), opts, where=str(fp32), say=lambda _m: None, calib=calib,
                                calib_cache=cache if precision == "int8" else None)
            onnx.save_model(converted, path)
            m = measure(fp32, path, scenes, scene_size)
            m["islands"] = list(islands)
            m["label"] = label
            m["small_loss"] = small_loss(m)
            m["seconds"] = round(time.perf_counter() - t, 1)
            rows[key] = m
            s = m["small"]
            say(f"  {label:<34} small PQ {_f(s['panoptic.pq'])}  AP {_f(s['instance.ap'])}  mask rel L2 "
                f"{_f(s['mask_logits.rel_l2'], '.2e')}  ({m['seconds']} s)")
            return m

        say(f"sensitivity of {fp32.name} to {precision} ({scenes} scenes {scene_size}, tolerance {tol} points small "
            "PQ/AP vs fp32)")
        naive = run("naive (no island)", [])
        idle: list[str] = []
        if precision == "int8":
            # int8 quantizes only Conv/MatMul/Gemm inputs: an island without such a node changes nothing
            nodes = island_nodes(model, names)
            ops = {n.name: n.op_type for n in model.graph.node}
            idle = [n for n in names if not any(ops.get(x) in QUANTIZED_OPS for x in nodes[n])]
            for n in idle:
                say(f"  + {n:<32} skipped: no {'/'.join(QUANTIZED_OPS)} inside, identical to the naive graph")
            names = [n for n in names if n not in idle]
        singles = {n: run(f"+ {n}", [n]) for n in names}
        # rank by the small-bucket mask-logit error (continuous, so less noisy on a few scenes than PQ/AP, which
        # flip with single segments); accept by the PQ/AP tolerance
        order = sorted(names, key=lambda n: (_num(singles[n]["small"]["mask_logits.rel_l2"]), singles[n]["small_loss"]))
        chosen: list[str] = []
        best = naive
        for name in order[:max(0, max_islands)]:  # bounded: each step is a conversion + a measurement
            if best["small_loss"] <= tol:
                break
            chosen.append(name)
            best = run(f"greedy {','.join(chosen)}", chosen)
        met = best["small_loss"] <= tol
    report = {
        "kind": "precision_sensitivity",
        "onnx": str(fp32), "precision": precision, "scenes": scenes, "scene_size": scene_size,
        "tolerance_points": tol, "criterion": "max(100 - small PQ, 100 - small AP) vs the fp32 graph",
        "calibration": (calib.description if calib else None),
        "candidates": {n: BY_NAME[n].what for n in names},
        "rows": list(rows.values()),
        "skipped": {n: "no quantized op inside (identical to naive)" for n in idle},
        "naive": naive, "singles": singles,
        "chosen": chosen if met else None, "chosen_metrics": best,
        "met": met, "seconds": round(time.perf_counter() - t0, 1),
        "note": "greedy: candidates sorted by their own small-bucket mask-logit rel L2, added until within tolerance",
    }
    verdict = (f"chosen fp32 islands: {','.join(chosen) or 'none'}" if met else
               f"no tested set meets {tol} points (best: {','.join(chosen)}, loss {best['small_loss']:.2f})")
    say(verdict)
    return report


def _num(v: Any) -> float:
    return float("inf") if v is None else float(v)


def _f(v: Any, fmt: str = ".2f") -> str:
    return "n/a" if v is None else format(float(v), fmt)


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# fp32-island sensitivity: {Path(report['onnx']).name} -> {report['precision']}", "",
             f"{report['scenes']} synthetic small-target scenes at {report['scene_size']}, ONNX Runtime CPU, fp32 "
             f"graph as reference; tolerance {report['tolerance_points']} points ({report['criterion']}).",
             f"Calibration: {report['calibration']}." if report["calibration"] else "", "",
             "| graph | PQ small | AP small | pixel agr. small | mask rel L2 small | PQ all | mIoU all | "
             "mask rel L2 all | small loss | buys vs naive |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    naive_loss = report["naive"]["small_loss"]
    for r in report["rows"]:
        s, a = r["small"], r["all"]
        pa = s["semantic.pixel_agreement"]
        lines.append(f"| {r['label']} | {_f(s['panoptic.pq'])} | {_f(s['instance.ap'])} | "
                     f"{_f(None if pa is None else 100 * pa, '.3f')} % | {_f(s['mask_logits.rel_l2'], '.2e')} | "
                     f"{_f(a['panoptic.pq'])} | {_f(a['semantic.miou'])} | {_f(a['mask_logits.rel_l2'], '.2e')} | "
                     f"{r['small_loss']:.2f} | {naive_loss - r['small_loss']:+.2f} |")
    lines += ["", ("**Chosen**: `--fp32-islands " + (",".join(report["chosen"]) or "none") + "`") if report["met"]
              else "**No tested set met the tolerance.**", "", "Candidates:"]
    lines += [f"- `{k}`: {v}" for k, v in report["candidates"].items()]
    lines += [f"- `{k}`: not measured, {v}" for k, v in report.get("skipped", {}).items()]
    return "\n".join(lines) + "\n"


def build_parser(prog: str = "python -m zsdeploy.benchmarks.precision_sensitivity") -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog,
                       description="Measure which fp32 islands an fp16/int8 graph needs (small-bucket PQ/AP "
                                   "vs the fp32 graph, ONNX Runtime).")
    p.add_argument("--onnx", required=True, help="fp32 .onnx from export-model (e.g. --standin diverse)")
    p.add_argument("--precision", required=True, choices=["fp16", "int8"])
    p.add_argument("--scenes", type=int, default=4, help="synthetic scenes measured (4)")
    p.add_argument("--scene-size", help="HxW of the scenes (default: the static size, else 256x320)")
    p.add_argument("--tolerance", type=float, help="allowed small PQ/AP loss in points (fp16 0.5, int8 2)")
    p.add_argument("--candidates", help=f"comma list (default all: {','.join(BY_NAME)})")
    p.add_argument("--calib-scenes", type=int, default=4, help="int8: generated calibration scenes (4)")
    p.add_argument("--calib", metavar="DIR", help="int8: calibration images instead of generated scenes")
    p.add_argument("--max-islands", type=int, default=4, help="greedy steps at most (4)")
    p.add_argument("--output", required=True, help="report .json (a .md with the table is written next to it)")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from zsdeploy.runtime.cli_core import run_main
    from zsdeploy.runtime.files import write_bytes_atomic, write_json_atomic

    args = (build_parser(prog) if prog else build_parser()).parse_args(argv)
    out = Path(args.output)

    def body() -> int:
        if out.suffix != ".json":
            raise ZsdError(f"--output {out} should end in .json.", f"use --output {out.with_suffix('.json')}.")
        report = run_sensitivity(args.onnx, args.precision, scenes=args.scenes, scene_size=args.scene_size,
                                 tolerance=args.tolerance,
                                 candidates=args.candidates.split(",") if args.candidates else None,
                                 calib_scenes=args.calib_scenes, calib_dir=args.calib,
                                 max_islands=args.max_islands, say=print)
        md = out.with_suffix(".md")
        write_json_atomic(out, report)
        write_bytes_atomic(md, markdown(report).encode("utf-8"))
        print(f"wrote {out} and {md}")
        return 0

    return run_main(prog or "precision-sensitivity", body, lambda: "no report written")


if __name__ == "__main__":
    sys.exit(main())
