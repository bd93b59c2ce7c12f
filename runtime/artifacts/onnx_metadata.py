"""ONNX `metadata_props`: what an exported graph says about itself (the only writer and reader).

Every exporter describes its graph as one typed `ExportRecord` (provenance, classes, input, inference settings, and
the family's own facts in `extra`); `write_onnx_metadata` is the one writer (`update_onnx_metadata` changes keys
of a written graph, e.g. precision conversion). Every runtime, build-engine (which copies the strings into the engine
sidecar verbatim) and zsd-bench read it through `read_onnx_metadata` + `ModelInfo`.

Values are strings (ONNX stores strings): booleans "true"/"false", numbers in decimal, lists as JSON. Parsing is
strict and names the field: "yes" is not a boolean, "[1, 2" is not a list. `zsdeploy_format` versions the
contract; exports made before it existed (format 1) are read the same way, since format 2 only added fields.
Every export records what it was made from: `checkpoint_sha256` (empty for stand-in weights) and `config_sha256`.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ZsdError
from .fields import Fields

FORMAT_KEY = "zsdeploy_format"
FORMAT = "zsdeploy-onnx/2"
KNOWN_FORMATS = ("zsdeploy-onnx/1", FORMAT)  # /1: exports without the key
PRODUCER = "zsdeploy"

REQUIRED_KEYS = ("model", "task", "num_classes", "class_names", "pixel_mean", "min_size_test", "max_size_test",
                 "size_divisibility", "dynamic")
_REEXPORT = "re-export the model with this version of export-model (it writes complete metadata)."


# ------------------------------------------------------------------------------------------------ the record
#: fixed parts of the graph contract (README "Graph contract"), written by every exporter
INPUT_FORMAT = "RGB"
INPUT_RANGE = "0..255 float32, not normalised (normalisation is in the graph); pad with pixel_mean"
RESIZE = "ResizeShortestEdge"
MASK_STRIDE = 4


@dataclass(frozen=True)
class Provenance:
    """What an export was made from: file names (not paths: artifacts travel) and digests."""

    exporter_version: str
    torch_version: str
    opset: int  # 0 for an in-memory PyTorch model that was never traced
    weights: str  # the checkpoint's file name, "standin" or "demo"
    checkpoint_sha256: str  # "" for stand-in weights
    standin_weights: bool
    config: str
    config_sha256: str


@dataclass(frozen=True)
class ClassFacts:
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    source: str  # where the list came from, e.g. configs/classes/coco_panoptic_133.json
    thing_ids: tuple[int, ...]
    seen_ids: tuple[int, ...]
    unseen_ids: tuple[int, ...]
    note: str = ""  # why the names are generic, when they are


@dataclass(frozen=True)
class InputFacts:
    dynamic: bool
    batch: int
    height: int
    width: int
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]


@dataclass(frozen=True)
class InferenceSettings:
    """The config's test-time settings the runtime reproduces (resize policy, which outputs, thresholds)."""

    min_size_test: int
    max_size_test: int
    size_divisibility: int
    semantic_on: bool
    instance_on: bool
    panoptic_on: bool
    object_mask_threshold: float
    overlap_threshold: float
    detections_per_image: int
    sem_seg_postprocess_before_inference: bool


@dataclass(frozen=True)
class ExportRecord:
    """Everything an exported graph says about itself; `extra` holds the family's own keys (PADing: the
    MSDeformAttn lowering; ZegFormer: which bundle graph, the CLIP branch and prompts)."""

    model: str
    task: str
    provenance: Provenance
    classes: ClassFacts
    input: InputFacts
    settings: InferenceSettings
    num_queries: int
    extra: Mapping[str, object] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, object]:
        """The record as metadata values (before `encode`); keys of `extra` may not shadow the common ones."""
        p, c, i, s = self.provenance, self.classes, self.input, self.settings
        meta: dict[str, object] = {
            "model": self.model, "task": self.task,
            "exporter_version": p.exporter_version, "torch_version": p.torch_version, "opset": p.opset,
            "weights": p.weights, "checkpoint_sha256": p.checkpoint_sha256, "standin_weights": p.standin_weights,
            "config": p.config, "config_sha256": p.config_sha256,
            "input_format": INPUT_FORMAT, "input_range": INPUT_RANGE,
            "dynamic": i.dynamic,
            "static_batch": "" if i.dynamic else i.batch,
            "static_height": "" if i.dynamic else i.height,
            "static_width": "" if i.dynamic else i.width,
            "pixel_mean": list(i.pixel_mean), "pixel_std": list(i.pixel_std),
            "num_classes": len(c.names), "num_queries": self.num_queries,
            "class_names": list(c.names), "class_colors": [list(x) for x in c.colors],
            "class_list_source": c.source,
            "thing_ids": list(c.thing_ids),
            "stuff_ids": [k for k in range(len(c.names)) if k not in set(c.thing_ids)],
            "seen_ids": list(c.seen_ids), "unseen_ids": list(c.unseen_ids),
            "resize": RESIZE, "mask_stride": MASK_STRIDE,
            "min_size_test": s.min_size_test, "max_size_test": s.max_size_test,
            "size_divisibility": s.size_divisibility,
            "semantic_on": s.semantic_on, "instance_on": s.instance_on, "panoptic_on": s.panoptic_on,
            "object_mask_threshold": s.object_mask_threshold, "overlap_threshold": s.overlap_threshold,
            "detections_per_image": s.detections_per_image,
            "sem_seg_postprocess_before_inference": s.sem_seg_postprocess_before_inference,
        }
        if c.note:
            meta["class_names_note"] = c.note
        clash = sorted(set(meta) & set(self.extra))
        if clash:  # a programming error in an exporter
            raise ValueError(f"ExportRecord.extra repeats common keys {clash}")
        meta.update(self.extra)
        return meta

    def as_strings(self) -> dict[str, str]:
        """The metadata strings exactly as `write_onnx_metadata` stores them (for in-memory models, e.g. the
        PyTorch reference, that never become a file)."""
        return encode(self.to_metadata())


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


def write_onnx_metadata(proto: Any, record: ExportRecord | Mapping[str, object], *,
                        producer_version: str = "") -> None:
    """Replace the graph's metadata_props with the record's values (plus the format stamp); refuses an incomplete
    mapping (a plain mapping is accepted for graphs zsdeploy did not export, e.g. tests' hand-made ones)."""
    values = record.to_metadata() if isinstance(record, ExportRecord) else record
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
        raise ZsdError(f"{path} {'is a directory, not an .onnx file' if path.is_dir() else 'does not exist'}.",
                       "pass the .onnx file export-model wrote (a ZegFormer bundle is a directory with bundle.json).")
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
    return metadata_of(load_onnx_model(path, weights=False))


def load_onnx_model(path: str | Path, *, weights: bool = True) -> Any:
    """An .onnx file as a ModelProto, or one paragraph saying why it is not one (empty, truncated, not ONNX). Always
    parsed as binary protobuf: onnx would otherwise pick a text format from the file's suffix (.json, .txt)."""
    import onnx

    path = Path(path)
    fix = "re-run export-model to write it again (exports are written atomically)."
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ZsdError(f"{path} cannot be read ({e.strerror or e}).", "pass the .onnx file export-model wrote.") \
            from None
    if size == 0:
        raise ZsdError(f"{path} is empty (0 bytes), not an ONNX model.", fix)
    try:
        proto = onnx.load(str(path), format="protobuf", load_external_data=weights)
    except Exception as e:  # noqa: BLE001 (protobuf raises DecodeError, others raise OSError/ValueError)
        raise ZsdError(f"{path} is not a readable ONNX model ({type(e).__name__}: {str(e)[:200]}); it may be "
                       "truncated or not an ONNX file.", fix) from None
    if not proto.graph.node and not proto.graph.input:  # protobuf parses many byte strings as an empty message
        raise ZsdError(f"{path} is not an ONNX model (it parses as one without a graph: another kind of file).",
                       fix)
    return proto


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
        f = fields(meta, source)
        fmt = f.string(FORMAT_KEY, default="zsdeploy-onnx/1")
        if fmt not in KNOWN_FORMATS:
            raise ZsdError(f"{source} was written in metadata format {fmt!r}, which this zsdeploy does not know "
                           f"(it reads {', '.join(KNOWN_FORMATS)}).",
                           "upgrade zsdeploy, or re-export the model with this version of export-model.")
        num_classes = f.integer("num_classes", minimum=1)
        class_names = f.list_of("class_names", str)
        if len(class_names) != num_classes:
            raise ZsdError(f"{source}: metadata lists {len(class_names)} class names for num_classes "
                           f"{num_classes}.", _REEXPORT)
        ids = {k: f.ids(k, num_classes, default="[]", unique=False) for k in ("thing_ids", "unseen_ids")}
        seen = (f.ids("seen_ids", num_classes, unique=False) if "seen_ids" in meta
                else tuple(i for i in range(num_classes) if i not in set(ids["unseen_ids"])))
        colors = f.colors("class_colors", num_classes, default="[]")
        mean = f.numbers("pixel_mean", 3, "three numbers (R, G, B)")
        dynamic = f.boolean("dynamic")
        return cls(
            raw=dict(meta), model=f.string("model"), task=f.string("task"), num_classes=num_classes,
            class_names=tuple(class_names), class_colors=colors,
            thing_ids=ids["thing_ids"], unseen_ids=ids["unseen_ids"], seen_ids=seen,
            pixel_mean=(mean[0], mean[1], mean[2]),
            min_size_test=f.integer("min_size_test", minimum=0), max_size_test=f.integer("max_size_test", minimum=0),
            size_divisibility=f.integer("size_divisibility", minimum=0), dynamic=dynamic,
            static_batch=None if dynamic else f.integer("static_batch", minimum=1) if meta.get("static_batch") else 1,
            static_hw=None if dynamic else (f.integer("static_height", minimum=1),
                                            f.integer("static_width", minimum=1)),
            standin_weights=f.boolean("standin_weights", default=False), format=fmt,
        )

    def flag(self, key: str, default: bool = False) -> bool:
        """An optional boolean field of the raw metadata, parsed strictly."""
        return fields(self.raw, self.model).boolean(key, default=default)

    @property
    def standin_variant(self) -> str:
        """The stand-in weight rule the export used ("golden" for exports older than the key)."""
        return self.raw.get("standin_variant") or "golden"


def standin_variant_of(metadata: Mapping[str, str]) -> str:
    """The stand-in weight variant an export was made with; exports older than the key used the golden rule."""
    return metadata.get("standin_variant") or "golden"


def fields(meta: Mapping[str, str], source: str) -> Fields:
    """Strict typed access to metadata fields (values are strings: runtime.artifacts.fields' encoded mode)."""
    return Fields(meta, where=f"{source}: metadata", fix=_REEXPORT, encoded=True)
