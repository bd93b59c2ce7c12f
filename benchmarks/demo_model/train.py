"""Train the demo PADing on generated scenes (Mask2Former's recipe, on a CPU), seeded and resumable.

    python -m zsdeploy.benchmarks.demo_model.train --output demo_train [--iters 4000] [--batch 8] [--resume]
    python -m zsdeploy.benchmarks.demo_model.train --package demo_train/best.pth   # -> the shipped weights

Every `--ckpt-every` iterations `last.pth` is rewritten (atomically) with the model, optimiser, iteration and history;
`--resume` continues from it bit-for-bit in data order (scene i of iteration t is a function of the seed, t and i).
Every `--eval-every` iterations the model is scored on held-out scenes (PQ vs ground truth; seeds never used in
training), `best.pth` keeps the best, and `curves.png` shows the loss and held-out PQ.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ...export.config import released_config
from ...export.pading_export import DEMO_CONFIG_NAME, demo_weights_path
from ...runtime.cli_core import ArgumentParser, run_main
from ...runtime.errors import ZsdError
from ...runtime.files import atomic_write, make_writable_dir
from .criterion import LossWeights, set_criterion
from .data import TRAIN_SEED, heldout_scene, heldout_seeds, training_sample

DEMO_CONFIG = released_config("pading", DEMO_CONFIG_NAME)


def say(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------- model
def build_training_model(config_path: Path) -> tuple[nn.Module, Any, Any]:
    """PADing from the config with BatchNorm in the backbone (FrozenBN's running statistics at inference) and
    the reference initialisation; returns (model, spec, cfg)."""
    from ...export import config
    from ...export.models.layers import FrozenBatchNorm2d
    from ...export.models.msdeformattn import MSDeformAttn
    from ...export.models.pading import PADing
    from ...export.models.transformer_decoder import MultiheadAttention

    cfg = config.load_config(config_path)
    spec = config.pading_spec(cfg)
    model = PADing(spec)

    def to_bn(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, FrozenBatchNorm2d):
                setattr(parent, name, nn.BatchNorm2d(child.weight.numel(), eps=child.eps))
            else:
                to_bn(child)

    to_bn(model.backbone)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and name.startswith("backbone."):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # detectron2 c2_msra_fill
        elif isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, MultiheadAttention):
            nn.init.xavier_uniform_(m.in_proj_weight)
            nn.init.zeros_(m.in_proj_bias)
            nn.init.zeros_(m.out_proj.bias)
        elif isinstance(m, MSDeformAttn):
            # Deformable DETR: offsets start on a ring per head (k-th point k times further out), uniform weights.
            nn.init.zeros_(m.sampling_offsets.weight)
            theta = torch.arange(m.n_heads, dtype=torch.float32) * (2.0 * math.pi / m.n_heads)
            grid = torch.stack([theta.cos(), theta.sin()], -1)
            grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(m.n_heads, 1, 1, 2).repeat(1, m.n_levels, m.n_points, 1)
            for k in range(m.n_points):
                grid[:, :, k, :] *= k + 1
            with torch.no_grad():
                m.sampling_offsets.bias.copy_(grid.view(-1))
            nn.init.zeros_(m.attention_weights.weight)
            nn.init.zeros_(m.attention_weights.bias)
            for lin in (m.value_proj, m.output_proj):
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)
    nn.init.normal_(model.sem_seg_head.pixel_decoder.transformer.level_embed)
    return model, spec, cfg


def inference_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict in the inference key layout (BatchNorm's counters dropped: FrozenBN has none)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def eval_model(state: dict[str, torch.Tensor], spec: Any) -> nn.Module:
    from ...export.models.pading import PADing

    model = PADing(spec).eval()
    model.load_state_dict(state, strict=True)
    return model


# -------------------------------------------------------------------------------------------------- data
class _Batches(torch.utils.data.IterableDataset):
    """Batches of iteration `start`, `start+1`, ... (deterministic: a function of the seed and the index)."""

    def __init__(self, start: int, batch: int, seed: int) -> None:
        self.start, self.batch, self.seed = start, batch, seed
        self.heldout = heldout_seeds()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]]:
        from zsdeploy.runtime.scenes import scene_seed

        it = self.start
        while True:
            images, classes, masks = [], [], []
            for j in range(self.batch):
                seed = scene_seed(self.seed, it * self.batch + j)
                if seed in self.heldout:  # never train on a held-out scene
                    seed = scene_seed(self.seed + 1, it * self.batch + j)
                s = training_sample(seed, np.random.default_rng([self.seed, it, j]))
                images.append(torch.from_numpy(s.image))
                classes.append(torch.from_numpy(s.classes))
                masks.append(torch.from_numpy(s.masks))
            yield torch.stack(images), classes, masks
            it += 1


# ---------------------------------------------------------------------------------------------- held-out
def heldout_pq(model: nn.Module, spec: Any, cfg: Any, config_path: Path, n: int) -> dict[str, float | None]:
    """Panoptic quality vs ground truth on the first `n` held-out scenes, through the runtime's post-processing
    with the test settings of the config being trained."""
    from ...export.pading_export import BuiltModel, pading_metadata
    from ...export.onnx_export import ExportShape
    from ...export.torch_backend import TorchBackend
    from ...export import config as config_mod
    from ...runtime.pipeline import Pipeline
    from ..metrics import PanopticQuality

    built = BuiltModel(model, spec, config_mod.test_settings(cfg), "panoptic", config_path, "training", "", [])
    seg = Pipeline(TorchBackend(model, pading_metadata(built, ExportShape(dynamic=True), opset=0, msda="torch")),
                    task="panoptic")
    pq = PanopticQuality()
    for i in range(n):
        scene = heldout_scene(i)
        [r] = seg([scene.image])
        pq.add(r.results["panoptic_seg"], r.results["segments_info"], scene.panoptic, scene.segments)
    res = pq.result()
    return {f"pq_{b}": res[b]["pq"] for b in res}


# -------------------------------------------------------------------------------------------- checkpoint
def _atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def config_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def running_mean(values: np.ndarray) -> tuple[int, np.ndarray]:
    """(window k, the k-point running mean of `values`): the per-batch loss is too noisy to read alone."""
    k = max(1, min(25, len(values) // 10))
    return k, np.convolve(values, np.ones(k) / k, mode="valid")


def plot_curves(history: dict[str, list], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    it = [h["iter"] for h in history["train"]]
    loss = np.asarray([h["loss"] for h in history["train"]], float)
    if len(loss):
        k, smooth = running_mean(loss)
        ax[0].plot(it, loss, alpha=0.3, label="loss (all decoder stages)")
        ax[0].plot(it[k - 1:], smooth, label=f"mean of {k}")
    ax[0].set_xlabel("iteration")
    ax[0].set_yscale("log")
    ax[0].legend()
    ax[0].set_title("training loss")
    ev = history["eval"]
    for key, label in (("pq_all", "PQ all"), ("pq_small", "PQ small"), ("pq_medium", "PQ medium"),
                       ("pq_large", "PQ large")):
        pts = [(e["iter"], e[key]) for e in ev if e.get(key) is not None]
        if pts:
            ax[1].plot(*zip(*pts), marker="o", label=label)
    ax[1].set_xlabel("iteration")
    ax[1].set_xlim(0, max(it[-1] if it else 1, 1))
    ax[1].set_ylim(0, 100)
    ax[1].set_ylabel("PQ vs ground truth")
    ax[1].set_title(f"held-out scenes ({ev[-1]['scenes'] if ev else 0})")
    ax[1].grid(alpha=0.3)
    ax[1].legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)


# ------------------------------------------------------------------------------------------------- train
def lr_at(it: int, base_lr: float, max_iters: int, warmup: int) -> float:
    """Linear warm-up, then detectron2's WarmupPolyLR (power 0.9)."""
    factor = 1.0 if it >= warmup else 0.1 + 0.9 * it / warmup
    return base_lr * factor * (1 - min(it, max_iters - 1) / max_iters) ** 0.9


def bf16_supported() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("amx_bf16", "avx512_bf16"))


def check_args(args: argparse.Namespace) -> None:
    """Refuse what cannot run before a model is built: counts below their minimum, and a --resume with nothing to
    resume (it would silently start a fresh, hours-long run)."""
    minimums = {"--iters": (args.iters, 1), "--batch": (args.batch, 1), "--threads": (args.threads, 1),
                "--workers": (args.workers, 0), "--eval-every": (args.eval_every, 1),
                "--eval-scenes": (args.eval_scenes, 1), "--ckpt-every": (args.ckpt_every, 1),
                "--warmup": (args.warmup, 0)}
    for flag, (value, least) in minimums.items():
        if value < least:
            raise ZsdError(f"{flag} {value} must be >= {least}.", f"pass {flag} {least} or more.")
    for flag, value in (("--lr", args.lr), ("--clip", args.clip)):
        if not value > 0:
            raise ZsdError(f"{flag} {value} must be > 0.", f"pass a positive {flag}, e.g. the default.")
    last = Path(args.output) / "last.pth"
    if args.resume and not last.is_file():
        raise ZsdError(f"--resume: there is nothing to resume in {args.output} (no last.pth).",
                       "pass the --output of the run to continue, or drop --resume to start a new run.")


def train(args: argparse.Namespace) -> Path:
    check_args(args)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ZsdError(f"--output {out} exists and is not a directory.", "choose another --output.")
    try:
        make_writable_dir(out)
    except OSError as e:
        raise ZsdError(f"--output {out} is not writable ({e.strerror or e}).",
                       "choose a directory you can write to.") from None
    config_path = Path(args.config) if args.config else DEMO_CONFIG
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model, spec, cfg = build_training_model(config_path)
    mf = cfg.MODEL.MASK_FORMER
    weights = LossWeights(float(mf.get("CLASS_WEIGHT", 2.0)), float(mf.get("MASK_WEIGHT", 5.0)),
                          float(mf.get("DICE_WEIGHT", 5.0)), float(mf.get("NO_OBJECT_WEIGHT", 0.1)),
                          int(mf.get("TRAIN_NUM_POINTS", 784)), float(mf.get("OVERSAMPLE_RATIO", 3.0)),
                          float(mf.get("IMPORTANCE_SAMPLE_RATIO", 0.75)))
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim == 1 or "embed" in n or "norm" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    history: dict[str, list] = {"train": [], "eval": []}
    start, wall_before = 0, 0.0
    last = out / "last.pth"
    sha = config_sha256(config_path)
    if args.resume and last.is_file():
        try:
            ck = torch.load(last, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user problem
            raise ZsdError(f"cannot resume: {last} is not a readable training checkpoint ({type(e).__name__}: {e}).",
                           "delete it to start over, or pass the --output of an earlier run.") from None
        if ck.get("config_sha256") != sha:
            raise ZsdError(f"cannot resume: {last} was trained with another config ({ck.get('config', '?')}, "
                           f"sha256 {str(ck.get('config_sha256'))[:12]}...) than {config_path} ({sha[:12]}...).",
                           "resume with the config it was trained with (--config), or use a new --output.")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start, history, wall_before = int(ck["iteration"]), ck["history"], float(ck.get("wall_s", 0.0))
        torch.set_rng_state(ck["torch_rng"])
        say(f"resumed from {last} at iteration {start}")
    elif last.is_file() and not args.resume:
        raise ZsdError(f"{last} exists: this --output holds a run already.",
                       "pass --resume to continue it, or choose a new --output.")
    if args.init_from and start == 0:
        init_from(model, Path(args.init_from))
        say(f"initialised from {args.init_from} (new optimiser and schedule)")
    bf16 = {"auto": bf16_supported(), "on": True, "off": False}[args.bf16]
    say(f"training {config_path.name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"batch {args.batch}, {args.iters} iterations, lr {args.lr}, bf16 autocast {'on' if bf16 else 'off'}, "
        f"{args.threads} threads")
    loader = torch.utils.data.DataLoader(_Batches(start, args.batch, args.seed), batch_size=None,
                                         num_workers=args.workers, collate_fn=lambda x: x)
    from ...export.models.msdeformattn import lowering

    model.train()
    t0, seen = time.perf_counter(), 0
    window: list[float] = []
    it = start
    for images, classes, masks in loader:
        if it >= args.iters:
            break
        lr = lr_at(it, args.lr, args.iters, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        tic = time.perf_counter()
        with lowering("gridsample"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            predictions = model.forward_all(images)
        loss, parts = set_criterion(predictions, classes, masks, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        it += 1
        seen += 1
        window.append(time.perf_counter() - tic)
        history["train"].append({"iter": it, "loss": float(loss.detach()), **parts, "lr": lr})
        if it % 10 == 0 or it == start + 1:
            elapsed = time.perf_counter() - t0
            rate = seen / elapsed
            eta = (args.iters - it) / rate
            say(f"it {it}/{args.iters}  loss {float(loss.detach()):.3f} (final stage: ce {parts['loss_ce']:.3f} "
                f"mask {parts['loss_mask']:.3f} dice {parts['loss_dice']:.3f})  lr {lr:.2e}  "
                f"{rate:.3f} it/s  ETA {eta / 3600:.1f} h")
        if it % args.eval_every == 0 or it == args.iters:
            model.eval()
            res = heldout_pq(eval_model(inference_state(model), spec), spec, cfg, config_path, args.eval_scenes)
            model.train()
            history["eval"].append({"iter": it, "scenes": args.eval_scenes, **res})
            best = max((e["pq_all"] or 0.0) for e in history["eval"])
            say(f"held-out ({args.eval_scenes} scenes) at it {it}: " +
                ", ".join(f"{k} {v:.1f}" if v is not None else f"{k} n/a" for k, v in res.items()))
            if (res["pq_all"] or 0.0) >= best:
                _atomic_save({"model": inference_state(model), "iteration": it, "heldout": res,
                              "config": config_path.name, "config_sha256": sha}, out / "best.pth")
            plot_curves(history, out / "curves.png")
        if it % args.ckpt_every == 0 or it == args.iters:
            _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": it,
                          "history": history, "torch_rng": torch.get_rng_state(), "config": config_path.name,
                          "config_sha256": sha, "args": vars(args), "bf16": bf16,
                          "wall_s": wall_before + time.perf_counter() - t0}, last)
            (out / "history.json").write_text(json.dumps(history))
    say(f"done at iteration {it}; {out / 'best.pth'} holds the best held-out model")
    return out


def init_from(model: nn.Module, path: Path) -> None:
    """Start from trained weights (e.g. the shipped fp16 demo checkpoint, to continue training in a later session
    without the optimiser state): every inference key must be present with its shape."""
    from ...export.checkpoint import key_problems, read_state_dict

    state = read_state_dict(path)
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    problems = key_problems(state, expected, [k for k in state if k not in expected])
    if problems:
        raise ZsdError(f"--init-from {path} does not match the config's model: " + "; ".join(problems) + ".",
                       "pass weights trained with this config (e.g. the shipped demo weights).")
    model.load_state_dict({k: state[k].to(v.dtype) for k, v in expected.items()}, strict=False)


def package(checkpoint: Path, output: Path) -> Path:
    """Write a training checkpoint's model as the shipped weights: detectron2 layout {'model': fp16 tensors}."""
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in ck["model"].items()
             if not k.endswith("num_batches_tracked")}
    output.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save({"model": state, "iteration": int(ck.get("iteration", 0)), "__author__": "zsdeploy demo_model"},
                 output)
    say(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB, {len(state)} tensors, fp16)")
    return output


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m zsdeploy.benchmarks.demo_model.train", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="demo_train", help="run directory (last.pth, best.pth, curves.png)")
    p.add_argument("--config", help="config YAML (default configs/pading/demo_panoptic.yaml)")
    p.add_argument("--iters", type=int, default=4000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--clip", type=float, default=0.01, help="full-model gradient-norm clip (Mask2Former: 0.01)")
    p.add_argument("--seed", type=int, default=TRAIN_SEED)
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2)))
    p.add_argument("--workers", type=int, default=1, help="data-generation processes")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                   help="bf16 autocast (auto: where the CPU has AMX-BF16 or AVX512-BF16)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-scenes", type=int, default=16)
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last.pth")
    p.add_argument("--init-from", metavar="WEIGHTS",
                   help="start a new run from trained weights (e.g. export/demo_weights/demo_panoptic.pth) with a new schedule")
    p.add_argument("--package", metavar="CKPT", help="write CKPT's model as the shipped fp16 weights and exit")
    p.add_argument("--package-output", default=str(demo_weights_path()))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.package:
            package(Path(args.package), Path(args.package_output))
        else:
            train(args)
        return 0

    return run_main("demo_model.train", body, lambda: "last.pth holds the last checkpoint (--resume continues)")


if __name__ == "__main__":
    sys.exit(main())
