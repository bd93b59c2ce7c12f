"""Side-by-side view of several `zsd-bench accuracy` reports: one row per graph (fp32 / fp16 / int8 ...).

    zsd-bench compare out/acc_fp32/report.json out/acc_fp16/report.json out/acc_int8/report.json --output out/cmp

Each accuracy run already scores one backend against the PyTorch reference and the ground truth per size bucket;
this puts the runs next to each other, states each one's change against the baseline run (the first report, or
`--baseline`), and plots the small-bucket loss per precision. The runs must have measured the same images (same
dataset spec and image count), or the differences would mean nothing; that is checked, not assumed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.options import RUNTIME_PRECISION_ALIASES

from .accuracy import precision_text

# (section, metric, label): what a reader compares between precisions
GT_METRICS = (("panoptic.pq", "PQ"), ("instance.ap", "AP"), ("semantic.miou", "mIoU"))
REF_METRICS = (("panoptic.pq", "PQ"), ("instance.ap", "AP"), ("semantic.pixel_agreement", "pixel agr."),
               ("mask_logits.rel_l2", "mask rel L2"))
BUCKETS = ("small", "medium", "large", "all")


def load_report(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        report = json.loads(p.read_text())
    except FileNotFoundError:
        raise ZsdError(f"accuracy report {p} does not exist.", "pass the report.json files zsd-bench accuracy wrote.") \
            from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZsdError(f"{p} is not a readable JSON report ({e}).",
                       "pass the report.json files zsd-bench accuracy wrote.") from None
    if not isinstance(report, dict) or report.get("kind") != "accuracy":
        raise ZsdError(f"{p} is not a zsd-bench accuracy report (kind {report.get('kind') if isinstance(report, dict) else None!r}).",
                       "pass the report.json files zsd-bench accuracy wrote (latency reports cannot be compared here).")
    report["_path"] = str(p)
    model = report.get("model")
    if isinstance(model, dict) and model.get("runtime_precision") in RUNTIME_PRECISION_ALIASES:
        # a report written before fp32 was the one spelling of a runtime precision (f32) reads as the current one
        model["runtime_precision"] = RUNTIME_PRECISION_ALIASES[model["runtime_precision"]]
    return report


def _label(report: dict[str, Any]) -> str:
    """e.g. "int8 (fp32 islands: mask_product) · openvino (m_int8.onnx)": graph precision, runtime and file."""
    return (precision_text(report.get("model", {})) + f" · {report.get('backend', '?')}"
            + f" ({Path(report['model'].get('path', report['_path'])).name})")


def _check_same_images(reports: list[dict[str, Any]]) -> None:
    first = reports[0]
    key = lambda r: (r["dataset"]["spec"], r["dataset"]["images"], r.get("resize", {}).get("short_edge"))  # noqa: E731
    for r in reports[1:]:
        if key(r) != key(first):
            raise ZsdError(f"{r['_path']} measured {key(r)[0]} ({key(r)[1]} images, short edge {key(r)[2]}) but "
                           f"{first['_path']} measured {key(first)[0]} ({key(first)[1]} images, short edge "
                           f"{key(first)[2]}); differences between them would not be the graphs'.",
                           "run zsd-bench accuracy on the same --dataset / --seed / --scene-size for every graph.")


def compare(reports: list[dict[str, Any]], baseline: int = 0) -> dict[str, Any]:
    """Rows of per-bucket metrics (vs ground truth and vs reference) and their change vs the baseline run."""
    if len(reports) < 2:
        raise ZsdError("compare needs at least two accuracy reports.", "pass e.g. the fp32 and the fp16 report.")
    _check_same_images(reports)
    has_gt = all(r.get("vs_ground_truth") for r in reports)
    rows = []
    for r in reports:
        row: dict[str, Any] = {"label": _label(r), "path": r["_path"], "precision": r["model"].get("precision", "fp32"),
                               "backend": r.get("backend"), "vs_reference": {}, "vs_ground_truth": {}}
        for b in BUCKETS:
            row["vs_reference"][b] = {m: r["vs_reference"].get(b, {}).get(m) for m, _ in REF_METRICS}
            if has_gt:
                row["vs_ground_truth"][b] = {m: r["vs_ground_truth"]["backend"].get(b, {}).get(m) for m, _ in GT_METRICS}
        rows.append(row)
    base = rows[baseline]
    for row in rows:
        row["delta_vs_baseline"] = {
            b: {m: (None if row["vs_ground_truth"][b].get(m) is None or base["vs_ground_truth"][b].get(m) is None
                    else row["vs_ground_truth"][b][m] - base["vs_ground_truth"][b][m]) for m, _ in GT_METRICS}
            for b in BUCKETS} if has_gt else {}
    return {"kind": "accuracy-compare", "dataset": reports[0]["dataset"], "baseline": base["label"],
            "ground_truth": has_gt, "rows": rows}


def _f(v: Any, metric: str) -> str:
    if v is None:
        return "N/A"
    if metric.endswith("rel_l2"):
        return f"{v:.2e}"
    if metric.endswith("pixel_agreement"):
        return f"{100 * v:.3f} %"
    return f"{v:.2f}"


def markdown(cmp: dict[str, Any], plot_name: str | None = None) -> str:
    d = cmp["dataset"]
    lines = ["# zsd-bench compare: graphs side by side", "",
             f"- dataset: `{d['spec']}` ({d['images']} images, the same images in every run)",
             f"- baseline: {cmp['baseline']}", ""]
    if cmp["ground_truth"]:
        lines += ["## Against ground truth (change vs baseline in brackets)", "",
                  "| graph | " + " | ".join(f"{lab} {b}" for b in ("small", "all") for _, lab in GT_METRICS) + " |",
                  "|---" * (1 + 2 * len(GT_METRICS)) + "|"]
        for row in cmp["rows"]:
            cells = [f"{_f(row['vs_ground_truth'][b][m], m)} ({row['delta_vs_baseline'][b][m]:+.2f})"
                     if row["vs_ground_truth"][b][m] is not None else "N/A"
                     for b in ("small", "all") for m, _ in GT_METRICS]
            lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Against the fp32 PyTorch reference", "",
              "| graph | " + " | ".join(f"{lab} {b}" for b in ("small", "all") for _, lab in REF_METRICS) + " |",
              "|---" * (1 + 2 * len(REF_METRICS)) + "|"]
    for row in cmp["rows"]:
        lines.append(f"| {row['label']} | " + " | ".join(_f(row["vs_reference"][b][m], m)
                                                         for b in ("small", "all") for m, _ in REF_METRICS) + " |")
    if plot_name:
        lines += ["", f"![small-bucket loss per graph]({plot_name})"]
    return "\n".join(lines) + "\n"


def plot(cmp: dict[str, Any], path: Path) -> Path | None:
    """Small-bucket PQ / AP lost per graph: vs ground truth (change vs baseline) and vs the reference (100 - x)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = cmp["rows"]
    labels = [f"{r['precision']} · {r['backend']}\n{Path(r['path']).parent.name}" for r in rows]
    panel_width = max(5.5, 1.0 * len(rows))
    panels = [("vs PyTorch reference: 100 - score (small)", lambda r, m: None if r["vs_reference"]["small"][m] is None
               else 100 - r["vs_reference"]["small"][m])]
    if cmp["ground_truth"]:
        panels.insert(0, ("vs ground truth: loss vs baseline (small)",
                          lambda r, m: None if r["delta_vs_baseline"]["small"][m] is None
                          else -r["delta_vs_baseline"]["small"][m]))
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_width * len(panels), 4.2), squeeze=False)
    width = 0.38
    for ax, (title, value) in zip(axes[0], panels):
        for k, (metric, name) in enumerate((("panoptic.pq", "PQ"), ("instance.ap", "AP"))):
            xs = [i + (k - 0.5) * width for i in range(len(rows))]
            ax.bar(xs, [value(r, metric) or 0.0 for r in rows], width, label=name)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=30, ha="right")
        ax.set_ylabel("points lost (lower is better)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".incomplete.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
