"""Writing files and directories so that nothing partial is ever seen: the one place zsdeploy's outputs are written.

- `atomic_write` / `write_bytes_atomic` / `write_json_atomic`: a temp file next to the target, fsync, rename; the
  result gets the mode a plain open() would give it (mkstemp's 0600 would hide models from other users, e.g. a
  Triton container); on failure the temp file is removed, an existing target is untouched, and an OSError becomes
  one ZsdError paragraph.
- `staging_dir` + `publish`: a directory (ZegFormer bundles, Triton model repositories) built in a hidden sibling
  folder, then swapped into place, so a reader, a crash, Ctrl-C or `kill` sees the old directory or the complete new
  one, never a mix; an interrupted write removes its staging folder.
- `json_default`, `file_sha256`.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import io
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ZsdError

__all__ = ["MIN_FREE_BYTES", "FileGroup", "atomic_write", "check_output_dir", "check_output_file", "file_group", "file_mode", "make_writable_dir", "file_sha256", "json_default", "publish", "remove_stale_temporaries",
           "staging_dir", "write_bytes_atomic", "write_json_atomic"]


def file_mode() -> int:
    """The mode a plain open() would give a new file under the current umask (e.g. 0o644 under 022)."""
    # mkstemp creates 0600 files; after os.replace the result should carry the usual umask-derived mode.
    # Reading the umask via os.umask() would briefly change it for every thread, so read it from /proc.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o644


def atomic_write(path: str | os.PathLike[str], write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write via `write(fileobj)` to a temp file next to `path`, fsync, then os.replace onto `path`.

    A reader sees either the old file or the complete new one; on any failure the temp file is removed and
    an existing `path` is left untouched.
    """
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ZsdError(
            f"cannot create output directory {parent}: {e.strerror or e}.", "choose a writable output location."
        ) from e
    if p.is_dir():
        raise ZsdError(f"output path {p} is a directory.", "give a file name, e.g. " f"{p / 'out.png'}.")
    remove_stale_temporaries(p)
    try:
        # the writer's pid in the name: a later write of the same target removes what a killed writer left
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{_temp_stem(p.name)}.{os.getpid()}.", suffix=".tmp")
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise write_error(p, e) from e
        raise ZsdError(f"cannot write in {parent}: {e.strerror or e}.", "choose a writable output location.") from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, p)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise write_error(p, e) from e
        raise
    return p


#: file systems allow 255 bytes per name; a temporary's name adds up to 30 to the target's (pid, token, suffix)
_NAME_KEPT = 200


def _temp_stem(name: str) -> str:
    """The target's name as temporaries carry it: whole, or its first 200 bytes for a very long one."""
    raw = name.encode()
    return name if len(raw) <= _NAME_KEPT else raw[:_NAME_KEPT].decode(errors="ignore")


def write_error(path: Path, e: OSError) -> ZsdError:
    """An OSError while writing `path` as one paragraph whose fix fits the cause."""
    fixes = {errno.ENOSPC: "free some disk space, or choose another output location.",
             errno.EDQUOT: "free some of your disk quota, or choose another output location.",
             errno.ENAMETOOLONG: "shorten the name (file systems allow 255 bytes per name; outputs add a suffix "
                                 "such as _panoptic.png to the input's name).",
             errno.EROFS: "choose a writable output location (this one is mounted read-only).",
             errno.EACCES: "choose an output location you may write to.",
             errno.EPERM: "choose an output location you may write to."}
    return ZsdError(f"writing {path} failed: {e.strerror or e}.",
                    fixes.get(e.errno or 0, "check free disk space and permissions of the output location."))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Delete the temp files (`.<name>.<pid>.<random>.tmp`) and staging folders (`.<name>.partial-<pid>-*`) that a
    killed writer of `target` left next to it: those whose writer process no longer exists on this machine. A live
    writer's (another export of the same target) are kept. Returns what was removed."""
    t = Path(target)
    parent = t.parent if str(t.parent) else Path(".")
    # exactly what atomic_write / staging_dir name them (mkstemp/mkdtemp add 8 characters of [a-z0-9_])
    ours = re.compile(re.escape(f".{_temp_stem(t.name)}.") + r"(?:partial-(\d+)-|(\d+)\.)[a-z0-9_]{8}(?:\.tmp)?")
    removed = []
    for leftover in parent.glob(f".{glob.escape(_temp_stem(t.name))}.*"):
        m = ours.fullmatch(leftover.name)
        if m is None or leftover.name.endswith(".tmp") == bool(m.group(1)):
            continue  # not ours (older zsdeploy, or someone else's file)
        if _pid_alive(int(m.group(1) or m.group(2))):
            continue  # still being written (another export of the same target)
        try:
            shutil.rmtree(leftover) if leftover.is_dir() and not leftover.is_symlink() else leftover.unlink()
            removed.append(leftover)
        except OSError:
            pass  # the next write tries again; a leftover never blocks a write
    return removed


# ------------------------------------------------------------------------------------------- checks before work
#: Below this much free space an output location counts as full (a label PNG + JSON of one photo is ~0.1-2 MiB).
MIN_FREE_BYTES = 16 * 2**20


def check_output_dir(out_dir: str | os.PathLike[str], min_free_bytes: int = MIN_FREE_BYTES, *,
                     flag: str = "--output", given: str | os.PathLike[str] | None = None) -> Path:
    """Refuse an output directory that cannot take results, before any model is loaded.

    Checks: the path (or its nearest existing parent, when it does not exist yet) is a directory, a file can be
    created and written there, and the file system has `min_free_bytes` free. Creates nothing that stays.
    """
    out = Path(out_dir)
    shown = out if given is None else given  # what the user passed (a file target's folder is checked)
    probe_dir = out
    while not probe_dir.exists():  # the directory is created on the first write; check where it would go
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    fix = f"pass {flag} with a writable directory (it is created if missing)."
    if probe_dir.exists() and not probe_dir.is_dir():
        what = "is a file" if probe_dir == out else f"cannot be created: {probe_dir} is a file"
        raise ZsdError(f"{flag} {shown} {what}, not a directory.", fix)
    try:
        # A real write + fsync: catches read-only mounts and permissions (also for root, unlike os.access).
        with tempfile.TemporaryFile(dir=probe_dir, prefix=".zsd-write-check.") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise ZsdError(f"{flag} {shown} is not writable ({probe_dir}: {e.strerror or e}).", fix) from None
    free = shutil.disk_usage(probe_dir).free
    if free < min_free_bytes:
        raise ZsdError(f"{flag} {shown}: the disk is full ({free / 2**20:.1f} MiB free at {probe_dir}).",
                       f"free some space or choose another {flag}.")
    return out


def make_writable_dir(folder: str | os.PathLike[str]) -> Path:
    """Create `folder` if needed and prove a file can be written there (a real write: read-only mounts and
    permissions fail, also for root, unlike os.access). Raises the OSError when it cannot."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=d, prefix=".zsd-write-check."):
        pass
    return d


def check_output_file(path: str | os.PathLike[str], min_free_bytes: int = MIN_FREE_BYTES, *,
                      flag: str = "--output") -> Path:
    """Refuse, before any model is loaded, a file target that cannot be written (a directory; a folder that cannot
    be created or written: read-only mount, permissions; a full disk), and remove what killed writes of it left."""
    p = Path(path)
    if p.is_dir():
        raise ZsdError(f"{flag} {p} is a directory; a file is written there.", f"give a file name, e.g. {flag} "
                       f"{p / 'model.onnx'}.")
    check_output_dir(p.parent if str(p.parent) else Path("."), min_free_bytes, flag=flag, given=p)
    remove_stale_temporaries(p)
    return p


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """`data` as the whole new content of `path` (see `atomic_write`)."""
    def write(f: io.BufferedWriter) -> None:
        f.write(data)

    return atomic_write(path, write)


def json_default(o: Any) -> Any:
    """`json.dumps(default=...)` for numpy scalars / arrays and paths (results are full of them)."""
    # Results are full of numpy scalars/arrays and Paths; serialise them instead of failing after a long run.
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"object of type {type(o).__name__} is not JSON serialisable")


def write_json_atomic(
    path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2, allow_nan: bool = False
) -> Path:
    """Write `obj` as UTF-8 JSON atomically (temp file in the same directory + os.replace).

    numpy scalars/arrays and paths are converted. NaN/Infinity are rejected by default (ValueError, raised
    before anything is written) because they are not valid JSON; pass `allow_nan=True` to emit them anyway.
    """
    # Serialise first: a TypeError/ValueError must not leave a temp file or touch the target.
    text = json.dumps(obj, indent=indent, default=json_default, allow_nan=allow_nan, ensure_ascii=False)
    data = (text + "\n").encode("utf-8")

    def _write(f: io.BufferedWriter) -> None:
        f.write(data)

    return atomic_write(path, _write)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks (checkpoints, engines and caches can be GBs)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------- file groups


class FileGroup:
    """Files that appear together or not at all (one image's label PNG, JSON, overlay and raw outputs): each is
    written under a temporary name (`path(final)`), and all are renamed into place only when every write succeeded;
    a failure (a disk filling half-way) removes the temporaries and leaves the earlier results as they were."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def path(self, final: str | os.PathLike[str]) -> Path:
        final = Path(final)
        tmp = final.with_name(f".{_temp_stem(final.name)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")  # as atomic_write
        self._staged.append((tmp, final))
        return tmp

    def commit(self) -> None:
        for tmp, final in self._staged:
            try:
                os.replace(tmp, final)
            except OSError as e:  # e.g. a final name over 255 bytes: the temporaries are removed by discard()
                raise write_error(final, e) from e
        self._staged.clear()

    def discard(self) -> None:
        for tmp, _ in self._staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._staged.clear()


@contextlib.contextmanager
def file_group() -> Iterator[FileGroup]:
    group = FileGroup()
    try:
        yield group
        group.commit()
    except BaseException:
        group.discard()
        raise


# ------------------------------------------------------------------------------------------- directories


@contextlib.contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A fresh hidden folder next to `out` for the new directory's files; removed if the block does not finish."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{_temp_stem(out.name)}.partial-{os.getpid()}-"))
    except OSError as e:
        raise write_error(out, e) from e
    try:
        # mkdtemp makes a private 0700 folder; the result gets the mode a plain mkdir would give it.
        mode = file_mode()
        os.chmod(tmp, mode | (mode & 0o444) >> 2)
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _signals_deferred() -> Iterator[list[int]]:
    """Hold SIGINT/SIGTERM while the renames run (an interrupt between them would leave no directory at all); the
    signals that arrived are listed for the caller to report."""
    got: list[int] = []
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: got.append(signum))
    except ValueError:  # not the main thread: signals cannot arrive here anyway
        pass
    try:
        yield got
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def publish(tmp: Path, out: Path, what: str = "the bundle") -> bool:
    """Make the staged folder `tmp` the directory `out`, replacing an existing one as a whole: swapped in one step
    where the system can (a reader polling `out`, e.g. a Triton server, never sees it missing), else the old one is
    renamed aside first and put back if the second rename fails; then the old one is deleted.

    Returns True when an interrupt arrived during the swap (it was held until `out` was complete)."""
    aside = out.parent / f".{out.name}.old-{os.getpid()}"
    with _signals_deferred() as got:
        try:
            if out.exists() and _exchange(tmp, out):
                aside = tmp  # tmp now holds the old directory
            else:
                if out.exists():
                    os.replace(out, aside)
                try:
                    os.replace(tmp, out)
                except BaseException:
                    if aside.exists():
                        os.replace(aside, out)  # put the old one back: old or new, never neither
                    raise
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ZsdError(f"could not put {what} in place at {out}: {e.strerror or e}.",
                           "check permissions and free space of the output location.") from None
    shutil.rmtree(aside, ignore_errors=True)
    return bool(got)
