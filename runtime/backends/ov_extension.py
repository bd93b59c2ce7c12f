"""zsdeploy's OpenVINO extension for MSDeformAttn: built at first use, cached, loaded into an `openvino.Core`.

Graphs exported with `--msda plugin` (or `nvidia`) hold TensorRT plugin nodes for MSDeformAttn. With this extension
OpenVINO reads them as ops of its own and runs the host build of the plugin's kernel core on its TBB threads
(plugins_trt/openvino/msDeformAttnOvExtension.cpp). That is the fastest CPU path: OpenVINO runs the portable
`gridsample` lowering as an fp32-only GridSample plus reorders (measured, PADing 512x512 bf16 on 2 threads:
836 ms with GridSample, 556 ms with the extension; fp32 outputs equal to rel L2 < 1e-6).

The library is compiled once per (sources, openvino version, compiler, CPU) with the C++ compiler on PATH
($CXX, else g++, else c++; about 10 s) against the headers the openvino wheel ships, `-march=native` because it is
built where it runs, and kept in `$ZSD_CACHE_DIR/ov_extension/<key>/` (default `~/.cache/zsdeploy/...`). It is
written under a temporary name and renamed into place, so a concurrent or interrupted build never leaves a partial
library behind, and its sha256 is recorded beside it: a cached library that does not match it (truncated: it would
kill the process with SIGBUS when mapped) or does not load is rebuilt with a note; an unwritable cache folder means a
build into a temporary folder for the run, with a note.

Environment:
    ZSD_OV_EXTENSION=/path/libzsd_msda_openvino.so   use a library built elsewhere (no compiler needed here)
    CXX                                               the compiler to build with

Prebuild (e.g. in a container image): `python -m zsdeploy.runtime.backends.ov_extension` prints the library's path.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable

from ..cli_core import ArgumentParser, run_main
from ..errors import ZsdError
from ..files import file_sha256, make_writable_dir, write_bytes_atomic
from .openvino_backend import say_stderr, cpu_flags, cpu_model, import_openvino

LIBRARY_NAME = "libzsd_msda_openvino.so"
SOURCES = ("openvino/msDeformAttnOvExtension.cpp", "msdeformattn/msDeformAttnHost.cpp")
HEADERS = ("msdeformattn/msDeformAttnHost.h", "msdeformattn/msDeformAttnKernel.cuh", "msdeformattn/msDeformAttnKernel.h")
# The openvino wheel ships versioned libraries only (libopenvino.so.2641, ...): linked by file name.
LINKED = ("libopenvino.so*", "libopenvino_onnx_frontend.so*", "libtbb.so*")
# OpenVINO's own CMake targets compile users with these (OpenVINOTargets.cmake, INTERFACE_COMPILE_DEFINITIONS).
DEFINES = ("-D_GLIBCXX_USE_CXX11_ABI=1", "-DOV_THREAD=OV_THREAD_TBB_ADAPTIVE", "-DNDEBUG")
FLAGS = ("-std=c++17", "-O3", "-march=native", "-fPIC", "-shared", "-fvisibility=hidden")
BUILD_TIMEOUT_S = 600

_lock = threading.Lock()
_library: Path | None = None


def sources_root() -> Path:
    """`plugins_trt/` of a checkout, or the copy a wheel ships as package data (zsdeploy/plugins_trt)."""
    here = Path(__file__).resolve().parent.parent.parent  # <repo> in a checkout, <site-packages>/zsdeploy in a wheel
    return here / "plugins_trt"


def _openvino_dirs() -> tuple[Path, Path, str]:
    ov = import_openvino()
    root = Path(ov.__file__).resolve().parent
    return root / "include", root / "libs", ov.get_version()


def _compiler() -> str:
    for name in filter(None, (os.environ.get("CXX"), "g++", "c++")):
        found = shutil.which(name)
        if found:
            return found
    raise ZsdError("OpenVINO runs MSDeformAttn plugin nodes (graphs exported with --msda plugin or nvidia) with "
                   "zsdeploy's extension, which is compiled at first use, but no C++ compiler was found "
                   "($CXX, g++ and c++ are not on PATH).",
                   "install one (e.g. apt install g++), or set ZSD_OV_EXTENSION to a library built on another "
                   "machine with `python -m zsdeploy.runtime.backends.ov_extension`, or run a --msda gridsample "
                   "export instead.")


def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_identity() -> str:
    """-march=native code is only valid on a CPU with the same features: the CPU model and flags are in the key."""
    return cpu_model() + "|" + " ".join(sorted(cpu_flags()))


def _linked_libraries(libs: Path) -> list[Path]:
    found = []
    for pattern in LINKED:
        hits = sorted(p for p in libs.glob(pattern) if p.is_file())
        if not hits:
            raise ZsdError(f"the openvino package at {libs.parent} has no {pattern} to build zsdeploy's extension "
                           "against.", 'reinstall it: pip install --force-reinstall "zsdeploy[openvino]".')
        found.append(hits[0])
    return found


def build_key(cxx: str, include: Path, ov_version: str) -> str:
    digest = hashlib.sha256()
    root = sources_root()
    for rel in (*SOURCES, *HEADERS):
        digest.update(rel.encode() + b"\0" + (root / rel).read_bytes())
    for part in (ov_version, _compiler_version(cxx), " ".join((*FLAGS, *DEFINES)), _cpu_identity(), str(include)):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:20]


def cache_root() -> Path:
    base = os.environ.get("ZSD_CACHE_DIR")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "zsdeploy") / "ov_extension"


def _compile(cxx: str, include: Path, libs: Path, out: Path, say: Callable[[str], None]) -> None:
    root = sources_root()
    missing = [rel for rel in (*SOURCES, *HEADERS) if not (root / rel).is_file()]
    if missing:
        raise ZsdError(f"zsdeploy's OpenVINO extension sources are missing under {root}: {', '.join(missing)}.",
                       "reinstall zsdeploy (its wheel ships plugins_trt/ as package data).")
    out.parent.mkdir(parents=True, exist_ok=True)
    say(f"note: building zsdeploy's OpenVINO extension for MSDeformAttn ({Path(cxx).name}, first use, ~10 s) "
        f"into {out.parent}")
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cxx, *FLAGS, *DEFINES, "-isystem", str(include), "-I", str(root / "msdeformattn"),
           *(str(root / rel) for rel in SOURCES), *(str(p) for p in _linked_libraries(libs)), "-o", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if proc.returncode != 0:
            tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])[:800]
            raise ZsdError(f"building zsdeploy's OpenVINO extension failed ({Path(cxx).name} exit "
                           f"{proc.returncode}): {tail}",
                           "check that the compiler supports C++17 and matches the openvino wheel's ABI (set CXX), "
                           "or run a --msda gridsample export instead.")
        os.replace(tmp, out)
        # recorded after the library is in place: a library without its digest is rebuilt, never trusted
        write_bytes_atomic(_digest_file(out), (file_sha256(out) + "\n").encode())
    except subprocess.TimeoutExpired:
        raise ZsdError(f"building zsdeploy's OpenVINO extension took more than {BUILD_TIMEOUT_S} s.",
                       "retry on a less loaded machine, or set ZSD_OV_EXTENSION to a prebuilt library.") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _digest_file(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _intact(library: Path, say: Callable[[str], None]) -> bool:
    """Whether the cached library is byte for byte what was built. A truncated one (a full disk, a killed copy)
    would otherwise be mapped by the loader and kill the process with SIGBUS, without a message."""
    try:
        recorded = _digest_file(library).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        recorded = ""
    if recorded and recorded == file_sha256(library):
        return True
    why = ("does not match the checksum recorded when it was built (truncated or changed on disk)" if recorded
           else "has no recorded checksum (an interrupted build, or an older zsdeploy)")
    say(f"note: the cached OpenVINO extension {library} {why}; rebuilding it.")
    return False


def _usable_cache_dir(key: str, say: Callable[[str], None]) -> Path:
    """The cache folder for this build, or, where the cache cannot be written (ZSD_CACHE_DIR a file, a read-only
    home), a temporary folder for this process, with a note: the run goes on, it only pays the build again."""
    try:
        return make_writable_dir(cache_root() / key)
    except OSError as e:
        scratch = Path(tempfile.mkdtemp(prefix="zsd-ov-extension-"))
        atexit.register(shutil.rmtree, scratch, True)
        say(f"note: the extension cache {cache_root()} cannot be written ({e.strerror or e}); building into "
            f"{scratch} for this run (set ZSD_CACHE_DIR to a writable folder to keep the build).")
        return scratch


def library_path(say: Callable[[str], None] | None = None, *, rebuild: bool = False) -> Path:
    """The extension library: $ZSD_OV_EXTENSION, else the cached build for this machine (built now if needed)."""
    global _library
    say = say or say_stderr
    env = os.environ.get("ZSD_OV_EXTENSION")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ZsdError(f"ZSD_OV_EXTENSION={env} is not a file.",
                           "point it at a library from `python -m zsdeploy.runtime.backends.ov_extension`, or unset "
                           "it to build one here.")
        return path
    with _lock:
        if _library is not None and not rebuild and _library.is_file():
            return _library
        include, libs, version = _openvino_dirs()
        cxx = _compiler()
        out = _usable_cache_dir(build_key(cxx, include, version), say) / LIBRARY_NAME
        if rebuild or not out.is_file() or not _intact(out, say):
            _compile(cxx, include, libs, out, say)
        _library = out
        return out


def add_to_core(core, say: Callable[[str], None] | None = None) -> Path:  # noqa: ANN001 (openvino.Core)
    """Load the extension into `core` (call once per Core). A cached library that OpenVINO cannot load (corrupt,
    truncated) is rebuilt once, with a note."""
    say = say or say_stderr
    path = library_path(say)
    try:
        core.add_extension(str(path))
        return path
    except Exception as e:  # noqa: BLE001 (OpenVINO raises RuntimeError subclasses of its own)
        first = " ".join(str(e).split())[:300] or type(e).__name__
        if os.environ.get("ZSD_OV_EXTENSION"):
            raise ZsdError(f"OpenVINO cannot load the extension ZSD_OV_EXTENSION={path}: {first}.",
                           "rebuild it against this openvino version with `python -m "
                           "zsdeploy.runtime.backends.ov_extension`, or unset ZSD_OV_EXTENSION.") from None
        say(f"note: the cached OpenVINO extension {path} does not load ({first}); rebuilding it.")
    path = library_path(say, rebuild=True)
    try:
        core.add_extension(str(path))
    except Exception as e:  # noqa: BLE001
        raise ZsdError(f"OpenVINO cannot load zsdeploy's freshly built extension {path}: "
                       f"{' '.join(str(e).split())[:300]}.",
                       "run a --msda gridsample export instead, and report this with `pip list` and "
                       "`openvino.get_version()`.") from None
    return path


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m zsdeploy.runtime.backends.ov_extension",
                       description="Build (if needed) zsdeploy's OpenVINO extension for MSDeformAttn and "
                                   "print its path (for ZSD_OV_EXTENSION on machines without a compiler "
                                   "and the same CPU).")
    p.add_argument("--rebuild", action="store_true", help="compile again even if a cached build exists")
    args = p.parse_args(argv)

    def body() -> int:
        print(library_path(rebuild=args.rebuild))
        return 0

    return run_main("ov_extension", body)


if __name__ == "__main__":
    raise SystemExit(main())
