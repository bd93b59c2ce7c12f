"""Compatibility names for `build-engine`'s former single module; the code lives in small modules now:

- `zsdeploy.runtime.tensorrt.profiles`: Shape, ShapeRange, Profile, parse_profile, default_profile, resolve_profile
- `zsdeploy.runtime.tensorrt.onnx_inspect`: OnnxModel, PluginNode, inspect_onnx
- `zsdeploy.runtime.tensorrt.loader`: import_tensorrt, make_logger, version checks
- `zsdeploy.runtime.tensorrt.plugins`: PluginSpec, ZSD_PLUGIN, NVIDIA_PLUGIN, load_plugin_library, require_creators
- `zsdeploy.runtime.tensorrt.precision`: precision decisions (formerly runtime/engine_precision.py)
- `zsdeploy.runtime.tensorrt.preflight`: BuildOptions, BuildPlan, preflight
- `zsdeploy.runtime.tensorrt.calibration`: make_calibrator, fit_short_edge
- `zsdeploy.runtime.tensorrt.builder`: build_engine, BuildResult, make_sidecar
- `zsdeploy.runtime.artifacts.sidecar`: EngineSidecar, read_sidecar, write_sidecar, sidecar_path, check_plan_source

Importing this module loads the builder; runtime code imports from the modules above instead. Changed with the
move: `write_sidecar(sidecar)` takes the EngineSidecar (its `plan` says where), `make_sidecar` returns one, and
`EngineSidecar.plugin_library` is a PluginLibrary record (its `.path` is the old string).
"""
from __future__ import annotations

from .artifacts.sidecar import SIDECAR_FORMAT, EngineSidecar, check_plan_source, read_sidecar, sidecar_path, \
    write_sidecar
from .tensorrt.builder import BUILDER_VERSION, BuildResult, build_engine, make_sidecar
from .tensorrt.calibration import fit_short_edge, make_calibrator
from .tensorrt.loader import MIN_TENSORRT, Say, import_tensorrt, make_logger, version_tuple
from .tensorrt.onnx_inspect import OnnxModel, PluginNode, inspect_onnx
from .tensorrt.plugins import NVIDIA_PLUGIN, NVIDIA_PLUGIN_MIN_TENSORRT, PLUGIN_LIBRARY_NAME, ZSD_PLUGIN, PluginSpec, \
    load_plugin_library, require_creators
from .tensorrt.precision import PRECISIONS
from .tensorrt.preflight import ENGINE_SUFFIXES, BuildOptions, BuildPlan, preflight
from .tensorrt.profiles import MIN_MAX_CLASSES, TEXT_ENCODER_ROWS, TEXT_INPUTS, Profile, Shape, ShapeRange, \
    default_profile, parse_profile, resolve_profile
from .tensorrt.progress import make_progress_monitor

# Former private names still imported elsewhere (export/precision.py).
_fit_short_edge = fit_short_edge
_version_tuple = version_tuple

__all__ = [
    # the former module's public names
    "BuildOptions", "BuildResult", "EngineSidecar", "OnnxModel", "PluginSpec", "ShapeRange", "build_engine",
    "default_profile", "import_tensorrt", "inspect_onnx", "load_plugin_library", "make_sidecar", "parse_profile",
    "preflight", "read_sidecar", "sidecar_path", "write_sidecar",
    # its other module-level names that callers imported
    "BUILDER_VERSION", "ENGINE_SUFFIXES", "MIN_MAX_CLASSES", "MIN_TENSORRT", "NVIDIA_PLUGIN",
    "NVIDIA_PLUGIN_MIN_TENSORRT", "PLUGIN_LIBRARY_NAME", "PRECISIONS", "SIDECAR_FORMAT", "TEXT_ENCODER_ROWS",
    "TEXT_INPUTS", "ZSD_PLUGIN", "BuildPlan", "PluginNode", "Profile", "Say", "Shape", "check_plan_source",
    "fit_short_edge", "make_calibrator", "make_logger", "make_progress_monitor", "require_creators",
    "resolve_profile", "version_tuple",
]
