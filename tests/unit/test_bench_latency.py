"""zsd-bench latency: device (GPU) memory of the TensorRT backend; N/A with the reason for CPU backends."""
from __future__ import annotations

import json

import numpy as np
import pytest

from zsdeploy.benchmarks import latency
from zsdeploy.benchmarks.latency import CPU_DEVICE_NOTE, NamedBackend, device_memory_in_use, markdown, run_latency
from zsdeploy.runtime.backends.base import Backend
from zsdeploy.runtime.artifacts.onnx_metadata import ModelInfo

MIB = 2**20


def _gpu_present() -> bool:
    from zsdeploy.runtime import cuda_utils
    from zsdeploy.runtime.errors import ZsdError

    try:
        return cuda_utils.device_count() > 0
    except ZsdError:
        return False


class Zeros(Backend):
    """A CPU stand-in with the PADing output shapes (all-zero logits: post-processing has nothing to keep)."""

    def __init__(self, name: str) -> None:
        meta = {"model": "pading", "task": "panoptic", "num_classes": "3", "class_names": '["a", "b", "c"]',
                "thing_ids": "[0]", "pixel_mean": "[123.675, 116.28, 103.53]", "min_size_test": "64",
                "max_size_test": "96", "size_divisibility": "32", "dynamic": "true",
                "object_mask_threshold": "0.8", "overlap_threshold": "0.8", "detections_per_image": "100",
                "semantic_on": "false", "instance_on": "false", "panoptic_on": "true",
                "sem_seg_postprocess_before_inference": "true"}
        self.info = ModelInfo.from_metadata(meta, name)
        self.name = name
        self.input_names, self.output_names = ("images",), ("class_logits", "mask_logits")

    def input_shape(self, name):
        return ("batch", 3, "height", "width")

    def infer(self, feeds):
        b, _, h, w = feeds["images"].shape
        return {"class_logits": np.zeros((b, 5, 4), np.float32),
                "mask_logits": np.zeros((b, 5, h // 4, w // 4), np.float32)}


def test_device_memory_reading_on_this_machine():
    used, how = device_memory_in_use()
    if _gpu_present():
        assert used is not None and used > 0 and "cudaMemGetInfo" in how
    else:  # no GPU / driver / cuda-python: N/A with the reason, never a made-up number
        assert used is None and how and ("CUDA" in how or "cuda-python" in how)


def test_device_memory_per_backend(monkeypatch):
    baseline = 1000 * MIB
    # What cudaMemGetInfo reports after the TensorRT memory iteration: 321.5 MiB more than before loading.
    monkeypatch.setattr(latency, "device_memory_in_use", lambda: (baseline + int(321.5 * MIB), "cudaMemGetInfo"))
    backends = [NamedBackend("torch", Zeros("torch")), NamedBackend("onnxruntime", Zeros("onnxruntime")),
                NamedBackend("tensorrt", Zeros("tensorrt"), device_baseline=baseline, device_note="cudaMemGetInfo")]
    report = run_latency(backends, [(64, 96)], [1], warmup=0, repeat=2)
    by = {r["backend"]: r for r in report["results"]}
    assert by["tensorrt"]["peak_device_mib"] == pytest.approx(321.5)
    assert "cudaMemGetInfo" in by["tensorrt"]["device_memory"] and "minus before loading" in by["tensorrt"][
        "device_memory"]
    for cpu in ("torch", "onnxruntime"):
        assert by[cpu]["peak_device_mib"] is None and by[cpu]["device_memory"] == CPU_DEVICE_NOTE
    md = markdown(report, None)
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ") and "64x96" in line}
    assert rows["tensorrt"].rstrip(" |").endswith("322") and rows["torch"].rstrip(" |").endswith("N/A")
    assert f"torch: {CPU_DEVICE_NOTE}" in md and "device MiB" in md
    json.dumps(report)  # the report stays JSON-serialisable


def test_tensorrt_device_memory_unreadable_is_na_with_reason(monkeypatch):
    monkeypatch.setattr(latency, "device_memory_in_use", lambda: (None, "CUDA call cudaMemGetInfo failed"))
    nb = NamedBackend("tensorrt", Zeros("tensorrt"), device_baseline=5 * MIB, device_note="cudaMemGetInfo")
    r = run_latency([nb], [(64, 96)], [1], warmup=0, repeat=1)["results"][0]
    assert r["peak_device_mib"] is None and r["device_memory"] == "CUDA call cudaMemGetInfo failed"


# --------------------------------------------------------------------------------------- real GPU (skipped)
def _tensorrt_installed() -> bool:
    from zsdeploy.runtime import engine

    try:
        engine.import_tensorrt()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(not (_gpu_present() and _tensorrt_installed()), reason="needs TensorRT and a GPU")
def test_tensorrt_device_memory_on_gpu(tmp_path):
    from zsdeploy.benchmarks.cli import main as bench
    from zsdeploy.cli.export_model import main as export
    from zsdeploy.cli.build_engine import main as build

    onnx_path, plan = tmp_path / "p.onnx", tmp_path / "p.plan"
    assert export(["--model", "pading", "--height", "128", "--width", "160", "--output", str(onnx_path)]) == 0
    assert build(["--onnx", str(onnx_path), "--output", str(plan), "--precision", "fp32"]) == 0
    out = tmp_path / "lat"
    assert bench(["latency", "--model", str(onnx_path), "--engine", str(plan), "--backends",
                  "onnxruntime,tensorrt", "--sizes", "128x160", "--warmup", "1", "--repeat", "2",
                  "--output", str(out)]) == 0
    results = {r["backend"]: r for r in json.loads((out / "report.json").read_text())["results"]}
    weights_mib = onnx_path.stat().st_size / MIB  # fp32 weights ~175 MiB live on the GPU
    assert 0.5 * weights_mib < results["tensorrt"]["peak_device_mib"] < 64 * 1024
