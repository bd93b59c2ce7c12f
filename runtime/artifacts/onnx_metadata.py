"""ONNX `metadata_props`: what an exported graph says about itself (the only writer and reader).

export-model writes it (`encode`, `write_onnx_metadata`, `update_onnx_metadata`); every runtime, build-engine (which
copies it into the engine sidecar verbatim) and zsd-bench read it through `read_onnx_metadata` + `ModelInfo`.

Values are strings (ONNX stores strings): booleans "true"/"false", numbers in decimal, lists as JSON. Parsing is
strict and names the field: "yes" is not a boolean, "[1, 2" is not a list. `zsdeploy_format` versions the
contract; exports made before it existed (format 1) are read the same way, since format 2 only added fields.
Every export records what it was made from: `checkpoint_sha256` (empty for stand-in weights) and `config_sha256`.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ZsdError

FORMAT_KEY = "zsdeploy_format"
FORMAT = "zsdeploy-onnx/2"
KNOWN_FORMATS = ("zsdeploy-onnx/1", FORMAT)  # /1: exports without the key
PRODUCER = "zsdeploy"

REQUIRED_KEYS = ("model", "task", "num_classes", "class_names", "pixel_mean", "min_size_test", "max_size_test",
                 "size_divisibility", "dynamic")
_REEXPORT = "re-export the model with this version of export-model (it writes complete metadata)."


# ------------------------------------------------------------------------------------------------ writing
def encode(values: Mapping[str, object]) -> dict[str, str]:
    """Python values -> metadata strings: bool "true"/"false", numbers as text, lists/dicts as JSON, None -> ""."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif value is None:
            out[key] = ""
        elif isinstance(value, str):
            out[key] = value
        elif isinstance(value, (int, float)):
            out[key] = str(value)
        else:
            out[key] = json.dumps(value)
    return out


def write_onnx_metadata(proto: Any, values: Mapping[str, object], *, producer_version: str = "") -> None:
    """Replace the graph's metadata_props with `values` (plus the format stamp); refuses an incomplete set."""
    missing = [k for k in REQUIRED_KEYS if k not in values]
    if missing:  # a programming error in an exporter, caught before a file is written
        raise ValueError(f"export metadata lacks required keys {missing}")
    del proto.metadata_props[:]
    for key, value in {FORMAT_KEY: FORMAT, **encode(values)}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = PRODUCER
    if producer_version:
        proto.producer_version = producer_version


def update_onnx_metadata(proto: Any, values: Mapping[str, object]) -> None:
    """Set `values` in metadata_props, keeping every other key and the keys' order (precision conversion)."""
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in encode(values).items():
        if key in existing:
            existing[key].value = value
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value


# ------------------------------------------------------------------------------------------------ reading
def metadata_of(proto: Any) -> dict[str, str]:
    """metadata_props of a loaded ModelProto."""
    return {p.key: p.value for p in proto.metadata_props}


# MSDeformAttn lowerings whose graphs hold it as one plugin node (TensorRT plugins; zsdeploy's OpenVINO extension).
PLUGIN_LOWERINGS = ("plugin", "nvidia")


def has_msda_plugin(meta: Mapping[str, str]) -> bool:
    """Whether an export's metadata says MSDeformAttn is a plugin node (`export-model --msda plugin|nvidia`)."""
    return meta.get("msda_lowering", "gridsample") in PLUGIN_LOWERINGS


_READ_CACHE: dict[tuple, dict[str, str]] = {}
_READ_CACHE_SIZE = 8
_READ_LOCK = threading.Lock()  # serving reads from several threads


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """metadata_props of an .onnx file without loading its weights. Parsing still reads the whole protobuf (~0.3 s
    for a 180 MB model, measured), and opening a model asks for it more than once (backend choice, the backend,
    the family), so results are kept per (file, inode, size, mtime) for the process; each call gets its own dict."""
    path = Path(path)
    if not path.is_file():
        raise ZsdError(f"{path} does not exist.", "pass the .onnx file export-model wrote.")
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    with _READ_LOCK:
        hit = _READ_CACHE.get(key)
    if hit is None:
        hit = _parse_onnx_metadata(path)
        with _READ_LOCK:
            _READ_CACHE[key] = hit
            while len(_READ_CACHE) > _READ_CACHE_SIZE:
                _READ_CACHE.pop(next(iter(_READ_CACHE)))
    return dict(hit)


def _parse_onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 (protobuf raises DecodeError, others raise OSError/ValueError)
        raise ZsdError(f"{path} is not a readable ONNX model ({type(e).__name__}: {str(e)[:200]}); it may be "
                       "truncated or not an ONNX file.",
                       "re-run export-model to write it again (exports are written atomically).") from None
    return metadata_of(proto)


class _Fields:
    """Strict typed access to one metadata dict; every error names the field and the file."""

    def __init__(self, meta: Mapping[str, str], source: str) -> None:
        self.meta, self.source = meta, source

    def _bad(self, key: str, want: str) -> ZsdError:
        return ZsdError(f"{self.source}: metadata field '{key}' must be {want}, got {self.meta.get(key)!r}.",
                        _REEXPORT)

    def text(self, key: str, default: str | None = None) -> str:
        if key not in self.meta:
            if default is None:
                raise ZsdError(f"{self.source}: metadata field '{key}' is missing.", _REEXPORT)
            return default
        return self.meta[key]

    def integer(self, key: str, default: int | None = None, *, minimum: int | None = None) -> int:
        raw = self.text(key, None if default is None else str(default))
        try:
            value = int(raw)
        except ValueError:
            raise self._bad(key, "an integer") from None
        if minimum is not None and value < minimum:
            raise self._bad(key, f"an integer >= {minimum}")
        return value

    def number(self, key: str, default: float | None = None) -> float:
        raw = self.text(key, None if default is None else repr(default))
        try:
            return float(raw)
        except ValueError:
            raise self._bad(key, "a number") from None

    def boolean(self, key: str, default: bool | None = None) -> bool:
        raw = self.text(key, None if default is None else ("true" if default else "false"))
        word = raw.strip().lower()
        if word not in ("true", "false"):
            raise self._bad(key, "'true' or 'false'")
        return word == "true"

    def json_list(self, key: str, item: type | tuple[type, ...], default: list | None = None) -> list:
        raw = self.text(key, None if default is None else json.dumps(default))
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        if not isinstance(value, list) or not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            names = item.__name__ if isinstance(item, type) else "/".join(t.__name__ for t in item)
            raise self._bad(key, f"a JSON list of {names}")
        return value


@dataclass(frozen=True)
class ModelInfo:
    """The typed view every runtime uses (from ONNX metadata_props or an engine sidecar's copy of them)."""

    raw: dict[str, str]
    model: str
    task: str
    num_classes: int
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    thing_ids: tuple[int, ...]
    unseen_ids: tuple[int, ...]
    seen_ids: tuple[int, ...]
    pixel_mean: tuple[float, float, float]
    min_size_test: int
    max_size_test: int
    size_divisibility: int
    dynamic: bool
    static_batch: int | None
    static_hw: tuple[int, int] | None
    standin_weights: bool
    format: str = FORMAT

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], source: str) -> ModelInfo:
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise ZsdError(
                f"{source} carries no zsdeploy metadata (missing: {', '.join(missing)}); the runtime cannot know "
                "its classes, resize policy and thresholds.",
                "export the model with `export-model` (or build the engine from such an ONNX with `build-engine`), "
                "which writes this metadata.",
            )
        f = _Fields(meta, source)
        fmt = f.text(FORMAT_KEY, "zsdeploy-onnx/1")
        if fmt not in KNOWN_FORMATS:
            raise ZsdError(f"{source} was written in metadata format {fmt!r}, which this zsdeploy does not know "
                           f"(it reads {', '.join(KNOWN_FORMATS)}).",
                           "upgrade zsdeploy, or re-export the model with this version of export-model.")
        num_classes = f.integer("num_classes", minimum=1)
        class_names = f.json_list("class_names", str)
        if len(class_names) != num_classes:
            raise ZsdError(f"{source}: metadata lists {len(class_names)} class names for num_classes "
                           f"{num_classes}.", _REEXPORT)
        ids = {k: f.json_list(k, int, []) for k in ("thing_ids", "unseen_ids")}
        for key, values in ids.items():
            if any(not 0 <= i < num_classes for i in values):
                raise f._bad(key, f"class ids in 0..{num_classes - 1}")
        seen = (f.json_list("seen_ids", int) if "seen_ids" in meta
                else [i for i in range(num_classes) if i not in set(ids["unseen_ids"])])
        colors = f.json_list("class_colors", list, [])
        if any(len(c) != 3 or not all(isinstance(v, int) for v in c) for c in colors):
            raise f._bad("class_colors", "a JSON list of [r, g, b] integer triples")
        mean = f.json_list("pixel_mean", (int, float))
        if len(mean) != 3:
            raise f._bad("pixel_mean", "three numbers (R, G, B)")
        dynamic = f.boolean("dynamic")
        return cls(
            raw=dict(meta), model=f.text("model"), task=f.text("task"), num_classes=num_classes,
            class_names=tuple(class_names), class_colors=tuple((c[0], c[1], c[2]) for c in colors),
            thing_ids=tuple(ids["thing_ids"]), unseen_ids=tuple(ids["unseen_ids"]), seen_ids=tuple(seen),
            pixel_mean=(float(mean[0]), float(mean[1]), float(mean[2])),
            min_size_test=f.integer("min_size_test", minimum=0), max_size_test=f.integer("max_size_test", minimum=0),
            size_divisibility=f.integer("size_divisibility", minimum=0), dynamic=dynamic,
            static_batch=None if dynamic else f.integer("static_batch", minimum=1) if meta.get("static_batch") else 1,
            static_hw=None if dynamic else (f.integer("static_height", minimum=1),
                                            f.integer("static_width", minimum=1)),
            standin_weights=f.boolean("standin_weights", False), format=fmt,
        )

    def flag(self, key: str, default: bool = False) -> bool:
        """An optional boolean field of the raw metadata, parsed strictly."""
        return _Fields(self.raw, self.model).boolean(key, default)

    @property
    def standin_variant(self) -> str:
        """The stand-in weight rule the export used ("golden" for exports older than the key)."""
        return self.raw.get("standin_variant") or "golden"


def standin_variant_of(metadata: Mapping[str, str]) -> str:
    """The stand-in weight variant an export was made with; exports older than the key used the golden rule."""
    return metadata.get("standin_variant") or "golden"


def fields(meta: Mapping[str, str], source: str) -> _Fields:
    """Strict typed access to other metadata fields (e.g. post-processing thresholds)."""
    return _Fields(meta, source)
