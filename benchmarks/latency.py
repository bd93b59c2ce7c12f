"""Latency / throughput of the PyTorch baseline and the exported backends, measured side by side in one run.

For each (size, batch): warm-up, then `repeat` timed iterations; in every iteration each backend runs once, in a
rotating order (interleaved, so machine noise hits all backends alike); inputs rotate over distinct generated scenes.
Each iteration records end-to-end time (pre-processing + inference + post-processing of the task) and, inside it,
inference-only time (the backend call). A size is the network input size HxW: images are generated at that size
and the resize step keeps them (short edge = min(H, W), max = max(H, W)); the model's own policy would resize to
its min_size_test first. A static ONNX model only runs at its own size and batch; a dynamic one at all.

Host memory: peak resident set size (VmHWM from /proc/self/status, reset per measurement by writing 5 to
/proc/self/clear_refs — Linux >= 4.0), measured for each backend in one extra untimed iteration after the timed ones
(the process baseline — Python, torch, loaded models — is included). Allocators keep their pools between calls
(ONNX Runtime's arena, OpenVINO's memory manager), so a per-backend figure free of the others needs one process per
backend: run `zsd-bench latency --backends X` once per X. Where /proc is unavailable: getrusage
ru_maxrss (process-lifetime peak, not resettable).

Device memory (TensorRT on a GPU): memory in use on the GPU (cudaMemGetInfo: total - free) after the backend's
memory iteration, minus the same reading taken just before its engine was loaded. TensorRT allocates the execution
context's activation memory when the engine is loaded and our I/O buffers only grow, so this is the backend's peak.
It counts everything allocated on that GPU meanwhile (other processes included). CPU backends: N/A, with the reason.
"""
from __future__ import annotations

import os
import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from zsdeploy.runtime.backends.base import Backend
from zsdeploy.runtime.backends.registry import backend_spec, backend_specs
from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.pipeline import Pipeline

from .accuracy import BenchSegmenter, ResizePolicy
from .pairing import peer_name


# ------------------------------------------------------------------------------------------------ memory
def _proc_status(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> tuple[int, str]:
    v = _proc_status("VmHWM")
    if v is not None:
        return v, "VmHWM (/proc/self/status, reset via clear_refs)"
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(ru) * (1 if platform.system() == "Darwin" else 1024), "getrusage ru_maxrss (process-lifetime peak)"


def device_memory_in_use() -> tuple[int | None, str]:
    """Bytes in use on the current CUDA device (cudaMemGetInfo: total - free), or (None, why it cannot be read)."""
    from zsdeploy.runtime import cuda_utils

    try:
        free, total = cuda_utils.check(cuda_utils.cudart().cudaMemGetInfo(), "cudaMemGetInfo")
    except ZsdError as e:  # no cuda-python, no driver, no GPU: CudaError is a ZsdError
        return None, e.problem
    return int(total) - int(free), "cudaMemGetInfo (total - free)"


# ------------------------------------------------------------------------------------------------ config
def parse_sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        try:
            h, w = (int(v) for v in part.strip().lower().split("x"))
        except ValueError:
            raise ZsdError(f"--sizes entry {part!r} is not HxW.", "write e.g. --sizes 512x512,800x1216.") from None
        if h < 32 or w < 32:
            raise ZsdError(f"size {h}x{w} is too small.", "use sizes of at least 32x32 (multiples of 32).")
        out.append((h, w))
    return out


def parse_ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        raise ZsdError(f"{what} {text!r} is not a list of integers.", f"write e.g. {what} 1,2.") from None
    if any(v < 1 for v in vals):
        raise ZsdError(f"{what} values must be >= 1, got {text}.", f"write e.g. {what} 1,2.")
    return vals


CPU_DEVICE_NOTE = "runs on the CPU (no device memory)"

# The peers that are not a registered runtime backend: torch eager (the baseline), upstream (torch + upstream's
# post-processing), torch.compile.
TORCH_PEERS = ("torch", "upstream", "torch-compile")
# OpenVINO peers: (name, inference precision, which graph: see GRAPHS): each graph at each precision the registered
# openvino backend computes in (openvino, openvino-bf16, openvino-int8, openvino-int8-bf16, openvino-msda, ...)
OPENVINO = "openvino"
GRAPH_SUFFIXES = {"model": "", "int8": "-int8", "msda": "-msda", "msda-int8": "-msda-int8"}
OPENVINO_PEERS = tuple((peer_name(OPENVINO, p, suffix), p, kind) for kind, suffix in GRAPH_SUFFIXES.items()
                       for p in backend_spec(OPENVINO).precisions)
# OpenVINO bf16 used by hand, with upstream's post-processing
UPSTREAM_POST_PEER = peer_name(OPENVINO, "bf16") + "-upstream-post"
# Every runner `zsd-bench latency --backends` knows, in report order (torch eager is the baseline): the torch peers,
# then each registered runtime backend in registration order, OpenVINO with its graph / precision variants.
PEERS = TORCH_PEERS + tuple(name for spec in backend_specs() for name in (
    (*(n for n, _, _ in OPENVINO_PEERS), UPSTREAM_POST_PEER) if spec.name == OPENVINO else (spec.name,)))


@dataclass(frozen=True)
class PeerGraph:
    """One graph of the same model the OpenVINO peers run: the option that names it, and what its metadata must say."""

    option: str
    precision: str  # the graph's precision (metadata `precision`)
    plugin: bool  # MSDeformAttn as plugin nodes (--msda plugin/nvidia: run with zsdeploy's OpenVINO extension)
    make: str  # how to make it


GRAPHS = {
    "model": PeerGraph("--model", "fp32", False, "export-model ... --output M.onnx"),
    "int8": PeerGraph("--int8-model", "int8", False,
                      "export-model --from-onnx M.onnx --precision int8 --output M_int8.onnx"),
    "msda": PeerGraph("--msda-model", "fp32", True, "export-model ... --msda plugin --output M_msda.onnx (the same "
                      "model, size and --dynamic as --model)"),
    "msda-int8": PeerGraph("--msda-int8-model", "int8", True,
                           "export-model --from-onnx M_msda.onnx --precision int8 --output M_msda_int8.onnx"),
}
COMPILE_TIMEOUT_S = 180  # torch.compile slower than this (all sizes/batches together) is reported N/A
CPU_FEATURES = ("avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni")


def cpu_report() -> dict[str, Any]:
    """The CPU's model name and the instruction-set features that decide the precision paths (from /proc/cpuinfo;
    'unknown' where it cannot be read)."""
    from zsdeploy.runtime.backends.openvino_backend import cpu_flags, cpu_model

    flags = cpu_flags()
    return {"model": cpu_model(), "features": {f: (f in flags) if flags else "unknown" for f in CPU_FEATURES}}


def _torch_compile(reference: Backend, sizes: list[tuple[int, int]], batches: list[int]) -> Backend:
    """torch.compile of the reference's own module, compiled for every (size, batch) now, under a time limit
    (SIGALRM: torch.compile's work runs in this thread), so the timed runs measure the compiled code only."""
    import copy
    import signal

    import torch

    compiled = copy.copy(reference)
    compiled.name = "torch-compile"
    compiled.model = torch.compile(reference.model)

    def expired(*_):
        raise TimeoutError(f"compiling took more than {COMPILE_TIMEOUT_S} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(COMPILE_TIMEOUT_S)
    try:
        for h, w in sizes:
            for b in batches:
                compiled.infer({"images": np.full((b, 3, h, w), 114.0, np.float32)})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return compiled


def _check_pair(path: str, graph: PeerGraph, info: Any) -> None:
    """A peer graph must be a graph of the same model as the other peers (same classes, task), of the precision and
    MSDeformAttn lowering its option promises; checked from its metadata before OpenVINO compiles anything."""
    from zsdeploy.runtime.artifacts.onnx_metadata import ModelInfo, has_msda_plugin, read_onnx_metadata

    meta = read_onnx_metadata(Path(path))
    precision = meta.get("precision", "fp32")
    plugin = has_msda_plugin(meta)
    if precision != graph.precision or plugin != graph.plugin:
        got = f"a graph of precision {precision} with MSDeformAttn {'plugin nodes' if plugin else 'as GridSample'}"
        want = f"one of precision {graph.precision} with MSDeformAttn {'plugin nodes' if graph.plugin else 'as GridSample'}"
        raise ZsdError(f"{graph.option} {path} is {got}, not {want}.", f"make it with: {graph.make}.")
    peer_info = ModelInfo.from_metadata(meta, path)
    if info is not None and (peer_info.model, peer_info.task, peer_info.num_classes) != \
            (info.model, info.task, info.num_classes):
        raise ZsdError(f"{graph.option} {path} ({peer_info.model} {peer_info.task}, {peer_info.num_classes} classes) "
                       f"is not a graph of --model ({info.model} {info.task}, {info.num_classes} classes).",
                       f"pass a graph of the same model: {graph.make}.")


def openvino_unavailable(precision: str) -> str | None:
    """Why the openvino peer of `precision` cannot be measured here (None: it can). bf16 on a CPU without it is
    reported unavailable: the backend would run fp32 (with a note) and the row would be mislabelled."""
    try:
        from zsdeploy.runtime.backends.openvino_backend import bf16_support, import_openvino

        import_openvino()
    except ZsdError as e:
        return e.problem
    if precision == "bf16":
        ok, why = bf16_support()
        return None if ok else why
    return None


def peer_backends(names: list[str], model: str | None, *, threads: int | None, sizes: list[tuple[int, int]],
                  batches: list[int], info: Any = None, reference: Callable[[Any], Backend] | None = None,
                  int8_model: str | None = None, msda_model: str | None = None,
                  msda_int8_model: str | None = None) -> tuple[list[NamedBackend], list[dict[str, str]]]:
    """The CPU peers of a PADing .onnx beyond torch / onnxruntime / tensorrt: `openvino` (fp32), `openvino-bf16`
    (only on CPUs with AMX / AVX512-BF16: elsewhere it is reported unavailable, never silently run in fp32),
    `openvino-int8` / `openvino-int8-bf16` (the Q/DQ graph `int8_model` of the same export, its other ops in fp32 /
    bf16), `openvino-msda*` (the `--msda plugin` export `msda_model` and its Q/DQ graph `msda_int8_model`: their
    MSDeformAttn nodes run with zsdeploy's OpenVINO extension) and `torch-compile` (of `reference(info)`, the eager
    baseline's model). Returns (runners, unavailable)."""
    graphs = {"model": model, "int8": int8_model, "msda": msda_model, "msda-int8": msda_int8_model}
    out: list[NamedBackend] = []
    unavailable: list[dict[str, str]] = []
    for name, precision, kind in OPENVINO_PEERS:
        if name not in names:
            continue
        graph = GRAPHS[kind]
        path = graphs.get(kind)
        if not path or not path.endswith(".onnx"):
            raise ZsdError(f"--backends {name} needs {graph.option} (an .onnx).", f"make it with: {graph.make}.")
        why = openvino_unavailable(precision)
        if why:
            unavailable.append({"backend": name, "reason": why})
            continue
        if kind != "model":
            _check_pair(path, graph, info)
        try:
            from zsdeploy.runtime.backends import load_backend

            b = load_backend(path, backend="openvino", precision=precision, threads=threads)
        except ZsdError as e:
            unavailable.append({"backend": name, "reason": e.problem})
            continue
        info = info or b.info
        out.append(NamedBackend(name, b))
    if "torch-compile" in names:
        if reference is None:
            unavailable.append({"backend": "torch-compile", "reason": "no PyTorch model for this input"})
        else:
            ref = reference(info)
            t0 = time.perf_counter()
            try:
                out.insert(0, NamedBackend("torch-compile", _torch_compile(ref, sizes, batches)))
            except ZsdError:
                raise
            except Exception as e:  # noqa: BLE001 (inductor/dynamo raise many types; the reason is reported)
                text = " ".join(str(e).split())
                # inductor may re-wrap our alarm's TimeoutError (e.g. as a compile-worker wait failure)
                timed_out = "TimeoutError" in text or time.perf_counter() - t0 >= COMPILE_TIMEOUT_S - 1
                why = (f"compiling took more than {COMPILE_TIMEOUT_S} s" if timed_out else
                       f"{type(e).__name__}: {text[:300]}")
                unavailable.append({"backend": "torch-compile", "reason": f"N/A: {why}"})
    return out, unavailable


@dataclass
class NamedBackend:
    name: str
    backend: Backend
    # Device memory in use just before this backend was loaded (None: not on a GPU or not readable, see
    # device_note), so its own device memory is the difference after it ran.
    device_baseline: int | None = None
    device_note: str = CPU_DEVICE_NOTE
    # Builds this backend's Pipeline for a resize policy and task (ZegFormer bundles: the segmenter with its
    # vocabulary and CLIP crop classifier); None = a plain BenchSegmenter around `backend`.
    make_segmenter: Callable[[ResizePolicy, str | None], Pipeline] | None = None

    def segmenter(self, policy: ResizePolicy, task: str | None) -> Pipeline:
        if self.make_segmenter is not None:
            return self.make_segmenter(policy, task)
        return BenchSegmenter(self.backend, task, policy)


def supports(b: Backend, hw: tuple[int, int], batch: int) -> str | None:
    """None when `b` can run (hw, batch); else the reason it is skipped."""
    info = b.info
    if info.static_hw is not None and tuple(info.static_hw) != tuple(hw):
        return f"static model exported at {info.static_hw[0]}x{info.static_hw[1]}"
    if info.static_batch is not None and info.static_batch != batch:
        return f"static model exported for batch {info.static_batch}"
    return None


def _stats(ms: list[float], batch: int) -> dict[str, float]:
    a = np.asarray(ms, np.float64)
    med = float(np.median(a))
    return {"median_ms": med, "p90_ms": float(np.percentile(a, 90)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "min_ms": float(a.min()), "images_per_s": 1000.0 * batch / med, "n": int(a.size)}


def run_latency(backends: list[NamedBackend], sizes: list[tuple[int, int]], batches: list[int], *, warmup: int,
                repeat: int, task: str | None = None, n_inputs: int = 4, seed: int = 0,
                progress: Callable[..., Any] | None = None) -> dict[str, Any]:
    from zsdeploy.runtime.scenes import generate_scene

    if repeat < 1 or warmup < 0:
        raise ZsdError("--repeat must be >= 1 and --warmup >= 0.", "e.g. --warmup 2 --repeat 10.")
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    mem_method = peak_rss_bytes()[1]
    backends = sorted(backends, key=lambda nb: PEERS.index(nb.name) if nb.name in PEERS else len(PEERS))
    plan = []
    for hw in sizes:
        for batch in batches:
            runnable = []
            for nb in backends:
                why = supports(nb.backend, hw, batch)
                if why:
                    skipped.append({"backend": nb.name, "size": f"{hw[0]}x{hw[1]}", "batch": batch, "reason": why})
                else:
                    runnable.append(nb)
            if runnable:
                plan.append((hw, batch, runnable))
    total = sum((warmup + repeat) * len(r) for _, _, r in plan)
    bar = progress(total=total, desc="latency", unit="run") if progress and total else None
    for hw, batch, runnable in plan:
        h, w = hw
        k = max(n_inputs, 2 * batch)
        images = [generate_scene(seed * 1000 + i, h, w, n_objects=12, size_range=(6, max(7, min(h, w) // 4))).image
                  for i in range(k)]
        policy = ResizePolicy(min(h, w), max(h, w), "sizes are network input sizes (no resize)")
        segs = {nb.name: nb.segmenter(policy, task) for nb in runnable}
        times: dict[str, dict[str, list[float]]] = {nb.name: {"e2e": [], "infer": [], "pre": [], "post": []}
                                                  for nb in runnable}
        padded = None
        for it in range(warmup + repeat):
            imgs = [images[(it * batch + j) % k] for j in range(batch)]
            order = runnable[it % len(runnable):] + runnable[:it % len(runnable)]
            for nb in order:
                run = segs[nb.name].run(imgs)  # the Pipeline times its own steps
                padded = run.batch.padded_hw
                if it >= warmup:
                    tt = times[nb.name]
                    tt["e2e"].append(run.e2e_ms)
                    tt["infer"].append(run.timings_ms["infer"])
                    tt["pre"].append(run.timings_ms["preprocess"])
                    tt["post"].append(run.timings_ms["postprocess"])
                if bar is not None:
                    bar.update(1)
        for nb in runnable:  # memory: one more untimed iteration per backend, peak reset before it
            reset_ok = reset_peak_rss()
            seg = segs[nb.name]
            seg.run(images[:batch])
            peak, _ = peak_rss_bytes()
            device_mib, device_note = None, nb.device_note
            if nb.device_baseline is not None:
                used, why = device_memory_in_use()
                if used is None:
                    device_note = why
                else:
                    device_mib = (used - nb.device_baseline) / 2**20
                    device_note = "cudaMemGetInfo in use after the memory iteration minus before loading"
            tt = times[nb.name]
            results.append({
                "backend": nb.name, "size": f"{h}x{w}", "batch": batch, "padded_hw": list(padded or hw),
                "task": seg.task, "e2e": _stats(tt["e2e"], batch), "infer": _stats(tt["infer"], batch),
                "pre_median_ms": float(np.median(tt["pre"])), "post_median_ms": float(np.median(tt["post"])),
                "peak_rss_mib": peak / 2**20, "peak_rss_per_iteration": reset_ok,
                "peak_device_mib": device_mib, "device_memory": device_note,
            })
    if bar is not None:
        bar.close()
    speedup: dict[str, float] = {}
    base = {(r["size"], r["batch"]): r for r in results if r["backend"] == "torch"}
    for r in results:
        t = base.get((r["size"], r["batch"]))
        if r["backend"] == "torch" or t is None:
            continue
        for mode in ("e2e", "infer"):
            speedup[f"{r['backend']}/{r['size']}/b{r['batch']}/{mode}"] = t[mode]["median_ms"] / r[mode]["median_ms"]
    return {
        "kind": "latency",
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(), "cpu": cpu_report()},
        "settings": {"warmup": warmup, "repeat": repeat, "distinct_inputs": n_inputs, "interleaved": True,
                     "memory": mem_method, "resize": "none: sizes are network input sizes"},
        "results": results,
        "skipped": skipped,
        "gate": {"speedup": speedup},
    }


# ------------------------------------------------------------------------------------------------ output
def markdown_table(report: dict[str, Any]) -> str:
    lines = ["| backend | size | batch | e2e median ms | e2e p90 | e2e p99 | infer median ms | infer p90 | "
             "infer p99 | images/s (e2e) | speed-up vs torch (e2e / infer) | peak RSS MiB | device MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    sp = report["gate"]["speedup"]
    for r in report["results"]:
        key = f"{r['backend']}/{r['size']}/b{r['batch']}"
        s = (f"{sp[key + '/e2e']:.2f}x / {sp[key + '/infer']:.2f}x" if key + "/e2e" in sp else
             ("baseline" if r["backend"] == "torch" else "-"))
        e, i = r["e2e"], r["infer"]
        lines.append(f"| {r['backend']} | {r['size']} | {r['batch']} | {e['median_ms']:.1f} | {e['p90_ms']:.1f} | "
                     f"{e['p99_ms']:.1f} | {i['median_ms']:.1f} | {i['p90_ms']:.1f} | {i['p99_ms']:.1f} | "
                     f"{e['images_per_s']:.2f} | {s} | {r['peak_rss_mib']:.0f} | {_device_cell(r)} |")
    return "\n".join(lines)


def cpu_line(report: dict[str, Any]) -> str:
    cpu = report["machine"].get("cpu")
    if not cpu:
        return "- CPU: not recorded"
    feats = ", ".join(f"{k} {'yes' if v is True else 'no' if v is False else v}" for k, v in cpu["features"].items())
    return f"- CPU: {cpu['model']}; {feats}"


def _device_cell(r: dict[str, Any]) -> str:
    v = r.get("peak_device_mib")
    return "N/A" if v is None else f"{v:.0f}"


def device_notes(report: dict[str, Any]) -> list[str]:
    """One line per backend: how its device memory was measured, or why it is N/A."""
    seen: dict[str, str] = {}
    for r in report["results"]:
        seen.setdefault(r["backend"], r.get("device_memory", CPU_DEVICE_NOTE))
    return [f"{b}: {note}" for b, note in seen.items()]


def markdown(report: dict[str, Any], plot: str | None) -> str:
    st = report["settings"]
    out = ["# zsd-bench latency", "",
           f"- machine: {report['machine']['platform']}, {report['machine']['cpus']} CPUs", cpu_line(report),
           f"- warm-up {st['warmup']}, {st['repeat']} timed iterations, {st['distinct_inputs']} rotating inputs, "
           f"backends interleaved; e2e = pre + infer + post; memory: {st['memory']}",
           "- device memory: " + "; ".join(device_notes(report)), "", markdown_table(report)]
    for u in report.get("unavailable", []):
        out.append(f"- not measured: {u['backend']}: {u['reason']}")
    if report["skipped"]:
        out += ["", "Skipped:", ""] + [f"- {s['backend']} at {s['size']} batch {s['batch']}: {s['reason']}"
                                       for s in report["skipped"]]
    if plot:
        out += ["", f"![latency]({plot})"]
    return "\n".join(out) + "\n"


def plot(report: dict[str, Any], path: Path) -> Path | None:
    if not report["results"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(f"{r['size']} b{r['batch']}" for r in report["results"]))
    names = list(dict.fromkeys(r["backend"] for r in report["results"]))
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 2.2 * len(configs) + 3), 4), squeeze=False)
    width = 0.8 / len(names)
    for ax, mode in zip(axes[0], ("e2e", "infer")):
        for j, n in enumerate(names):
            xs, ys, err = [], [], []
            for ci, c in enumerate(configs):
                r = next((r for r in report["results"] if r["backend"] == n and f"{r['size']} b{r['batch']}" == c), None)
                if r:
                    xs.append(ci + (j - (len(names) - 1) / 2) * width)
                    ys.append(r[mode]["median_ms"])
                    err.append(r[mode]["p90_ms"] - r[mode]["median_ms"])
            ax.bar(xs, ys, width, yerr=[[0] * len(err), err], label=n, capsize=3)
        ax.set_xticks(range(len(configs)), configs)
        ax.set_ylabel("ms per batch (median, bar to p90)")
        ax.set_title("end-to-end" if mode == "e2e" else "inference only")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
