"""OpenVINO's compiled-model cache (CACHE_DIR), made safe to trust.

OpenVINO writes one `<hash>.blob` per (model path, compile config) and re-checks the model file's identity when it
reads one back, and it recompiles when a blob's header is unreadable. It does NOT checksum the weights inside a blob:
measured with openvino 2026.4, a blob with 4 KiB of flipped bytes in its middle loads "from cache" and silently
gives different outputs. So each compile gets its own sub-directory (keyed by model path and settings) and every
blob there a `.sha256` sidecar written after OpenVINO wrote the blob; a blob whose digest does not match (or that
has none) is deleted before OpenVINO sees it, with a note, and the model is compiled again (a few seconds).

Layout: `<root>/<key>/<hash>.blob` + `<hash>.blob.sha256`. Root: `$ZSD_CACHE_DIR/openvino`, else
`~/.cache/zsdeploy/openvino`. The cache is capped (`$ZSD_OPENVINO_CACHE_GB`, default 4 GiB): least recently used
entries go first, so models exported to temporary paths cannot fill the disk.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable

from ..errors import ZsdError
from ..files import make_writable_dir, write_bytes_atomic

DEFAULT_LIMIT_GB = 4.0


def default_cache_root() -> Path:
    base = os.environ.get("ZSD_CACHE_DIR")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "zsdeploy") / "openvino"


def entry_key(model: Path, settings: dict[str, str]) -> str:
    """One directory per (model file, compile settings, OpenVINO version): a blob is only ever checked against
    what wrote it, and a stale entry is one directory to drop."""
    text = "\n".join([str(model.resolve())] + [f"{k}={settings[k]}" for k in sorted(settings)])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _digest(path: Path) -> str:
    from ..files import file_sha256

    return file_sha256(path)


class CompiledModelCache:
    """A per-model entry directory under the cache root, or None when the root cannot be written."""

    def __init__(self, root: Path, key: str, say: Callable[[str], None]) -> None:
        self.root, self.dir, self.say = root, root / key, say

    @classmethod
    def open(cls, root: Path | None, key: str, say: Callable[[str], None]) -> CompiledModelCache | None:
        root = default_cache_root() if root is None else Path(root).expanduser()
        try:
            make_writable_dir(root / key)
        except OSError as e:
            say(f"note: the OpenVINO model cache {root} cannot be written ({e.strerror or e}); compiling without a "
                "cache (every start compiles again). Set ZSD_CACHE_DIR to a writable directory.")
            return None
        return cls(root, key, say)

    def verify(self) -> None:
        """Drop every blob whose sidecar digest is missing or wrong, so OpenVINO recompiles it."""
        for blob in self.dir.glob("*.blob"):
            side = blob.with_name(blob.name + ".sha256")
            try:
                ok = side.is_file() and side.read_text().strip() == _digest(blob)
            except OSError:
                ok = False
            if not ok:
                self.say(f"note: the cached compiled model {blob} is corrupt or incomplete; it is deleted and the "
                         "model compiled again.")
                self.invalidate()
                return

    def invalidate(self) -> None:
        for f in self.dir.iterdir():
            if f.is_file():
                f.unlink(missing_ok=True)

    def seal(self, compiled_now: bool) -> None:
        """After a compile: (re)record the digests of the blobs it wrote (atomically), mark the entry as just used,
        and keep the whole cache under its size cap. A hit from the cache only marks the entry."""
        for blob in self.dir.glob("*.blob") if compiled_now else ():
            side = blob.with_name(blob.name + ".sha256")
            try:
                write_bytes_atomic(side, (_digest(blob) + "\n").encode())
            except (OSError, ZsdError) as e:
                self.say(f"note: could not record a checksum for {blob} ({e}); it will be compiled again next time.")
        self.touch()
        self.prune()

    def touch(self) -> None:
        try:
            os.utime(self.dir)
        except OSError:
            pass

    def prune(self) -> None:
        try:
            limit = float(os.environ.get("ZSD_OPENVINO_CACHE_GB", DEFAULT_LIMIT_GB)) * 2**30
        except ValueError:
            limit = DEFAULT_LIMIT_GB * 2**30
        try:
            entries = [d for d in self.root.iterdir() if d.is_dir()]
            sizes = {d: sum(f.stat().st_size for f in d.iterdir() if f.is_file()) for d in entries}
        except OSError:
            return
        total = sum(sizes.values())
        for d in sorted(entries, key=lambda d: d.stat().st_mtime):  # least recently used first
            if total <= limit:
                break
            if d == self.dir:
                continue
            shutil.rmtree(d, ignore_errors=True)
            total -= sizes[d]
