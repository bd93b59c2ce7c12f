"""`build_engine`: ONNX -> TensorRT `.plan` + sidecar (TensorRT 10/11 Python API).

Polygraphy-style composition of the small loaders: `preflight` (no TensorRT), `import_tensorrt`,
`load_plugin_library` / `require_creators`, the ONNX parser, the builder config (precision, profile, calibrator,
timing cache), then the plan and its sidecar (`make_sidecar` -> artifacts.sidecar.write_sidecar), both atomically.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..artifacts.sidecar import EngineSidecar, OnnxSource, PluginLibrary, sidecar_path, write_sidecar
from ..cuda_utils import DeviceInfo
from ..errors import ZsdError
from ..version import PRODUCER
from ..files import file_sha256, write_bytes_atomic
from .calibration import make_calibrator
from .loader import Say, create_builder, import_tensorrt, logged_errors, make_logger
from .plugins import load_plugin_library, require_creators
from .precision import BUILDER_FLAGS, check_caps, network_flags, tensorrt_caps
from .preflight import BuildOptions, BuildPlan, preflight
from .profiles import profile_text
from .progress import make_progress_monitor

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = ["BUILDER_VERSION", "BuildResult", "build_engine", "make_sidecar"]

BUILDER_VERSION = PRODUCER


@dataclass(frozen=True)
class BuildResult:
    plan: Path
    sidecar: Path
    seconds: float
    size_bytes: int


def make_sidecar(plan: BuildPlan, tensorrt_version: str, gpu: DeviceInfo, loaded_by: str | None,
                 network_kind: str = "weakly_typed", *, onnx_sha256: str | None = None) -> EngineSidecar:
    """The sidecar of an engine built from `plan` with this TensorRT on this GPU.

    `onnx_sha256`: the ONNX's digest taken before parsing (hashed now when not given).
    """
    opts, model = plan.options, plan.model
    lib = opts.plugin_lib
    return EngineSidecar(
        plan=opts.output,
        metadata=dict(model.metadata),  # strings exactly as in metadata_props: ModelInfo parses both the same way
        onnx=OnnxSource(str(opts.onnx.resolve()), onnx_sha256 or file_sha256(opts.onnx)),
        tensorrt_version=tensorrt_version,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability_str,
        precision=plan.precision.precision,
        profiles=(dict(plan.profile),),
        plugins=model.plugins,
        plugin_library=None if lib is None else PluginLibrary(str(lib.resolve()), lib.name, file_sha256(lib),
                                                              loaded_by),
        network=network_kind,
        graph_precision=model.precision,
        workspace_mb=opts.workspace_mb,
        calibration_cache=str(plan.calib_cache) if plan.calib_cache else None,
        builder=BUILDER_VERSION,
        built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def build_engine(opts: BuildOptions, say: Say = print) -> BuildResult:
    """Build and write `opts.output` and its sidecar. Raises ZsdError for everything the user can fix."""
    t0 = time.perf_counter()
    plan = preflight(opts)
    model = plan.model
    import_tensorrt()  # the clear error where TensorRT is missing; the import below is then typed (stubs)
    import tensorrt as trt

    from .. import cuda_utils

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

    builder = create_builder(trt, logger)
    # Explicit-precision graphs: STRONGLY_TYPED (TensorRT follows the graph's fp16 tensors / Q/DQ nodes; the only
    # mode on TensorRT 11). Otherwise 0 (TensorRT 10: explicit batch is the only mode, its flag is deprecated).
    network = builder.create_network(
        1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0)
    parser = trt.OnnxParser(network, logger)
    # The digest the sidecar records is taken before parsing: it describes the bytes the engine is built from.
    source_sha256 = file_sha256(opts.onnx)
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

    timing_cache = _use_timing_cache(config, opts.timing_cache, trt.__version__, say)
    if caps.progress_monitor:
        config.progress_monitor = make_progress_monitor(say)

    say(f"building {pplan.precision} engine ({network_kind} network; profile {profile_text(plan.profile)}); "
        "this takes minutes ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        errors = "; ".join(logged_errors(logger)[-5:]) or "no message"
        raise ZsdError(f"TensorRT failed to build the engine: {errors}.",
                       "see the TensorRT messages above (re-run with --verbose for details); a larger --workspace "
                       "or a narrower --profile often helps.")
    if file_sha256(opts.onnx) != source_sha256:
        raise ZsdError(f"{opts.onnx} changed while the engine was being built; the engine would describe neither "
                       "version, so nothing was written.",
                       "run build-engine again once export-model has finished writing it.")
    data = bytes(serialized)
    # A sidecar left from an earlier build must never describe the new plan, even for a moment.
    sidecar_path(opts.output).unlink(missing_ok=True)
    write_bytes_atomic(opts.output, data)
    if timing_cache is not None:
        write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
        say(f"saved timing cache {timing_cache}")

    side = write_sidecar(make_sidecar(plan, trt.__version__, gpu, loaded_by, network_kind,
                                      onnx_sha256=source_sha256))
    return BuildResult(opts.output, side, time.perf_counter() - t0, len(data))


def _use_timing_cache(config: trt.IBuilderConfig, path: Path | None, version: str, say: Say) -> Path | None:
    """Give the builder the timing cache at `path` (an empty one where it does not exist yet); returns `path`."""
    cache_bytes = b""
    if path is not None and path.is_file():
        cache_bytes = path.read_bytes()
        say(f"using timing cache {path} ({len(cache_bytes)} bytes)")
    timing_cache = config.create_timing_cache(cache_bytes)
    if timing_cache is None or not config.set_timing_cache(timing_cache, False):
        raise ZsdError(f"timing cache {path} is not usable by TensorRT {version}.",
                       "delete it (it is rebuilt) or pass another --timing-cache.")
    return path


def _parser_errors(parser: trt.OnnxParser) -> str:
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = err.node_name() or (f"#{err.node()}" if err.node() >= 0 else "")
        where = f"node {node!r} ({err.node_operator()})" if node else "the model"
        lines.append(f"{where}: {err.desc()} [{err.code()}]")
    return "; ".join(lines) or "no parser error recorded"
