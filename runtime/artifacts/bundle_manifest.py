"""A ZegFormer bundle's `bundle.json`: the only code that writes or reads it.

Format "zsdeploy-bundle/2" (written by export-model --model zegformer):

    {"format": "zsdeploy-bundle/2", "model": "zegformer",
     "graphs": {"segmenter": {"file": "segmenter.onnx", "size": 241234567, "sha256": "<64 hex>",
                              "precision": "fp16", "converter": "onnxconverter-common 1.16.0 ...",
                              "fp32_islands": ["layernorm"]},
                "text_encoder": {...}, "crop_classifier": {...}  (gzss configs only)},
     "embeddings": {"text_embeddings": {...}, "text_embeddings_clip": {...}}  (may be empty),
     "classes": {"names": [...], "seen_ids": [...], "unseen_ids": [...], "thing_ids": [...], "colors": [[r,g,b],...],
                 "source": "configs/classes/..."},
     "prompts": {"ensemble_type": "single", "templates": ["... {} ..."], "clip_templates": [...]},
     "fusion": {"clip_classification": true, "ensembling": true, "ensembling_all_cls": false,
                "ensembling_lambda": 0.667, "gzero_calibrate": 0.1},
     "input": {"dynamic": false, "batch": 1, "height": 640, "width": 640}  (null batch/height/width when dynamic),
     "clip": {"model": "ViT-B/16", "text_dim": 512, "context_length": 77, "tokenizer": "clip-bpe-49408"},
     "made_from": {"config": "x.yaml", "weights": "model_final.pth" | "standin", "standin_weights": false,
                   "weights_sha256": "<hex>" | null, "clip_weights": "ViT-B-16.pt" | "standin",
                   "standin_clip": false, "clip_sha256": "<hex>" | null},
     "exporter": {"version": "zsdeploy-X.Y.Z", "torch_version": "2.x", "opset": 18}}

Pre- and post-processing constants are not repeated here: each graph carries them in its own metadata
(runtime.artifacts.onnx_metadata). TensorRT plans built later next to the graphs are not listed either; each
plan's sidecar records the graph it was built from.

Bundles exported before the format was versioned have no "format" key: their bundle.json is a flat copy of the
graphs' metadata (strings, "true"/"false", lists), here called LEGACY_FORMAT; they are still read, but record no
file sizes or sha256s, so their files can only be checked for existence. Any other "format" is refused.

Parsing is strict: a missing, mistyped or inconsistent field (or an unknown one, in format 2: additions bump the
format) is a ZsdError naming the field and the file, with the fix "re-export the bundle".

The one optional part of format 2: a graph entry's "precision", "converter" and "fp32_islands" (all three or
none; `GraphPrecision`). Exporters since explicit-precision bundles write them for every graph; a graph without
them (bundles exported before) is an fp32 graph, so those bundles read as before.

When the listed files are checked (the choice: cheap checks always, hashing only where it pays):
- `read_bundle_manifest(root)` parses bundle.json only; with `verify=True` it also checks every listed file now
  (exists, recorded size, recorded sha256).
- `BundleManifest.graph_file(root, graph)`, called when a graph is opened: the file exists and has the recorded
  size (one stat). Its sha256 is compared only with `verify=True`: hashing a 240 MB segmenter takes ~0.5 s, which
  every trt-infer start would pay; build-engine passes verify=True (a plan built from a changed graph is
  silently wrong, and the build takes minutes anyway).
- `BundleManifest.embeddings_file(root, kind)`, called when stored embeddings are loaded: size and sha256 always
  (a few MB at most, read whole anyway).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ZsdError
from ..options import GRAPH_PRECISIONS
from ..files import write_json_atomic
from .fields import Fields

__all__ = [
    "BUNDLE_FILE", "FORMAT", "LEGACY_FORMAT", "GRAPHS", "EMBEDDINGS", "REEXPORT",
    "GRAPH_PRECISIONS", "GraphPrecision", "BundleFile", "BundleClasses", "BundlePrompts", "BundleFusion",
    "BundleInput", "BundleClip", "BundleSource", "BundleExporter", "BundleManifest",
    "is_bundle", "bundle_root", "describe_file", "write_bundle_manifest", "read_bundle_manifest",
]

BUNDLE_FILE = "bundle.json"
FORMAT = "zsdeploy-bundle/2"
#: What this module calls the unversioned bundle.json of earlier exports (never written with this name).
LEGACY_FORMAT = "zsdeploy-bundle/1"
GRAPHS = ("segmenter", "text_encoder", "crop_classifier")
EMBEDDINGS = ("text_embeddings", "text_embeddings_clip")
REEXPORT = "re-export the bundle with export-model --model zegformer."
_REQUIRED_GRAPHS = ("segmenter", "text_encoder")
#: Precisions a bundle graph may have (ZegFormer exports fp32 and fp16; int8 is read but not written yet).
_HASH_CHUNK = 1 << 20


# ------------------------------------------------------------------------------------------------ locating
def is_bundle(path: str | os.PathLike) -> bool:
    return (Path(path) / BUNDLE_FILE).is_file()


def bundle_root(path: str | os.PathLike) -> Path | None:
    """The bundle directory of `path`: the directory itself, or the bundle a `segmenter.onnx/.plan` belongs to."""
    p = Path(path)
    if is_bundle(p):
        return p
    if p.is_file() and p.stem == "segmenter" and is_bundle(p.parent):
        return p.parent
    return None


# ------------------------------------------------------------------------------------------------ the contract
@dataclass(frozen=True)
class GraphPrecision:
    """The numeric precision of one bundle graph, as its converter left it (export.precision)."""

    precision: str  # GRAPH_PRECISIONS
    converter: str  # "" for fp32; e.g. "onnxconverter-common 1.16.0 float16.convert_float_to_float16(...)"
    fp32_islands: tuple[str, ...]  # blocks kept in fp32 (export.precision_islands names); () for fp32

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> GraphPrecision:
        """From a graph's ONNX metadata (export.precision.convert writes precision, precision_converter and
        precision_fp32_islands); a graph without the keys is fp32."""
        islands = json.loads(meta.get("precision_fp32_islands") or "[]")
        return cls(meta.get("precision") or "fp32", meta.get("precision_converter", ""),
                   tuple(str(i) for i in islands))

    def describe(self) -> str:
        """e.g. "fp16 (fp32 islands: layernorm, attn_softmax)"."""
        if self.precision == "fp32":
            return "fp32"
        return f"{self.precision} (fp32 islands: {', '.join(self.fp32_islands) or 'none'})"


FP32 = GraphPrecision("fp32", "", ())


@dataclass(frozen=True)
class BundleFile:
    """One file of the bundle, named relative to the bundle directory."""

    file: str
    size: int | None  # bytes; None in LEGACY_FORMAT manifests
    sha256: str | None  # None in LEGACY_FORMAT manifests
    # graphs only: None where not recorded (embeddings; graphs of bundles exported before it was) = fp32
    precision: GraphPrecision | None = None


@dataclass(frozen=True)
class BundleClasses:
    """The default vocabulary (the classes the model was exported with) and its seen/unseen split."""

    names: tuple[str, ...]
    seen_ids: tuple[int, ...]
    unseen_ids: tuple[int, ...]
    thing_ids: tuple[int, ...]
    colors: tuple[tuple[int, int, int], ...]  # empty, or one RGB per class
    source: str


@dataclass(frozen=True)
class BundlePrompts:
    ensemble_type: str  # the config's MODEL.PROMPT_ENSEMBLE_TYPE
    templates: tuple[str, ...]  # the segmenter's prompt ensemble, each with one '{}'
    clip_templates: tuple[str, ...]  # the crop classifier's


@dataclass(frozen=True)
class BundleFusion:
    """How the segmenter's and the CLIP crop classifier's class scores are combined (runtime.zegformer.fuse_scores)."""

    clip_classification: bool
    ensembling: bool
    ensembling_all_cls: bool
    ensembling_lambda: float
    gzero_calibrate: float


@dataclass(frozen=True)
class BundleInput:
    """The image input the graphs were traced for: static batch x 3 x height x width, or dynamic (all None)."""

    dynamic: bool
    batch: int | None
    height: int | None
    width: int | None


@dataclass(frozen=True)
class BundleClip:
    model: str  # e.g. "ViT-B/16"
    text_dim: int
    context_length: int
    tokenizer: str


@dataclass(frozen=True)
class BundleSource:
    """What the bundle was made from (file names, not paths: the bundle may travel)."""

    config: str
    weights: str  # the checkpoint's file name, or "standin"
    standin_weights: bool
    weights_sha256: str | None  # None when unknown (stand-in weights)
    clip_weights: str  # the CLIP file's name, or "standin"
    standin_clip: bool
    clip_sha256: str | None

    def as_metadata(self) -> dict[str, str]:
        """These facts under the graphs' metadata_props keys (code that takes a graph's metadata, e.g.
        export.torch_backend.TorchBackend.zegformer)."""
        return {"config": self.config, "weights": self.weights, "checkpoint_sha256": self.weights_sha256 or "",
                "standin_weights": _b(self.standin_weights), "clip_weights": self.clip_weights,
                "clip_sha256": self.clip_sha256 or "", "standin_clip": _b(self.standin_clip)}


@dataclass(frozen=True)
class BundleExporter:
    version: str
    torch_version: str
    opset: int


@dataclass(frozen=True)
class BundleManifest:
    """Everything bundle.json says; see the module docstring for the JSON and when files are checked."""

    graphs: Mapping[str, BundleFile]  # graph name (GRAPHS) -> its .onnx
    embeddings: Mapping[str, BundleFile]  # EMBEDDINGS name -> its .npy (the default vocabulary, embedded)
    classes: BundleClasses
    prompts: BundlePrompts
    fusion: BundleFusion
    input: BundleInput
    clip: BundleClip
    made_from: BundleSource
    exporter: BundleExporter
    model: str = "zegformer"
    format: str = FORMAT  # LEGACY_FORMAT when read from an unversioned bundle.json

    @property
    def gzss(self) -> bool:
        """The CLIP crop classifier takes part (the parser guarantees its graph is listed then)."""
        return self.fusion.clip_classification

    def graph_precision(self, graph: str) -> GraphPrecision:
        """The precision of `graph` (fp32 where the manifest records none: bundles exported before it did)."""
        entry = self.graphs.get(graph)
        return entry.precision if entry is not None and entry.precision is not None else FP32

    @property
    def precision(self) -> str:
        """The bundle's precision in one word: its segmenter's (the graph that decides it)."""
        return self.graph_precision("segmenter").precision

    def describe_precision(self) -> str:
        """Every graph's precision on one line, e.g. "segmenter fp16 (fp32 islands: layernorm), text_encoder fp32"."""
        return ", ".join(f"{g} {self.graph_precision(g).describe()}" for g in GRAPHS if g in self.graphs)

    def graph_file(self, root: str | os.PathLike, graph: str, *, verify: bool = False) -> Path:
        """The `.onnx` of `graph`, checked: it exists with the recorded size; with verify also the recorded
        sha256 (this reads the whole file: ~0.5 s for a 240 MB segmenter)."""
        if graph not in self.graphs:
            raise ZsdError(f"the bundle {root} has no {graph} graph ({Path(root) / BUNDLE_FILE} lists "
                           f"{sorted(self.graphs)}).", REEXPORT)
        return self._checked(Path(root), f"the {graph} graph", self.graphs[graph], verify)

    def embeddings_file(self, root: str | os.PathLike, kind: str) -> Path:
        """The stored default-vocabulary embeddings `kind`, checked for existence, size and sha256 (small files)."""
        if kind not in self.embeddings:
            raise ZsdError(f"the bundle {root} stores no {kind} (exported without default embeddings).",
                           "compute them from class names (trt-infer does) or re-export with CLIP's BPE file "
                           "(--clip-bpe).")
        return self._checked(Path(root), f"the stored {kind}", self.embeddings[kind], verify=True)

    def verify_files(self, root: str | os.PathLike) -> None:
        """Check every listed file now: exists, recorded size, recorded sha256."""
        for graph in self.graphs:
            self.graph_file(root, graph, verify=True)
        for kind in self.embeddings:
            self.embeddings_file(root, kind)

    def _checked(self, root: Path, what: str, entry: BundleFile, verify: bool) -> Path:
        path = root / entry.file
        manifest = root / BUNDLE_FILE
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ZsdError(f"{manifest} lists {what} as {entry.file}, but {path} does not exist.",
                           "copy the whole bundle directory, or " + REEXPORT) from None
        except OSError as e:
            raise ZsdError(f"{path} ({what} of the bundle) cannot be read ({e.strerror or e}).",
                           "check its permissions, or " + REEXPORT) from None
        changed = ("was changed or replaced after the bundle was exported (or truncated by a copy); the bundle "
                   "would not run what it was exported with.")
        if entry.size is not None and size != entry.size:
            raise ZsdError(f"{path} ({what}) has {size} bytes, but {manifest} recorded {entry.size}: the file "
                           + changed, "restore the original file, or " + REEXPORT)
        if verify and entry.sha256 is not None:
            actual = _sha256_file(path)
            if actual != entry.sha256:
                raise ZsdError(f"{path} ({what}) has sha256 {actual[:16]}..., but {manifest} recorded "
                               f"{entry.sha256[:16]}...: the file " + changed,
                               "restore the original file, or " + REEXPORT)
        return path

    def to_json(self) -> dict[str, Any]:
        """The format-2 JSON object (see the module docstring)."""
        def entry(f: BundleFile) -> dict[str, Any]:
            out: dict[str, Any] = {"file": f.file, "size": f.size, "sha256": f.sha256}
            if f.precision is not None:
                out.update(precision=f.precision.precision, converter=f.precision.converter,
                           fp32_islands=list(f.precision.fp32_islands))
            return out

        def files(m: Mapping[str, BundleFile]) -> dict[str, Any]:
            return {k: entry(f) for k, f in m.items()}

        c, p, f, i, k, s, e = (self.classes, self.prompts, self.fusion, self.input, self.clip, self.made_from,
                               self.exporter)
        return {
            "format": FORMAT,
            "model": self.model,
            "graphs": files(self.graphs),
            "embeddings": files(self.embeddings),
            "classes": {"names": list(c.names), "seen_ids": list(c.seen_ids), "unseen_ids": list(c.unseen_ids),
                        "thing_ids": list(c.thing_ids), "colors": [list(x) for x in c.colors], "source": c.source},
            "prompts": {"ensemble_type": p.ensemble_type, "templates": list(p.templates),
                        "clip_templates": list(p.clip_templates)},
            "fusion": {"clip_classification": f.clip_classification, "ensembling": f.ensembling,
                       "ensembling_all_cls": f.ensembling_all_cls, "ensembling_lambda": f.ensembling_lambda,
                       "gzero_calibrate": f.gzero_calibrate},
            "input": {"dynamic": i.dynamic, "batch": i.batch, "height": i.height, "width": i.width},
            "clip": {"model": k.model, "text_dim": k.text_dim, "context_length": k.context_length,
                     "tokenizer": k.tokenizer},
            "made_from": {"config": s.config, "weights": s.weights, "standin_weights": s.standin_weights,
                          "weights_sha256": s.weights_sha256, "clip_weights": s.clip_weights,
                          "standin_clip": s.standin_clip, "clip_sha256": s.clip_sha256},
            "exporter": {"version": e.version, "torch_version": e.torch_version, "opset": e.opset},
        }


# ------------------------------------------------------------------------------------------------ write
def describe_file(directory: str | os.PathLike, name: str, precision: GraphPrecision | None = None) -> BundleFile:
    """The BundleFile entry of `directory/name` as it is now (size and sha256): for the exporter, after writing;
    `precision` for graphs."""
    path = Path(directory) / name
    return BundleFile(name, path.stat().st_size, _sha256_file(path), precision)


def write_bundle_manifest(stage_dir: str | os.PathLike, manifest: BundleManifest) -> Path:
    """Write `stage_dir/bundle.json` (format 2) and return its path.

    The JSON is parsed back with the reader's rules first, and every listed file must already be in `stage_dir`
    with its recorded size, so the writer never leaves a bundle its readers refuse.
    """
    stage = Path(stage_dir)
    path = stage / BUNDLE_FILE
    entries = (*manifest.graphs.values(), *manifest.embeddings.values())
    for entry in entries:
        if entry.size is None or entry.sha256 is None:
            raise ValueError(f"{entry.file}: a {FORMAT} manifest records every file's size and sha256 "
                             "(describe_file)")
    obj = manifest.to_json()
    _parse(json.loads(json.dumps(obj)), path)
    for entry in entries:
        manifest._checked(stage, entry.file, entry, verify=False)
    return write_json_atomic(path, obj, indent=1)


# ------------------------------------------------------------------------------------------------ read
def read_bundle_manifest(root: str | os.PathLike, *, verify: bool = False) -> BundleManifest:
    """The typed bundle.json of the bundle directory `root` (format 2, or the unversioned LEGACY_FORMAT).

    Strict: anything missing or malformed is a ZsdError naming the field and the file. verify=True also checks
    every listed file now (exists, size, sha256); otherwise files are checked when used (graph_file,
    embeddings_file).
    """
    path = Path(root) / BUNDLE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ZsdError(f"{Path(root)} is not a ZegFormer bundle (no {BUNDLE_FILE}).",
                       "pass the directory export-model --model zegformer wrote.") from None
    except UnicodeDecodeError as e:
        raise ZsdError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}).", REEXPORT) from None
    except OSError as e:
        raise ZsdError(f"{path} cannot be read ({e.strerror or e}).", "check its permissions, or " + REEXPORT) \
            from None
    if not text.strip():
        raise ZsdError(f"{path} is empty (an interrupted copy?).", REEXPORT)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ZsdError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).", REEXPORT) \
            from None
    manifest = _parse(obj, path)
    if verify:
        manifest.verify_files(root)
    return manifest


def _parse(obj: Any, path: Path) -> BundleManifest:
    if not isinstance(obj, dict):
        raise ZsdError(f"{path} holds a JSON {_json_type(obj)}, not the object a bundle manifest is.", REEXPORT)
    if "format" not in obj:
        return _parse_legacy(Fields(obj, where=f"{path}:", fix=REEXPORT, encoded=True,
                                    format_name=LEGACY_FORMAT))
    fmt = obj["format"]
    if fmt != FORMAT:
        raise ZsdError(f"{path}: field 'format' is {fmt!r}; this zsdeploy reads {FORMAT!r} (and unversioned "
                       "bundles of earlier exports).",
                       "use the zsdeploy version that wrote the bundle, or " + REEXPORT)
    return _parse_v2(Fields(obj, where=f"{path}:", fix=REEXPORT, format_name=FORMAT))


def _parse_v2(top: Fields) -> BundleManifest:
    top.string("format")
    model = top.string("model", choices=("zegformer",))
    graphs = _files(top.obj("graphs"), GRAPHS, graphs=True)
    embeddings = _files(top.obj("embeddings"), EMBEDDINGS)
    c = top.obj("classes")
    names = c.str_list("names", nonempty=True)
    classes = BundleClasses(names, c.ids("seen_ids", len(names)), c.ids("unseen_ids", len(names)),
                            c.ids("thing_ids", len(names)), c.colors("colors", len(names)), c.string("source"))
    c.done()
    p = top.obj("prompts")
    prompts = BundlePrompts(p.string("ensemble_type", nonempty=True), p.templates("templates"),
                            p.templates("clip_templates"))
    p.done()
    f = top.obj("fusion")
    fusion = BundleFusion(f.boolean("clip_classification"), f.boolean("ensembling"), f.boolean("ensembling_all_cls"),
                          f.number("ensembling_lambda"), f.number("gzero_calibrate"))
    f.done()
    i = top.obj("input")
    dynamic = i.boolean("dynamic")
    shape = BundleInput(dynamic, *(i.optional_integer(k, none_ok=dynamic, minimum=1)
                                   for k in ("batch", "height", "width")))
    i.done()
    fixed = [k for k in ("batch", "height", "width") if dynamic and getattr(shape, k) is not None]
    if fixed:
        i.fail(fixed[0], "must be null when 'input.dynamic' is true (a dynamic graph has no fixed size)")
    k = top.obj("clip")
    clip = BundleClip(k.string("model", nonempty=True), k.integer("text_dim", minimum=1),
                      k.integer("context_length", minimum=1), k.string("tokenizer", nonempty=True))
    k.done()
    s = top.obj("made_from")
    source = BundleSource(s.string("config", nonempty=True), s.string("weights", nonempty=True),
                          s.boolean("standin_weights"), s.sha256("weights_sha256", none_ok=True),
                          s.string("clip_weights", nonempty=True), s.boolean("standin_clip"),
                          s.sha256("clip_sha256", none_ok=True))
    s.done()
    e = top.obj("exporter")
    exporter = BundleExporter(e.string("version", nonempty=True), e.string("torch_version", nonempty=True),
                              e.integer("opset", minimum=1))
    e.done()
    top.done()
    return _consistent(top, BundleManifest(graphs, embeddings, classes, prompts, fusion, shape, clip, source,
                                           exporter, model, FORMAT))


def _files(fields: Fields, known: tuple[str, ...], *, graphs: bool = False) -> dict[str, BundleFile]:
    out = {}
    for name in fields.keys():
        if name not in known:
            fields.fail(name, f"is not a file this format knows (known: {', '.join(known)})")
        entry = fields.obj(name)
        out[name] = BundleFile(entry.file_name("file"), entry.integer("size", minimum=0), entry.sha256("sha256"),
                               _graph_precision(entry) if graphs else None)
        entry.done()
    fields.done()
    return out


_PRECISION_KEYS = ("precision", "converter", "fp32_islands")


def _graph_precision(entry: Fields) -> GraphPrecision | None:
    """A graph entry's optional precision record: all three keys or none (none = fp32, bundles made before)."""
    present = [k for k in _PRECISION_KEYS if entry.has(k)]
    if not present:
        return None
    for key in _PRECISION_KEYS:
        if key not in present:
            entry.fail(key, f"is missing (a graph that records {present[0]!r} records "
                            f"{', '.join(repr(k) for k in _PRECISION_KEYS)})")
    precision = entry.string("precision", choices=GRAPH_PRECISIONS)
    converter = entry.string("converter")
    islands = entry.str_list("fp32_islands")
    if precision == "fp32" and (converter or islands):
        entry.fail("converter" if converter else "fp32_islands",
                   "must be empty for an fp32 graph (nothing was converted)")
    if precision != "fp32" and not converter.strip():
        entry.fail("converter", f"must name the converter of a {precision} graph")
    return GraphPrecision(precision, converter, islands)


def _parse_legacy(top: Fields) -> BundleManifest:
    """The unversioned bundle.json of earlier exports: zegformer_metadata(graph="bundle") dumped as JSON (strings
    for scalars, "true"/"false" for booleans, JSON lists). Keys it has that are not read here (pre-processing
    constants, descriptions) are the graphs' metadata and ignored."""
    model = top.string("model", choices=("zegformer",))
    files = top.obj("bundle_files")
    graphs, embeddings = {}, {}
    for name in files.keys():
        if name in GRAPHS:
            graphs[name] = BundleFile(files.file_name(name), None, None)
        elif name in EMBEDDINGS:
            embeddings[name] = BundleFile(files.file_name(name), None, None)
        else:
            files.fail(name, f"is not a bundle file this version knows (known: {', '.join(GRAPHS + EMBEDDINGS)})")
    names = top.str_list("class_names", nonempty=True)
    classes = BundleClasses(names, top.ids("seen_ids", len(names)), top.ids("unseen_ids", len(names)),
                            top.ids("thing_ids", len(names)), top.colors("class_colors", len(names)),
                            top.string("class_list_source"))
    prompts = BundlePrompts(top.string("prompt_ensemble_type", nonempty=True), top.templates("prompt_templates"),
                            top.templates("clip_prompt_templates"))
    fusion = BundleFusion(top.boolean("clip_classification"), top.boolean("ensembling"),
                          top.boolean("ensembling_all_cls"), top.number("ensembling_lambda"),
                          top.number("gzero_calibrate"))
    dynamic = top.boolean("dynamic")
    shape = BundleInput(dynamic, *(top.optional_integer(k, none_ok=dynamic, minimum=1)
                                   for k in ("static_batch", "static_height", "static_width")))
    clip = BundleClip(top.string("clip_model", nonempty=True), top.integer("text_dim", minimum=1),
                      top.integer("context_length", minimum=1), top.string("tokenizer", nonempty=True))
    source = BundleSource(top.string("config", nonempty=True), top.string("weights", nonempty=True),
                          top.boolean("standin_weights"), top.sha256("checkpoint_sha256", none_ok=True),
                          top.string("clip_weights", nonempty=True), top.boolean("standin_clip"),
                          top.sha256("clip_sha256", none_ok=True))
    exporter = BundleExporter(top.string("exporter_version", nonempty=True), top.string("torch_version", nonempty=True),
                              top.integer("opset", minimum=1))
    return _consistent(top, BundleManifest(graphs, embeddings, classes, prompts, fusion, shape, clip, source,
                                           exporter, model, LEGACY_FORMAT))


def _consistent(top: Fields, m: BundleManifest) -> BundleManifest:
    """Cross-field rules every exporter has kept; the field named is where the legacy and format-2 spellings
    differ, so the message uses the spelling of the file being read."""
    legacy = m.format == LEGACY_FORMAT
    graphs_key = "bundle_files" if legacy else "graphs"
    for g in _REQUIRED_GRAPHS:
        if g not in m.graphs:
            top.fail(f"{graphs_key}.{g}", "is missing")
    if m.fusion.clip_classification != ("crop_classifier" in m.graphs):
        flag = "clip_classification" if legacy else "fusion.clip_classification"
        top.fail(f"{graphs_key}.crop_classifier", f"must be listed exactly when {flag!r} is true (it is "
                 f"{str(m.fusion.clip_classification).lower()}): the CLIP crop classifier graph")
    seen, unseen = set(m.classes.seen_ids), set(m.classes.unseen_ids)
    if seen & unseen or len(seen) + len(unseen) != len(m.classes.names):
        top.fail("seen_ids" if legacy else "classes.seen_ids",
                 f"and unseen_ids must split the class ids 0..{len(m.classes.names) - 1} (each id in exactly one)")
    return m


# ------------------------------------------------------------------------------------------------ helpers
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _b(v: bool) -> str:
    return "true" if v else "false"


def _json_type(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number")
