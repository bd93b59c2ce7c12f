"""Writing a directory as a whole (ZegFormer bundles, Triton model repositories): built in a hidden sibling folder,
then swapped into place, so a reader, a crash, Ctrl-C or `kill` sees the old directory or the complete new one,
never a mix; an interrupted write removes its staging folder."""
from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import ZsdError
from .imageio import _file_mode

__all__ = ["staging_dir", "publish"]


@contextlib.contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A fresh hidden folder next to `out` for the new directory's files; removed if the block does not finish."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        # mkdtemp makes a private 0700 folder; the result gets the mode a plain mkdir would give it.
        file_mode = _file_mode()
        os.chmod(tmp, file_mode | (file_mode & 0o444) >> 2)
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
