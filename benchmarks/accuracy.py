"""Accuracy of a backend against the PyTorch reference (and both against ground truth), per COCO size bucket.

Both models get the SAME pre-processed input tensor (the backend's canvas: a static model's fixed size, or the
multiple-of-32 padding of a dynamic one) and the SAME post-processing (zsdeploy.runtime.postprocess).

Metrics vs the reference, per bucket (the pixels of the segments of that bucket — ground-truth segments when the
dataset has them, otherwise the reference's own panoptic segments — and 'all' = every pixel):
    mask_logits.{max_abs,rel_l2,cosine,sign_agreement}   mask logits resized to the original image size
    class_logits.{max_abs,rel_l2,cosine}                 ('all' only: class logits have no pixels)
    semantic.{pixel_agreement,miou}                      argmax of sem_seg, backend vs reference labels
    panoptic.{pq,sq,rq}                                  backend vs reference-as-ground-truth (reference's segments)
    instance.{ap,ap50}                                   backend vs reference instances with score >= a threshold
A metric is None ("N/A") where it is undefined, e.g. PQ when the reference produced no segment.
"""
from __future__ import annotations

import importlib.resources
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from zsdeploy.runtime.backends.base import Backend
from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.options import TASKS
from zsdeploy.families import family_of
from zsdeploy.runtime.pipeline import Pipeline
from zsdeploy.runtime.postprocess import masks_to_output
from zsdeploy.runtime.preprocess import Batch, preprocess

from .datasets import Dataset, Sample, semantic_from_panoptic
from .metrics import (
    ALL,
    BUCKET_ORDER,
    BUCKETS,
    PanopticQuality,
    SemanticAgreement,
    TensorAgreement,
    bucket_regions,
    mask_ap,
)

# Package data (pyproject's package-data), read through importlib.resources so that it is found from a wheel too.
DEFAULT_TOLERANCES = importlib.resources.files("zsdeploy.benchmarks").joinpath("tolerances", "default.yaml")
LOWER_IS_BETTER = ("max_abs", "rel_l2")


def higher_is_better(metric: str) -> bool:
    return metric.rsplit(".", 1)[-1] not in LOWER_IS_BETTER


# ------------------------------------------------------------------------------------------ resize policy
@dataclass
class ResizePolicy:
    short_edge: int
    max_size: int
    note: str

    def as_dict(self) -> dict[str, Any]:
        return {"short_edge": self.short_edge, "max_size": self.max_size, "note": self.note}


def resize_policy(backend: Backend, first_image_hw: tuple[int, int], short_edge: int | None) -> ResizePolicy:
    """The metadata's ResizeShortestEdge, an explicit --short-edge, or (static model, images that would not fit)
    the largest short edge that fits the static canvas — always recorded in the report, never silent."""
    info = backend.info
    if short_edge is not None:
        return ResizePolicy(int(short_edge), info.max_size_test,
                            f"--short-edge {short_edge} (model metadata: {info.min_size_test})")
    if info.static_hw is None:
        return ResizePolicy(info.min_size_test, info.max_size_test, "model metadata (ResizeShortestEdge)")
    from zsdeploy.runtime.preprocess import resized_shape

    h, w = first_image_hw
    nh, nw = resized_shape(h, w, info.min_size_test, info.max_size_test)
    fh, fw = info.static_hw
    if nh <= fh and nw <= fw:
        return ResizePolicy(info.min_size_test, info.max_size_test, "model metadata (ResizeShortestEdge)")
    s = min(fh / h, fw / w)
    se = int(math.floor(min(h, w) * s))
    while se > 1 and any(a > b for a, b in zip(resized_shape(h, w, se, info.max_size_test), (fh, fw))):
        se -= 1
    return ResizePolicy(se, info.max_size_test, f"short edge {se}: the largest that fits the static {fh}x{fw} canvas "
                        f"(metadata asks for {info.min_size_test}); pass --short-edge to choose")


class BenchSegmenter(Pipeline):
    """Pipeline with an explicit resize policy (recorded in every report)."""

    def __init__(self, backend: Backend, task: str | None = None, policy: ResizePolicy | None = None) -> None:
        super().__init__(backend, task)
        self.policy = policy

    def preprocess(self, images: list[np.ndarray]) -> Batch:
        if self.policy is None:
            return super().preprocess(images)
        return preprocess(images, short_edge=self.policy.short_edge, max_size=self.policy.max_size,
                          size_divisibility=self.info.size_divisibility, pixel_mean=self.info.pixel_mean,
                          fixed_hw=self.info.static_hw)


# ------------------------------------------------------------------------------------------------- run
def _instances(res: dict[str, Any], min_score: float = -1.0) -> dict[str, np.ndarray]:
    inst = res["instances"]
    keep = np.asarray(inst["scores"]) >= min_score
    return {"masks": np.asarray(inst["pred_masks"])[keep], "classes": np.asarray(inst["pred_classes"])[keep],
            "scores": np.asarray(inst["scores"])[keep]}


def _gt_instances(sample: Sample) -> dict[str, np.ndarray]:
    things = [s for s in sample.segments if s.get("isthing") and not s.get("iscrowd", 0)]
    h, w = sample.panoptic.shape
    masks = np.stack([sample.panoptic == s["id"] for s in things]) if things else np.zeros((0, h, w), bool)
    return {"masks": masks, "classes": np.array([s["category_id"] for s in things], np.int64)}


class _Side:
    """Metric accumulators of one prediction source against one truth."""

    def __init__(self, num_classes: int) -> None:
        self.sem = {b: SemanticAgreement(num_classes) for b in BUCKET_ORDER}
        self.pq = PanopticQuality()
        self.inst_gt: list[dict[str, np.ndarray]] = []
        self.inst_dt: list[dict[str, np.ndarray]] = []

    def result(self, prefix_inst: bool = True) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {b: {} for b in BUCKET_ORDER}
        for b in BUCKET_ORDER:
            r = self.sem[b].result()
            out[b]["semantic.pixel_agreement"] = r["pixel_agreement"]
            out[b]["semantic.miou"] = r["miou"]
        pq = self.pq.result()
        for b in BUCKET_ORDER:
            for k in ("pq", "sq", "rq"):
                out[b][f"panoptic.{k}"] = pq[b][k]
            out[b]["panoptic.segments"] = pq[b]["tp"] + pq[b]["fn"]
        if self.inst_gt:
            ap = mask_ap(self.inst_gt, self.inst_dt)
            out[ALL]["instance.ap"] = ap["ap"]
            out[ALL]["instance.ap50"] = ap["ap50"]
            out[ALL]["instance.gt_instances"] = ap["gt_instances"]
            for b in BUCKETS:
                out[b]["instance.ap"] = ap[f"ap_{b}"]
        return out


SegmenterFactory = Callable[[ResizePolicy], Pipeline]


def run_accuracy(backend: Backend, reference: Backend, dataset: Dataset, *, short_edge: int | None = None,
                 instance_ref_score: float = 0.5, progress: Callable[[Any], Any] | None = None,
                 segmenters: tuple[SegmenterFactory, SegmenterFactory] | None = None) -> dict[str, Any]:
    """Run both models on every image of `dataset`; returns the report dict (no tolerance verdict yet).

    segmenters: (backend's, reference's) Pipeline factories for a resize policy, where a plain BenchSegmenter
    around the backend is not the whole model (ZegFormer bundles: vocabulary, CLIP crop classifier, fusion)."""
    info = backend.info
    if reference.info.num_classes != info.num_classes or reference.info.task != info.task:
        raise ZsdError(f"the reference ({reference.info.model} {reference.info.task}, {reference.info.num_classes} "
                       f"classes) and the backend ({info.model} {info.task}, {info.num_classes} classes) differ.",
                       "pass the same --task/--config/--weights the model was exported with.")
    samples = iter(dataset)
    first = next(samples)
    policy = resize_policy(backend, first.image.shape[:2], short_edge)
    if segmenters is None:
        be: Pipeline = BenchSegmenter(backend, None, policy)
        ref: Pipeline = BenchSegmenter(reference, None, policy)
    else:
        be, ref = segmenters[0](policy), segmenters[1](policy)
    tasks = be.enabled_tasks()
    k = be.info.num_classes
    # Ground-truth class ids live in the dataset's class space; an open-vocabulary model's classes are its
    # vocabulary, so only the backend-vs-reference comparison is meaningful for it.
    gt_comparable = dataset.has_gt and not family_of(info).open_vocabulary

    mask_agree = {b: TensorAgreement() for b in BUCKET_ORDER}
    cls_agree = TensorAgreement()
    extra_agree: dict[str, TensorAgreement] = {}
    vs_ref = _Side(k)
    gt_sides = {"reference": _Side(k), "backend": _Side(k)} if gt_comparable else None
    ref_segments_total = 0
    images = 0

    def all_samples():
        yield first
        yield from samples

    it = all_samples()
    if progress is not None:
        it = progress(it)
    for sample in it:
        images += 1
        batch = be.prepare([sample.image])  # both pipelines see the same input tensor
        r_raw, b_raw = ref.forward(batch), be.forward(batch)
        r_masks, b_masks = r_raw.mask_logits, b_raw.mask_logits
        cls_agree.add(b_raw.class_logits, r_raw.class_logits)
        for name, arr in b_raw.extra.items():  # e.g. ZegFormer's clip_logits
            extra_agree.setdefault(name, TensorAgreement()).add(arr, r_raw.extra[name])
        out_hw = batch.original_sizes[0]
        r_res = ref.finish(r_raw, batch, tasks)[0]
        b_res = be.finish(b_raw, batch, tasks)[0]

        # Regions of the size buckets: ground-truth segments, else the reference's panoptic segments.
        if sample.has_gt:
            regions = bucket_regions(sample.panoptic, sample.segments)
        elif "panoptic" in r_res:
            regions = bucket_regions(r_res["panoptic"]["panoptic_seg"], r_res["panoptic"]["segments_info"])
        else:
            regions = {ALL: np.ones(out_hw, bool)}

        ru = masks_to_output(r_masks[0], batch.padded_hw, batch.image_sizes[0], out_hw)
        bu = masks_to_output(b_masks[0], batch.padded_hw, batch.image_sizes[0], out_hw)
        for b, reg in regions.items():
            if reg.any():
                mask_agree[b].add(bu[:, reg], ru[:, reg])
        del ru, bu

        if "semantic" in tasks:
            r_lab = r_res["semantic"]["sem_seg"].argmax(0)
            b_lab = b_res["semantic"]["sem_seg"].argmax(0)
            for b, reg in regions.items():
                vs_ref.sem[b].add(b_lab, r_lab, reg)
            if gt_sides is not None:
                gt_lab = semantic_from_panoptic(sample.panoptic, sample.segments)
                gregions = regions
                for name, lab in (("reference", r_lab), ("backend", b_lab)):
                    for b, reg in gregions.items():
                        gt_sides[name].sem[b].add(lab, gt_lab, reg)
        if "panoptic" in tasks:
            rp, bp = r_res["panoptic"], b_res["panoptic"]
            ref_segments_total += len(rp["segments_info"])
            vs_ref.pq.add(bp["panoptic_seg"], bp["segments_info"], rp["panoptic_seg"], rp["segments_info"])
            if gt_sides is not None:
                for name, p in (("reference", rp), ("backend", bp)):
                    gt_sides[name].pq.add(p["panoptic_seg"], p["segments_info"], sample.panoptic, sample.segments)
        if "instance" in tasks:
            vs_ref.inst_gt.append(_instances(r_res["instance"], instance_ref_score))
            vs_ref.inst_dt.append(_instances(b_res["instance"]))
            if gt_sides is not None:
                g = _gt_instances(sample)
                for name, res in (("reference", r_res), ("backend", b_res)):
                    gt_sides[name].inst_gt.append(g)
                    gt_sides[name].inst_dt.append(_instances(res["instance"]))

    vs_reference = vs_ref.result()
    for b in BUCKET_ORDER:
        m = mask_agree[b].result()
        for key in ("max_abs", "rel_l2", "cosine", "sign_agreement"):
            vs_reference[b][f"mask_logits.{key}"] = m[key]
        vs_reference[b]["pixels"] = (m["n"] // max(1, int(b_masks.shape[1]))) if m["n"] else 0
    c = cls_agree.result()
    for key in ("max_abs", "rel_l2", "cosine"):
        vs_reference[ALL][f"class_logits.{key}"] = c[key]
    for name, agree in extra_agree.items():
        e = agree.result()
        for key in ("max_abs", "rel_l2", "cosine"):
            vs_reference[ALL][f"{name}.{key}"] = e[key]

    notes = []
    variant = (info.standin_variant if info.standin_weights and len(family_of(info).standin_variants) > 1
               else None)
    if variant == "golden":
        notes.append("golden stand-in weights: the 100 queries are nearly identical, so panoptic/instance outputs are "
                     "often empty and PQ/AP against the reference are N/A; the raw-tensor and semantic metrics still "
                     "compare the two backends (export with `--standin diverse` to measure PQ/AP).")
    elif variant == "diverse":
        notes.append("diverse stand-in weights: untrained, but with distinct queries, so the reference has segments "
                     "and instances and PQ/AP against it are measured; metrics against ground truth stay near 0 "
                     "(the predictions are meaningless as segmentations).")
    if dataset.has_gt and not gt_comparable:
        notes.append("the dataset's ground-truth classes are not this open-vocabulary model's vocabulary: only the "
                     "backend is compared with the reference (size buckets still come from the ground truth).")
    precision = info.raw.get("precision") or "fp32"
    if precision != "fp32":
        notes.append(f"the backend runs a {precision} graph, the reference fp32: the differences include the "
                     f"{precision} rounding (default.yaml's limits are fp32's; pass --tolerances with limits for "
                     f"{precision}, e.g. benchmarks/tolerances/ci_{precision}.yaml).")
    if "panoptic" in tasks and ref_segments_total == 0:
        notes.append("the reference produced no panoptic segment on any image: PQ vs reference is N/A (not 100).")
    report: dict[str, Any] = {
        "kind": "accuracy",
        "model": {"model": info.model, "task": info.task, "weights": info.raw.get("weights"),
                  "standin_weights": info.standin_weights, "standin_variant": variant, "dynamic": info.dynamic,
                  "static_hw": info.static_hw, "msda_lowering": info.raw.get("msda_lowering"),
                  "precision": info.raw.get("precision") or "fp32",
                  "precision_fp32_islands": _islands(info.raw)},
        "backend": backend.name,
        "reference": reference.name,
        "dataset": {"spec": dataset.spec, "kind": dataset.kind, "images": images, "ground_truth": dataset.has_gt},
        "resize": policy.as_dict(),
        "tasks": tasks,
        "bucket_regions": "ground-truth segments" if dataset.has_gt else "reference panoptic segments",
        # PQ/AP vs the reference bucket by the area of the reference's segments/instances (its own ground truth)
        "pq_ap_buckets": "reference segment / instance area",
        "instance_reference_min_score": instance_ref_score,
        "vs_reference": vs_reference,
        "notes": notes,
    }
    if gt_sides is not None:
        report["vs_ground_truth"] = {name: side.result() for name, side in gt_sides.items()}
    return report


def _islands(meta: dict[str, str]) -> list[str] | None:
    """The fp32 islands a reduced-precision graph records (None for fp32 graphs and older exports)."""
    try:
        islands = json.loads(meta.get("precision_fp32_islands") or "null")
    except ValueError:
        return None
    return islands if isinstance(islands, list) and (meta.get("precision") or "fp32") != "fp32" else None


def precision_text(model: dict[str, Any]) -> str:
    """e.g. "fp16 (fp32 islands: layernorm)" or "fp32"."""
    precision = model.get("precision") or "fp32"
    islands = model.get("precision_fp32_islands")
    text = precision if islands is None else f"{precision} (fp32 islands: {', '.join(islands) or 'none'})"
    if model.get("runtime_precision"):
        text += f" graph run in {model['runtime_precision']} by {model.get('runtime', 'the backend')}"
    return text


# ---------------------------------------------------------------------------------------------- verdict
def load_tolerances(path: str | Path | None) -> dict[str, Any]:
    import yaml

    p = Path(path) if path else DEFAULT_TOLERANCES
    if not p.is_file():
        raise ZsdError(f"tolerance file {p} does not exist (or is not a file).",
                       f"pass --tolerances (see {DEFAULT_TOLERANCES}).")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ZsdError(f"tolerance file {p} is not valid YAML: {e}.", "fix the file.") from None
    if not isinstance(doc, dict):
        raise ZsdError(f"tolerance file {p} is not a mapping (it holds a {type(doc).__name__}).",
                       "write sections `accuracy:` and/or `check:` (see benchmarks/tolerances/default.yaml).")
    for name, lim in (doc.get("accuracy") or {}).items():
        if not isinstance(lim, dict) or not set(lim) <= {"min", "max"} or not lim:
            raise ZsdError(f"{p}: accuracy limit {name!r} must be a mapping with 'min' and/or 'max'.",
                           "write e.g. `semantic.pixel_agreement: {min: 0.999}`.")
    doc["_path"] = str(p)
    return doc


def apply_tolerances(report: dict[str, Any], tol: dict[str, Any]) -> dict[str, Any]:
    """Check every bucket's metrics vs reference against the limits; violations are listed small bucket first."""
    limits = tol.get("accuracy") or {}
    checks, violations = [], []
    for b in BUCKET_ORDER:  # small first: exported engines lose accuracy first on small objects
        for metric, lim in limits.items():
            v = report["vs_reference"].get(b, {}).get(metric)
            if v is None:
                if metric in report["vs_reference"].get(b, {}):
                    checks.append({"bucket": b, "metric": metric, "value": None, "limit": lim, "status": "n/a"})
                continue
            bad = ("min" in lim and not v >= lim["min"]) or ("max" in lim and not v <= lim["max"])
            row = {"bucket": b, "metric": metric, "value": v, "limit": lim, "status": "FAIL" if bad else "ok"}
            checks.append(row)
            if bad:
                violations.append(row)
    report["tolerances"] = tol.get("_path")
    report["checks"] = checks
    report["violations"] = violations
    report["passed"] = not violations
    report["flagged_buckets"] = list(dict.fromkeys(v["bucket"] for v in violations))
    # Reduced-precision graphs gate under their own names (fp16:small/panoptic.pq), beside the fp32 graph's values.
    # A graph run at a lower inference precision (OpenVINO bf16) gates under that precision's name.
    model = report.get("model", {})
    precision = model.get("runtime_precision") or model.get("precision") or "fp32"
    prefix = "" if precision == "fp32" else f"{precision}:"
    report["gate"] = {"accuracy": {f"{prefix}{b}/{m}": v for b in BUCKET_ORDER
                                   for m, v in report["vs_reference"][b].items()
                                   if isinstance(v, float) and m in limits}}
    return report


# ---------------------------------------------------------------------------------------------- output
def _fmt(v: Any, metric: str = "") -> str:
    if v is None:
        return "N/A"
    if isinstance(v, bool) or isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if metric.endswith(("max_abs", "rel_l2")):
            return f"{v:.2e}"
        if metric.endswith(("cosine", "sign_agreement", "pixel_agreement")):
            return f"{100 * v:.4f} %"
        return f"{v:.2f}"
    return str(v)


def markdown(report: dict[str, Any]) -> str:
    vr = report["vs_reference"]
    metrics = sorted({m for b in BUCKET_ORDER for m in vr[b] if m != "pixels"},
                     key=lambda m: (m.split(".")[0], m))
    mod = report["model"]
    weights = str(mod["weights"]) + (f" ({mod['standin_variant']})" if mod.get("standin_variant") else "")
    shape = "dynamic" if mod["dynamic"] else "static " + "x".join(map(str, mod["static_hw"]))
    pq_ap = f" (PQ/AP vs reference: by {report['pq_ap_buckets']})" if report.get("pq_ap_buckets") else ""
    lines = [f"# zsd-bench accuracy: {report['backend']} vs {report['reference']}", "",
             f"- model: {mod['model']} {mod['task']} (weights: {weights}, {shape}, precision {precision_text(mod)})",
             f"- dataset: `{report['dataset']['spec']}` ({report['dataset']['images']} images, ground truth: "
             f"{'yes' if report['dataset']['ground_truth'] else 'no'}); buckets by {report['bucket_regions']}{pq_ap}",
             f"- resize: short edge {report['resize']['short_edge']}, max {report['resize']['max_size']} "
             f"({report['resize']['note']})"]
    if "passed" in report:
        verdict = "PASS" if report["passed"] else "FAIL (flagged buckets: " + ", ".join(report["flagged_buckets"]) + ")"
        lines.append(f"- verdict: **{verdict}** against `{report['tolerances']}`")
    lines += ["", "## Backend vs reference", "", "| metric | " + " | ".join(BUCKET_ORDER) + " |",
              "|---" * (len(BUCKET_ORDER) + 1) + "|"]
    lines.append("| pixels | " + " | ".join(str(vr[b].get("pixels", "")) for b in BUCKET_ORDER) + " |")
    for m in metrics:
        lines.append(f"| {m} | " + " | ".join(_fmt(vr[b].get(m), m) if m in vr[b] else "" for b in BUCKET_ORDER) + " |")
    if report.get("vs_ground_truth"):
        g = report["vs_ground_truth"]
        lines += ["", "## Against ground truth (reference | backend)", "",
                  "| metric | " + " | ".join(BUCKET_ORDER) + " |", "|---" * (len(BUCKET_ORDER) + 1) + "|"]
        gm = sorted({m for b in BUCKET_ORDER for m in g["reference"][b]})
        for m in gm:
            cells = [f"{_fmt(g['reference'][b].get(m), m)} \\| {_fmt(g['backend'][b].get(m), m)}"
                     if m in g["reference"][b] else "" for b in BUCKET_ORDER]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if report.get("violations"):
        lines += ["", "## Violations (small bucket first)", ""]
        for v in report["violations"]:
            lines.append(f"- **{v['bucket']}** {v['metric']} = {_fmt(v['value'], v['metric'])} (limit {v['limit']})")
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def summary_lines(report: dict[str, Any]) -> list[str]:
    vr = report["vs_reference"]
    tasks = report.get("tasks", list(TASKS))
    out = [f"  precision: {precision_text(report.get('model', {}))}"]
    for b in BUCKET_ORDER:
        r = vr[b]
        out.append(f"  {b:<6} pixels={r.get('pixels', 0):<7} mask rel_l2={_fmt(r.get('mask_logits.rel_l2'), 'rel_l2')} "
                   f"sign={_fmt(r.get('mask_logits.sign_agreement'), 'sign_agreement')} "
                   f"sem agree={_fmt(r.get('semantic.pixel_agreement'), 'pixel_agreement')}"
                   + (f" PQ={_fmt(r.get('panoptic.pq'))}" if "panoptic" in tasks else "")
                   + (f" AP={_fmt(r.get('instance.ap'))}" if "instance" in tasks else ""))
    if "passed" in report:
        if report["passed"]:
            out.append("accuracy: PASS")
        else:
            out.append("accuracy: FAIL — " + "; ".join(
                f"{v['bucket']}: {v['metric']}={_fmt(v['value'], v['metric'])} (limit {v['limit']})"
                for v in report["violations"][:6]))
    return out
