#!/usr/bin/env python3
"""GPU verification and timing of the MSDeformAttn CUDA kernel (standalone; needs only torch with CUDA + nvcc).

Builds plugins_trt/msdeformattn (CUDA kernel, host kernel, torch binding) as a torch extension and, at PADing's real
encoder shapes (800x1216 input -> levels 25x38, 50x76, 100x152; M=8, D=32, L=3, P=4; Lq = S = 19950, encoder
self-attention; N = 1 and 4):

* accuracy: outputs are NaN-poisoned before every checked launch; random inputs (locations partly outside [0, 1]);
  - fp32 vs an fp64 grid_sample reference: max|err| / max|ref| (target < 1e-6), also max abs and relative L2;
  - fp16 I/O (fp32 math) vs the fp64 reference on the same fp16 inputs: max abs error vs the fp64 result AND vs the
    fp16 rounding of the fp64 result, the number of elements differing from that rounding, the worst distance in fp16
    ulps, and a bound check |out - ref64| <= ulp/2 + 1e-5;
  - fp16 GPU output vs the CPU emulation of the fp16 path (same kernel core built with g++): mismatching elements;
* timing with CUDA events (median, p10, p90 of --iters runs after --warmup) of: the kernel (vectorised), the kernel
  forced onto its scalar fallback (misaligned buffers), and the grid_sample formulation, in fp32 and fp16.

With --all it first builds the TensorRT plugin library and its smoke test (plugins_trt/, cmake + nvcc) against
NVIDIA's public TensorRT headers for the visible GPU and runs the smoke test: the IPluginV3 interfaces, a CUDA error
left pending by the application told apart, and enqueue on device buffers against the host kernel (fp32, fp16).
The GPU machines have no TensorRT and no network, so the headers travel with the checkout: `--stage-headers` copies
../shared/tensorrt into build/gpu_check/tensorrt (ignored by git; carry it), where --all finds them.

Prints a table and writes JSON (--json). Exit status 1 when a check fails, 2 when something needed is missing.

    python benchmarks/gpu_check.py --stage-headers            # here: headers into build/gpu_check/ (then carry it)
    python benchmarks/gpu_check.py --all --json gpu.json      # there: plugin smoke test + kernel accuracy + timing
    python benchmarks/gpu_check.py [--json gpu_check.json] [--batches 1 4] [--iters 200] [--warmup 20]
    python benchmarks/gpu_check.py --cpu-smoke [--all]   # exercise this script on a CPU with the host kernel (no timing
                                                         # claims; --all: the plugin's no-device path)

Environment: TORCH_EXTENSIONS_DIR (build cache; default ~/.cache/zsdeploy/gpu_check), TORCH_CUDA_ARCH_LIST (archs;
default: the visible GPU), ZSD_MSDA_VERBOSE=1 (compiler output).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

PADING_LEVELS = [(25, 38), (50, 76), (100, 152)]
NUM_HEADS, HEAD_DIM, NUM_POINTS = 8, 32, 4
FP32_REL_TARGET = 1e-6
REPO = Path(__file__).resolve().parent.parent
DEFAULT_SRC = REPO / "plugins_trt" / "msdeformattn"
SMOKE_SCRIPT = REPO / "plugins_trt" / "scripts" / "smoke_test_headers.sh"
SHARED_HEADERS = REPO.parent / "shared" / "tensorrt"  # NVIDIA's public headers beside the checkout (never in it)
STAGED_HEADERS = REPO / "build" / "gpu_check" / "tensorrt"  # what travels to a GPU machine (git-ignored)
HEADER_SET = "v10.3.0"  # the API JetPack 6 ships
# --cpu-smoke checks the script, not the kernel's speed: a PADing-like pyramid 1/4 the size per side.
SMOKE_LEVELS = [(7, 10), (13, 19), (25, 38)]


# ---- the TensorRT plugin: build + smoke test ------------------------------------------------------------------------
def stage_headers(dest: Path = STAGED_HEADERS) -> int:
    """Copy ../shared/tensorrt/<version>/include into `dest` so a GPU machine's checkout carries them."""
    sets = sorted(p for p in SHARED_HEADERS.glob("v*") if (p / "include" / "NvInfer.h").is_file())
    if not sets:
        print(f"error: no TensorRT header sets in {SHARED_HEADERS}. Fix: pass --tensorrt-root to --all on the GPU "
              "machine instead (a TensorRT install or NVIDIA's OSS include/ folder).")
        return 2
    for src in sets:
        shutil.rmtree(dest / src.name, ignore_errors=True)
        shutil.copytree(src / "include", dest / src.name / "include")
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"staged {', '.join(p.name for p in sets)} in {dest} ({size / 2**20:.1f} MiB); on the GPU machine, with "
          f"{dest.parent.relative_to(REPO)} carried: python benchmarks/gpu_check.py --all --json gpu.json")
    return 0


def find_tensorrt_root(explicit: Path | None) -> Path | None:
    candidates = [explicit] if explicit else [
        Path(os.environ["TENSORRT_ROOT"]) if os.environ.get("TENSORRT_ROOT") else None,
        STAGED_HEADERS / HEADER_SET, SHARED_HEADERS / HEADER_SET]
    return next((c for c in candidates if c is not None and (c / "include" / "NvInfer.h").is_file()), None)


def plugin_smoke_test(root: Path, arch: str, build_dir: Path) -> dict:
    """Build libzsdeploy_plugins.so + zsd_plugin_smoke_test for `arch` against `root`'s headers and run it."""
    env = dict(os.environ, ZSD_CUDA_ARCHS=arch, ZSD_SMOKE_BUILD_DIR=str(build_dir))
    t0 = time.perf_counter()
    res = subprocess.run(["bash", str(SMOKE_SCRIPT), str(root)], capture_output=True, text=True, env=env, check=False)
    out = res.stdout + res.stderr
    counts = re.search(r"(\d+) checks, (\d+) failures", out)
    version = re.search(r"TensorRT ([0-9.]+) headers", out)
    row = {"tensorrt_headers": version.group(1) if version else None, "root": str(root), "arch": f"sm_{arch}",
           "skipped": out.startswith("SKIP"), "checks": int(counts.group(1)) if counts else 0,
           "failures": int(counts.group(2)) if counts else None, "seconds": round(time.perf_counter() - t0, 1),
           "enqueue_on_device": bool(re.search(r"GPU: \d+ device", out)),
           "failed_checks": [line[6:] for line in out.splitlines() if line.strip().startswith("FAIL")]}
    row["pass"] = res.returncode == 0 and (row["skipped"] or row["failures"] == 0)
    print(f"plugin smoke test (TensorRT {row['tensorrt_headers']} headers, {row['arch']}): "
          + ("SKIPPED: " + out.strip() if row["skipped"] else
             f"{row['checks']} checks, {row['failures']} failures, enqueue on device buffers: "
             f"{'yes' if row['enqueue_on_device'] else 'no (no GPU: the no-device path was checked)'} "
             f"({row['seconds']} s)"))
    if not row["pass"] and not row["skipped"]:
        print(out[-4000:])
    return row


# ---- build ------------------------------------------------------------------------------------------------------------
def build_extension(src: Path, with_cuda: bool):
    from torch.utils import cpp_extension

    name = "zsdeploy_msda_gpucheck" if with_cuda else "zsdeploy_msda_gpucheck_cpu"
    build_dir = None
    if not os.environ.get("TORCH_EXTENSIONS_DIR"):
        tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}".replace("+", "_")
        build_dir = Path.home() / ".cache" / "zsdeploy" / "gpu_check" / tag / name
        build_dir.mkdir(parents=True, exist_ok=True)
    sources = [src / "torch_binding.cpp", src / "msDeformAttnHost.cpp"]
    cflags = ["-O3", "-ffp-contract=off"]
    kwargs = {}
    if with_cuda:
        sources.append(src / "msDeformAttnKernel.cu")
        cflags.append("-DZSD_WITH_CUDA")
        kwargs = {"extra_cuda_cflags": ["-O3"], "with_cuda": True}
    for s in sources:
        if not s.is_file():
            raise SystemExit(f"kernel source missing: {s} (pass --src plugins_trt/msdeformattn)")
    t0 = time.perf_counter()
    ext = cpp_extension.load(
        name=name,
        sources=[str(s) for s in sources],
        extra_cflags=cflags,
        extra_include_paths=[str(src)],
        build_directory=str(build_dir) if build_dir else None,
        verbose=os.environ.get("ZSD_MSDA_VERBOSE", "") not in ("", "0"),
        **kwargs,
    )
    print(f"extension {name}: ready in {time.perf_counter() - t0:.1f} s (CUDA compiled in: {ext.cuda_compiled()})")
    return ext


# ---- reference --------------------------------------------------------------------------------------------------------
def reference(value, shapes, starts, loc, attn):
    """grid_sample formulation (bilinear, zeros, align_corners=False) in the inputs' dtype; shapes/starts are lists."""
    n, _, m, d = value.shape
    _, lq, _, num_levels, p, _ = loc.shape
    grids = 2 * loc - 1
    out = value.new_zeros(n * m, d, lq)
    for lvl in range(num_levels):
        (h, w), start = shapes[lvl], starts[lvl]
        v = value[:, start : start + h * w].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        g = grids[:, :, :, lvl].permute(0, 2, 1, 3, 4).reshape(n * m, lq, p, 2)
        s = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        a = attn[:, :, :, lvl].permute(0, 2, 1, 3).reshape(n * m, 1, lq, p)
        out = out + (s * a).sum(-1)
    return out.view(n, m, d, lq).permute(0, 3, 1, 2).reshape(n, lq, m * d)


def make_inputs(n: int, device: torch.device, seed: int, levels: list[tuple[int, int]] = PADING_LEVELS):
    """Encoder self-attention inputs at the PADing shapes: one query per pixel (Lq = S), reference point = pixel
    centre, offsets ~ N(0, 2 px) (some samples fall outside the map), attention softmaxed jointly over L*P."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    shapes = levels
    areas = [h * w for h, w in shapes]
    starts = [sum(areas[:i]) for i in range(len(areas))]
    s = sum(areas)
    num_levels = len(shapes)
    refs = []
    for h, w in shapes:
        ys, xs = torch.meshgrid(
            (torch.arange(h, dtype=torch.float64) + 0.5) / h, (torch.arange(w, dtype=torch.float64) + 0.5) / w,
            indexing="ij",
        )
        refs.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
    ref = torch.cat(refs)  # [S, 2] (x, y)
    norm = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64)  # [L, 2]
    offsets = torch.randn(n, s, NUM_HEADS, num_levels, NUM_POINTS, 2, generator=g, dtype=torch.float64) * 2.0
    loc = ref[None, :, None, None, None, :] + offsets / norm[None, None, None, :, None, :]
    logits = torch.randn(n, s, NUM_HEADS, num_levels * NUM_POINTS, generator=g, dtype=torch.float64)
    attn = logits.softmax(-1).view(n, s, NUM_HEADS, num_levels, NUM_POINTS)
    value = torch.randn(n, s, NUM_HEADS, HEAD_DIM, generator=g, dtype=torch.float64)
    ss = torch.tensor(shapes, dtype=torch.int32)
    lsi = torch.tensor(starts, dtype=torch.int32)
    return {
        "value": value.to(device),
        "spatial_shapes": ss.to(device),
        "level_start_index": lsi.to(device),
        "loc": loc.to(device),
        "attn": attn.to(device),
        "shapes": shapes,
        "starts": starts,
    }


def cast(inp, dtype):
    return [inp["value"].to(dtype), inp["spatial_shapes"], inp["level_start_index"], inp["loc"].to(dtype),
            inp["attn"].to(dtype)]


def ulp16(x: torch.Tensor) -> torch.Tensor:
    _, exp = torch.frexp(x.abs().double())
    return torch.ldexp(torch.ones_like(x, dtype=torch.float64), torch.clamp(exp - 11, min=-24))


def poisoned_out(args):
    v, loc = args[0], args[3]
    return torch.full((v.shape[0], loc.shape[1], v.shape[2] * v.shape[3]), float("nan"), dtype=v.dtype,
                      device=v.device)


def misaligned_copy(t: torch.Tensor) -> torch.Tensor:
    """Same values in storage offset by one element: breaks the 8/16-byte alignment the vector paths need."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = buf[1:].view(t.shape)
    view.copy_(t)
    return view


# ---- accuracy ---------------------------------------------------------------------------------------------------------
def check_accuracy(ext, inp, cpu_ext=None) -> dict:
    res: dict = {"N": inp["value"].shape[0], "Lq": inp["loc"].shape[1]}
    shapes, starts = inp["shapes"], inp["starts"]

    # fp32
    a32 = cast(inp, torch.float32)
    out32 = poisoned_out(a32)
    ext.forward_out(*a32, out32)
    ref64 = reference(a32[0].double(), shapes, starts, a32[3].double(), a32[4].double())
    err = (out32.double() - ref64).abs()
    res["fp32"] = {
        "nan_left": bool(torch.isnan(out32).any()),
        "vector_width": ext.cuda_vector_width(a32[0], out32) if out32.is_cuda else ext.host_vector_width(HEAD_DIM),
        "max_abs_err": err.max().item(),
        "max_abs_ref": ref64.abs().max().item(),
        "rel_err_max": err.max().item() / ref64.abs().max().item(),
        "rel_err_l2": (torch.linalg.vector_norm(out32.double() - ref64) / torch.linalg.vector_norm(ref64)).item(),
    }
    res["fp32"]["pass"] = (not res["fp32"]["nan_left"]) and res["fp32"]["rel_err_max"] < FP32_REL_TARGET

    # fp16 I/O: the fp64 reference is computed from the same fp16 inputs
    a16 = cast(inp, torch.float16)
    out16 = poisoned_out(a16)
    ext.forward_out(*a16, out16)
    ref16_64 = reference(a16[0].double(), shapes, starts, a16[3].double(), a16[4].double())
    rounded = ref16_64.half()
    e64 = (out16.double() - ref16_64).abs()
    eround = (out16.double() - rounded.double()).abs()
    ulps = eround / ulp16(rounded.double())
    bound_ok = bool((e64 <= 0.5 * ulp16(ref16_64.abs() + 1e-5) + 1e-5).all())
    res["fp16"] = {
        "nan_left": bool(torch.isnan(out16).any()),
        "vector_width": ext.cuda_vector_width(a16[0], out16) if out16.is_cuda else ext.host_vector_width(HEAD_DIM),
        "max_abs_err_vs_fp64": e64.max().item(),
        "max_abs_err_vs_fp16_rounded_fp64": eround.max().item(),
        "elements_differing_from_rounded": int((out16 != rounded).sum().item()),
        "elements": out16.numel(),
        "max_ulp_vs_rounded": ulps.max().item(),
        "within_half_ulp_plus_1e-5": bound_ok,
    }
    res["fp16"]["pass"] = (not res["fp16"]["nan_left"]) and bound_ok
    if cpu_ext is not None:
        emu = cpu_ext.forward(*[t.cpu() for t in a16], 0)
        gpu = out16.cpu()
        diff = (gpu.double() - emu.double()).abs() / ulp16(emu.double())
        res["fp16"]["gpu_vs_cpu_emulation_mismatches"] = int((gpu != emu).sum().item())
        res["fp16"]["gpu_vs_cpu_emulation_max_ulp"] = diff.max().item()
        emu32 = cpu_ext.forward(*[t.cpu() for t in a32], 0)
        res["fp32"]["gpu_vs_cpu_kernel_max_abs"] = (out32.cpu().double() - emu32.double()).abs().max().item()
    return res


# ---- timing -----------------------------------------------------------------------------------------------------------
def time_fn(fn, iters: int, warmup: int, cuda: bool) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    if cuda:
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in events]
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return {"median_ms": statistics.median(times), "p10_ms": q(0.1), "p90_ms": q(0.9), "runs": len(times)}


def benchmark(ext, inp, iters: int, warmup: int) -> list[dict]:
    rows = []
    cuda = inp["value"].is_cuda
    shapes, starts = inp["shapes"], inp["starts"]
    for dtype in (torch.float32, torch.float16):
        args = cast(inp, dtype)
        out = poisoned_out(args)
        vec = ext.cuda_vector_width(args[0], out) if cuda else ext.host_vector_width(HEAD_DIM)
        entries = [(f"kernel (vec {vec})", lambda: ext.forward_out(*args, out))]
        if cuda:
            mis = [misaligned_copy(args[0]), args[1], args[2], args[3], args[4]]
            out_mis = misaligned_copy(out)
            vec_mis = ext.cuda_vector_width(mis[0], out_mis)
            entries.append((f"kernel scalar fallback (vec {vec_mis})", lambda: ext.forward_out(*mis, out_mis)))
        entries.append(("grid_sample formulation", lambda: reference(args[0], shapes, starts, args[3], args[4])))
        group = []
        for label, fn in entries:
            try:
                t = time_fn(fn, iters, warmup, cuda)
            except RuntimeError as exc:  # e.g. grid_sample in fp16 on a CPU
                t = {"median_ms": float("nan"), "p10_ms": float("nan"), "p90_ms": float("nan"), "runs": 0,
                     "error": str(exc).splitlines()[0]}
            group.append({"N": args[0].shape[0], "dtype": str(dtype).replace("torch.", ""), "impl": label, **t})
        base = group[-1]["median_ms"]
        for r in group:
            r["speedup_vs_grid_sample"] = base / r["median_ms"] if r["runs"] else float("nan")
        rows += group
    return rows


# ---- main -------------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="plugins_trt/msdeformattn directory")
    ap.add_argument("--json", type=Path, default=Path("gpu_check.json"), help="where to write the results")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run the whole script on the CPU with the host kernel (checks the script, not the GPU)")
    ap.add_argument("--all", action="store_true",
                    help="first build the TensorRT plugin + smoke test for this GPU and run it (needs nvcc, cmake and "
                         "TensorRT headers: --tensorrt-root, $TENSORRT_ROOT, build/gpu_check/tensorrt/v10.3.0 from "
                         "--stage-headers, or ../shared/tensorrt/v10.3.0)")
    ap.add_argument("--tensorrt-root", type=Path, help="TensorRT root (include/NvInfer.h below it) for --all")
    ap.add_argument("--stage-headers", action="store_true",
                    help="copy ../shared/tensorrt into build/gpu_check/tensorrt (to carry to a GPU machine) and stop")
    args = ap.parse_args(argv)
    if args.stage_headers:
        return stage_headers()

    smoke = None
    if args.all:
        root = find_tensorrt_root(args.tensorrt_root)
        if root is None and args.tensorrt_root is not None:
            print(f"error: --tensorrt-root {args.tensorrt_root} has no include/NvInfer.h. Fix: pass a TensorRT install "
                  "or NVIDIA's OSS tree (the folder above include/).")
            return 2
        if root is None:
            print("error: --all needs TensorRT headers and found none (--tensorrt-root, $TENSORRT_ROOT, "
                  f"{STAGED_HEADERS / HEADER_SET}, {SHARED_HEADERS / HEADER_SET}). Fix: run "
                  "`python benchmarks/gpu_check.py --stage-headers` where ../shared exists and carry build/gpu_check.")
            return 2
        on_gpu = not args.cpu_smoke and torch.cuda.is_available()
        arch = "".join(map(str, torch.cuda.get_device_capability())) if on_gpu else "87"
        build_dir = REPO / "build" / "gpu_check" / "plugins"
        shutil.rmtree(build_dir, ignore_errors=True)  # a CMake cache from another checkout path would be refused
        smoke = plugin_smoke_test(root, arch, build_dir)
    if args.cpu_smoke:
        device = torch.device("cpu")
        ext = build_extension(args.src, with_cuda=False)
        cpu_ext = None
        iters, warmup = min(args.iters, 3), min(args.warmup, 1)
    else:
        if not torch.cuda.is_available():
            print("torch.cuda.is_available() is False: run on a GPU machine (or --cpu-smoke to test the script)")
            return 2
        device = torch.device("cuda")
        ext = build_extension(args.src, with_cuda=True)
        cpu_ext = ext  # the same extension also holds the host kernel
        iters, warmup = args.iters, args.warmup

    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "capability": list(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "levels": SMOKE_LEVELS if args.cpu_smoke else PADING_LEVELS,
        "M": NUM_HEADS,
        "D": HEAD_DIM,
        "P": NUM_POINTS,
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
    }
    print(f"device: {info['device']}  capability: {info['capability']}  torch {info['torch']}  CUDA {info['cuda']}")
    accuracy, timing = [], []
    for i, n in enumerate(args.batches):
        inp = make_inputs(n, device, args.seed + i, SMOKE_LEVELS if args.cpu_smoke else PADING_LEVELS)
        acc = check_accuracy(ext, inp, cpu_ext)
        accuracy.append(acc)
        f32, f16 = acc["fp32"], acc["fp16"]
        print(f"\nN={n} Lq=S={acc['Lq']}")
        print(f"  fp32: vec {f32['vector_width']}  rel err (max|err|/max|ref|) {f32['rel_err_max']:.3e}  "
              f"max abs {f32['max_abs_err']:.3e}  rel L2 {f32['rel_err_l2']:.3e}  NaN left {f32['nan_left']}  "
              f"{'PASS' if f32['pass'] else 'FAIL'} (target < {FP32_REL_TARGET:g})")
        print(f"  fp16: vec {f16['vector_width']}  max abs vs fp64 {f16['max_abs_err_vs_fp64']:.3e}  "
              f"vs fp16(fp64) {f16['max_abs_err_vs_fp16_rounded_fp64']:.3e}  "
              f"({f16['elements_differing_from_rounded']}/{f16['elements']} elements differ, "
              f"max {f16['max_ulp_vs_rounded']:.0f} ulp)  NaN left {f16['nan_left']}  "
              f"{'PASS' if f16['pass'] else 'FAIL'} (|err| <= ulp/2 + 1e-5)")
        if "gpu_vs_cpu_emulation_mismatches" in f16:
            print(f"  GPU vs CPU build of the same core: fp32 max abs {f32['gpu_vs_cpu_kernel_max_abs']:.3e}; fp16 "
                  f"{f16['gpu_vs_cpu_emulation_mismatches']} elements differ (max "
                  f"{f16['gpu_vs_cpu_emulation_max_ulp']:.0f} ulp)")
        timing += benchmark(ext, inp, iters, warmup)
        del inp
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"\n{'N':>2} {'dtype':>8}  {'implementation':<34} {'median ms':>10} {'p10':>8} {'p90':>8} {'speedup':>8}")
    for r in timing:
        print(f"{r['N']:>2} {r['dtype']:>8}  {r['impl']:<34} {r['median_ms']:>10.4f} {r['p10_ms']:>8.4f} "
              f"{r['p90_ms']:>8.4f} {r['speedup_vs_grid_sample']:>7.2f}x")
    if smoke is not None:
        print(f"\nplugin smoke test: TensorRT {smoke['tensorrt_headers']} headers, {smoke['arch']}: "
              + ("skipped" if smoke["skipped"] else f"{smoke['checks']} checks, {smoke['failures']} failures")
              + f"; enqueue on device: {'yes' if smoke['enqueue_on_device'] else 'no'}")
    ok = all(a["fp32"]["pass"] and a["fp16"]["pass"] for a in accuracy) and (smoke is None or smoke["pass"])
    result = {"info": info, "plugin_smoke_test": smoke, "accuracy": accuracy, "timing": timing,
              "timing_runs": iters, "pass": ok}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\n{'PASS' if ok else 'FAIL'}; results written to {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
