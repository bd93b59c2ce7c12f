"""build-engine's options and everything decided before TensorRT is imported (`preflight`).

Files, metadata, plugin library path, precision, profile and calibration inputs are checked first, cheapest
first, so a wrong invocation fails in a second with a clear message, also on a machine without TensorRT.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..backends import ENGINE_SUFFIXES
from ..errors import ZsdError
from .onnx_inspect import OnnxModel, inspect_onnx
from .plugins import PLUGIN_LIBRARY_NAME, ZSD_PLUGIN
from .precision import BUILDER_FLAGS, PLAIN_FP32, PRECISIONS, PrecisionPlan, resolve_precision
from .profiles import Profile, resolve_profile

__all__ = ["ENGINE_SUFFIXES", "BuildOptions", "BuildPlan", "preflight"]


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
    _check_plugin_library(opts, model)
    if opts.workspace_mb <= 0:
        raise ZsdError(f"--workspace {opts.workspace_mb} MiB must be positive.", "pass e.g. --workspace 4096.")
    if opts.timing_cache is not None:
        if opts.timing_cache.exists() and not opts.timing_cache.is_file():
            raise ZsdError(f"--timing-cache {opts.timing_cache} is not a file.", "pass a file path.")
        if not opts.timing_cache.parent.is_dir():
            raise ZsdError(f"directory of --timing-cache {opts.timing_cache} does not exist.", "create it first.")
    pplan = resolve_precision(opts.precision, model.precision, onnx_name=opts.onnx.name,
                              calibration_given=opts.calib_images is not None or opts.calib_cache is not None)
    calib_cache, calib_files = _calibration_inputs(opts, pplan)
    profile = resolve_profile(model, opts.profile)
    return BuildPlan(opts, model, profile, calib_cache, calib_files, pplan)


def _check_plugin_library(opts: BuildOptions, model: OnnxModel) -> None:
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


def _calibration_inputs(opts: BuildOptions, pplan: PrecisionPlan) -> tuple[Path | None, tuple[Path, ...]]:
    """(calibration cache, calibration images) of a builder-flag int8 build; refuses them for anything else."""
    if not (pplan.mode == BUILDER_FLAGS and pplan.precision == "int8"):
        if opts.calib_images is not None or opts.calib_cache is not None:
            raise ZsdError(f"--calib-images / --calib-cache are for --precision int8, not {pplan.precision}.",
                           "drop them, or add --precision int8.")
        return None, ()
    calib_cache = opts.calib_cache or opts.output.with_suffix(".calib")
    if opts.calib_images is not None:
        from ..imageio import list_images

        if not opts.calib_images.is_dir():
            raise ZsdError(f"--calib-images {opts.calib_images} is not a directory.",
                           "pass a folder of representative images (a few hundred).")
        return calib_cache, tuple(list_images(opts.calib_images)[: max(opts.calib_max_images, 1)])
    if not calib_cache.is_file():
        raise ZsdError("--precision int8 needs calibration data: no --calib-images and no calibration cache "
                       f"{calib_cache}.",
                       "pass --calib-images DIR (representative images), or --calib-cache FILE from an earlier build.")
    return calib_cache, ()
