"""TensorRT plugins: which ones zsdeploy's graphs use, loading our plugin library, and checking the registry.

Shared by the builder (before the ONNX parser meets a plugin node) and the runner (before deserialising an engine
that contains plugin layers).
"""
from __future__ import annotations

import ctypes
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ZsdError
from .loader import logged_errors, version_tuple

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = ["KNOWN_PLUGINS", "NVIDIA_PLUGIN", "NVIDIA_PLUGIN_MIN_TENSORRT", "PLUGIN_LIBRARY_NAME", "ZSD_PLUGIN",
           "PluginSpec", "load_plugin_library", "require_creators"]


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
KNOWN_PLUGINS = {ZSD_PLUGIN.name: ZSD_PLUGIN, NVIDIA_PLUGIN.name: NVIDIA_PLUGIN}

# Loading a library twice would register its creators twice: remember how each one was loaded.
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
    if key in _LOADED_LIBRARIES:
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
            raise ZsdError(f"plugin library {path}: zsdeployInitPlugins failed ({'; '.join(logged_errors(logger))}).",
                           "see the messages above; rebuild plugins_trt against this TensorRT version.")
        _LOADED_LIBRARIES[key] = "ctypes + zsdeployInitPlugins"
    else:
        _LOADED_LIBRARIES[key] = "ctypes (static registration)"
    return _LOADED_LIBRARIES[key]


def require_creators(plugins: Iterable[PluginSpec], plugin_lib: Path | None, logger: trt.ILogger) -> None:
    """Fail before parsing/deserialising when a plugin the graph needs has no creator in the registry."""
    import tensorrt as trt

    registry: trt.IPluginRegistry = trt.get_plugin_registry()  # the stub declares no return type
    for spec in plugins:
        if spec.name == NVIDIA_PLUGIN.name:
            if version_tuple(trt.__version__) < NVIDIA_PLUGIN_MIN_TENSORRT:
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
