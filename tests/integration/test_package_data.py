"""Files the CLIs read at run time ship in the wheel and are found from it (not from a source checkout)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import REPO as ROOT
SOURCES = ("pyproject.toml", "README.md", "zsdeploy", "export", "runtime", "benchmarks", "configs", "plugins_trt")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (building in place would leave build/ in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "*.plan"))
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(dist), str(src)], capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    [whl] = dist.glob("zsdeploy-*.whl")
    return whl


def test_wheel_ships_the_benchmark_tolerances(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("tolerances/default.yaml", "tolerances/ci.yaml", "baselines/ci_cpu.json"):
        assert f"zsdeploy/benchmarks/{f}" in names


def test_default_tolerances_load_from_the_wheel(wheel, tmp_path):
    """zsd-bench's default tolerance file is read from the installed package, wherever the checkout is."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import zsdeploy.benchmarks.accuracy as a; t = a.load_tolerances(None); "
            "print(a.__file__); print(t['_path']); print(sorted(t['accuracy']))")
    env = {**os.environ, "PYTHONPATH": str(site)}  # before the editable install's finder on sys.meta_path
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    module_file, tol_path, metrics = r.stdout.splitlines()
    assert Path(module_file).is_relative_to(site) and Path(tol_path).is_relative_to(site)
    assert "semantic.pixel_agreement" in metrics
