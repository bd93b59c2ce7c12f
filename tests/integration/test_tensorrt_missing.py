"""Without TensorRT the message says what is actually there: nothing, or only the type stubs (tensorrt-stubs)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

CODE = "from zsdeploy.runtime.tensorrt.loader import import_tensorrt; import_tensorrt()"


def _import_tensorrt(pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", f"import sys\nfrom zsdeploy.runtime.errors import ZsdError\n"
                           f"try:\n    {CODE}\nexcept ZsdError as e:\n    print(e); sys.exit(2)"],
                          capture_output=True, text=True, timeout=120, env=env, check=False)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="a tensorrt package is importable here")
def test_no_tensorrt_package():
    r = _import_tensorrt()
    assert r.returncode == 2, r.stdout + r.stderr
    assert "TensorRT is not installed: there is no `tensorrt` Python package." in r.stdout
    assert "Fix:" in r.stdout and "pip install tensorrt" in r.stdout


def test_only_type_stubs(tmp_path):
    """What `pip install tensorrt-stubs` leaves: tensorrt/__init__.pyi, which Python imports as an empty namespace
    package (the real library, where installed, comes first on sys.path and is not shadowed: skip then)."""
    spec = importlib.util.find_spec("tensorrt")
    if spec is not None and spec.origin not in (None, "namespace"):
        pytest.skip("the real TensorRT is installed")
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("class Builder: ...\n")
    r = _import_tensorrt(str(tmp_path))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "TensorRT is not installed: `import tensorrt` found only type stubs (tensorrt-stubs)" in r.stdout
