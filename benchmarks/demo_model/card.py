"""Write the demo model's card (weights/MODEL_CARD.md) from its training run and a `zsd-bench accuracy` report.

    python -m zsdeploy.benchmarks.demo_model.card --run demo_train --accuracy acc/report.json
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from ...export.pading_export import demo_weights_path
from .data import HELDOUT_SEED, SCENE_OBJECT_SIZES, SCENE_OBJECTS, SCENE_SIZE, TRAIN_SEED

WEIGHTS_DIR = demo_weights_path().parent
METRICS = (("panoptic.pq", "PQ"), ("panoptic.sq", "SQ"), ("panoptic.rq", "RQ"), ("instance.ap", "mask AP"),
           ("semantic.miou", "mIoU"), ("panoptic.segments", "GT segments"))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def accuracy_table(report: dict[str, Any], side: str) -> str:
    gt = report["vs_ground_truth"][side]
    rows = ["| metric | small | medium | large | all |", "|---|---|---|---|---|"]
    for key, label in METRICS:
        rows.append(f"| {label} | " + " | ".join(_fmt(gt[b].get(key)) for b in ("small", "medium", "large", "all"))
                    + " |")
    return "\n".join(rows)


def _reproduce_line(args: dict[str, Any], out: str, init_from: str | None) -> str:
    cmd = (f"python -m zsdeploy.benchmarks.demo_model.train --output {out} --iters {args.get('iters')} "
           f"--batch {args.get('batch')} --threads {args.get('threads')} --lr {args.get('lr')} "
           f"--warmup {args.get('warmup')} --seed {args.get('seed')}")
    return cmd + (f" --init-from {init_from}" if init_from else "")


def write_card(run: Path, accuracy: Path, output: Path, status: str = "", previous: tuple[Path, ...] = ()) -> Path:
    """`previous`: earlier training stages this run continued from (`--init-from` their best weights), oldest first."""
    stages = [torch.load(r / "last.pth", map_location="cpu", weights_only=False) for r in (*previous, run)]
    last = stages[-1]
    best = torch.load(run / "best.pth", map_location="cpu", weights_only=False)
    rep = json.loads(accuracy.read_text())
    args = last["args"]
    hist = last["history"]
    wall_h = sum(float(st.get("wall_s", 0.0)) for st in stages) / 3600
    steps = sum(int(st["iteration"]) for st in stages)
    scenes = sum(int(st["iteration"]) * int(st["args"].get("batch", 8)) for st in stages)
    evals = "\n".join(
        f"| {k + 1} | {e['iter']} | " + " | ".join(_fmt(e.get(f"pq_{b}")) for b in ("small", "medium", "large", "all"))
        + " |" for k, st in enumerate(stages) for e in st["history"]["eval"])
    reproduce = "\n".join(
        "    " + _reproduce_line(st["args"], f"demo_train{k + 1}",
                                 None if k == 0 else f"demo_train{k}/best.pth  # stage {k + 1}: continues stage {k}")
        for k, st in enumerate(stages))
    stage_text = ("" if len(stages) == 1 else
                  f" in {len(stages)} stages (each later stage starts from the previous stage's best weights with a "
                  "new optimiser, schedule and scene seed; see Reproduce)")
    agree = rep["vs_reference"]["all"]
    status_block = f"\n## Status\n{status}\n" if status else ""
    text = f"""# Model card: zsdeploy demo PADing (`export-model --model pading-demo`)

A reduced PADing-architecture network (Mask2Former meta-architecture with PADing's `new_fc` classifier) trained by
zsdeploy on procedurally generated small-target scenes, so that the README's main job segments for real. It is a
demonstration and benchmarking model, **not** a COCO model: it knows the 17 classes the scene generator draws (11
things, 6 stuff, named after COCO-panoptic classes) and nothing about photographs.
{status_block}
## Architecture and config
`configs/pading/demo_panoptic.yaml` (upstream key schema; the same model code as the released configs):
ResNet-50 at half width (WIDTH_PER_GROUP 32, RES2_OUT_CHANNELS 128), MSDeformAttn pixel decoder (3 encoder layers,
128 channels, 4 heads x 32, 4 points, 3 levels), masked-attention transformer decoder (6 layers, 50 queries, FFN 512),
`new_fc` over the 133 COCO-panoptic classes + no-object. 8.93 M parameters, stored as fp16 ({(WEIGHTS_DIR / 'demo_panoptic.pth').stat().st_size / 2**20:.1f} MiB;
loading restores fp32). Test size: short edge {SCENE_SIZE[0]} (the training resolution).

## Data
`benchmarks/synthetic.py` scenes at {SCENE_SIZE[0]}x{SCENE_SIZE[1]}, {SCENE_OBJECTS} objects tried per scene, object sqrt(area)
{SCENE_OBJECT_SIZES[0]:g}..{SCENE_OBJECT_SIZES[1]:g} px (log-uniform: about half the things are COCO-small), exact panoptic ground truth;
one new scene per sample (seed {TRAIN_SEED}, scene i of iteration t is a function of both); augmentation: scale jitter 0.75..1.5
(image bilinear, labels nearest), random crop / pixel-mean padding back to {SCENE_SIZE[0]}x{SCENE_SIZE[1]}, horizontal flip.
Held out: the scenes of `zsd-bench --dataset synthetic:N --seed {HELDOUT_SEED}` (same generator parameters); their seeds
are excluded from training (benchmarks/demo_model/data.py, tested).

## Training (benchmarks/demo_model/train.py)
Mask2Former's recipe: Hungarian matching (scipy) on class + sigmoid-BCE + dice costs over {args.get('batch')}-image batches,
point-sampled BCE + dice losses (784 points per mask, importance-sampled: 3x oversampling, 75 % most uncertain),
cross-entropy with no-object weight 0.1, loss weights 2 / 5 / 5, deep supervision on all 7 decoder stages, AdamW
(lr {args.get('lr')}, weight decay {args.get('weight_decay')}), {args.get('warmup')}-iteration warm-up then poly(0.9) to
{args.get('iters')} iterations, full-model gradient-norm clip {args.get('clip')}, bf16 autocast ({'on' if last.get('bf16') else 'off'}),
MSDeformAttn through its grid_sample formulation (autograd), BatchNorm in the backbone (FrozenBN at inference).
Steps: {steps} ({scenes} scenes){stage_text}; wall time {wall_h:.1f} h on {_cpu_model()},
{args.get('threads')} thread(s), shared with other work; no GPU. Shipped checkpoint: stage {len(stages)} iteration
{best['iteration']} (best held-out PQ).

Held-out PQ during training ({hist['eval'][-1]['scenes'] if hist['eval'] else 0} scenes, PyTorch):

| stage | iteration | PQ small | PQ medium | PQ large | PQ all |
|---|---|---|---|---|---|
{evals}

![training curves](curves.png)

## Held-out accuracy vs ground truth
`zsd-bench accuracy` on {rep['dataset']['images']} held-out scenes ({rep['dataset']['spec']}), backend {rep['backend']}
({rep['model'].get('msda_lowering')} lowering, {'dynamic' if rep['model'].get('dynamic') else 'static ' + 'x'.join(map(str, rep['model'].get('static_hw') or []))}),
COCO size buckets by ground-truth segment area (mask AP: instances score-ranked, things only):

{accuracy_table(rep, 'backend')}

The ONNX export reproduces its PyTorch twin: mask logits rel L2 {agree.get('mask_logits.rel_l2', 0):.1e}, class logits
{agree.get('class_logits.rel_l2', 0):.1e}, PQ vs the PyTorch reference {_fmt(agree.get('panoptic.pq'))}.

## Reproduce
{reproduce}
    python -m zsdeploy.benchmarks.demo_model.train --package demo_train{len(stages)}/best.pth
Training is seeded; bit-exact replay also needs the same torch build and thread count.
"""
    output.write_text(text, encoding="utf-8")
    if (run / "curves.png").is_file():
        shutil.copyfile(run / "curves.png", output.with_name("curves.png"))
    return output


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zsdeploy.benchmarks.demo_model.card", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="training run directory (last.pth, best.pth, curves.png)")
    p.add_argument("--accuracy", required=True, help="zsd-bench accuracy report.json on held-out scenes")
    p.add_argument("--output", default=str(WEIGHTS_DIR / "MODEL_CARD.md"))
    p.add_argument("--status", default="", help="a paragraph on where training stands (goes under ## Status)")
    p.add_argument("--previous", nargs="*", default=[], metavar="RUN",
                   help="earlier training stages this run continued from (--init-from), oldest first")
    a = p.parse_args(argv)
    print(write_card(Path(a.run), Path(a.accuracy), Path(a.output), a.status, tuple(Path(r) for r in a.previous)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
