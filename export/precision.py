"""Explicit-precision graphs: an fp32 export converted to fp16 or int8 Q/DQ, with the precision in the graph.

One user story: `export-model ... --precision fp16|int8` exports fp32 exactly as before, then converts the graph
in memory and writes only the converted one (`--from-onnx M.onnx` converts an existing fp32 export instead of
tracing again). TensorRT builds such graphs as strongly typed networks (the only way on TensorRT 11), OpenVINO
and ONNX Runtime read them as they are.

- fp16: onnxconverter-common's `convert_float_to_float16` (keep_io_types=True, so the graph contract stays
  float32 `images` in and float32 logits out) with a block list: the fp32 islands (precision_islands.py) plus
  the converter's own list (Resize, Range, TopK, ...). NVIDIA ModelOpt's AutoCast was not used: its `[onnx]`
  extra pins onnx~=1.21 and onnxruntime-gpu~=1.24 (+ cupy-cuda12x), which would replace this project's onnx 1.23 /
  onnxruntime 1.32 (checked with `pip install --dry-run "nvidia-modelopt[onnx]"`, 2026-12-01).
- int8: onnxruntime.quantization.quantize_static in QDQ format, symmetric int8 activations and per-channel
  symmetric int8 weights (what TensorRT's explicit quantization accepts), on the inputs of Conv / MatMul / Gemm
  only (the ops TensorRT runs in int8); everything else stays fp32. Calibration method: MinMax by default (keeps
  the rare large activations small objects produce; percentile / entropy on request), on generated small-target
  scenes (runtime/scenes.py) unless `--calib DIR` gives images. The islands' nodes are excluded.

ONNX Runtime runs both on the CPU: fp16 ops without a CPU fp16 kernel get Casts around them (computed in fp32,
stored in fp16 between ops), Q/DQ pairs are executed as quantize->dequantize (or fused into int8 kernels).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..runtime.errors import ZsdError
from ..runtime.options import GRAPH_PRECISIONS
from ..runtime.artifacts.onnx_metadata import ModelInfo, metadata_of
from ..runtime.artifacts.onnx_metadata import update_onnx_metadata as update_metadata
from .msda_ort import plugin_nodes
from .precision_islands import island_nodes, parse_islands

PRECISIONS = GRAPH_PRECISIONS
CALIB_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIB_SCENES = 8
#: calibration images with a shorter side than this hardly exercise the network's ranges (warned)
MIN_CALIB_SIDE = 64
CALIB_SEED = 20261201  # not the benchmark's seed 0: calibration scenes differ from the scenes measured
DYNAMIC_CALIB_HW = (512, 640)  # canvas for graphs exported --dynamic (calibration runs at one shape)
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
# fp32 islands used when --fp32-islands is not given. int8: what precision_sensitivity measured on the diverse
# stand-in (benchmarks/examples/precision_sensitivity_pading_128x160.md; re-run it for a trained model). fp16: the
# MSDeformAttn sampling math, on numerical grounds (fp16 locations are good to ~0.05 px on 150-px levels; ONNX
# Runtime's CPU fp16 cannot show it).
DEFAULT_ISLANDS = {"fp32": (), "fp16": ("msda_sampling",),
                   "int8": ("attention_products", "pixel_decoder_convs", "mask_product")}

Say = Callable[[str], None]


@dataclass
class CalibrationData:
    """Model inputs for calibration plus how they were made (recorded in the graph's metadata)."""

    feeds: list[dict[str, np.ndarray]]
    source: str  # "synthetic" or "folder"
    description: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


# ------------------------------------------------------------------------------------------ checks


def has_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def _has_float16(model: onnx.ModelProto) -> bool:
    low = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    return any(t.data_type in low for t in model.graph.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i in low for a in n.attribute) for n in model.graph.node)


def check_source(model: onnx.ModelProto, precision: str, where: str) -> None:
    """Refuse graphs that are not plain fp32 exports: converting twice silently compounds the error."""
    if precision not in PRECISIONS:
        raise ZsdError(f"--precision {precision} is unknown.", f"choose one of {', '.join(PRECISIONS)}.")
    meta = metadata_of(model)
    if has_qdq(model):
        n = sum(1 for node in model.graph.node if node.op_type in QDQ_OPS)
        raise ZsdError(f"{where} already has {n} QuantizeLinear/DequantizeLinear nodes (it is a quantized graph, "
                       f"precision {meta.get('precision', 'unknown')}); --precision {precision} converts fp32 graphs "
                       "only, and quantizing or casting a quantized graph again would compound the error.",
                       "pass the fp32 export (export-model without --precision) to --from-onnx, or re-export.")
    if meta.get("precision", "fp32") != "fp32" or _has_float16(model):
        raise ZsdError(f"{where} is already a {meta.get('precision', 'float16')} graph; --precision {precision} "
                       "converts fp32 graphs only.",
                       "pass the fp32 export (export-model without --precision) to --from-onnx, or re-export.")
    if precision == "int8" and plugin_nodes(model):
        try:
            import onnxruntime_extensions  # noqa: F401
        except ImportError:
            raise ZsdError(f"{where} has MSDeformAttn plugin nodes (exported with --msda plugin/nvidia); int8 "
                           "calibration runs them in ONNX Runtime as Python ops, which needs onnxruntime-extensions.",
                           'pip install "zsdeploy[plugins]", or convert a --msda gridsample export.') from None


# ------------------------------------------------------------------------------------- calibration data


def _canvas(info: ModelInfo) -> tuple[int, int]:
    return info.static_hw if info.static_hw is not None else DYNAMIC_CALIB_HW


def _to_input(rgb: np.ndarray, info: ModelInfo) -> np.ndarray:
    """One image pre-processed as at inference (ResizeShortestEdge, shrunk further only to fit the canvas)."""
    from ..runtime.preprocess import fit_short_edge
    from ..runtime.preprocess import preprocess

    canvas = _canvas(info)
    short, max_size = fit_short_edge(rgb.shape[0], rgb.shape[1], canvas, info.min_size_test, info.max_size_test)
    return preprocess([rgb], short_edge=short, max_size=max_size, size_divisibility=info.size_divisibility,
                      pixel_mean=info.pixel_mean, fixed_hw=canvas).tensor


def _batched(tensors: list[np.ndarray], info: ModelInfo, input_name: str) -> list[dict[str, np.ndarray]]:
    b = info.static_batch or 1
    # a static batch > 1 takes images in groups (the last group is filled with the first images)
    groups = [(tensors * b)[i:i + b] for i in range(0, len(tensors), b)]
    return [{input_name: np.ascontiguousarray(np.concatenate(g, 0), dtype=np.float32)} for g in groups]


def calibration_data(info: ModelInfo, *, calib_dir: str | Path | None, scenes: int, input_name: str = "images",
                     say: Say = print) -> CalibrationData:
    """Calibration inputs: images of `calib_dir` (unreadable ones listed and skipped), else `scenes` generated
    small-target scenes at the model's canvas."""
    if calib_dir is None:
        if scenes < 1:
            raise ZsdError(f"--calib-scenes {scenes}: int8 needs at least one calibration scene.",
                           f"pass --calib-scenes {DEFAULT_CALIB_SCENES} (default) or --calib DIR.")
        from ..runtime.scenes import scene_seed, generate_scene

        h, w = _canvas(info)
        rgbs = [generate_scene(scene_seed(CALIB_SEED, i), h, w, n_objects=30, size_range=(6, min(60, 0.8 * min(h, w))))
                .image for i in range(scenes)]
        desc = (f"{scenes} generated small-target scenes ({h}x{w}, runtime.scenes.generate_scene, seed "
                f"{CALIB_SEED}, 30 objects, sqrt(area) 6..60 px)")
        return CalibrationData(_batched([_to_input(x, info) for x in rgbs], info, input_name), "synthetic", desc)
    from ..runtime.imageio import list_images, load_image

    folder = Path(calib_dir)
    _check_calib_dir(folder)
    try:
        paths = list_images(folder)
    except ZsdError as e:
        raise ZsdError(f"--calib {folder}: {e.problem}", "put representative images (jpg/png) in it, or drop "
                       "--calib to calibrate on generated small-target scenes.") from None
    tensors, skipped, sizes = [], [], []
    for p in paths:
        try:
            loaded = load_image(p)
        except ZsdError as e:
            skipped.append((str(p), e.problem))
            continue
        for note in loaded.notes:  # e.g. a 16-bit PNG clipped to white: the ranges learn the clipped values
            say(f"  calibration: {note}")
        sizes.append(loaded.rgb.shape[:2])
        tensors.append(_to_input(loaded.rgb, info))
    for path, why in skipped:
        say(f"  calibration: skipped unreadable {path}: {why}")
    smallest = min(sizes, key=min) if sizes else None
    if tensors and (len(tensors) < DEFAULT_CALIB_SCENES or min(smallest) < MIN_CALIB_SIDE):
        say(f"  warning: calibrating on {len(tensors)} image(s), the smallest {smallest[0]}x{smallest[1]}: int8 ranges "
            f"are set by these alone and clip whatever they did not show. Use at least {DEFAULT_CALIB_SCENES} "
            f"representative images of the size you will run (sides >= {MIN_CALIB_SIDE} px), or drop --calib to "
            f"calibrate on {DEFAULT_CALIB_SCENES} generated small-target scenes.")
    if not tensors:
        raise ZsdError(f"--calib {folder}: none of its {len(paths)} image(s) could be read (listed above).",
                       "replace them with readable images, or drop --calib to use generated scenes.")
    desc = f"{len(tensors)} image(s) from {folder}" + (f", {len(skipped)} unreadable skipped" if skipped else "")
    return CalibrationData(_batched(tensors, info, input_name), "folder", desc, skipped)


def _reader(feeds: Sequence[dict[str, np.ndarray]]) -> Any:
    """An onnxruntime.quantization.CalibrationDataReader over prepared feeds."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(_Feeds, CalibrationDataReader):
        pass

    return Reader(feeds)


class _Feeds:
    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self.feeds = list(feeds)
        self._it: Iterator[dict[str, np.ndarray]] = iter(self.feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.feeds[start_index:end_index])


# ------------------------------------------------------------------------------------------ converters


def to_fp16(model: onnx.ModelProto, block_nodes: Sequence[str]) -> onnx.ModelProto:
    """fp16 weights and activations, float32 graph inputs/outputs, `block_nodes` (and the converter's list) fp32."""
    from onnxconverter_common import float16

    with _quiet():  # the converter warns once per clamped initializer
        out = float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False,
                                               op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST),
                                               node_block_list=list(block_nodes))
    _fold_cast_pairs(out)
    # the converter appends a second value_info for re-typed tensors; ONNX Runtime rejects the duplicates, and
    # nothing downstream needs them (ORT and TensorRT infer types), so keep only inputs/outputs typed
    del out.graph.value_info[:]
    _repair_mixed_float_inputs(out)
    return out


# ops whose float inputs must share one type (T); Where: inputs 1 and 2
_SAME_T = {op: None for op in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "MatMul", "Gemm",
                               "Concat", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Mod")}
_SAME_T_IDX = {"Where": (1, 2)}


def _repair_mixed_float_inputs(model: onnx.ModelProto, rounds: int = 3) -> int:
    """Cast fp32 inputs to fp16 where one node gets both.

    onnxconverter-common leaves a float Cast as float when one of its consumers is blocked (e.g. the shape
    arithmetic of dynamic graphs feeding Range) although its other consumers became fp16; ONNX Runtime and
    TensorRT then reject the node (Div bound to float16 and float). Types come from ONNX shape inference."""
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    added = 0
    for _ in range(rounds):
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        types = {v.name: v.type.tensor_type.elem_type for v in
                 (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
        types.update({t.name: t.data_type for t in model.graph.initializer})
        nodes: list[onnx.NodeProto] = []
        fixed = 0
        for node in model.graph.node:
            if node.op_type in _SAME_T or node.op_type in _SAME_T_IDX:
                idx = _SAME_T_IDX.get(node.op_type, range(len(node.input)))
                kinds = {types.get(node.input[i]) for i in idx if i < len(node.input) and node.input[i]}
                if f16 in kinds and f32 in kinds:
                    for i in idx:
                        if i < len(node.input) and types.get(node.input[i]) == f32:
                            cast_out = f"{node.input[i]}_to_fp16_for_{node.name}"
                            nodes.append(onnx.helper.make_node("Cast", [node.input[i]], [cast_out], to=f16,
                                                               name=f"{node.name}_input{i}_to_fp16"))
                            node.input[i] = cast_out
                            fixed += 1
            nodes.append(node)
        if not fixed:
            break
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        del model.graph.value_info[:]
        added += fixed
    return added


def _fold_cast_pairs(model: onnx.ModelProto) -> int:
    """Remove fp32 -> fp16 -> fp32 round trips between two fp32-island nodes.

    onnxconverter-common casts every output of a blocked node to fp16 and casts it back for blocked consumers, so
    an island would still round to fp16 at each of its internal edges; here blocked consumers read the fp32
    tensor directly. Returns the number of Casts removed."""
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    outputs = {o.name for o in model.graph.output}

    def cast_to(n: onnx.NodeProto) -> int | None:
        return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None

    rename: dict[str, str] = {}
    dead: set[int] = set()
    for n in nodes:
        if cast_to(n) != f32 or n.output[0] in outputs:
            continue
        first = producer.get(n.input[0])
        if first is None or cast_to(first) != f16:
            continue
        rename[n.output[0]] = first.input[0]
        dead.add(id(n))
    for n in nodes:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    used = {i for n in nodes if id(n) not in dead for i in n.input} | outputs
    dead |= {id(n) for n in nodes if cast_to(n) == f16 and n.output[0] not in used}
    keep = [n for n in nodes if id(n) not in dead]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return len(nodes) - len(keep)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization logs advice to the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _ort_method(method: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[method]


def constant_operand_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls whose first operand is a constant: an activation folded at export (e.g. the first decoder layer's
    queries of a model with learned query features), not a weight. ONNX Runtime's quantizer would quantize it
    "per channel" on axis 1 (the attention heads), which neither TensorRT (per-channel = the weights' output
    channels) nor OpenVINO accepts (measured: openvino 2026.4 refuses to compile the graph); they stay fp32."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name and n.input[0] in constants]


CALIB_PERCENTILE = 99.999


def _calibrate_plugin_graph(src: Path, feeds: Sequence[dict[str, np.ndarray]], method: str, cache: Path,
                            tmp: Path) -> None:
    """Activation ranges of a graph with MSDeformAttn plugin nodes, written to ONNX Runtime's range cache: ORT's own
    calibrator (the same class and settings quantize_static would make, see create_calibrator) on a session in which
    the plugin nodes run as Python ops (msda_ort.plugin_graph_session)."""
    from onnxruntime.quantization.calibrate import (EntropyCalibrater, MinMaxCalibrater, PercentileCalibrater,
                                                    save_tensors_data)

    from .msda_ort import plugin_graph_session

    augmented = str(tmp / "augmented.onnx")
    ops = list(QUANTIZED_OPS)
    if method == "minmax":
        calibrator = MinMaxCalibrater(src, ops, augmented, symmetric=True)
    elif method == "entropy":
        calibrator = EntropyCalibrater(src, ops, augmented, symmetric=True)
    else:
        calibrator = PercentileCalibrater(src, ops, augmented, symmetric=True, percentile=CALIB_PERCENTILE)
    with _quiet():
        calibrator.augment_graph()
        calibrator.infer_session = plugin_graph_session(augmented)
        calibrator.collect_data(_reader(feeds))
        save_tensors_data(calibrator.compute_data(), cache)


def to_int8(model: onnx.ModelProto, calib: CalibrationData | None, exclude_nodes: Sequence[str], *,
            method: str = "minmax", cache: Path | None = None) -> onnx.ModelProto:
    """Explicit Q/DQ int8 (symmetric, per-channel weights) on Conv/MatMul/Gemm inputs; `exclude_nodes` stay fp32.

    `cache`: ONNX Runtime's calibration-range cache (JSON); when it exists calibration is skipped (the
    sensitivity pass calibrates once and re-quantizes per island set)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if method not in CALIB_METHODS:
        raise ZsdError(f"--calib-method {method} is unknown.", f"choose one of {', '.join(CALIB_METHODS)}.")
    exclude_nodes = [*exclude_nodes, *constant_operand_matmuls(model)]
    with tempfile.TemporaryDirectory(prefix="zsd-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(model, src)
        if plugin_nodes(model):
            # ONNX Runtime's calibrator cannot run plugin nodes: the ranges are collected here with the nodes as
            # Python ops on the host kernel (msda_ort), and quantize_static reads them from the range cache.
            cache = cache or Path(tmp) / "ranges.json"
            if not cache.is_file():
                if calib is None:
                    raise ZsdError("int8 quantization of a plugin graph needs calibration data or a range cache.",
                                   "pass --calib DIR or let export-model generate scenes.")
                _calibrate_plugin_graph(src, calib.feeds, method, cache, Path(tmp))
        with _quiet():
            quantize_static(
                src, dst, _reader(calib.feeds) if calib is not None else None, quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True, reduce_range=False,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude_nodes),
                calibrate_method=_ort_method(method), calibration_cache_path=cache,
                extra_options={
                    "ActivationSymmetric": True, "WeightSymmetric": True,  # TensorRT: zero points must be 0
                    "CalibPercentile": CALIB_PERCENTILE,
                })
        out = onnx.load(str(dst))
    return out


# ------------------------------------------------------------------------------------------ the step


@dataclass(frozen=True)
class PrecisionOptions:
    precision: str = "fp32"
    islands: str | None = None  # --fp32-islands text (None = default for the precision)
    calib_dir: str | None = None
    calib_scenes: int = DEFAULT_CALIB_SCENES
    calib_method: str = "minmax"


def _check_calib_dir(folder: Path) -> None:
    if not folder.exists():
        raise ZsdError(f"--calib {folder} does not exist.", "pass a folder of representative images.")
    if not folder.is_dir():
        raise ZsdError(f"--calib {folder} is a file, not a folder.", "pass a folder of representative images.")


def check_options(opts: PrecisionOptions) -> tuple[str, ...]:
    """Flag checks that need no graph (run before a minute-long export); returns the island names."""
    if opts.precision not in PRECISIONS:
        raise ZsdError(f"--precision {opts.precision} is unknown.", f"choose one of {', '.join(PRECISIONS)}.")
    if opts.precision != "int8" and (opts.calib_dir is not None or opts.calib_scenes != DEFAULT_CALIB_SCENES
                                     or opts.calib_method != "minmax"):
        raise ZsdError(f"--calib / --calib-scenes / --calib-method are for --precision int8, not {opts.precision}.",
                       "drop them, or add --precision int8.")
    if opts.precision == "fp32" and opts.islands not in (None, "default", "none"):
        raise ZsdError("--fp32-islands needs --precision fp16 or int8 (an fp32 graph is all fp32).",
                       "drop --fp32-islands, or add --precision fp16|int8.")
    if opts.calib_method not in CALIB_METHODS:
        raise ZsdError(f"--calib-method {opts.calib_method} is unknown.", f"choose one of {', '.join(CALIB_METHODS)}.")
    if opts.calib_dir is not None:
        _check_calib_dir(Path(opts.calib_dir))
    if opts.precision == "int8" and opts.calib_dir is None and opts.calib_scenes < 1:
        raise ZsdError(f"--precision int8 needs calibration data: --calib-scenes {opts.calib_scenes} and no --calib.",
                       f"pass --calib DIR (representative images) or --calib-scenes N (generated small-target "
                       f"scenes; default {DEFAULT_CALIB_SCENES}).")
    return parse_islands(opts.islands, DEFAULT_ISLANDS[opts.precision])


def fp32_metadata() -> dict[str, str]:
    """Keys an fp32 export carries, so every graph states its precision."""
    return {"precision": "fp32", "precision_converter": "", "precision_fp32_islands": "[]"}


def convert(model: onnx.ModelProto, opts: PrecisionOptions, *, where: str = "the graph", say: Say = print,
            calib: CalibrationData | None = None, calib_cache: Path | None = None) -> onnx.ModelProto:
    """The fp32 `model` converted to `opts.precision`, metadata extended (all existing keys kept)."""
    islands = check_options(opts)
    check_source(model, opts.precision, where)
    meta = metadata_of(model)
    if opts.precision == "fp32":
        update_metadata(model, fp32_metadata())
        return model
    source_sha = hashlib.sha256(model.SerializeToString()).hexdigest()
    nodes = island_nodes(model, islands)
    for name, names in nodes.items():
        if not names:
            say(f"  note: fp32 island {name} matches no node in this graph")
    block = sorted({n for names in nodes.values() for n in names})
    record: dict[str, str] = {
        "precision": opts.precision,
        "precision_source_sha256": source_sha,
        "precision_fp32_islands": json.dumps(list(islands)),
        "precision_fp32_island_nodes": json.dumps({k: len(v) for k, v in nodes.items()}),
    }
    if opts.precision == "fp16":
        import onnxconverter_common

        say(f"  converting to fp16 (onnxconverter-common {onnxconverter_common.__version__}); fp32 islands: "
            f"{', '.join(islands) or 'none'} ({len(block)} nodes)")
        out = to_fp16(model, block)
        record["precision_converter"] = (f"onnxconverter-common {onnxconverter_common.__version__} "
                                         "float16.convert_float_to_float16(keep_io_types=True)")
        record["precision_calibration"] = ""
    else:
        import onnxruntime

        if calib is None and not (calib_cache is not None and calib_cache.is_file()):
            calib = calibration_data(ModelInfo.from_metadata(meta, where), calib_dir=opts.calib_dir,
                                     scenes=opts.calib_scenes, say=say)
        what = calib.description if calib is not None else f"calibration cache {calib_cache}"
        say(f"  quantizing to int8 Q/DQ (onnxruntime {onnxruntime.__version__}, {opts.calib_method} calibration on "
            f"{what}); fp32 islands: {', '.join(islands) or 'none'} ({len(block)} nodes)")
        out = to_int8(model, calib, block, method=opts.calib_method, cache=calib_cache)
        record["precision_converter"] = (f"onnxruntime {onnxruntime.__version__} quantization.quantize_static (QDQ, "
                                         f"int8 symmetric activations, per-channel symmetric int8 weights, ops "
                                         f"{'/'.join(QUANTIZED_OPS)})")
        record["precision_calibration"] = json.dumps({
            "method": opts.calib_method, "source": calib.source if calib else "cache",
            "data": what, "skipped": [p for p, _ in calib.skipped] if calib else []})
    for key in ("producer_name", "producer_version"):
        setattr(out, key, getattr(model, key))
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    update_metadata(out, record)
    onnx.checker.check_model(out)
    return out


def convert_onnx_file(source: Path, output: Path, popts: PrecisionOptions, say: Say = print) -> Path:
    """`export-model --from-onnx M.onnx --precision P` for one graph: read, convert, write atomically."""
    from ..runtime.artifacts.onnx_metadata import REQUIRED_KEYS, load_onnx_model
    from ..runtime.files import check_output_file
    from .onnx_export import Progress, save_atomic

    if output.suffix != ".onnx":
        raise ZsdError(f"--output {output} should end in .onnx.", f"use --output {output.with_suffix('.onnx')}.")
    if not source.is_file():
        raise ZsdError(f"--from-onnx {source} does not exist.", "pass the .onnx written by export-model.")
    if output.resolve() == source.resolve():
        raise ZsdError("--output is the --from-onnx file itself; the fp32 graph would be lost.",
                       "write the converted graph to another file.")
    check_options(popts)
    check_output_file(output)  # a read-only or full target fails now, not after the conversion
    proto = load_onnx_model(source)
    if popts.precision == "fp16" and any(k not in metadata_of(proto) for k in REQUIRED_KEYS):
        say(f"note: {source} carries no zsdeploy metadata (not written by export-model): its fp16 graph converts, but "
            "trt-infer, zsd-bench and export-triton will refuse it as they refuse the source; TensorRT or your own "
            "runtime can run it. For a graph they run, export the model with export-model and convert that.")
    progress = Progress(2, say)
    with progress.step(f"converting {source} to {popts.precision}"):
        proto = convert(proto, popts, where=str(source), say=say)
    with progress.step(f"writing {output}"):
        save_atomic(proto, output)
    say(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB, {len(proto.graph.node)} nodes, "
        f"precision {popts.precision})")
    return output
