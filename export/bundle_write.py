"""A ZegFormer bundle directory is written as a whole (runtime.files: staged in `.<name>.partial-*` next to the
target, then swapped into place); this module adds the bundle's own check of the target before any slow work."""
from __future__ import annotations

from pathlib import Path

from ..runtime.artifacts.bundle_manifest import BUNDLE_FILE
from ..runtime.files import publish, staging_dir
from ..runtime.errors import ZsdError
from ..runtime.files import check_output_dir

__all__ = ["check_bundle_target", "staging_dir", "publish"]


def check_bundle_target(out: Path) -> None:
    """Refuse, before any slow work, a target that is a file, lies somewhere unwritable, or is a directory with
    other content (replacing it would delete files that are not ours)."""
    if out.exists():
        if not out.is_dir():
            raise ZsdError(f"--output {out} exists and is not a directory.", "choose a new directory name.")
        if any(out.iterdir()) and not (out / BUNDLE_FILE).is_file():
            raise ZsdError(f"--output {out} is a directory with other files in it (no {BUNDLE_FILE}: not a bundle); "
                           "writing the bundle there would replace them.",
                           "choose a new or empty directory, or an existing bundle to replace.")
    check_output_dir(out.parent if str(out.parent) else Path("."))
