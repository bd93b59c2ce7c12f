"""Engine building for `build-engine`: ONNX -> TensorRT `.plan` + JSON sidecar (TensorRT 10 Python API).

Polygraphy-style: small loaders (`inspect_onnx`, `import_tensorrt`, `load_plugin_library`, `make_calibrator`)
composed by `build_engine`. Everything that can be checked without TensorRT (files, metadata, plugin library
path, profile, calibration inputs) is checked first in `preflight`, so a wrong invocation fails in a second with
a clear message, also on a machine without TensorRT.

The sidecar (`<plan>.json`) makes the engine self-describing like the ONNX (DESIGN.md): it carries the ONNX
metadata plus TensorRT version, GPU name / compute capability, precision, optimisation profiles and plugin
library; `read_sidecar` is what the TensorRT backend checks before it deserialises anything.
"""
from __future__ import annotations

import ctypes
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from .cuda_utils import DeviceInfo
from .engine_precision import BUILDER_FLAGS, PLAIN_FP32, PRECISIONS, PrecisionPlan, check_caps, graph_precision, \
    network_flags, resolve_precision, tensorrt_caps
from .errors import ZsdError
from .metadata import ModelInfo

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = [
    "BuildOptions",
    "BuildResult",
    "EngineSidecar",
    "OnnxModel",
    "PluginSpec",
    "ShapeRange",
    "build_engine",
    "default_profile",
    "import_tensorrt",
    "inspect_onnx",
    "load_plugin_library",
    "make_sidecar",
    "parse_profile",
    "preflight",
    "read_sidecar",
    "sidecar_path",
    "write_sidecar",
]

ENGINE_SUFFIXES = (".plan", ".engine", ".trt")
SIDECAR_FORMAT = "zsdeploy-engine/1"
MIN_TENSORRT = (10, 0)
BUILDER_VERSION = "zsdeploy-0.1.0"

Say = Callable[[str], None]


@dataclass(frozen=True)
class PluginSpec:
    """A TensorRT plugin creator as the ONNX parser looks it up (op type, plugin_version, plugin_namespace)."""

    name: str
    version: str
    namespace: str

    def __str__(self) -> str:
        return f"{self.name} v{self.version}" + (f" (namespace '{self.namespace}')" if self.namespace else "")


# What `export-model --msda plugin|nvidia` writes (export/plugin_lowering.py; kept in sync by the tests).
ZSD_PLUGIN = PluginSpec("MSDeformAttn", "1", "zsdeploy")
NVIDIA_PLUGIN = PluginSpec("MultiscaleDeformableAttnPlugin_TRT", "2", "")
NVIDIA_PLUGIN_MIN_TENSORRT = (10, 11)  # the IPluginV3 version "2" of NVIDIA's plugin
PLUGIN_LIBRARY_NAME = "libzsdeploy_plugins.so"
_KNOWN_PLUGINS = {ZSD_PLUGIN.name: ZSD_PLUGIN, NVIDIA_PLUGIN.name: NVIDIA_PLUGIN}


# ----------------------------------------------------------------------------------------------- shapes


Shape = tuple[int, ...]


@dataclass(frozen=True)
class ShapeRange:
    """min / opt / max of one input in an optimisation profile."""

    min: Shape
    opt: Shape
    max: Shape

    def as_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, d: dict[str, Sequence[int]]) -> ShapeRange:
        return cls(tuple(int(x) for x in d["min"]), tuple(int(x) for x in d["opt"]), tuple(int(x) for x in d["max"]))

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(lo <= s <= hi for s, lo, hi in zip(shape, self.min, self.max))


Profile = dict[str, ShapeRange]


def _fmt(shape: Sequence[int | None]) -> str:
    return "x".join("?" if s is None else str(s) for s in shape)


def parse_profile(values: Iterable[str]) -> Profile:
    """Parse `--profile NAME:MIN:OPT:MAX` (shapes as 1x3x512x512), one per input."""
    profile: Profile = {}
    for text in values:
        parts = text.rsplit(":", 3)
        if len(parts) != 4 or not parts[0]:
            raise ZsdError(f"--profile {text!r} is not NAME:MIN:OPT:MAX.",
                           "write e.g. --profile images:1x3x512x512:1x3x800x1216:2x3x1344x1344 (one per input).")
        name, *shapes = parts
        try:
            mn, opt, mx = (tuple(int(d) for d in s.lower().split("x")) for s in shapes)
        except ValueError:
            raise ZsdError(f"--profile {text!r}: shapes must be integers joined by 'x'.",
                           "write e.g. --profile images:1x3x512x512:1x3x800x1216:2x3x1344x1344.") from None
        if name in profile:
            raise ZsdError(f"--profile gives input {name!r} twice.", "pass one --profile per input.")
        if not len(mn) == len(opt) == len(mx):
            raise ZsdError(f"--profile {text!r}: min, opt and max have different ranks.",
                           "give all three shapes with the same number of dimensions.")
        if any(d < 1 for d in mn) or any(not a <= b <= c for a, b, c in zip(mn, opt, mx)):
            raise ZsdError(f"--profile {text!r}: every dimension needs 1 <= min <= opt <= max.",
                           "order the three shapes as min:opt:max.")
        profile[name] = ShapeRange(mn, opt, mx)
    return profile


# ------------------------------------------------------------------------------------------- ONNX model


@dataclass(frozen=True)
class PluginNode:
    node_name: str
    spec: PluginSpec


@dataclass(frozen=True)
class OnnxModel:
    """What build-engine needs to know about an ONNX file before TensorRT sees it."""

    path: Path
    metadata: dict[str, str]
    info: ModelInfo
    inputs: dict[str, tuple[int | None, ...]]
    plugin_nodes: tuple[PluginNode, ...]
    precision: str = "fp32"  # as the graph states it (engine_precision.graph_precision)

    @property
    def plugins(self) -> tuple[PluginSpec, ...]:
        return tuple(dict.fromkeys(n.spec for n in self.plugin_nodes))


def _graphs(graph: onnx.GraphProto) -> Iterable[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for g in attr.graphs:
                yield from _graphs(g)


def _plugin_spec(node: onnx.NodeProto) -> PluginSpec | None:
    known = _KNOWN_PLUGINS.get(node.op_type)
    if known is None:
        return None
    attrs = {a.name: a.s.decode() for a in node.attribute if a.type == onnx.AttributeProto.STRING}
    # The parser's defaults when an attribute is absent: version "1", namespace "".
    return PluginSpec(node.op_type, attrs.get("plugin_version", "1"), attrs.get("plugin_namespace", ""))


def inspect_onnx(path: str | Path) -> OnnxModel:
    """Metadata, inputs and plugin nodes of an ONNX file (weights are not loaded)."""
    path = Path(path)
    if not path.is_file():
        raise ZsdError(f"ONNX file {path} does not exist.", "pass the .onnx written by export-model.")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 (protobuf DecodeError, OSError, ...)
        raise ZsdError(f"{path} is not a readable ONNX model ({type(e).__name__}: {str(e)[:200]}).",
                       "re-run export-model to write it again.") from None
    metadata = {p.key: p.value for p in proto.metadata_props}
    info = ModelInfo.from_metadata(metadata, str(path))
    initializers = {i.name for i in proto.graph.initializer}
    inputs: dict[str, tuple[int | None, ...]] = {}
    for vi in proto.graph.input:
        if vi.name in initializers:
            continue
        dims = vi.type.tensor_type.shape.dim
        inputs[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    nodes = []
    for graph in _graphs(proto.graph):
        for node in graph.node:
            spec = _plugin_spec(node)
            if spec is not None:
                nodes.append(PluginNode(node.name or node.output[0], spec))
    return OnnxModel(path, metadata, info, inputs, tuple(nodes), graph_precision(proto, metadata))


def _round_up(x: int, d: int) -> int:
    return -(-x // d) * d if d > 1 else x


# Dynamic non-image inputs of ZegFormer bundles (see export/zegformer_export.py) and their default ranges.
TEXT_INPUTS = ("text_embeddings", "text_embeddings_clip")  # [C, D]: the vocabulary size C is chosen at run time
MIN_MAX_CLASSES = 1024  # default profile max for C (ADE-847 fits); larger vocabularies need --profile
TEXT_ENCODER_ROWS = 256  # prompts per text-encoder call (runtime.prompts.class_text_embeddings batch_size)


def _image_range(info: ModelInfo, batch: int) -> ShapeRange:
    """[N,3,H,W] range from the resize policy (see default_profile)."""
    div = max(info.size_divisibility, 1)
    short, long_ = info.min_size_test, info.max_size_test
    # detectron2's ResizeShortestEdge of a 427x640 image (same arithmetic as runtime.preprocess.resized_shape).
    scale = short / 427
    oh, ow = float(short), 640 * scale
    if max(oh, ow) > long_:
        f = long_ / max(oh, ow)
        oh, ow = oh * f, ow * f
    opt_hw = (_round_up(int(oh + 0.5), div), _round_up(int(ow + 0.5), div))
    max_hw = (_round_up(long_, div),) * 2
    return ShapeRange((batch, 3, div, div), (batch, 3, *opt_hw), (batch, 3, *max_hw))


def default_profile(model: OnnxModel, names: Iterable[str] | None = None) -> Profile:
    """The profile used when no --profile is given.

    Static inputs: their shape. The dynamic image input ([N,3,H,W]): batch 1; H and W from the resize policy in
    the metadata: min = size_divisibility (any image the pre-processing produces is accepted), opt = the padded
    size of a 640x427 photo (COCO's most common shape) after ResizeShortestEdge(min_size_test, max_size_test), max
    = max_size_test rounded up to size_divisibility on both sides. ZegFormer bundle inputs: text embeddings
    [C, D] with C in 1..max(num_classes, 1024) (opt: the default vocabulary's size); token_ids [N, L] with N in
    1..256 and L in 2..77 (opt 256 x 16); image_sizes [N, 2] and mask_logits [N, Q, H/4, W/4] follow the image
    range. Other dynamic inputs need --profile.
    """
    info = model.info
    profile: Profile = {}
    image = model.inputs.get("images")
    batch = image[0] if image is not None and image[0] is not None else 1
    for name in model.inputs if names is None else names:
        dims = model.inputs[name]
        if all(d is not None for d in dims):
            static = tuple(int(d) for d in dims if d is not None)
            profile[name] = ShapeRange(static, static, static)
            continue
        if name in TEXT_INPUTS and len(dims) == 2 and dims[1] is not None:
            d, c = int(dims[1]), info.num_classes
            profile[name] = ShapeRange((1, d), (c, d), (max(c, MIN_MAX_CLASSES), d))
        elif name == "token_ids" and len(dims) == 2:
            n_ctx = dims[1] or 77
            profile[name] = ShapeRange((1, min(2, n_ctx)), (TEXT_ENCODER_ROWS, min(16, n_ctx)),
                                       (TEXT_ENCODER_ROWS, n_ctx))
        elif name == "image_sizes" and len(dims) == 2:
            profile[name] = ShapeRange((batch, 2), (batch, 2), (batch, 2))
        elif name == "mask_logits" and len(dims) == 4 and dims[1] is not None:
            img = _image_range(info, batch)
            q = int(dims[1])
            profile[name] = ShapeRange(*((s[0], q, s[2] // 4, s[3] // 4) for s in (img.min, img.opt, img.max)))
        elif len(dims) == 4 and dims[1] in (3, None):
            profile[name] = _image_range(info, dims[0] if dims[0] is not None else 1)
        else:
            raise ZsdError(f"input {name!r} has dynamic shape {_fmt(dims)} and no default profile.",
                           f"pass --profile {name}:MIN:OPT:MAX.")
    return profile


def resolve_profile(model: OnnxModel, overrides: Profile) -> Profile:
    """Default profile with --profile overrides, checked against the ONNX inputs."""
    unknown = sorted(set(overrides) - set(model.inputs))
    if unknown:
        raise ZsdError(f"--profile names input(s) {unknown} that {model.path.name} does not have.",
                       f"its inputs are {sorted(model.inputs)}.")
    profile = default_profile(model, [n for n in model.inputs if n not in overrides])
    profile.update(overrides)
    div = max(model.info.size_divisibility, 1)
    for name, rng in overrides.items():
        dims = model.inputs[name]
        if len(rng.min) != len(dims):
            raise ZsdError(f"--profile for {name!r} has rank {len(rng.min)}, the input has shape {_fmt(dims)}.",
                           f"give {len(dims)} dimensions.")
        for axis, d in enumerate(dims):
            if d is not None and not rng.min[axis] == rng.opt[axis] == rng.max[axis] == d:
                what = "the model was exported with a static shape" if all(x is not None for x in dims) else \
                    f"dimension {axis} is fixed"
                raise ZsdError(f"--profile for {name!r} asks for {_fmt(rng.min)}..{_fmt(rng.max)} but {what}: "
                               f"{_fmt(dims)}.",
                               "drop --profile (the static shape is used), or re-export with export-model --dynamic.")
        if len(dims) == 4 and name == model.metadata.get("input_name", name):
            for shape in (rng.min, rng.opt, rng.max):
                if shape[2] % div or shape[3] % div:
                    raise ZsdError(f"--profile for {name!r}: H and W must be multiples of {div} (the model's "
                                   f"size_divisibility), got {_fmt(shape)}.",
                                   f"round them to multiples of {div}.")
    return profile


# ----------------------------------------------------------------------------------------- build options


@dataclass
class BuildOptions:
    onnx: Path
    output: Path
    precision: str | None = None  # None: as the graph states it (fp32 for a plain export)
    calib_images: Path | None = None
    calib_cache: Path | None = None
    calib_max_images: int = 512
    profile: Profile = field(default_factory=dict)
    plugin_lib: Path | None = None
    workspace_mb: int = 4096
    timing_cache: Path | None = None
    device: int = 0
    verbose: bool = False


@dataclass(frozen=True)
class BuildPlan:
    """The result of `preflight`: everything decided before TensorRT is imported."""

    options: BuildOptions
    model: OnnxModel
    profile: Profile
    calib_cache: Path | None
    calib_files: tuple[Path, ...]
    precision: PrecisionPlan = PrecisionPlan("fp32", PLAIN_FP32)


def preflight(opts: BuildOptions) -> BuildPlan:
    """All checks that need no TensorRT, cheapest first (files, metadata, plugin library, precision, profile)."""
    if opts.precision is not None and opts.precision not in PRECISIONS:
        raise ZsdError(f"--precision {opts.precision} is unknown.", f"choose one of {', '.join(PRECISIONS)}.")
    if opts.output.suffix not in ENGINE_SUFFIXES:
        raise ZsdError(f"--output {opts.output} should end in {' / '.join(ENGINE_SUFFIXES)}.",
                       f"use --output {opts.output.with_suffix('.plan')}.")
    model = inspect_onnx(opts.onnx)
    if opts.output.resolve() == opts.onnx.resolve():
        raise ZsdError("--output is the ONNX file itself.", "choose another path for the engine.")
    if opts.plugin_lib is not None:
        if not opts.plugin_lib.exists():
            raise ZsdError(f"plugin library {opts.plugin_lib} does not exist.",
                           f"build plugins_trt (cmake -S plugins_trt -B build && cmake --build build) and pass the "
                           f"path of {PLUGIN_LIBRARY_NAME} to --plugin-lib.")
        if not opts.plugin_lib.is_file():
            raise ZsdError(f"plugin library {opts.plugin_lib} is not a file.",
                           f"pass the path of {PLUGIN_LIBRARY_NAME} itself, not its directory.")
    ours = [n for n in model.plugin_nodes if n.spec.name == ZSD_PLUGIN.name]
    if ours and opts.plugin_lib is None:
        raise ZsdError(f"{opts.onnx.name} has {len(ours)} {ZSD_PLUGIN.name} plugin node(s) (exported with --msda "
                       f"plugin, e.g. {ours[0].node_name!r}) and no --plugin-lib was given, so TensorRT cannot "
                       "create them.",
                       f"pass --plugin-lib path/to/{PLUGIN_LIBRARY_NAME} (built from plugins_trt/), or export with "
                       "--msda nvidia (TensorRT >= 10.11's built-in plugin) or --msda gridsample.")
    if opts.workspace_mb <= 0:
        raise ZsdError(f"--workspace {opts.workspace_mb} MiB must be positive.", "pass e.g. --workspace 4096.")
    if opts.timing_cache is not None:
        if opts.timing_cache.exists() and not opts.timing_cache.is_file():
            raise ZsdError(f"--timing-cache {opts.timing_cache} is not a file.", "pass a file path.")
        if not opts.timing_cache.parent.is_dir():
            raise ZsdError(f"directory of --timing-cache {opts.timing_cache} does not exist.", "create it first.")
    pplan = resolve_precision(opts.precision, model.precision, onnx_name=opts.onnx.name,
                              calibration_given=opts.calib_images is not None or opts.calib_cache is not None)
    calib_cache: Path | None = None
    calib_files: tuple[Path, ...] = ()
    if pplan.mode == BUILDER_FLAGS and pplan.precision == "int8":
        calib_cache = opts.calib_cache or opts.output.with_suffix(".calib")
        if opts.calib_images is not None:
            from .imageio import list_images

            if not opts.calib_images.is_dir():
                raise ZsdError(f"--calib-images {opts.calib_images} is not a directory.",
                               "pass a folder of representative images (a few hundred).")
            calib_files = tuple(list_images(opts.calib_images)[: max(opts.calib_max_images, 1)])
        elif not calib_cache.is_file():
            raise ZsdError("--precision int8 needs calibration data: no --calib-images and no calibration cache "
                           f"{calib_cache}.",
                           "pass --calib-images DIR (representative images), or --calib-cache FILE from an earlier "
                           "build.")
    elif opts.calib_images is not None or opts.calib_cache is not None:
        raise ZsdError(f"--calib-images / --calib-cache are for --precision int8, not {pplan.precision}.",
                       "drop them, or add --precision int8.")
    profile = resolve_profile(model, opts.profile)
    return BuildPlan(opts, model, profile, calib_cache, calib_files, pplan)


# -------------------------------------------------------------------------------------------- TensorRT


def import_tensorrt() -> Any:
    """`import tensorrt`, with an actionable error where it is missing or too old."""
    how = ("On x86-64 Linux/Windows: pip install tensorrt (NVIDIA's wheels, matching your CUDA major version, e.g. "
           "tensorrt-cu12), or install the TensorRT tar/deb packages from developer.nvidia.com. On Jetson: JetPack "
           "ships TensorRT (python3-libnvinfer); create the virtual environment with --system-site-packages so it "
           "is visible.")
    try:
        import tensorrt as trt_mod
    except ModuleNotFoundError as e:
        if e.name != "tensorrt":  # the package is there but one of its own imports is missing
            raise ZsdError(f"TensorRT's Python package is installed but fails to import ({e}).", how) from None
        raise ZsdError("TensorRT is not installed: there is no `tensorrt` Python package.", how) from None
    except ImportError as e:  # e.g. libnvinfer.so not found: installed, but broken
        raise ZsdError(f"TensorRT's Python package is installed but fails to import ({e}).", how) from None
    if not hasattr(trt_mod, "Builder"):
        # `tensorrt-stubs` alone installs tensorrt/__init__.pyi: Python then imports an empty namespace package.
        raise ZsdError("TensorRT is not installed: `import tensorrt` found only type stubs (tensorrt-stubs), not "
                       "the library.", how)
    version = _version_tuple(trt_mod.__version__)
    if version < MIN_TENSORRT:
        raise ZsdError(f"TensorRT {trt_mod.__version__} is too old; zsdeploy uses the TensorRT 10 API "
                       "(named I/O tensors, execute_async_v3, IPluginV3).", "install TensorRT 10 or newer. " + how)
    return trt_mod


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def make_logger(verbose: bool = False, say: Say | None = None) -> trt.ILogger:
    """A TensorRT logger that prints warnings+ (all with `verbose`) and keeps the errors for our messages."""
    import tensorrt as trt

    class ZsdLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.min_print = trt.ILogger.Severity.VERBOSE if verbose else trt.ILogger.Severity.WARNING

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)
            if int(severity) <= int(self.min_print):  # lower value = more severe
                line = f"[TensorRT] [{severity.name}] {msg}"
                if say is not None:
                    say(line)
                else:
                    print(line, file=sys.stderr, flush=True)

    return ZsdLogger()


def _logged_errors(logger: trt.ILogger) -> list[str]:
    return list(getattr(logger, "errors", []))


_LOADED_LIBRARIES: dict[str, str] = {}


def load_plugin_library(path: Path, logger: trt.ILogger) -> str:
    """Make the plugin creators of `path` known to TensorRT's registry; returns how it was loaded.

    First `IPluginRegistry.load_library` (the library exports getCreators/setLoggerFinder, like
    `trtexec --dynamicPlugins`); where that fails, dlopen it with RTLD_GLOBAL and call its
    `zsdeployInitPlugins(logger, namespace)` registration function (libraries with static registration need only
    the dlopen).
    """
    import tensorrt as trt

    key = str(path.resolve())
    if key in _LOADED_LIBRARIES:  # loading twice would register the creators twice
        return _LOADED_LIBRARIES[key]
    registry: trt.IPluginRegistry = trt.get_plugin_registry()  # the stub declares no return type
    first_error = ""
    try:
        handle = registry.load_library(str(path))
        if handle is not None:
            _LOADED_LIBRARIES[key] = "IPluginRegistry.load_library"
            return _LOADED_LIBRARIES[key]
        first_error = "load_library returned no handle"
    except Exception as e:  # noqa: BLE001 (the binding raises RuntimeError/TypeError depending on version)
        first_error = f"{type(e).__name__}: {e}"
    try:
        lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        raise ZsdError(f"plugin library {path} could not be loaded: {e} (IPluginRegistry.load_library: "
                       f"{first_error}).",
                       "check that it was built for this TensorRT/CUDA version and architecture (ldd shows missing "
                       "dependencies); rebuild plugins_trt against this TensorRT.") from None
    init = getattr(lib, "zsdeployInitPlugins", None)
    if init is not None:
        init.restype = ctypes.c_bool
        init.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        if not init(None, ZSD_PLUGIN.namespace.encode()):
            raise ZsdError(f"plugin library {path}: zsdeployInitPlugins failed ({'; '.join(_logged_errors(logger))}).",
                           "see the messages above; rebuild plugins_trt against this TensorRT version.")
        _LOADED_LIBRARIES[key] = "ctypes + zsdeployInitPlugins"
    else:
        _LOADED_LIBRARIES[key] = "ctypes (static registration)"
    return _LOADED_LIBRARIES[key]


def require_creators(plugins: Iterable[PluginSpec], plugin_lib: Path | None, logger: trt.ILogger) -> None:
    """Fail before parsing when a plugin the graph needs has no creator in the registry."""
    import tensorrt as trt

    registry: trt.IPluginRegistry = trt.get_plugin_registry()  # the stub declares no return type
    for spec in plugins:
        if spec.name == NVIDIA_PLUGIN.name:
            if _version_tuple(trt.__version__) < NVIDIA_PLUGIN_MIN_TENSORRT:
                raise ZsdError(f"the graph uses {spec} (exported with --msda nvidia), which needs TensorRT >= "
                               f"{'.'.join(map(str, NVIDIA_PLUGIN_MIN_TENSORRT))}; this is TensorRT {trt.__version__}.",
                               "upgrade TensorRT, or export with --msda plugin and pass --plugin-lib.")
            trt.init_libnvinfer_plugins(logger, "")
        if registry.get_creator(spec.name, spec.version, spec.namespace) is None:
            source = f"plugin library {plugin_lib}" if plugin_lib else "TensorRT's built-in plugins"
            available = sorted({_creator_text(c) for c in registry.all_creators
                                if spec.name.lower() in str(getattr(c, "name", "")).lower()})
            raise ZsdError(f"no TensorRT plugin creator {spec} after loading {source}"
                           + (f"; registered: {', '.join(available)}" if available else "") + ".",
                           f"pass --plugin-lib path/to/{PLUGIN_LIBRARY_NAME} built from this checkout's plugins_trt/"
                           if spec.name == ZSD_PLUGIN.name else
                           "use TensorRT >= 10.11 (its libnvinfer_plugin has this plugin), or export with "
                           "--msda plugin.")


def _creator_text(creator: Any) -> str:
    return (f"{getattr(creator, 'name', '?')} v{getattr(creator, 'plugin_version', '?')} "
            f"'{getattr(creator, 'plugin_namespace', '')}'")


def _parser_errors(parser: trt.OnnxParser) -> str:
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = err.node_name() or (f"#{err.node()}" if err.node() >= 0 else "")
        where = f"node {node!r} ({err.node_operator()})" if node else "the model"
        lines.append(f"{where}: {err.desc()} [{err.code()}]")
    return "; ".join(lines) or "no parser error recorded"


def make_progress_monitor(say: Say) -> trt.IProgressMonitor | None:
    """Print the builder's phases (TensorRT >= 10: IProgressMonitor); None where the API is absent."""
    import tensorrt as trt

    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.depth: dict[str, int] = {}
            self.steps: dict[str, int] = {}
            self.started: dict[str, float] = {}
            self.last_print = 0.0

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.depth[phase_name] = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self.steps[phase_name] = num_steps
            self.started[phase_name] = time.perf_counter()
            if self.depth[phase_name] <= 1:  # deeper phases are per-layer chatter
                say(f"  {'  ' * self.depth[phase_name]}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            now = time.perf_counter()
            if self.depth.get(phase_name, 0) == 0 and now - self.last_print > 10:
                self.last_print = now
                say(f"    {phase_name}: step {step + 1}/{self.steps.get(phase_name, '?')}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            if self.depth.get(phase_name, 0) <= 1:
                took = time.perf_counter() - self.started.get(phase_name, time.perf_counter())
                say(f"  {'  ' * self.depth.get(phase_name, 0)}{phase_name}: done in {took:.1f} s")

    return Monitor()


# ------------------------------------------------------------------------------------------ calibration


def _fit_short_edge(h: int, w: int, canvas: tuple[int, int], short: int, max_size: int) -> tuple[int, int | None]:
    """ResizeShortestEdge parameters that keep an image inside the calibration canvas (shrink only if needed)."""
    from .preprocess import resized_shape

    if all(a <= b for a, b in zip(resized_shape(h, w, short, max_size), canvas)):
        return short, max_size
    s = int(min(canvas[0] / h, canvas[1] / w) * min(h, w))
    while s > 1 and any(a > b for a, b in zip(resized_shape(h, w, s, None), canvas)):
        s -= 1  # int(x + 0.5) rounding may overshoot by one pixel
    return max(s, 1), None


def make_calibrator(files: Sequence[Path], shape: Shape, info: ModelInfo, cache: Path, say: Say) -> Any:
    """IInt8EntropyCalibrator2 over images pre-processed exactly as at inference (runtime.preprocess).

    Batches have the calibration profile's shape; images are resized with the model's ResizeShortestEdge
    policy (shrunk further only where an image would not fit the canvas) and padded with the pixel mean.
    The cache is read when it exists (TensorRT then skips calibration) and written atomically.
    """
    import numpy as np
    import tensorrt as trt

    from . import cuda_utils
    from .imageio import load_image
    from .preprocess import preprocess

    batch, _, height, width = shape

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.buffer = cuda_utils.DeviceBuffer(int(np.prod(shape)) * 4)

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int]:
            if self.index + batch > len(files):
                return []  # done (a partial last batch is dropped: the batch size is fixed)
            tensors = []
            for path in files[self.index:self.index + batch]:
                rgb = load_image(path).rgb
                short, max_size = _fit_short_edge(rgb.shape[0], rgb.shape[1], (height, width),
                                                  info.min_size_test, info.max_size_test)
                tensors.append(preprocess([rgb], short_edge=short, max_size=max_size,
                                          size_divisibility=info.size_divisibility, pixel_mean=info.pixel_mean,
                                          fixed_hw=(height, width)).tensor)
            data = np.ascontiguousarray(np.concatenate(tensors, axis=0), dtype=np.float32)
            cuda_utils.memcpy_htod(self.buffer.ptr, data)
            self.index += batch
            if self.index // batch % 10 == 1:
                say(f"  calibration batch {self.index // batch}/{len(files) // batch}")
            return [self.buffer.ptr] * len(names)

        def read_calibration_cache(self) -> bytes | None:
            if cache.is_file():
                say(f"  using calibration cache {cache}")
                return cache.read_bytes()
            return None

        def write_calibration_cache(self, data: Any) -> None:
            _write_atomic(cache, bytes(data))
            say(f"  wrote calibration cache {cache}")

    if not files:
        say(f"  no --calib-images: TensorRT reads the calibration cache {cache}")
    elif len(files) < batch:
        raise ZsdError(f"--calib-images has {len(files)} image(s), fewer than the calibration batch {batch}.",
                       "add images (a few hundred representative ones is typical).")
    return EntropyCalibrator()


# ------------------------------------------------------------------------------------------ build + write


@dataclass(frozen=True)
class EngineSidecar:
    """`<plan>.json`: how and for what the engine was built."""

    path: Path
    raw: dict[str, Any]
    metadata: dict[str, str]
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profiles: tuple[Profile, ...]
    plugin_library: str | None
    plugins: tuple[PluginSpec, ...]

    @property
    def info(self) -> ModelInfo:
        return ModelInfo.from_metadata(self.metadata, str(self.path))


def sidecar_path(plan: str | Path) -> Path:
    """`model.plan` -> `model.plan.json`."""
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def read_sidecar(plan: str | Path) -> EngineSidecar:
    """Load and validate the sidecar of `plan` (ZsdError when missing or malformed)."""
    path = sidecar_path(plan)
    if not path.is_file():
        raise ZsdError(f"engine {plan} has no sidecar {path.name} next to it; the runtime cannot know which model, "
                       "TensorRT version and GPU it was built for.",
                       "rebuild the engine with build-engine (it writes both), or copy the .json along with the .plan.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, expected {SIDECAR_FORMAT!r}")
        profiles = tuple({name: ShapeRange.from_json(r) for name, r in p.items()} for p in raw["profiles"])
        plugins = tuple(PluginSpec(p["name"], p["version"], p["namespace"]) for p in raw.get("plugins", []))
        lib = raw.get("plugin_library")
        return EngineSidecar(path, raw, {str(k): str(v) for k, v in raw["metadata"].items()},
                             str(raw["tensorrt_version"]), str(raw["gpu_name"]), str(raw["compute_capability"]),
                             str(raw["precision"]), profiles, lib.get("path") if isinstance(lib, dict) else None,
                             plugins)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ZsdError(f"engine sidecar {path} is malformed ({type(e).__name__}: {e}).",
                       "rebuild the engine with build-engine.") from None


def _write_atomic(path: Path, data: bytes) -> None:
    """Write next to the target and rename: an interrupted build never leaves a truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    from .imageio import file_sha256

    return file_sha256(path)


def make_sidecar(plan: BuildPlan, tensorrt_version: str, gpu: DeviceInfo, loaded_by: str | None,
                 network_kind: str = "weakly_typed") -> dict[str, Any]:
    """The sidecar's content for an engine built from `plan` with this TensorRT on this GPU."""
    opts, model = plan.options, plan.model
    return {
        "format": SIDECAR_FORMAT,
        "builder": BUILDER_VERSION,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        # Strings exactly as in the ONNX metadata_props: ModelInfo parses both the same way.
        "metadata": dict(model.metadata),
        "onnx": {"path": str(opts.onnx.resolve()), "sha256": _sha256(opts.onnx)},
        "tensorrt_version": tensorrt_version,
        "gpu_name": gpu.name,
        "compute_capability": gpu.compute_capability_str,
        "precision": plan.precision.precision,
        "network": network_kind,
        "graph_precision": model.precision,
        "workspace_mb": opts.workspace_mb,
        "profiles": [{name: rng.as_json() for name, rng in plan.profile.items()}],
        "plugins": [{"name": p.name, "version": p.version, "namespace": p.namespace} for p in model.plugins],
        "plugin_library": None if opts.plugin_lib is None else {
            "path": str(opts.plugin_lib.resolve()), "name": opts.plugin_lib.name,
            "sha256": _sha256(opts.plugin_lib), "loaded_by": loaded_by},
        "calibration_cache": str(plan.calib_cache) if plan.calib_cache else None,
    }


def write_sidecar(plan_path: Path, content: dict[str, Any]) -> Path:
    side = sidecar_path(plan_path)
    _write_atomic(side, (json.dumps(content, indent=2) + "\n").encode())
    return side


@dataclass(frozen=True)
class BuildResult:
    plan: Path
    sidecar: Path
    seconds: float
    size_bytes: int


def build_engine(opts: BuildOptions, say: Say = print) -> BuildResult:
    """Build and write `opts.output` and its sidecar. Raises ZsdError for everything the user can fix."""
    t0 = time.perf_counter()
    plan = preflight(opts)
    model = plan.model
    import_tensorrt()  # the clear error where TensorRT is missing; the import below is then typed (stubs)
    import tensorrt as trt

    from . import cuda_utils

    caps = tensorrt_caps(trt)
    pplan = plan.precision
    check_caps(pplan, caps, opts.onnx.name)  # before any GPU work: what this TensorRT cannot build
    strongly_typed, network_kind = network_flags(pplan, caps)
    gpu = cuda_utils.device_info(opts.device)
    cuda_utils.set_device(opts.device)
    say(f"TensorRT {trt.__version__} on {gpu.name} (compute capability {gpu.compute_capability_str})")
    logger = make_logger(opts.verbose)

    loaded_by = None
    if opts.plugin_lib is not None:
        # Before parsing: the parser looks plugin nodes up in the registry while it builds the network.
        loaded_by = load_plugin_library(opts.plugin_lib, logger)
        say(f"loaded plugin library {opts.plugin_lib} ({loaded_by})")
    require_creators(model.plugins, opts.plugin_lib, logger)

    builder = trt.Builder(logger)
    if builder is None:
        raise ZsdError(f"TensorRT could not create a builder ({'; '.join(_logged_errors(logger)) or 'no message'}).",
                       "check the GPU and driver with nvidia-smi.")
    # Explicit-precision graphs: STRONGLY_TYPED (TensorRT follows the graph's fp16 tensors / Q/DQ nodes; the only
    # mode on TensorRT 11). Otherwise 0 (TensorRT 10: explicit batch is the only mode, its flag is deprecated).
    network = builder.create_network(
        1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0)
    parser = trt.OnnxParser(network, logger)
    say(f"parsing {opts.onnx} ...")
    # parse_from_file (not parse(bytes)) so external weights (.onnx.data) are found next to the model.
    if not parser.parse_from_file(str(opts.onnx)):
        raise ZsdError(f"TensorRT's ONNX parser rejected {opts.onnx.name}: {_parser_errors(parser)}.",
                       "for a plugin node, check --plugin-lib and the plugin's version/namespace; for other nodes, "
                       "re-export with export-model (opset 17-21) or report the node above.")
    network_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if network_inputs != set(plan.profile):
        raise ZsdError(f"the parsed network has inputs {sorted(network_inputs)}, the profile covers "
                       f"{sorted(plan.profile)}.", "pass one --profile per network input.")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
    if pplan.mode != BUILDER_FLAGS and caps.tf32_flag:
        # TensorRT allows TF32 (10-bit mantissa) by default on Ampere+; fp32 here means fp32, as the accuracy
        # comparisons against PyTorch/ONNX Runtime expect, and an explicit graph's fp32 islands stay fp32.
        # Builder-flag fp16/int8 builds keep it.
        config.clear_flag(trt.BuilderFlag.TF32)
    if pplan.mode == BUILDER_FLAGS:  # check_caps made sure this TensorRT has the flags
        if not getattr(builder, "platform_has_fast_fp16", True):
            say(f"warning: {gpu.name} has no fast fp16; the engine may not be faster than fp32")
        config.set_flag(trt.BuilderFlag.FP16)  # int8: layers without int8 kernels fall back to fp16, not fp32
    profile = builder.create_optimization_profile()
    for name, rng in plan.profile.items():
        profile.set_shape(name, trt.Dims(list(rng.min)), trt.Dims(list(rng.opt)), trt.Dims(list(rng.max)))
    config.add_optimization_profile(profile)
    if pplan.mode == BUILDER_FLAGS and pplan.precision == "int8":
        if not getattr(builder, "platform_has_fast_int8", True):
            say(f"warning: {gpu.name} has no fast int8")
        config.set_flag(trt.BuilderFlag.INT8)
        image_input = model.metadata.get("input_name", next(iter(plan.profile)))
        calib_shape = plan.profile[image_input].opt
        # Calibration runs at one shape: a profile pinned to the opt shape.
        calib_profile = builder.create_optimization_profile()
        for name, rng in plan.profile.items():
            calib_profile.set_shape(name, trt.Dims(list(rng.opt)), trt.Dims(list(rng.opt)), trt.Dims(list(rng.opt)))
        config.set_calibration_profile(calib_profile)
        assert plan.calib_cache is not None
        config.int8_calibrator = make_calibrator(plan.calib_files, calib_shape, model.info, plan.calib_cache, say)

    cache_bytes = b""
    if opts.timing_cache is not None and opts.timing_cache.is_file():
        cache_bytes = opts.timing_cache.read_bytes()
        say(f"using timing cache {opts.timing_cache} ({len(cache_bytes)} bytes)")
    timing_cache = config.create_timing_cache(cache_bytes)
    if timing_cache is None or not config.set_timing_cache(timing_cache, False):
        raise ZsdError(f"timing cache {opts.timing_cache} is not usable by TensorRT {trt.__version__}.",
                       "delete it (it is rebuilt) or pass another --timing-cache.")
    monitor = make_progress_monitor(say)
    if monitor is not None:
        config.progress_monitor = monitor

    say(f"building {pplan.precision} engine ({network_kind} network; profile {_profile_text(plan.profile)}); "
        "this takes minutes ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        errors = "; ".join(_logged_errors(logger)[-5:]) or "no message"
        raise ZsdError(f"TensorRT failed to build the engine: {errors}.",
                       "see the TensorRT messages above (re-run with --verbose for details); a larger --workspace "
                       "or a narrower --profile often helps.")
    data = bytes(serialized)
    # A sidecar left from an earlier build must never describe the new plan, even for a moment.
    sidecar_path(opts.output).unlink(missing_ok=True)
    _write_atomic(opts.output, data)
    if opts.timing_cache is not None:
        _write_atomic(opts.timing_cache, bytes(config.get_timing_cache().serialize()))
        say(f"saved timing cache {opts.timing_cache}")

    side = write_sidecar(opts.output, make_sidecar(plan, trt.__version__, gpu, loaded_by, network_kind))
    return BuildResult(opts.output, side, time.perf_counter() - t0, len(data))


def _profile_text(profile: Profile) -> str:
    return ", ".join(f"{n}: {_fmt(r.min)} / {_fmt(r.opt)} / {_fmt(r.max)}" for n, r in profile.items())
