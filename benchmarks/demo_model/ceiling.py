"""What limits the demo model: an oracle's scores through zsd-bench's own post-processing and metrics.

The oracle is a `Backend` that returns, for every scene it is fed, the best outputs a mask head of the given stride
can produce: one query per ground-truth segment (things and stuff, at most Q; the other queries say no-object), a
one-hot class logit with a large margin, and as mask logits the logit of the segment's area fraction per
stride x stride cell of the model's input canvas (clipped to [1e-4, 1 - 1e-4]). Run through `run_accuracy`, its
PQ / mask AP / mIoU against ground truth are the ceiling that the mask resolution alone allows (stride 4 = the demo
model's 64x64 masks at 256x256); stride 1 shows what the post-processing's own rules cost (thresholds, overlap).

    python -m zsdeploy.benchmarks.demo_model.ceiling --model demo256.onnx --output ceil4            # stride 4
    python -m zsdeploy.benchmarks.demo_model.ceiling --model demo256.onnx --stride 1 --output ceil1

--model is an export of the demo model (`export-model --model pading-demo --height 256 --width 256`): the oracle
takes its metadata (classes, thresholds, input canvas, number of queries) and, with --reference model (default),
the model itself runs beside it, so that report.md shows the trained model and its ceiling side by side.
Dataset options are zsd-bench accuracy's; their defaults are the demo model's 50 held-out scenes.
Exit status: 0 done, 2 usage or input error.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from zsdeploy.runtime.backends.base import Backend
from zsdeploy.runtime.cli_core import ArgumentParser, run_main
from zsdeploy.runtime.errors import ZsdError

from ..accuracy import BenchSegmenter, markdown, resize_policy, run_accuracy
from ..datasets import Dataset, Sample, open_dataset
from ..metrics import BUCKET_ORDER
from .data import HELDOUT_SEED, SCENE_OBJECT_SIZES, SCENE_OBJECTS, SCENE_SIZE

DEFAULT_STRIDE = 4  # the demo model's mask stride (metadata mask_stride)
CLASS_MARGIN = 20.0  # softmax of the true class: 1 - 134 * e^-20 ~ 1 - 3e-7, far above the 0.8 object threshold
FRACTION_CLIP = 1e-4  # mask logits stay within +-logit(1 - 1e-4) = +-9.21
REFERENCES = ("model", "oracle")


def tensor_key(image_chw: np.ndarray) -> str:
    """Identity of one prepared input image: sha256 of its float32 bytes and shape."""
    x = np.ascontiguousarray(image_chw, dtype=np.float32)
    return hashlib.sha256(repr(x.shape).encode() + x.tobytes()).hexdigest()


def check_stride(stride: int, canvas_hw: tuple[int, int] | None = None) -> None:
    """A stride is a positive number of pixels that tiles the model's input canvas."""
    if stride < 1:
        raise ZsdError(f"--stride {stride} is not a positive number of pixels.",
                       "pass --stride 1 (full resolution) or the model's mask stride (4).")
    if canvas_hw is not None and (canvas_hw[0] % stride or canvas_hw[1] % stride):
        raise ZsdError(f"--stride {stride} does not divide the model's {canvas_hw[0]}x{canvas_hw[1]} input canvas.",
                       f"pass a stride that divides both (the demo model's mask stride is 4; 1, 2, 8, 16 and 32 "
                       "also tile its multiple-of-32 canvas).")


def segment_fractions(panoptic: np.ndarray, segment_ids: list[int], image_hw: tuple[int, int],
                      padded_hw: tuple[int, int], stride: int) -> np.ndarray:
    """float64 [N, PH/stride, PW/stride]: the area fraction of each segment in every cell of the model's canvas.

    The ground truth (original size) is brought to the resized image inside the canvas as the pre-processing
    brings the image (area-weighted: PIL BOX when the sizes differ), padding counts as no segment."""
    from PIL import Image

    (ih, iw), (ph, pw) = image_hw, padded_hw
    check_stride(stride, padded_hw)
    cover = np.zeros((len(segment_ids), ph, pw), np.float32)
    for k, sid in enumerate(segment_ids):
        m = (panoptic == sid).astype(np.float32)
        if m.shape != (ih, iw):
            m = np.asarray(Image.fromarray(m).resize((iw, ih), Image.Resampling.BOX), np.float32)
        cover[k, :ih, :iw] = m
    return cover.reshape(len(segment_ids), ph // stride, stride, pw // stride, stride).mean(axis=(2, 4),
                                                                                          dtype=np.float64)


def fraction_logits(fractions: np.ndarray, clip: float = FRACTION_CLIP) -> np.ndarray:
    """float32 logit of the clipped fractions: a pixel is "in" (sigmoid >= 0.5, logit > 0) where over half is."""
    p = np.clip(fractions, clip, 1.0 - clip)
    return (np.log(p) - np.log1p(-p)).astype(np.float32)


@dataclass
class _Scene:
    """What the oracle needs to answer for one registered input: compressed ground truth and the canvas geometry."""

    panoptic_z: bytes  # zlib of the int32 panoptic map (original size): 50 scenes of COCO size stay small
    shape: tuple[int, int]
    segments: list[dict[str, Any]]  # the segments that get a query, in query order
    image_hw: tuple[int, int]
    padded_hw: tuple[int, int]

    def panoptic(self) -> np.ndarray:
        return np.frombuffer(zlib.decompress(self.panoptic_z), np.int32).reshape(self.shape)


class OracleBackend(Backend):
    """Perfect network outputs at a mask stride, for inputs registered with their ground truth beforehand.

    `info`, input/output names and input shapes are the template's (an exported model opened with a runtime), so
    the Pipeline pre- and post-processes exactly as for that model."""

    def __init__(self, template: Backend, *, stride: int = DEFAULT_STRIDE, margin: float = CLASS_MARGIN,
                 clip: float = FRACTION_CLIP) -> None:
        check_stride(stride)
        self.info = template.info
        self.input_names = tuple(template.input_names)
        self.output_names = tuple(template.output_names)
        missing = {"class_logits", "mask_logits"} - set(self.output_names)
        if missing or len(self.input_names) != 1:
            raise ZsdError(f"{self.info.model}: the oracle needs a model with one image input and outputs "
                           f"class_logits and mask_logits (this one has {list(self.input_names)} -> "
                           f"{list(self.output_names)}).", "pass a PADing / Mask2Former export (export-model).")
        self._shapes = {n: tuple(template.input_shape(n)) for n in self.input_names}
        try:
            self.num_queries = int(self.info.raw["num_queries"])
        except (KeyError, ValueError):
            raise ZsdError(f"{self.info.model}: the model's metadata has no num_queries.",
                           "re-export the model with this version of export-model.") from None
        self.stride, self.margin, self.clip = int(stride), float(margin), float(clip)
        self.name = f"oracle-stride{self.stride}"
        self._scenes: dict[str, _Scene] = {}
        self.mask_hw: tuple[int, int] | None = None
        self.stats = {"scenes": 0, "segments": 0, "dropped_segments": 0, "max_segments": 0,
                      "thing_flag_mismatch": 0, "duplicate_inputs": 0}
        self._things = set(self.info.thing_ids)

    def input_shape(self, name: str) -> tuple[int | str | None, ...]:
        return self._shapes[name]

    # ------------------------------------------------------------------------------------------ registration
    def register(self, image_chw: np.ndarray, sample: Sample, image_hw: tuple[int, int],
                 padded_hw: tuple[int, int]) -> str:
        """Remember `sample`'s ground truth for the prepared input `image_chw` (one image of a Batch tensor)."""
        if not sample.has_gt:
            raise ZsdError(f"{sample.name} has no ground truth: the oracle answers with the ground truth.",
                           "pass a dataset with ground truth (synthetic, coco-panoptic, coco-instances, semantic).")
        k = self.info.num_classes
        segments = [dict(s) for s in sample.segments if not s.get("iscrowd", 0)]
        for s in segments:
            if not 0 <= int(s["category_id"]) < k:
                raise ZsdError(f"{sample.name}: segment {s['id']} has class {s['category_id']}, outside the model's "
                               f"{k} classes.", "pass a dataset in the model's class space.")
        padded_hw = (int(padded_hw[0]), int(padded_hw[1]))
        check_stride(self.stride, padded_hw)
        key = tensor_key(image_chw)
        if key in self._scenes:  # the same pixels twice: the first ground truth answers for both
            self.stats["duplicate_inputs"] += 1
            return key
        pan = np.ascontiguousarray(sample.panoptic, np.int32)
        ids, counts = np.unique(pan, return_counts=True)
        area = dict(zip(ids.tolist(), counts.tolist()))
        present = [s for s in segments if area.get(int(s["id"]), 0) > 0 and int(s["id"]) != 0]
        # More segments than queries: the largest keep a query (the rest are what a Q-query model must miss).
        kept_ids = {int(s["id"]) for s in sorted(present, key=lambda s: -area[int(s["id"])])[:self.num_queries]}
        kept = [s for s in present if int(s["id"]) in kept_ids]  # dataset order: stuff merging follows query order
        st = self.stats
        st["scenes"] += 1
        st["segments"] += len(present)
        st["dropped_segments"] += len(present) - len(kept)
        st["max_segments"] = max(st["max_segments"], len(present))
        st["thing_flag_mismatch"] += sum(bool(s.get("isthing")) != (int(s["category_id"]) in self._things)
                                         for s in kept)
        self.mask_hw = (padded_hw[0] // self.stride, padded_hw[1] // self.stride)
        self._scenes[key] = _Scene(zlib.compress(pan.tobytes(), 1), pan.shape, kept,
                                   (int(image_hw[0]), int(image_hw[1])), padded_hw)
        return key

    # ------------------------------------------------------------------------------------------------ outputs
    def outputs_for(self, scene: _Scene) -> tuple[np.ndarray, np.ndarray]:
        """(class_logits [Q, K+1], mask_logits [Q, PH/stride, PW/stride]) of one registered scene."""
        k, q = self.info.num_classes, self.num_queries
        kept = scene.segments
        ph, pw = scene.padded_hw
        class_logits = np.zeros((q, k + 1), np.float32)
        class_logits[len(kept):, k] = self.margin  # unused queries: no-object
        mask_logits = np.full((q, ph // self.stride, pw // self.stride), fraction_logits(np.zeros(1), self.clip)[0],
                              np.float32)
        if kept:
            class_logits[np.arange(len(kept)), [int(s["category_id"]) for s in kept]] = self.margin
            fractions = segment_fractions(scene.panoptic(), [int(s["id"]) for s in kept], scene.image_hw,
                                          scene.padded_hw, self.stride)
            mask_logits[:len(kept)] = fraction_logits(fractions, self.clip)
        return class_logits, mask_logits

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from zsdeploy.runtime.backends.onnxruntime_backend import check_feeds

        check_feeds(feeds, self.input_names, self._shapes)
        x = feeds[self.input_names[0]]
        cls, masks = [], []
        for i in range(x.shape[0]):
            scene = self._scenes.get(tensor_key(x[i]))
            if scene is None:
                raise ZsdError("the oracle was fed an input it has no ground truth for (the dataset gave different "
                               "pixels when it was read again, or the input was prepared differently).",
                               "register every sample with register_dataset() and the same resize policy.")
            c, m = self.outputs_for(scene)
            cls.append(c)
            masks.append(m)
        return {"class_logits": np.stack(cls), "mask_logits": np.stack(masks)}


def register_dataset(oracle: OracleBackend, dataset: Dataset, short_edge: int | None = None) -> int:
    """Prepare every sample exactly as `run_accuracy` will (its resize policy, BenchSegmenter.prepare) and register
    the ground truth under the prepared tensor. Returns the number of samples."""
    n = 0
    seg: BenchSegmenter | None = None
    for sample in dataset:
        if seg is None:  # run_accuracy decides the policy from the first image
            seg = BenchSegmenter(oracle, None, resize_policy(oracle, sample.image.shape[:2], short_edge))
        batch = seg.prepare([sample.image])
        oracle.register(batch.tensor[0], sample, batch.image_sizes[0], batch.padded_hw)
        n += 1
    return n


# ---------------------------------------------------------------------------------------------------- run
def run_ceiling(model: str | Path, dataset: Dataset, *, stride: int = DEFAULT_STRIDE, reference: str = "model",
                short_edge: int | None = None, threads: int | None = None, progress: Any = None) -> dict[str, Any]:
    """The oracle at `stride` through run_accuracy against `dataset`'s ground truth; returns the report dict.

    reference "model": the exported model runs beside the oracle (report["vs_ground_truth"]["reference"] is the
    trained model, ["backend"] the oracle); "oracle": the oracle is its own reference (no network is run)."""
    from zsdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from zsdeploy.families import family_of

    if reference not in REFERENCES:
        raise ZsdError(f"--reference {reference} is not one of {', '.join(REFERENCES)}.",
                       "pass --reference model (the exported model beside the oracle) or oracle.")
    check_stride(stride)
    if not dataset.has_gt:
        raise ZsdError(f"--dataset {dataset.spec} has no ground truth, and the oracle answers with the ground truth.",
                       "pass a dataset with ground truth (synthetic, coco-panoptic, coco-instances, semantic).")
    path = Path(model)
    if path.suffix != ".onnx" or not path.is_file():
        raise ZsdError(f"--model {path} is not an ONNX file.",
                       "export the demo model: export-model --model pading-demo --height 256 --width 256 "
                       "--output demo256.onnx.")
    network = OnnxRuntimeBackend(path, threads=threads)
    if family_of(network.info).open_vocabulary:
        raise ZsdError(f"{path} is an open-vocabulary model: ground-truth classes are not its classes.",
                       "pass a closed-vocabulary export (PADing / the demo model).")
    oracle = OracleBackend(network, stride=stride)
    if network.info.static_hw is not None:  # refuse a stride that cannot tile the canvas before any work
        check_stride(stride, network.info.static_hw)
    register_dataset(oracle, dataset, short_edge)
    report = run_accuracy(oracle, network if reference == "model" else oracle, dataset, short_edge=short_edge,
                          progress=progress)
    q = oracle.num_queries
    report["kind"] = "oracle-ceiling"
    report["model"]["path"] = str(path)
    report["oracle"] = {"stride": oracle.stride, "mask_hw": list(oracle.mask_hw or ()), "num_queries": q,
                        "class_margin": oracle.margin, "fraction_clip": oracle.clip, "reference": reference,
                        **oracle.stats}
    mh, mw = oracle.mask_hw or (0, 0)
    notes = report["notes"]
    notes.insert(0, f"oracle: one query per ground-truth segment (at most {q}), class logits one-hot with margin "
                    f"{oracle.margin:g}, mask logits = logit of the segment's area fraction per {oracle.stride}x"
                    f"{oracle.stride} cell ({mh}x{mw} masks), clipped to "
                    f"[{oracle.clip:g}, 1 - {oracle.clip:g}]; then zsdeploy's post-processing and metrics as in "
                    "zsd-bench accuracy.")
    if reference == "model":
        notes.insert(1, "against ground truth: 'reference' is the trained model, 'backend' the oracle (the "
                        "backend-vs-reference section compares the two and is not a tolerance check).")
    if report["oracle"]["dropped_segments"]:
        notes.append(f"{report['oracle']['dropped_segments']} ground-truth segments had no query (scenes with more "
                     f"than {q} segments; the smallest went without).")
    if report["oracle"]["thing_flag_mismatch"]:
        notes.append(f"{report['oracle']['thing_flag_mismatch']} ground-truth segments are things in the dataset but "
                     "stuff for the model (or the reverse): the post-processing treats them as the model's classes.")
    return report


# ------------------------------------------------------------------------------------------------- output
GT_TABLE_METRICS = (("panoptic.pq", "PQ"), ("panoptic.sq", "SQ"), ("panoptic.rq", "RQ"), ("instance.ap", "mask AP"),
                   ("semantic.miou", "mIoU"), ("panoptic.segments", "GT segments"))


def fmt_metric(v: Any) -> str:
    """One decimal (the model card's precision), n/a for a metric with nothing to measure."""
    return "n/a" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)


def ground_truth_table(report: dict[str, Any], side: str = "backend") -> str:
    """Metric x size bucket for one side of an accuracy report's ground-truth comparison (also the model card's)."""
    gt = report["vs_ground_truth"][side]
    rows = ["| metric | " + " | ".join(BUCKET_ORDER) + " |", "|---" * (len(BUCKET_ORDER) + 1) + "|"]
    for key, label in GT_TABLE_METRICS:
        rows.append(f"| {label} | " + " | ".join(fmt_metric(gt[b].get(key)) for b in BUCKET_ORDER) + " |")
    return "\n".join(rows)


def ceiling_markdown(report: dict[str, Any]) -> str:
    o = report["oracle"]
    lines = [f"# Oracle ceiling at mask stride {o['stride']} ({o['mask_hw'][0]}x{o['mask_hw'][1]} masks)", "",
             f"- model: `{report['model'].get('path')}` ({report['model']['model']} {report['model']['task']}, "
             f"{o['num_queries']} queries)",
             f"- dataset: `{report['dataset']['spec']}` ({report['dataset']['images']} images, {o['segments']} "
             f"ground-truth segments, at most {o['max_segments']} in a scene, {o['dropped_segments']} without a query)",
             "", f"## Oracle, stride {o['stride']}, vs ground truth", "", ground_truth_table(report, "backend")]
    if o["reference"] == "model":
        lines += ["", "## The trained model (same run) vs ground truth", "", ground_truth_table(report, "reference")]
    lines += ["", "---", "", markdown(report)]
    return "\n".join(lines) + "\n"


def summary_lines(report: dict[str, Any]) -> list[str]:
    out = []
    sides = [("oracle", "backend")] + ([("model", "reference")] if report["oracle"]["reference"] == "model" else [])
    for label, side in sides:
        gt = report["vs_ground_truth"][side]
        for b in BUCKET_ORDER:
            r = gt[b]
            out.append(f"  {label:<6} {b:<6} PQ={fmt_metric(r.get('panoptic.pq'))} AP={fmt_metric(r.get('instance.ap'))} "
                       f"mIoU={fmt_metric(r.get('semantic.miou'))}")
    return out


# ---------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m zsdeploy.benchmarks.demo_model.ceiling",
                       description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=__doc__.split("\n\n", 1)[1])
    h, w = SCENE_SIZE
    p.add_argument("--model", required=True, help="an exported demo model .onnx (metadata, input canvas; the "
                                                  "network itself with --reference model)")
    p.add_argument("--stride", type=int, default=DEFAULT_STRIDE,
                   help=f"mask stride of the oracle in input pixels (default {DEFAULT_STRIDE}: the demo model's)")
    p.add_argument("--reference", default="model", choices=REFERENCES,
                   help="run beside the oracle: the exported model (default) or the oracle itself (no network)")
    p.add_argument("--dataset", default="synthetic:50", help="as zsd-bench accuracy (default synthetic:50)")
    p.add_argument("--seed", type=int, default=HELDOUT_SEED, help=f"default {HELDOUT_SEED} (the held-out scenes)")
    p.add_argument("--scene-size", default=f"{h}x{w}", help=f"synthetic scene size HxW (default {h}x{w})")
    p.add_argument("--object-sizes", default=",".join(f"{v:g}" for v in SCENE_OBJECT_SIZES),
                   help="synthetic object sqrt(area) range lo,hi px (default %(default)s)")
    p.add_argument("--objects", type=int, default=SCENE_OBJECTS,
                   help="objects per synthetic scene (default %(default)s)")
    p.add_argument("--short-edge", type=int, default=None, help="resize short edge (as zsd-bench accuracy)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of ONNX Runtime")
    p.add_argument("--output", required=True, help="output directory (report.json, report.md)")
    return p


def run_cli(args: argparse.Namespace) -> int:
    from zsdeploy.runtime.files import write_json_atomic
    from zsdeploy.runtime.files import check_output_dir

    from ..report_io import progress, write_report

    check_stride(args.stride)  # before anything is loaded
    try:
        lo, hi = (float(v) for v in args.object_sizes.split(","))
    except ValueError:
        raise ZsdError(f"--object-sizes {args.object_sizes!r} is not two numbers lo,hi.", "pass e.g. 8,110.") from None
    ds = open_dataset(args.dataset, scene_size=args.scene_size, seed=args.seed, size_range=(lo, hi),
                      n_objects=args.objects)
    check_output_dir(args.output)
    report = run_ceiling(args.model, ds, stride=args.stride, reference=args.reference, short_edge=args.short_edge,
                         threads=args.threads,
                         progress=lambda it: progress(iterable=it, total=len(ds), desc="oracle", unit="img"))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)  # check_output_dir created nothing
    write_json_atomic(out / "report.json", report)
    write_report(out, "report.md", ceiling_markdown(report))
    for line in summary_lines(report):
        print(line, flush=True)
    print(f"wrote {out / 'report.json'} and {out / 'report.md'}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main("ceiling", lambda: run_cli(args))


if __name__ == "__main__":
    sys.exit(main())
