"""Strict, typed field access for every artifact zsdeploy reads: ONNX metadata, bundle.json and engine sidecars.

One reader, so the three formats fail the same way: a ZsdError that names the file, the field (dotted inside
nested objects) and what it must be, with the format's fix. Two encodings:
- JSON values (bundle.json format 2, sidecars): a boolean is `true`, a number is a number, a list is a list;
- encoded (ONNX metadata_props, whose values are all strings, and the unversioned bundle.json that copied them):
  booleans "true"/"false", numbers as decimal text, lists and objects as JSON text (or, in old bundle.json files,
  as JSON values).
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

from ..errors import ZsdError

T = TypeVar("T")
MISSING: Any = object()  # "no default": the field is required

# what a value of these types is called in messages (JSON's names; "str"/"int" kept for encoded lists)
_TYPE_NAMES = {str: "str", int: "int", float: "float", list: "list", dict: "dict"}


class Fields:
    """Typed access to one object of an artifact. `where` leads every message (e.g. "engine sidecar X is
    malformed:"), `fix` ends it; `prefix` is the dotted path of a nested object."""

    def __init__(self, obj: Mapping[str, Any], *, where: str, fix: str, prefix: str = "",
                 encoded: bool = False, format_name: str = "this format") -> None:
        self._obj, self.where, self.fix, self.prefix, self.encoded = obj, where, fix, prefix, encoded
        self.format_name = format_name
        self._used: set[str] = set()

    # ------------------------------------------------------------------------------------------- basics
    def fail(self, key: str, why: str) -> NoReturn:
        raise ZsdError(f"{self.where} field {self.prefix + key!r} {why}.", self.fix)

    def bad(self, key: str, want: str, value: Any = MISSING) -> NoReturn:
        """`key` holds something other than `want` (the value shown as JSON text, so "10" and 10 differ)."""
        self.fail(key, f"must be {want} (got {show(self._obj.get(key) if value is MISSING else value)})")

    def keys(self) -> list[str]:
        return list(self._obj)

    def has(self, key: str) -> bool:
        return key in self._obj

    def raw(self) -> dict[str, Any]:
        return dict(self._obj)

    def get(self, key: str, default: Any = MISSING) -> Any:
        if key not in self._obj:
            if default is MISSING:
                self.fail(key, "is missing")
            return default
        self._used.add(key)
        return self._obj[key]

    def done(self) -> None:
        """A key nobody read is an error, not silently ignored (for formats that list every key they have)."""
        extra = [k for k in self._obj if k not in self._used]
        if extra:
            self.fail(extra[0], f"is not part of {self.format_name}")

    def parsed(self, key: str, what: str, parse: Callable[[Any], T], *, default: Any = MISSING) -> T:
        """The value through a format's own parser; its TypeError/ValueError becomes this field's error."""
        value = self.get(key, _ABSENT)
        if value is _ABSENT:
            if default is MISSING:
                self.fail(key, f"({what}) is missing")
            return default
        try:
            return parse(value)
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            detail = str(e) or type(e).__name__
            self.fail(key, f"must be {what} (got {show(value, 120)}: {detail})")

    # -------------------------------------------------------------------------------------------- scalars
    def string(self, key: str, *, default: Any = MISSING, nonempty: bool = False,
               choices: tuple[str, ...] = ()) -> str:
        v = self.get(key, default)
        if not isinstance(v, str) or (nonempty and not v.strip()):
            self.bad(key, "a non-empty string" if nonempty else "a string", v)
        if choices and v not in choices:
            self.bad(key, " or ".join(repr(c) for c in choices), v)
        return v

    def boolean(self, key: str, *, default: Any = MISSING) -> bool:
        v = self.get(key, default)
        if isinstance(v, bool):
            if self.encoded and key in self._obj:
                self.bad(key, "'true' or 'false'", v)
            return v
        if not self.encoded or not isinstance(v, str) or v.strip().lower() not in ("true", "false"):
            self.bad(key, "'true' or 'false'" if self.encoded else "true or false", v)
        return v.strip().lower() == "true"

    def integer(self, key: str, *, default: Any = MISSING, minimum: int | None = None) -> int:
        value = self.optional_integer(key, default=default, minimum=minimum, none_ok=False)
        assert value is not None
        return value

    def optional_integer(self, key: str, *, default: Any = MISSING, minimum: int | None = None,
                         none_ok: bool = True) -> int | None:
        """An integer; with none_ok also null (encoded: the empty string)."""
        raw = v = self.get(key, default)
        if none_ok and v == ("" if self.encoded else None):
            return None
        if self.encoded and isinstance(v, str):
            try:
                v = int(v)
            except ValueError:
                pass
        if not isinstance(v, int) or isinstance(v, bool) or (minimum is not None and v < minimum):
            want = "an integer" if minimum is None else f"an integer >= {minimum}"
            self.bad(key, want + (" (or empty)" if none_ok and self.encoded else " (or null)" if none_ok else ""),
                     raw)
        return v

    def number(self, key: str, *, default: Any = MISSING) -> float:
        raw = v = self.get(key, default)
        if self.encoded and isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                pass
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            self.bad(key, "a finite number", raw)
        return float(v)

    def sha256(self, key: str, *, none_ok: bool = False) -> str | None:
        v = self.get(key)
        if none_ok and v in (None, ""):
            return None
        if not (isinstance(v, str) and len(v) == 64 and all(ch in "0123456789abcdef" for ch in v)):
            self.bad(key, "a sha256 (64 lowercase hex digits)" + (" or null" if none_ok else ""), v)
        return v

    def file_name(self, key: str) -> str:
        """A file name inside the artifact's directory: no folders, nothing that points outside."""
        v = self.string(key, nonempty=True)
        if v.rsplit("/", 1)[-1] != v or v in (".", "..") or "\\" in v:
            self.bad(key, "a plain file name inside the bundle directory", v)
        return v

    # ---------------------------------------------------------------------------------------- containers
    def _decoded(self, key: str, default: Any) -> Any:
        v = self.get(key, default)
        if self.encoded and isinstance(v, str):
            try:
                return json.loads(v)
            except ValueError:
                return _ABSENT  # not JSON: reported by the caller as the wrong kind
        return v

    def obj(self, key: str) -> Fields:
        v = self._decoded(key, MISSING)
        if not isinstance(v, dict):
            self.bad(key, "a JSON object")
        return Fields(v, where=self.where, fix=self.fix, prefix=f"{self.prefix}{key}.", encoded=self.encoded,
                      format_name=self.format_name)

    def list_of(self, key: str, item: type | tuple[type, ...], *, default: Any = MISSING,
                nonempty: bool = False) -> list:
        """A list whose items are all `item` (never bool for numbers; non-empty text for str)."""
        v = self._decoded(key, default)
        ok = isinstance(v, list) and all(isinstance(x, item) and not isinstance(x, bool)
                                         and (not isinstance(x, str) or x.strip()) for x in v)
        if not ok or (nonempty and not v):
            names = "/".join(_TYPE_NAMES.get(t, t.__name__) for t in (item if isinstance(item, tuple) else (item,)))
            self.bad(key, ("a non-empty " if nonempty else "a ") + ("JSON " if self.encoded else "")
                     + f"list of {names}")
        return v

    def str_list(self, key: str, *, nonempty: bool = False) -> tuple[str, ...]:
        return tuple(self.list_of(key, str, nonempty=nonempty))

    def templates(self, key: str) -> tuple[str, ...]:
        v = self.str_list(key, nonempty=True)
        bad = [t for t in v if t.count("{}") != 1]
        if bad:
            self.bad(key, "prompt templates each with '{}' exactly once", bad[0])
        return v

    def ids(self, key: str, num_classes: int, *, default: Any = MISSING, unique: bool = True) -> tuple[int, ...]:
        """Class ids in 0..num_classes-1."""
        v = self.list_of(key, int, default=default)
        out = [x for x in v if not 0 <= x < num_classes]
        if out:
            self.bad(key, f"class ids in 0..{num_classes - 1} (the class list has {num_classes} names)", out[0])
        if unique and len(set(v)) != len(v):
            self.bad(key, "a list without repeated ids", v)
        return tuple(v)

    def colors(self, key: str, num_classes: int, *, default: Any = MISSING) -> tuple[tuple[int, int, int], ...]:
        """[r, g, b] triples (0..255), one per class or none."""
        v = self._decoded(key, default)
        rgb = (isinstance(v, list) and all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(x, int) and not isinstance(x, bool)
                                                        and 0 <= x <= 255 for x in c) for c in v))
        if not rgb or len(v) not in (0, num_classes):
            self.bad(key, f"a list of [r, g, b] (0..255), one per class ({num_classes}) or none")
        return tuple((c[0], c[1], c[2]) for c in v)

    def numbers(self, key: str, length: int, what: str) -> tuple[float, ...]:
        v = self.list_of(key, (int, float))
        if len(v) != length:
            self.bad(key, what)
        return tuple(float(x) for x in v)


_ABSENT: Any = object()


def show(v: Any, limit: int = 60) -> str:
    """A value as JSON text (so "10" and 10 differ), cut to one line."""
    try:
        text = json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."
