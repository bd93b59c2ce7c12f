"""How zsd-bench talks and writes: progress lines on stdout, progress bars on stderr, each report file written whole."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from zsdeploy.runtime.files import write_bytes_atomic, write_json_atomic

__all__ = ["progress", "say", "write_report"]


def say(msg: str) -> None:
    print(msg, flush=True)


def progress(**kw: Any) -> Any:
    """A tqdm bar on stderr (stdout stays the report's)."""
    from tqdm import tqdm

    return tqdm(file=sys.stderr, mininterval=1.0, **kw)


def write_report(out: Path, name: str, content: str | dict[str, Any] | list[Any]) -> Path:
    """`out/name`, written whole: JSON for a dict or list (numpy values converted, NaN refused), else the text."""
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        return write_bytes_atomic(out / name, content.encode("utf-8"))
    return write_json_atomic(out / name, content)
