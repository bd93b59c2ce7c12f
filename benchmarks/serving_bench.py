"""`zsd-bench serve`: a Triton repository written by export-triton under concurrent clients, next to one in-process
Pipeline on the same images.

    zsd-bench serve --repository triton_repo --clients 4 --requests 20 --output out/serve

Starts the local tritonserver of the nvidia-pytriton wheel on the repository (or uses a running server: --url),
sends CLIENTS x REQUESTS one-image requests from CLIENTS threads (each with its own tritonclient connection),
and times each request end to end (encoded image bytes in, label map + JSON out). Then runs the repository's source
model (zsdeploy.open_pipeline) in this process on the same images, one after another: image file -> decode ->
Pipeline -> the JSON trt-infer writes. Writes report.json and report.md: throughput (requests/s, images/s) and
latency percentiles (p50 / p90 / p99) of both, and whether the served label maps equal the in-process ones.
A benchmark, not a test: numbers depend on the machine and on what else runs on it (the report records the CPU
and the load average).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from zsdeploy.runtime.errors import ZsdError

REPORT_FORMAT = "zsd-bench-serve/1"
PERCENTILES = (50, 90, 99)


def add_parser(sub: Any) -> None:
    """Register `serve` on zsd-bench's subcommands."""
    s = sub.add_parser("serve", help="Triton serving throughput and p50/p90/p99 latency under concurrent clients, "
                                     "vs one in-process Pipeline")
    s.add_argument("--repository", required=True, help="a model repository written by export-triton")
    s.add_argument("--url", help="a running server (HOST:PORT of its HTTP or, with --protocol grpc, gRPC endpoint) "
                                 "serving --repository; default: start the wheel's tritonserver on it")
    s.add_argument("--protocol", choices=["http", "grpc"], default="http")
    s.add_argument("--clients", type=int, default=4, help="concurrent clients (threads; default 4)")
    s.add_argument("--requests", type=int, default=20, help="requests per client (one image each; default 20)")
    s.add_argument("--warmup", type=int, default=2, help="untimed requests before the timed ones (default 2)")
    s.add_argument("--images", help="a directory of images to send (default: 4 synthetic scenes)")
    s.add_argument("--scene-size", default="240x320", help="synthetic scene size HxW (default 240x320)")
    s.add_argument("--classes", help="ZegFormer repositories: the vocabulary sent with every request (CLASSES)")
    s.add_argument("--in-process-requests", type=int,
                   help="images the in-process Pipeline segments, one after another (default: --requests); 0 skips "
                        "it")
    s.add_argument("--threads", type=int, help="CPU threads of the in-process Pipeline (and OMP_NUM_THREADS of a "
                                               "server started here)")
    s.add_argument("--note", default="", help="a line recorded in the report (e.g. what else ran on the machine)")
    s.add_argument("--output", required=True, help="output directory (report.json, report.md, server log)")
    s.set_defaults(func=cmd_serve)


# ------------------------------------------------------------------------------------------------ inputs
def _images(args: argparse.Namespace, out: Path) -> list[Path]:
    from zsdeploy.runtime.imageio import list_images

    if args.images:
        return list_images(args.images)
    from PIL import Image

    try:
        h, w = (int(v) for v in args.scene_size.lower().split("x"))
    except ValueError:
        raise ZsdError(f"--scene-size {args.scene_size!r} is not HxW.", "e.g. --scene-size 240x320.") from None
    d = out / "images"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):  # flat background + rectangles, as the serving tests
        a = np.empty((h, w, 3), np.uint8)
        a[:] = rng.integers(0, 256, 3)
        for _ in range(8):
            y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
            a[y:y + int(rng.integers(4, h // 2)), x:x + int(rng.integers(4, w // 2))] = rng.integers(0, 256, 3)
        paths.append(d / f"scene{i}.png")
        Image.fromarray(a).save(paths[-1])
    return paths


def _marker(repo: Path) -> dict[str, Any]:
    from zsdeploy.runtime.serving.repository import MARKER

    try:
        return json.loads((repo / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        raise ZsdError(f"--repository {repo} is not a model repository written by export-triton (no readable "
                       f"{MARKER}).", "write one with export-triton --model M --output REPO.") from None


def _client_module(protocol: str) -> Any:
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as e:
        from zsdeploy.runtime.serving.local_server import INSTALL_FIX

        raise ZsdError(f"zsd-bench serve needs tritonclient ({e}).", INSTALL_FIX) from None
    return module


# ------------------------------------------------------------------------------------------------ measuring
def latency_summary(latencies_ms: list[float], wall_s: float, images_per_request: int = 1) -> dict[str, Any]:
    """Throughput and latency statistics of `latencies_ms` measured over `wall_s` seconds."""
    a = np.asarray(latencies_ms, dtype=np.float64)
    n = int(a.size)
    rps = n / wall_s if wall_s > 0 else float("nan")
    out: dict[str, Any] = {"requests": n, "wall_s": round(wall_s, 3), "requests_per_s": round(rps, 3),
                           "images_per_s": round(rps * images_per_request, 3)}
    if n:
        out["latency_ms"] = {"mean": round(float(a.mean()), 2), "min": round(float(a.min()), 2),
                             **{f"p{q}": round(float(np.percentile(a, q)), 2) for q in PERCENTILES},
                             "max": round(float(a.max()), 2)}
    return out


class _Requester:
    """One client connection that sends one image per request and returns the label map."""

    def __init__(self, module: Any, url: str, model: str, classes: str | None) -> None:
        self.module, self.model, self.classes = module, model, classes
        self.client = module.InferenceServerClient(url)

    def __call__(self, blob: bytes) -> np.ndarray:
        m = self.module
        inp = m.InferInput("IMAGE", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[blob]], dtype=np.object_))
        inputs = [inp]
        if self.classes is not None:
            c = m.InferInput("CLASSES", [1], "BYTES")
            c.set_data_from_numpy(np.array([self.classes.encode()], dtype=np.object_))
            inputs.append(c)
        r = self.client.infer(self.model, inputs)
        json.loads(r.as_numpy("segments").reshape(-1)[0])  # the whole response arrived and parses
        return r.as_numpy("id_map")[0]

    def close(self) -> None:
        self.client.close()


def _check_server(module: Any, url: str, model: str, protocol: str) -> None:
    """A --url that does not answer, or a server without the repository's model, is the user's setting: say so
    before any scene is written (was: exit 70 from the client's connection error, with scene files left behind)."""
    fix = (f"start the server on the repository first (tritonserver --model-repository REPO), check --url "
           f"({protocol} endpoint: HOST:PORT) and --protocol, or drop --url to let zsd-bench start one.")
    try:
        client = module.InferenceServerClient(url)
    except Exception as e:  # noqa: BLE001 (tritonclient raises its own exception types)
        raise ZsdError(f"--url {url} is not a usable {protocol} address ({' '.join(str(e).split())[:160]}).",
                       fix) from None
    try:
        try:
            live = client.is_server_live()
        except Exception as e:  # noqa: BLE001
            raise ZsdError(f"no Triton server answers at --url {url} ({protocol}: "
                           f"{' '.join(str(e).split())[:160] or type(e).__name__}).", fix) from None
        if not live:
            raise ZsdError(f"the Triton server at --url {url} says it is not live.", fix)
        if not client.is_model_ready(model):
            raise ZsdError(f"the Triton server at --url {url} does not serve {model!r} (ready), the model of this "
                           "repository.", "serve this repository there, or pass the repository that server serves.")
    finally:
        client.close()


def run_clients(module: Any, url: str, model: str, blobs: list[bytes], clients: int, requests: int,
                classes: str | None) -> tuple[dict[str, Any], dict[int, np.ndarray], list[str]]:
    """CLIENTS threads x REQUESTS requests; (summary, one served label map per image index, error messages)."""
    latencies: list[float] = []
    errors: list[str] = []
    maps: dict[int, np.ndarray] = {}
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client_run(k: int) -> None:
        req = _Requester(module, url, model, classes)
        try:
            start.wait()  # all connections open before the clock starts
            for j in range(requests):
                i = (k + j) % len(blobs)
                t0 = time.perf_counter()
                try:
                    id_map = req(blobs[i])
                except Exception as e:  # noqa: BLE001 - a failed request is counted, the run goes on
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    continue
                dt = (time.perf_counter() - t0) * 1e3
                with lock:
                    latencies.append(dt)
                    maps.setdefault(i, id_map)
        finally:
            req.close()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client_run, range(clients)))
    wall = time.perf_counter() - t0
    summary = latency_summary(latencies, wall)
    summary["errors"] = len(errors)
    return summary, maps, errors


def run_in_process(source: str, marker: dict[str, Any], paths: list[Path], n: int, classes: str | None,
                   threads: int | None) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """The repository's source model in this process, one image after another, as trt-infer runs it."""
    from zsdeploy.families import OpenOptions, family_for
    from zsdeploy.runtime.imageio import load_image
    from zsdeploy.runtime.results_io import describe

    family, _ = family_for(source)
    # a vocabulary per request: the in-process twin takes the same classes, embedded afresh as the server does
    vocabulary = {"classes": classes, "use_cache": False} if family.open_vocabulary else {}
    pipeline = family.open_pipeline(Path(source), OpenOptions(task=marker.get("task"), threads=threads, **vocabulary))
    pipeline([load_image(paths[0]).rgb])  # warm-up, untimed
    latencies: list[float] = []
    maps: dict[int, np.ndarray] = {}
    t_all = time.perf_counter()
    for j in range(n):
        i = j % len(paths)
        t0 = time.perf_counter()
        seg = pipeline([load_image(paths[i]).rgb])[0]
        label_map, doc = describe(seg, pipeline.info)
        json.dumps(doc, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
        latencies.append((time.perf_counter() - t0) * 1e3)
        maps.setdefault(i, label_map)
    summary = latency_summary(latencies, time.perf_counter() - t_all)
    summary["backend"] = pipeline.backend.name
    return summary, maps


def _machine(note: str) -> dict[str, Any]:
    from zsdeploy.benchmarks.latency import cpu_report

    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = []
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu": cpu_report()["model"],
            "python": platform.python_version(), "load_average_1_5_15": load, "note": note}


# ------------------------------------------------------------------------------------------------ report
def report_markdown(report: dict[str, Any]) -> str:
    m, cfg = report["machine"], report["config"]
    lines = [f"# zsd-bench serve: {cfg['model']} ({cfg['kind']})", "",
             f"- machine: {m['cpu']}, {m['cpus']} CPUs, load average {m['load_average_1_5_15']} at the end"
             + (f"; {m['note']}" if m["note"] else ""),
             f"- served: {cfg['server']}, {cfg['protocol']}, {cfg['clients']} clients x {cfg['requests']} requests "
             f"(one image each), {cfg['warmup']} warm-up request(s); images: {cfg['images']}",
             "", "| run | requests | errors | req/s | images/s | p50 ms | p90 ms | p99 ms | mean ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, label in (("served", f"Triton, {cfg['clients']} concurrent clients"),
                       ("in_process", "one in-process Pipeline, sequential")):
        r = report.get(key)
        if not r:
            continue
        lat = r.get("latency_ms", {})
        lines.append(f"| {label} | {r['requests']} | {r.get('errors', 0)} | {r['requests_per_s']:.2f} | "
                     f"{r['images_per_s']:.2f} | " + " | ".join(f"{lat.get(k, float('nan')):.1f}"
                                                                for k in ("p50", "p90", "p99", "mean")) + " |")
    if report.get("results_equal") is not None:
        lines += ["", f"- served label maps equal the in-process ones: {report['results_equal']}"]
    if report.get("error_examples"):
        lines += ["", "Errors (first few):", *[f"- {e}" for e in report["error_examples"]]]
    return "\n".join(lines) + "\n"


def cmd_serve(args: argparse.Namespace) -> int:
    from zsdeploy.runtime.files import write_json_atomic

    for flag, v, low in (("--clients", args.clients, 1), ("--requests", args.requests, 1),
                         ("--warmup", args.warmup, 0), ("--in-process-requests", args.in_process_requests, 0),
                         ("--threads", args.threads, 1)):
        if v is not None and v < low:
            raise ZsdError(f"{flag} {v} must be >= {low}.", f"pass {flag} {low} or more.")
    repo, out = Path(args.repository), Path(args.output)
    marker = _marker(repo)
    model = marker["models"].get("ensemble") or marker["models"]["model"]
    if args.classes is not None and marker.get("kind") != "bundle":
        raise ZsdError("--classes applies to ZegFormer repositories; this one serves a fixed class list.",
                       "drop --classes.")
    module = _client_module(args.protocol)
    if args.url:
        _check_server(module, args.url, model, args.protocol)  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    paths = _images(args, out)
    blobs = [p.read_bytes() for p in paths]

    server = None
    if args.url:
        url, where = args.url, f"running server at {args.url}"
    else:
        from zsdeploy.runtime.serving.local_server import LocalTritonServer

        server = LocalTritonServer(repo.resolve(), out / "server")
        if args.threads:
            os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the server's Python backend stubs
        print(f"zsd-bench serve: starting tritonserver on {repo} ...", flush=True)
        server.start(timeout_s=300)
        url = server.grpc_url if args.protocol == "grpc" else server.http_url
        where = f"tritonserver of the nvidia-pytriton wheel started here (log: {server.log_path})"
    try:
        warm = _Requester(module, url, model, args.classes)
        try:
            for j in range(args.warmup):
                warm(blobs[j % len(blobs)])
        finally:
            warm.close()
        print(f"zsd-bench serve: {args.clients} clients x {args.requests} requests to {model!r} ...", flush=True)
        served, served_maps, errors = run_clients(module, url, model, blobs, args.clients, args.requests,
                                                  args.classes)
    finally:
        if server is not None:
            server.stop()

    n_local = args.requests if args.in_process_requests is None else args.in_process_requests
    in_process, equal = None, None
    if n_local:
        print(f"zsd-bench serve: in-process Pipeline on {marker['source']}, {n_local} images ...", flush=True)
        in_process, local_maps = run_in_process(marker["source"], marker, paths, n_local, args.classes,
                                                args.threads)
        common = sorted(set(served_maps) & set(local_maps))
        equal = bool(common) and all(np.array_equal(served_maps[i], local_maps[i]) for i in common)
    report = {
        "format": REPORT_FORMAT, "machine": _machine(args.note),
        "config": {"repository": str(repo), "model": model, "kind": marker.get("kind"), "source": marker["source"],
                   "server": where, "protocol": args.protocol, "clients": args.clients, "requests": args.requests,
                   "warmup": args.warmup, "images": [p.name for p in paths], "classes": args.classes,
                   "threads": args.threads},
        "served": served, "in_process": in_process, "results_equal": equal, "error_examples": errors[:5],
    }
    write_json_atomic(out / "report.json", report)
    md = report_markdown(report)
    (out / "report.md").write_text(md, encoding="utf-8")
    print(md, end="", flush=True)
    if errors:
        raise ZsdError(f"{len(errors)} of {args.clients * args.requests} served requests failed (first: "
                       f"{errors[0]}); the report is in {out}.", "see the server log and the report.")
    return 0
