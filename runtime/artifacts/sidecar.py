"""A TensorRT engine's sidecar, `<plan>.json`: the only code that writes or reads it.

build-engine writes it next to the plan (`write_sidecar`); the TensorRT runner, the ZegFormer bundle runtime and
export-triton read it (`read_sidecar`). It makes the engine as self-describing as its ONNX (DESIGN.md): the ONNX
metadata verbatim, the ONNX it was built from (path + sha256), the TensorRT version, GPU name / compute capability,
precision, optimisation profiles and plugins.

Format "zsdeploy-engine/2" (written) and "zsdeploy-engine/1" (still read). /2 requires every field the builder
writes; /1 requires what the /1 reader did and reads the rest where present. Either way a missing or malformed
field is a ZsdError naming it and the file. Unknown extra keys are ignored (room for additive fields).

`check_plan_source` refuses a plan whose ONNX changed after the build: the plan would silently run the old model.
"""
from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ZsdError
from ..options import GRAPH_PRECISIONS
from ..files import file_sha256, write_json_atomic
from .fields import Fields
from .onnx_metadata import ModelInfo
from ..tensorrt.plugins import PluginSpec
from ..tensorrt.profiles import Profile, ShapeRange
from ..version import PRODUCER

__all__ = ["READABLE_FORMATS", "SIDECAR_FORMAT", "SIDECAR_FORMAT_V1", "EngineSidecar", "OnnxSource",
           "PluginLibrary", "check_plan_source", "read_sidecar", "rebuild_command", "sidecar_path", "write_sidecar"]

SIDECAR_FORMAT = "zsdeploy-engine/2"
SIDECAR_FORMAT_V1 = "zsdeploy-engine/1"
READABLE_FORMATS = (SIDECAR_FORMAT_V1, SIDECAR_FORMAT)

PRECISIONS = GRAPH_PRECISIONS
NETWORK_KINDS = ("strongly_typed", "weakly_typed")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMPUTE_CAPABILITY = re.compile(r"\d+\.\d+")


@dataclass(frozen=True)
class OnnxSource:
    """The ONNX file an engine was built from, as it was at build time."""

    path: str  # absolute
    sha256: str


@dataclass(frozen=True)
class PluginLibrary:
    """The plugin library loaded for the build (libzsdeploy_plugins.so)."""

    path: str  # absolute
    name: str
    sha256: str | None  # None only in /1 sidecars that did not record it
    loaded_by: str | None  # how the builder loaded it (IPluginRegistry.load_library / ctypes ...)


@dataclass(frozen=True)
class EngineSidecar:
    """What `<plan>.json` says about the engine `plan`: how and for what it was built.

    Fields that /1 sidecars may lack are None there; a /2 sidecar has them all (`calibration_cache` and
    `plugin_library` may be null: no calibration cache / no plugin library).
    """

    plan: Path
    metadata: dict[str, str]  # the ONNX metadata_props, verbatim
    onnx: OnnxSource | None
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"
    precision: str  # what the engine computes in: fp32 / fp16 / int8
    profiles: tuple[Profile, ...]
    plugins: tuple[PluginSpec, ...] = ()
    plugin_library: PluginLibrary | None = None
    network: str | None = None  # strongly_typed / weakly_typed
    graph_precision: str | None = None  # the precision the ONNX graph states
    workspace_mb: int | None = None
    calibration_cache: str | None = None
    builder: str | None = None  # "zsdeploy-<version>"
    built_at: str | None = None  # ISO 8601 local time with offset
    format: str = SIDECAR_FORMAT  # the format it was read in (always SIDECAR_FORMAT when written)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the JSON as read

    @property
    def path(self) -> Path:
        """The sidecar file itself."""
        return sidecar_path(self.plan)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo.from_metadata(self.metadata, str(self.path))

    def to_json(self) -> dict[str, Any]:
        """The /2 document (raises ValueError for a field /2 requires that is unset: a bug in the caller)."""
        required = {"onnx": self.onnx, "network": self.network, "graph_precision": self.graph_precision,
                    "workspace_mb": self.workspace_mb, "builder": self.builder, "built_at": self.built_at}
        unset = [k for k, v in required.items() if v is None]
        if unset:
            raise ValueError(f"an {SIDECAR_FORMAT} sidecar needs {unset}")
        assert self.onnx is not None
        lib = self.plugin_library
        return {
            "format": SIDECAR_FORMAT,
            "builder": self.builder,
            "built_at": self.built_at,
            "metadata": dict(self.metadata),
            "onnx": {"path": self.onnx.path, "sha256": self.onnx.sha256},
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "precision": self.precision,
            "network": self.network,
            "graph_precision": self.graph_precision,
            "workspace_mb": self.workspace_mb,
            "profiles": [{name: rng.as_json() for name, rng in p.items()} for p in self.profiles],
            "plugins": [{"name": p.name, "version": p.version, "namespace": p.namespace} for p in self.plugins],
            "plugin_library": None if lib is None else {
                "path": lib.path, "name": lib.name, "sha256": lib.sha256, "loaded_by": lib.loaded_by},
            "calibration_cache": self.calibration_cache,
        }


def sidecar_path(plan: str | Path) -> Path:
    """`model.plan` -> `model.plan.json`."""
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def write_sidecar(sidecar: EngineSidecar) -> Path:
    """Write `sidecar` as `<plan>.json` (format /2), atomically; returns its path."""
    return write_json_atomic(sidecar.path, sidecar.to_json())


# ------------------------------------------------------------------------------- the plan and its ONNX


def rebuild_command(sidecar: EngineSidecar, *, bundle: str | Path | None = None) -> str:
    """The build-engine command that builds this engine again from its ONNX (or, for a ZegFormer bundle's graph,
    the command for the whole bundle), with the precision, plugin library and dynamic profile it was built with."""
    q = shlex.quote
    if bundle is not None:
        args = ["build-engine", "--onnx", q(str(bundle)), "--output", q(str(bundle))]
    else:
        onnx = sidecar.onnx.path if sidecar.onnx is not None else "MODEL.onnx"
        args = ["build-engine", "--onnx", q(onnx), "--output", q(str(sidecar.plan))]
    if sidecar.precision != "fp32":  # also right for an explicit graph: --precision equal to the graph's is accepted
        args += ["--precision", sidecar.precision]
    if sidecar.plugin_library is not None:
        args += ["--plugin-lib", q(sidecar.plugin_library.path)]
    if bundle is None:
        for profile in sidecar.profiles[:1]:
            args += [f"--profile {q(rng.as_arg(name))}" for name, rng in profile.items() if not rng.is_static]
        if sidecar.calibration_cache:
            args += ["--calib-cache", q(sidecar.calibration_cache)]
    return " ".join(args)


def check_plan_source(sidecar: EngineSidecar, *, bundle: str | Path | None = None) -> None:
    """Refuse a plan whose ONNX has changed since it was built (the engine would run the old model).

    The ONNX is looked for at the recorded path, and where that is gone (the folder was moved or copied
    elsewhere) under the same name next to the plan. Where neither exists (the engine was deployed alone), or
    the sidecar predates the record (/1 without "onnx"), there is nothing to compare and the plan is accepted.
    `bundle`: the plan belongs to this ZegFormer bundle; the fix then rebuilds the bundle.
    """
    if sidecar.onnx is None:
        return
    recorded = Path(sidecar.onnx.path)
    beside = sidecar.plan.parent / recorded.name
    onnx = recorded if recorded.is_file() else beside if beside.is_file() else None
    if onnx is None:
        return
    now = _digest(onnx)
    if now == sidecar.onnx.sha256:
        return
    what = "the bundle's engines" if bundle is not None else "the engine"
    raise ZsdError(f"{sidecar.plan} was built from {onnx}, which has changed since (sha256 {sidecar.onnx.sha256[:12]}"
                   f"... when the engine was built, {now[:12]}... now); the engine would run the old model.",
                   f"rebuild {what}: {rebuild_command(sidecar, bundle=bundle)}")


# (path, inode, size, mtime, ctime) -> sha256: a bundle's graph is checked by the bundle runtime and again by the
# runner, and a segmenter takes ~0.5 s to hash. A re-export (temp file + os.replace) brings a new inode.
_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def _digest(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]


# ------------------------------------------------------------------------------------------------ reading


def read_sidecar(plan: str | Path) -> EngineSidecar:
    """Load and validate the sidecar of `plan` (ZsdError naming the field when missing or malformed)."""
    plan = Path(plan)
    path = sidecar_path(plan)
    if not path.is_file():
        raise ZsdError(f"engine {plan} has no sidecar {path.name} next to it; the runtime cannot know which model, "
                       "TensorRT version and GPU it was built for.",
                       "rebuild the engine with build-engine (it writes both), or copy the .json along with the .plan.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ZsdError(f"engine sidecar {path} is malformed: not readable JSON ({type(e).__name__}: {e}).",
                       f"rebuild the engine and its sidecar with build-engine --onnx MODEL.onnx --output {plan}.") \
            from None
    if not isinstance(raw, dict):
        raise ZsdError(f"engine sidecar {path} is malformed: a JSON {type(raw).__name__}, not an object.",
                       f"rebuild the engine and its sidecar with build-engine --onnx MODEL.onnx --output {plan}.")
    return _parse(plan, raw)


def _reader(plan: Path, raw: dict[str, Any]) -> Fields:
    """The shared strict reader (runtime.artifacts.fields) with the sidecar's own lead-in and fix."""
    onnx = raw.get("onnx")
    source = onnx.get("path") if isinstance(onnx, dict) else None
    fix = ("rebuild the engine and its sidecar (build-engine writes both): build-engine --onnx "
           f"{shlex.quote(source) if isinstance(source, str) else 'MODEL.onnx'} --output {shlex.quote(str(plan))}.")
    return Fields(raw, where=f"engine sidecar {sidecar_path(plan)} is malformed:", fix=fix)


def _parse(plan: Path, raw: dict[str, Any]) -> EngineSidecar:
    f = _reader(plan, raw)
    fmt = f.get("format", None)
    if fmt is None:
        f.fail("format", f"(the sidecar's version, e.g. {SIDECAR_FORMAT!r}) is missing")
    if fmt not in READABLE_FORMATS:
        raise ZsdError(f"engine sidecar {sidecar_path(plan)} has format {fmt!r}; this zsdeploy reads "
                       f"{' and '.join(READABLE_FORMATS)}.",
                       "use the zsdeploy version that built the engine, or " + f.fix)
    v2 = fmt == SIDECAR_FORMAT  # /2 requires everything the builder writes
    req = f.parsed

    def opt(key: str, what: str, parse: Callable[[Any], Any]) -> Any:
        return f.parsed(key, what, parse) if v2 else f.parsed(key, what, parse, default=None)

    return EngineSidecar(
        plan=plan,
        metadata=req("metadata", "an object of ONNX metadata strings", _metadata),
        onnx=opt("onnx", 'an object {"path": str, "sha256": 64 hex digits}', _onnx_source),
        tensorrt_version=req("tensorrt_version", 'the TensorRT version, e.g. "10.13.0.35"', _text),
        gpu_name=req("gpu_name", "the GPU's name", _text),
        compute_capability=req("compute_capability", 'the compute capability, e.g. "8.7"', _compute_capability),
        precision=req("precision", f"one of {', '.join(PRECISIONS)}", _one_of(PRECISIONS)),
        profiles=req("profiles", 'a non-empty list of {input: {"min", "opt", "max"}} profiles', _profiles),
        plugins=opt("plugins", 'a list of {"name", "version", "namespace"}', _plugins) or (),
        plugin_library=opt("plugin_library", 'null or {"path", "name", "sha256", "loaded_by"}',
                           _plugin_library_v2 if v2 else _plugin_library_v1),
        network=opt("network", f"one of {', '.join(NETWORK_KINDS)}", _one_of(NETWORK_KINDS)),
        graph_precision=opt("graph_precision", f"one of {', '.join(PRECISIONS)}", _one_of(PRECISIONS)),
        workspace_mb=opt("workspace_mb", "a positive number of MiB", _positive_int),
        calibration_cache=opt("calibration_cache", "null or a path", _optional_text),
        builder=opt("builder", f'the builder\'s version, e.g. "{PRODUCER}"', _text),
        built_at=opt("built_at", "an ISO 8601 time", _text),
        format=str(fmt),
        raw=raw,
    )


# ------------------------------------------------------------------------------------ field parsers


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("a non-empty string expected")
    return value


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"not one of {', '.join(choices)}")
        return str(value)

    return parse


def _compute_capability(value: Any) -> str:
    if not isinstance(value, str) or not _COMPUTE_CAPABILITY.fullmatch(value):
        raise ValueError("MAJOR.MINOR expected")
    return value


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("a positive integer expected")
    return value


def _object(value: Any, keys: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("an object expected")
    missing = [k for k in keys if k not in value]
    if missing:
        raise ValueError(f"no {', '.join(repr(k) for k in missing)}")
    return value


def _metadata(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise TypeError("an object expected")
    bad = [k for k, v in value.items() if not isinstance(v, str)]
    if bad:
        raise TypeError(f"values of {bad[:3]} are not strings")
    return dict(value)


def _sha256(value: Any) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ValueError("sha256 is not 64 lowercase hex digits")
    return value


def _onnx_source(value: Any) -> OnnxSource:
    d = _object(value, ("path", "sha256"))
    return OnnxSource(_text(d["path"]), _sha256(d["sha256"]))


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise TypeError("shapes are lists of integers")
    return tuple(value)


def _profiles(value: Any) -> tuple[Profile, ...]:
    if not isinstance(value, list) or not value:
        raise TypeError("a non-empty list expected")
    profiles = []
    for p in value:
        if not isinstance(p, dict) or not p:
            raise TypeError("each profile is a non-empty object")
        profile: Profile = {}
        for name, r in p.items():
            d = _object(r, ("min", "opt", "max"))
            rng = ShapeRange(_shape(d["min"]), _shape(d["opt"]), _shape(d["max"]))
            if not rng.is_valid:
                raise ValueError(f"input {name!r}: min <= opt <= max of the same rank, all >= 1, expected")
            profile[str(name)] = rng
        profiles.append(profile)
    return tuple(profiles)


def _plugins(value: Any) -> tuple[PluginSpec, ...]:
    if not isinstance(value, list):
        raise TypeError("a list expected")
    specs = []
    for p in value:
        d = _object(p, ("name", "version", "namespace"))
        if not all(isinstance(d[k], str) for k in ("name", "version", "namespace")):
            raise TypeError("name, version and namespace are strings")
        specs.append(PluginSpec(d["name"], d["version"], d["namespace"]))
    return tuple(specs)


def _plugin_library_v2(value: Any) -> PluginLibrary | None:
    if value is None:
        return None
    d = _object(value, ("path", "name", "sha256", "loaded_by"))
    return PluginLibrary(_text(d["path"]), _text(d["name"]), _sha256(d["sha256"]), _optional_text(d["loaded_by"]))


def _plugin_library_v1(value: Any) -> PluginLibrary | None:
    """/1 recorded the library as an object with at least its path (the /1 reader used only that)."""
    if value is None:
        return None
    d = _object(value, ("path",))
    path = _text(d["path"])
    sha = d.get("sha256")
    loaded_by = d.get("loaded_by")
    return PluginLibrary(path, str(d.get("name") or Path(path).name), _sha256(sha) if sha is not None else None,
                         loaded_by if isinstance(loaded_by, str) else None)
