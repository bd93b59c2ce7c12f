"""Writing a bundle directory as a whole: built in a hidden sibling folder, then renamed into place.

A reader (or a crash, Ctrl-C, `kill`) sees the old bundle or the complete new one, never a mix: the new files are
written to `.<name>.partial-XXXX` next to the target, and only when all are there does the target become them
(an existing bundle is first renamed aside and deleted afterwards). An interrupted export removes its partial
folder, so nothing is left behind.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..runtime.errors import ZsdError
from ..runtime.imageio import _file_mode
from ..runtime.results_io import check_output_dir

__all__ = ["check_bundle_target", "staging_dir", "publish"]

MANIFEST = "bundle.json"


def check_bundle_target(out: Path) -> None:
    """Refuse, before any slow work, a target that is a file, lies somewhere unwritable, or is a directory with
    other content (replacing it would delete files that are not ours)."""
    if out.exists():
        if not out.is_dir():
            raise ZsdError(f"--output {out} exists and is not a directory.", "choose a new directory name.")
        if any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise ZsdError(f"--output {out} is a directory with other files in it (no {MANIFEST}: not a bundle); "
                           "writing the bundle there would replace them.",
                           "choose a new or empty directory, or an existing bundle to replace.")
    check_output_dir(out.parent if str(out.parent) else Path("."))


@contextlib.contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A fresh hidden folder next to `out` for the new bundle's files; removed if the block does not finish."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        # mkdtemp makes a private 0700 folder; the bundle gets the mode a plain mkdir would give it.
        file_mode = _file_mode()
        os.chmod(tmp, file_mode | (file_mode & 0o444) >> 2)
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _signals_deferred() -> Iterator[list[int]]:
    """Hold SIGINT/SIGTERM while the renames run (an interrupt between them would leave no bundle at all); the
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


def publish(tmp: Path, out: Path) -> bool:
    """Make the staged folder `tmp` the bundle `out` (replacing an existing one as a whole).

    Returns True when an interrupt arrived during the swap (it was held until the bundle was complete)."""
    aside = out.parent / f".{out.name}.old-{os.getpid()}"
    with _signals_deferred() as got:
        try:
            if out.exists():
                os.replace(out, aside)
            try:
                os.replace(tmp, out)
            except BaseException:
                if aside.exists():
                    os.replace(aside, out)  # put the old bundle back: old or new, never neither
                raise
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ZsdError(f"could not put the bundle in place at {out}: {e.strerror or e}.",
                           "check permissions and free space of the output location.") from None
    shutil.rmtree(aside, ignore_errors=True)
    return bool(got)
