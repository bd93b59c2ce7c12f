"""TensorRT for zsdeploy, split the way Polygraphy splits it: small loaders composed by a builder and a runner.

- `profiles`: Shape, ShapeRange, Profile; `--profile` parsing, default profiles from the model's metadata.
- `onnx_inspect`: OnnxModel, inspect_onnx (metadata, inputs, plugin nodes; no TensorRT).
- `loader`: import_tensorrt (actionable errors), version checks, make_logger / logged_errors.
- `plugins`: PluginSpec, ZSD_PLUGIN / NVIDIA_PLUGIN, load_plugin_library, require_creators.
- `precision`: which network (strongly typed / builder flags) for which graph and TensorRT.
- `preflight`: BuildOptions, BuildPlan, preflight (every check that needs no TensorRT).
- `calibration`: the int8 entropy calibrator (builder-flag int8 builds).
- `progress`: the builder's progress monitor.
- `builder`: build_engine, BuildResult, make_sidecar.

The engine sidecar (`<plan>.json`) is `zsdeploy.runtime.artifacts.sidecar`. The runner
(`zsdeploy.runtime.backends.tensorrt_backend`) uses loader, plugins and the sidecar only, never the builder.

Names are exported lazily (PEP 562), so `import zsdeploy.runtime.tensorrt.loader` loads neither the builder nor
onnx. `preflight` the function is imported from its module (`zsdeploy.runtime.tensorrt.preflight`): a package
attribute of that name is the submodule.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .builder import BuildResult, build_engine, make_sidecar
    from .calibration import make_calibrator
    from .loader import import_tensorrt, make_logger
    from .onnx_inspect import OnnxModel, PluginNode, inspect_onnx
    from .plugins import NVIDIA_PLUGIN, PLUGIN_LIBRARY_NAME, ZSD_PLUGIN, PluginSpec, load_plugin_library, \
        require_creators
    from .precision import PRECISIONS, PrecisionPlan, resolve_precision
    from .preflight import ENGINE_SUFFIXES, BuildOptions, BuildPlan
    from .profiles import Profile, Shape, ShapeRange, default_profile, parse_profile, resolve_profile

__all__ = [
    "BuildResult", "build_engine", "make_sidecar",
    "make_calibrator",
    "import_tensorrt", "make_logger",
    "OnnxModel", "PluginNode", "inspect_onnx",
    "NVIDIA_PLUGIN", "PLUGIN_LIBRARY_NAME", "ZSD_PLUGIN", "PluginSpec", "load_plugin_library", "require_creators",
    "PRECISIONS", "PrecisionPlan", "resolve_precision",
    "ENGINE_SUFFIXES", "BuildOptions", "BuildPlan",
    "Profile", "Shape", "ShapeRange", "default_profile", "parse_profile", "resolve_profile",
]

# name -> the submodule that defines it (imported on first access)
_EXPORTS = {
    **dict.fromkeys(("BuildResult", "build_engine", "make_sidecar"), "builder"),
    **dict.fromkeys(("make_calibrator",), "calibration"),
    **dict.fromkeys(("import_tensorrt", "make_logger"), "loader"),
    **dict.fromkeys(("OnnxModel", "PluginNode", "inspect_onnx"), "onnx_inspect"),
    **dict.fromkeys(("NVIDIA_PLUGIN", "PLUGIN_LIBRARY_NAME", "ZSD_PLUGIN", "PluginSpec", "load_plugin_library",
                     "require_creators"), "plugins"),
    **dict.fromkeys(("PRECISIONS", "PrecisionPlan", "resolve_precision"), "precision"),
    **dict.fromkeys(("ENGINE_SUFFIXES", "BuildOptions", "BuildPlan"), "preflight"),
    **dict.fromkeys(("Profile", "Shape", "ShapeRange", "default_profile", "parse_profile", "resolve_profile"),
                    "profiles"),
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
