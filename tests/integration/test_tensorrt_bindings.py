"""zsdeploy's TensorRT code against the REAL TensorRT Python bindings 10.3.0 / 10.16.1.11 / 11.4.0.106.

Each version is pip-installed into a throwaway folder (build/tensorrt-bindings/, reused between runs) by
scripts/check_tensorrt_bindings.py; libnvinfer cannot be installed here, so a loader shim built from source in that
script lets the real module import (it returns null from every entry point: no Builder, Runtime or parser exists).
Assertions are only on the real module's contents (the API table) and on zsdeploy's own decisions and messages —
never on what TensorRT would do. Skips with the reason where the package index or a C compiler is missing.
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest
from helpers import REPO, explicit_copy, write_tiny_onnx

from zsdeploy.runtime.cuda_utils import describe_cuda_environment

SCRIPT = REPO / "scripts" / "check_tensorrt_bindings.py"
_spec = importlib.util.spec_from_file_location("check_tensorrt_bindings", SCRIPT)
assert _spec is not None and _spec.loader is not None
bindings = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bindings  # dataclasses look their module up there
_spec.loader.exec_module(bindings)

JETPACK6, NEWEST_10, TRT11 = bindings.VERSIONS


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO, check=False)


def _env(version: str, with_cuda_python: bool = True) -> dict[str, str]:
    try:
        env = bindings.prepare(version)
        extra = (str(bindings.prepare_cuda_python()),) if with_cuda_python else ()
    except bindings.SetupError as e:
        pytest.skip(f"the real TensorRT {version} bindings could not be prepared: {e}")
    return env.environ(extra)


def _check(*args: str) -> subprocess.CompletedProcess:
    res = _run([sys.executable, str(SCRIPT), *args])
    if res.returncode == 3:
        pytest.skip(f"the real TensorRT bindings could not be prepared: {res.stderr.strip()}")
    return res


# ------------------------------------------------------------------------------------------------- the API table

def test_every_used_attribute_exists_or_is_guarded_in_every_version():
    res = _check()
    assert res.returncode == 0, res.stdout + res.stderr
    for version in bindings.VERSIONS:
        assert re.search(rf"TensorRT {re.escape(version)}: \d+ present, \d+ absent but guarded, 0 MISSING$",
                         res.stdout, re.M), res.stdout[-800:]
    lines = {line.split()[0]: line.split()[1:4] for line in res.stdout.splitlines()[2:] if line.startswith("  ")
             and len(line.split()) >= 5}
    # What the real modules say: TensorRT 11 dropped the builder precision flags and the calibrators; the code uses
    # them only behind the capability check (so these rows must be "guarded", never "MISSING", on 11.4).
    for attr in ("BuilderFlag.FP16", "BuilderFlag.INT8", "IInt8EntropyCalibrator2", "IBuilderConfig.int8_calibrator"):
        assert lines[attr] == ["ok", "ok", "guarded"], (attr, lines.get(attr))
    # The walk reaches methods through inferred types (builder -> config -> timing cache; runtime -> engine).
    for attr in ("IBuilderConfig.set_memory_pool_limit", "ITimingCache.serialize", "ICudaEngine.get_tensor_dtype",
                 "IExecutionContext.execute_async_v3", "OnnxParser.parse_from_file"):
        assert lines[attr] == ["ok", "ok", "ok"], (attr, lines.get(attr))


def test_the_table_catches_a_used_attribute_that_a_version_lacks(tmp_path):
    src = tmp_path / "unguarded.py"
    src.write_text("import tensorrt as trt\n\n\ndef fast_fp16(logger: trt.ILogger) -> bool:\n"
                   "    return trt.Builder(logger).platform_has_fast_fp16\n")
    res = _check("--versions", JETPACK6, TRT11, "--extra-source", str(src))
    assert res.returncode == 1, res.stdout + res.stderr
    row = next(line for line in res.stdout.splitlines() if line.split()[:1] == ["Builder.platform_has_fast_fp16"])
    assert row.split()[1:3] == ["ok", "MISSING"], row
    assert f"TensorRT {TRT11}: " in res.stdout and "1 MISSING: Builder.platform_has_fast_fp16" in res.stdout
    assert "unguarded.py:5" in res.stdout and "FAILED" in res.stdout


def test_capability_table_matches_the_real_modules():
    """CAPABILITY_ATTRIBUTES (the one place that probes): 10.x has every capability, 11.4 lacks exactly the
    builder-chosen precision ones."""
    code = ("import json, tensorrt as trt\nfrom zsdeploy.runtime.tensorrt.precision import tensorrt_caps\n"
            "import dataclasses\nprint(json.dumps(dataclasses.asdict(tensorrt_caps(trt))))")
    caps = {v: json.loads(_run([sys.executable, "-c", code], _env(v, False)).stdout) for v in bindings.VERSIONS}
    for v in (JETPACK6, NEWEST_10):
        assert all(caps[v][k] for k in caps[v] if k != "version"), caps[v]
    assert caps[TRT11] == {"version": TRT11, "fp16_flag": False, "int8_flag": False, "int8_calibrator": False,
                           "strongly_typed": True, "tf32_flag": True, "progress_monitor": True}


# ------------------------------------------------------------------------------------- build-engine's decisions

def _build_engine(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "zsdeploy.cli.build_engine", *args], env)


@pytest.mark.parametrize("version", bindings.VERSIONS)
def test_build_engine_decisions_per_version(tmp_path, version):
    """fp32 graph + --precision fp16: TensorRT 11 refuses (version named, conversion command given); 10.x has the
    builder flags and goes on to the GPU. An explicit fp16 graph goes on to the GPU everywhere (strongly typed)."""
    env = _env(version)
    fp32 = write_tiny_onnx(tmp_path / "tiny.onnx")
    fp16 = explicit_copy(fp32, tmp_path / "tiny_fp16.onnx", "fp16")
    flags = _build_engine(env, "--onnx", str(fp32), "--output", str(tmp_path / "a.plan"), "--precision", "fp16")
    explicit = _build_engine(env, "--onnx", str(fp16), "--output", str(tmp_path / "b.plan"))
    for res in (flags, explicit):
        assert res.returncode == 2 and "Traceback" not in res.stderr and "Fix:" in res.stderr, res.stderr
    gpu_check = "no NVIDIA driver is installed"  # this machine has none: the GPU check is what stops the build
    if version == TRT11:
        assert f"TensorRT {TRT11} does not have" in flags.stderr and "BuilderFlag.FP16" in flags.stderr
        assert "export-model --from-onnx tiny.onnx --precision fp16 --output tiny_fp16.onnx" in flags.stderr
        assert gpu_check not in flags.stderr
    else:
        assert gpu_check in flags.stderr and "does not have" not in flags.stderr, flags.stderr
    assert gpu_check in explicit.stderr and "does not have" not in explicit.stderr, explicit.stderr
    assert not list(tmp_path.glob("*.plan*"))


@pytest.mark.parametrize("version", [JETPACK6, TRT11])
def test_clean_errors_where_tensorrt_cannot_start_cuda(version):
    """TensorRT's bindings raise TypeError when libnvinfer gives no builder/runtime (no usable GPU): zsdeploy says
    why in one paragraph; an engine tensor type numpy lacks (BF16) is named instead of a TypeError."""
    code = """
import tensorrt as trt
from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.tensorrt.loader import create_builder, create_runtime, make_logger, numpy_dtype
for make in (create_builder, create_runtime):
    try:
        make(trt, make_logger())
    except ZsdError as e:
        print("ERR", e)
print("F32", numpy_dtype(trt, trt.DataType.FLOAT, "images", "m.plan"))
try:
    numpy_dtype(trt, trt.DataType.BF16, "mask_logits", "m.plan")
except ZsdError as e:
    print("ERR", e)
"""
    res = _run([sys.executable, "-c", code], _env(version))
    assert res.returncode == 0, res.stderr
    errors = [line for line in res.stdout.splitlines() if line.startswith("ERR")]
    assert len(errors) == 3, res.stdout
    for what, line in zip(("builder", "runtime"), errors):
        assert f"TensorRT {version} could not create its {what}" in line and "no NVIDIA driver is installed" in line
        assert "Fix:" in line
    assert "F32 float32" in res.stdout
    assert "'mask_logits' is BF16, which has no numpy type" in errors[2] and "Fix:" in errors[2]


def test_cuda_python_names_the_missing_driver():
    """cuda-python on a machine without a driver: the CUDA error says 'no driver', not 'update the driver'."""
    code = ("from zsdeploy.runtime import cuda_utils\ntry:\n    cuda_utils.device_info(0)\n"
            "except cuda_utils.CudaError as e:\n    print(e)\n")
    res = _run([sys.executable, "-c", code], _env(JETPACK6))
    if "no NVIDIA driver" not in res.stdout and "sees no GPU" not in res.stdout:
        assert "cudaGetDeviceCount" not in res.stdout, res.stdout  # a GPU machine: no error to check
        pytest.skip("a CUDA device is usable here")
    assert "older than" not in res.stdout and "Fix:" in res.stdout


# -------------------------------------------------------------------------- the decision itself (pure function)

def test_no_driver_old_driver_and_no_device_are_told_apart():
    no_driver = describe_cuda_environment(0, 13000, "cudaErrorInsufficientDriver", 0)
    old = describe_cuda_environment(12040, 13000, "cudaErrorInsufficientDriver", 0)
    no_device = describe_cuda_environment(13000, 13000, "cudaErrorNoDevice", 0)
    assert no_driver is not None and "no NVIDIA driver is installed" in no_driver.problem
    assert "--backend onnxruntime|openvino" in no_driver.fix
    assert old is not None and "supports CUDA 12.4, older than the CUDA runtime 13.0" in old.problem
    assert "gpu-cu12" in old.fix
    assert no_device is not None and "sees no GPU" in no_device.problem and "CUDA_VISIBLE_DEVICES" in no_device.fix
    assert describe_cuda_environment(13000, 13000, None, 1) is None
