"""Start the `tritonserver` binary that the nvidia-pytriton wheel ships (Triton 2.51 with the Python backend), on
127.0.0.1 with free ports: for tests and local trials of a repository written by export-triton. A production server
is Triton's container (see README "Serving with Triton")."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import site
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ZsdError

INSTALL_FIX = ('pip install "tritonclient[http,grpc]" && pip install --no-deps nvidia-pytriton  (--no-deps: only the '
               "wheel's server binary is used; its Python API pins numpy<2)")


@dataclass(frozen=True)
class WheelServer:
    """Where the wheel keeps the server, its Python backend, the backend stubs and the bundled libraries."""

    binary: Path
    python_backend: Path
    stub: Path
    libs: Path


def find_wheel_server() -> WheelServer:
    """The server files of the installed nvidia-pytriton wheel (found without importing pytriton)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ZsdError("no tritonserver binary: the nvidia-pytriton wheel is not installed.", INSTALL_FIX)
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = WheelServer(root / "bin" / "tritonserver", root / "backends" / "python",
                        root / "python_backend_stubs" / pyver / "triton_python_backend_stub",
                        root.parent.parent / "nvidia_pytriton.libs")
    for p in (found.binary, found.python_backend / "libtriton_python.so", found.stub):
        if not p.exists():
            raise ZsdError(f"the nvidia-pytriton wheel has no {p.relative_to(root)} (Python {pyver}).",
                           f"reinstall it for this Python: {INSTALL_FIX}.")
    return found


def prepare_backends(dest: Path, wheel: WheelServer) -> Path:
    """A backend directory with the Python backend and the stub for the running Python (the wheel keeps the stubs
    apart, one per Python version; the backend looks for the stub next to libtriton_python.so)."""
    py = dest / "python"
    py.mkdir(parents=True, exist_ok=True)
    for f in wheel.python_backend.iterdir():
        if f.is_file():
            shutil.copy2(f, py / f.name)
    shutil.copy2(wheel.stub, py / wheel.stub.name)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_stub_env() -> Path:
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    # One env per interpreter environment: its .pth points at that environment's site-packages.
    tag = hashlib.sha1(sys.prefix.encode()).hexdigest()[:8]
    return Path(os.environ.get("ZSD_TRITON_STUB_ENV") or base / "zsdeploy" / f"triton-stub-env-py{pyver}-{tag}")


def ensure_stub_env(path: Path | None = None) -> Path:
    """A virtual environment for the Python backend's stub: numpy<2 first, then this interpreter's site-packages.

    Why: the stub of the wheel's Triton 2.51 passes tensors through a pybind11 that predates numpy 2; with numpy 2
    every tensor arrives with stride 0 ([1, 2, 3] reads as [1, 1, 1]). The stub's embedded interpreter takes its
    environment from the `python3` first on PATH, so the server is started with this env's bin/ first on PATH. The
    env holds only numpy 1.26 (installed once with pip, ~15 s) and a .pth that adds zsdeploy's site-packages after it.
    """
    env = path or default_stub_env()
    if (env / ".zsdeploy-ready").is_file():
        return env
    env.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{env.name}.tmp-", dir=env.parent))
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp)], check=True, capture_output=True)
        pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
        target = tmp / "lib" / f"python{pyver}" / "site-packages"
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                            "numpy>=1.24,<2"], capture_output=True, text=True)
        if r.returncode != 0:
            raise ZsdError(f"could not install numpy<2 for Triton's Python backend stub into {env}: "
                           f"{(r.stderr or r.stdout).strip()[-500:]}",
                           "check that pip can reach the package index, or set ZSD_TRITON_STUB_ENV to a prepared env.")
        lines = [f"import site; site.addsitedir({d!r})" for d in site.getsitepackages()]
        (target / "zz_zsdeploy_parent_env.pth").write_text("\n".join(lines) + "\n")
        (tmp / ".zsdeploy-ready").write_text("numpy<2 for the Triton 2.51 Python backend stub\n")
        os.rename(tmp, env)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (env / ".zsdeploy-ready").is_file():  # not "another process made it first"
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return env


@dataclass
class LocalTritonServer:
    """One tritonserver process; `start()` returns once it is ready (or raises with its log)."""

    repository: Path
    workdir: Path
    extra_args: list[str] = field(default_factory=list)
    http_port: int = 0
    grpc_port: int = 0
    stub_env: Path | None = None  # default: ensure_stub_env()
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "tritonserver.log"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def command(self, wheel: WheelServer) -> list[str]:
        return [str(wheel.binary), f"--model-repository={self.repository}",
                f"--backend-directory={prepare_backends(self.workdir / 'backends', wheel)}",
                "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
                "--allow-metrics=false", "--exit-timeout-secs=5", *self.extra_args]

    def start(self, timeout_s: float = 120.0, expect_ready: bool = True) -> LocalTritonServer:
        wheel = find_wheel_server()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.grpc_port = self.http_port or free_port(), self.grpc_port or free_port()
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(wheel.libs), env.get("LD_LIBRARY_PATH")) if p)
        stub_env = ensure_stub_env(self.stub_env)
        env["PATH"] = os.pathsep.join([str(stub_env / "bin"), env.get("PATH", "")])
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(wheel), stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ZsdError(f"tritonserver exited with code {self.process.returncode} before it was ready; its "
                               f"log:\n{self.log()[-4000:]}", "fix the repository or the server options it names.")
            if self.ready() or not expect_ready and self.live():
                return self
            time.sleep(0.25)
        self.stop()
        raise ZsdError(f"tritonserver was not ready after {timeout_s:.0f} s; its log:\n{self.log()[-4000:]}",
                       "check the log for models that did not load.")

    def _get(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def ready(self) -> bool:
        return self._get("/v2/health/ready")

    def live(self) -> bool:
        return self._get("/v2/health/live")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: Triton drains in-flight requests, unloads models, exits
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LocalTritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
