#!/usr/bin/env python3
"""Make the installed `tensorrt-stubs` (10.13) readable by mypy.

The stubs are generated from the pybind11 module and ship three defects (see ../shared/docs/ENVIRONMENT.md):

1. parameters named `in` (a Python keyword: a syntax error) in IPluginV2DynamicExt/IPluginV3 methods;
   renamed to `in_` (they are positional in the binding, so no caller spells the name);
2. a parameter without a default after parameters with defaults, a syntax error that pybind11 allows
   (`INetworkDefinition.add_scale_nd(..., power=None, channel_axis)`); `= ...` is added, so mypy treats it as
   optional (callers must still pass it);
3. `import tensorrt_libs` in the package `__init__`s: `tensorrt_libs` is the wheel that carries the shared
   libraries and has no stubs; replaced by a `ModuleType` declaration.

It also adds `py.typed` markers: the stubs install as `tensorrt/__init__.pyi` and `tensorrt_bindings/*.pyi` (not
as a `tensorrt-stubs` package directory), and mypy ignores an installed package without the marker.

The script is idempotent, edits only files listed in the distribution's RECORD, and checks that every stub
parses afterwards. Usage: python scripts/fix_tensorrt_stubs.py [--check]
"""
from __future__ import annotations

import argparse
import ast
import importlib.metadata
import re
import sys
from pathlib import Path

DIST = "tensorrt-stubs"
EXPECTED_PREFIX = "10.13"
PACKAGES = ("tensorrt", "tensorrt_bindings")

# `def f(self, in: T, ...)` -> `in_`; only inside a def's parameter list (docstrings say ":arg in:" too).
_IN_PARAM = re.compile(r"(?<=[(,\s])in(?=\s*:)")
_TRT_LIBS_IMPORT = re.compile(r"^import tensorrt_libs as tensorrt_libs(\r?)$", re.MULTILINE)
_TRT_LIBS_DECL = r"from types import ModuleType as _ModuleType\1\ntensorrt_libs: _ModuleType\1"


def stub_files() -> list[Path]:
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        sys.exit(f"fix_tensorrt_stubs: {DIST} is not installed; run: pip install --no-deps '{DIST}==10.13.*'")
    if not dist.version.startswith(EXPECTED_PREFIX):
        print(f"fix_tensorrt_stubs: warning: {DIST} {dist.version} installed, the fixes were written for "
              f"{EXPECTED_PREFIX}.x", file=sys.stderr)
    files = [Path(str(dist.locate_file(f))) for f in dist.files or () if str(f).endswith(".pyi")]
    if not files:
        sys.exit(f"fix_tensorrt_stubs: {DIST} lists no .pyi files")
    return files


def _fix_in_params(text: str) -> tuple[str, int]:
    count = 0
    out = []
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("def ") and re.search(r"[(,]\s*in\s*:", line):
            line, n = _IN_PARAM.subn("in_", line)
            count += n
        out.append(line)
    return "".join(out), count


def _fix_missing_defaults(text: str) -> tuple[str, int]:
    """Give `= ...` to a parameter without default that follows one with a default (a SyntaxError)."""
    count = 0
    out = []
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("def ") and stripped.endswith(":"):
            try:
                ast.parse(stripped + " ...")
            except SyntaxError:
                fixed = _default_after_default(line)
                if fixed != line:
                    count += 1
                    line = fixed
        out.append(line)
    return "".join(out), count


def _split_params(params: str) -> list[str]:
    """Split a parameter list on top-level commas (annotations contain brackets with commas)."""
    parts, depth, cur = [], 0, []
    for ch in params:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur))
    return parts


def _default_after_default(line: str) -> str:
    head, sep, rest = line.partition("(")
    close = rest.rfind(") ->") if ") ->" in rest else rest.rfind("):")
    if not sep or close < 0:
        return line
    params, tail = rest[:close], rest[close:]
    parts = _split_params(params)
    seen_default = False
    for i, p in enumerate(parts):
        name = p.strip()
        if name.startswith("*"):
            break  # keyword-only parameters may legally lack defaults
        if "=" in _strip_annotation_brackets(name):
            seen_default = True
        elif seen_default and name:
            parts[i] = p.rstrip() + " = ..."
    return head + sep + ",".join(parts) + tail


def _strip_annotation_brackets(p: str) -> str:
    depth, out = 0, []
    for ch in p:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def _fix_tensorrt_libs(text: str) -> tuple[str, int]:
    return _TRT_LIBS_IMPORT.subn(_TRT_LIBS_DECL, text)


def _short(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def fix_file(path: Path, check_only: bool) -> list[str]:
    # newline="" keeps the file's own line endings (the generated stubs use CRLF).
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    new, n_in = _fix_in_params(text)
    new, n_default = _fix_missing_defaults(new)
    new, n_libs = _fix_tensorrt_libs(new)
    notes = []
    if n_in:
        notes.append(f"{_short(path)}: renamed {n_in} parameter(s) `in` -> `in_`")
    if n_default:
        notes.append(f"{_short(path)}: added a default to {n_default} parameter(s) following a defaulted one")
    if n_libs:
        notes.append(f"{_short(path)}: replaced `import tensorrt_libs` by a ModuleType declaration")
    try:
        ast.parse(new, filename=str(path))
    except SyntaxError as e:
        raise SystemExit(f"fix_tensorrt_stubs: {path}:{e.lineno} still does not parse after the fixes: "
                         f"{e.msg}") from None
    if new != text and not check_only:
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(new)
    return notes


def add_markers(files: list[Path], check_only: bool) -> list[str]:
    notes = []
    for pkg_dir in sorted({f.parent for f in files if f.parent.name in PACKAGES}):
        marker = pkg_dir / "py.typed"
        if not marker.exists():
            notes.append(f"{pkg_dir.name}/py.typed: added (mypy reads installed packages only with it)")
            if not check_only:
                marker.write_text("", encoding="utf-8")
    return notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report what would change, change nothing; "
                    "exit 1 if anything needs fixing")
    args = ap.parse_args(argv)
    files = stub_files()
    notes: list[str] = []
    for f in files:
        notes += fix_file(f, args.check)
    notes += add_markers(files, args.check)
    for n in notes:
        print(("would fix: " if args.check else "fixed: ") + n)
    if not notes:
        print(f"fix_tensorrt_stubs: {len(files)} stub files already fixed")
    return 1 if args.check and notes else 0


if __name__ == "__main__":
    sys.exit(main())
