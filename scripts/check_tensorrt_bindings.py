#!/usr/bin/env python3
"""zsdeploy's TensorRT code against the REAL TensorRT Python bindings of every supported version.

For each version (10.3.0 = JetPack 6, 10.16.1.11, 11.4.0.106): `pip install --no-deps --target` of
`tensorrt-cu12-bindings` into a throwaway folder (build/tensorrt-bindings/<version>, ~1 s each), then, in a child
interpreter that imports that real module:

* every `tensorrt` attribute the project's code uses — collected from the code itself by an AST walk of the modules
  that import tensorrt, with light type inference (annotations, constructors, and the return types the real
  bindings' own signatures give, so `builder.create_builder_config().int8_calibrator` is `IBuilderConfig.
  int8_calibrator`) — is looked up in the real module;
* an attribute a version lacks passes only when it is guarded: probed in `runtime/tensorrt/precision.py`'s
  CAPABILITY_ATTRIBUTES (so `check_caps` refuses cleanly where it is missing), read with `getattr(..., default)` /
  `hasattr`, or only an annotation (never evaluated). Anything else is MISSING and fails the check.

libnvinfer cannot be installed here, so the real bindings need its entry points to import: a LOADER SHIM built from
scripts/tensorrt_bindings/nvinfer_loader_shim.c (every entry point returns null and does nothing) satisfies the
dynamic loader. Nothing here asserts on what TensorRT does; no Builder, Runtime or parser call can run.

    python scripts/check_tensorrt_bindings.py                 # all versions, prints one table per version
    python scripts/check_tensorrt_bindings.py --versions 11.4.0.106 --json api.json
    python scripts/check_tensorrt_bindings.py --extra-source my_module.py   # scan one more file too

Exit status: 0 all used attributes exist or are guarded; 1 something is MISSING; 3 the bindings could not be
installed (no package index reachable) or the shim could not be built (no C compiler).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VERSIONS = ("10.3.0", "10.16.1.11", "11.4.0.106")
PACKAGE = "tensorrt-cu12-bindings"
DEFAULT_ROOT = REPO / "build" / "tensorrt-bindings"
SHIM_SOURCE = Path(__file__).resolve().parent / "tensorrt_bindings" / "nvinfer_loader_shim.c"
SHIM_LIBRARIES = ("libnvinfer", "libnvinfer_plugin", "libnvonnxparser")
SCANNED_PACKAGES = ("runtime", "export", "benchmarks", "zsdeploy")
# `import tensorrt` resolves to the real compiled module (what NVIDIA's `tensorrt` meta package re-exports).
ALIAS_PACKAGE = "import sys\nimport tensorrt_bindings\n\nsys.modules[__name__] = tensorrt_bindings\n"

OK, GUARDED, MISSING = "ok", "guarded", "MISSING"


class SetupError(Exception):
    """The bindings or the loader shim could not be prepared (exit 3)."""


# ---------------------------------------------------------------------------------------------------- preparing

@dataclass(frozen=True)
class BindingsEnv:
    version: str
    site: Path  # holds tensorrt_bindings/ and the `tensorrt` alias package
    shim_dir: Path  # libnvinfer.so.N & co (the loader shim)

    def environ(self, extra_paths: tuple[str, ...] = ()) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.site), *extra_paths, env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep)
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(self.shim_dir), env.get("LD_LIBRARY_PATH", "")]).rstrip(
            os.pathsep)
        return env


def _pip_install(target: Path, requirement: str) -> None:
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
                          "--target", str(tmp), requirement], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SetupError(f"pip could not install {requirement}: {res.stderr.strip().splitlines()[-1:]}")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # a folder that exists is complete: an interrupted install is redone


def build_loader_shim(major: int, root: Path) -> Path:
    """libnvinfer.so.<major>, libnvinfer_plugin.so.<major>, libnvonnxparser.so.<major> from the shim source."""
    out = root / f"loader-shim-{major}"
    if all((out / f"{lib}.so.{major}").is_file() for lib in SHIM_LIBRARIES):
        return out
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SetupError("no C compiler (cc/gcc) to build the loader shim")
    out.mkdir(parents=True, exist_ok=True)
    for lib in SHIM_LIBRARIES:
        name = f"{lib}.so.{major}"
        res = subprocess.run([cc, "-shared", "-fPIC", "-O1", f"-Wl,-soname,{name}", "-o", str(out / name),
                              str(SHIM_SOURCE)], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise SetupError(f"building the loader shim failed: {res.stderr.strip()}")
    return out


def prepare(version: str, root: Path = DEFAULT_ROOT) -> BindingsEnv:
    """The real bindings of `version` in root/<version> (installed once), the alias package and the shim."""
    site = root / version
    if not (site / "tensorrt_bindings").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        _pip_install(site, f"{PACKAGE}=={version}")
    alias = site / "tensorrt" / "__init__.py"
    if not alias.is_file():
        alias.parent.mkdir(exist_ok=True)
        alias.write_text(ALIAS_PACKAGE)
    return BindingsEnv(version, site, build_loader_shim(int(version.split(".")[0]), root))


def prepare_cuda_python(root: Path = DEFAULT_ROOT) -> Path:
    """NVIDIA cuda-python in root/cuda-python (for the decisions that reach the GPU check)."""
    site = root / "cuda-python"
    if not (site / "cuda").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        _pip_install(site, "cuda-python>=12")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target",
                        str(site), "--upgrade", "--no-deps", "cuda-bindings", "cuda-pathfinder"],
                       capture_output=True, text=True, check=False)
    return site


# ---------------------------------------------------------------------------------------------------- the AST walk

@dataclass(frozen=True)
class Use:
    path: str  # "Builder.create_network", "BuilderFlag.FP16", "get_plugin_registry"
    where: str  # "runtime/tensorrt/builder.py:97"
    kind: str  # "direct", "getattr-default" (getattr with a default or hasattr), "annotation", "probe"


def modules_touching_tensorrt(repo: Path = REPO) -> list[Path]:
    """Every project module with an `import tensorrt` (at any depth, TYPE_CHECKING blocks included)."""
    found = []
    for pkg in SCANNED_PACKAGES:
        for path in sorted((repo / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            if any(isinstance(n, ast.Import) and any(a.name.split(".")[0] == "tensorrt" for a in n.names)
                   for n in ast.walk(tree)):
                found.append(path)
    return found


_RETURN = re.compile(r"->\s*(?:[\w.]*\.)?tensorrt\.(\w+)\s*$")


class _Typer:
    """Flow-insensitive types of expressions in one module: the tensorrt module, a class of it, an instance of it."""

    def __init__(self, trt: Any, aliases: set[str], returns: dict[str, str]) -> None:
        self.trt, self.aliases, self.returns = trt, aliases, returns
        self.env: dict[str, str] = {}  # local / self.x name -> tensorrt class path

    def resolve(self, path: str) -> Any:
        obj = self.trt
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        return obj

    def annotation_type(self, node: ast.AST | None) -> str | None:
        if node is None:
            return None
        if isinstance(node, ast.BinOp):  # `trt.X | None`
            return self.annotation_type(node.left) or self.annotation_type(node.right)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in self.aliases:
            return node.attr
        return None

    def type_of(self, node: ast.AST) -> tuple[str, str] | None:
        """("module", ""), ("class", path) or ("instance", path)."""
        if isinstance(node, ast.Name):
            if node.id in self.aliases:
                return ("module", "")
            return ("instance", self.env[node.id]) if node.id in self.env else None
        if isinstance(node, ast.Attribute):
            key = _self_key(node)
            if key in self.env:
                return ("instance", self.env[key])
            base = self.type_of(node.value)
            if base is None or base[0] == "instance":
                return None
            path = f"{base[1]}.{node.attr}".lstrip(".")
            return ("class", path) if isinstance(self.resolve(path), type) else None
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in self.returns:
                return ("instance", self.returns[func.id])
            callee = self.type_of(func)
            if callee is not None and callee[0] == "class":
                return ("instance", callee[1])
            if isinstance(func, ast.Attribute):
                owner = self.type_of(func.value)
                if owner is not None and owner[0] in ("instance", "module"):
                    method = self.resolve(f"{owner[1]}.{func.attr}".lstrip("."))
                    # pybind11 signatures: the first line, or "1. name(...) -> X" lines of an overloaded function
                    for line in (getattr(method, "__doc__", None) or "").strip().splitlines():
                        if not re.match(rf"\s*(\d+\.\s*)?{func.attr}\(", line):
                            continue
                        match = _RETURN.search(line)
                        if match and isinstance(self.resolve(match.group(1)), type):
                            return ("instance", match.group(1))
        return None


def _self_key(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return f"self.{node.attr}"
    return None


def _aliases(tree: ast.AST) -> set[str]:
    names = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            names |= {a.asname or a.name for a in n.names if a.name == "tensorrt"}
        elif isinstance(n, ast.Assign) and isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Name) \
                and n.value.func.id == "import_tensorrt":
            names |= {t.id for t in n.targets if isinstance(t, ast.Name)}
    return names


def collect_uses(files: list[Path], trt: Any, repo: Path = REPO) -> list[Use]:
    """Every use of a `tensorrt` attribute in `files`, typed with the real module `trt`."""
    trees = {f: ast.parse(f.read_text(), str(f)) for f in files}
    returns: dict[str, str] = {}
    for tree in trees.values():  # functions whose annotated return is a TensorRT type, by name
        typer = _Typer(trt, _aliases(tree), {})
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            t = typer.annotation_type(fn.returns)
            if t is not None:
                returns[fn.name] = t
    uses: list[Use] = []
    for path, tree in trees.items():
        rel = str(path.relative_to(repo)) if path.is_relative_to(repo) else str(path)
        typer = _Typer(trt, _aliases(tree), returns)
        annotations: set[int] = set()
        for n in ast.walk(tree):
            parts: list[ast.AST | None] = []
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = [*n.args.posonlyargs, *n.args.args, *n.args.kwonlyargs, n.args.vararg, n.args.kwarg]
                parts = [n.returns, *(a.annotation for a in args if a is not None)]
                for a in args:
                    t = typer.annotation_type(a.annotation) if a is not None else None
                    if t is not None and a is not None:
                        typer.env[a.arg] = t
            elif isinstance(n, ast.AnnAssign):
                parts = [n.annotation]
                t = typer.annotation_type(n.annotation)
                key = n.target.id if isinstance(n.target, ast.Name) else _self_key(n.target)
                if t is not None and key is not None:
                    typer.env[key] = t
                    if isinstance(n.value, ast.Name):  # `self.engine: trt.ICudaEngine = engine` types `engine` too
                        typer.env.setdefault(n.value.id, t)
            for p in parts:
                if p is not None:
                    annotations |= {id(x) for x in ast.walk(p)}
        for _ in range(3):  # assignments typed from other assignments: a few rounds reach the fixpoint
            for n in ast.walk(tree):
                if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None:
                    t = typer.type_of(n.value)
                    targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                    for target in targets:
                        key = target.id if isinstance(target, ast.Name) else _self_key(target)
                        if key is not None and t is not None and t[0] == "instance":
                            typer.env.setdefault(key, t[1])
        for n in ast.walk(tree):
            where = f"{rel}:{getattr(n, 'lineno', 0)}"
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("getattr", "hasattr") \
                    and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant) and isinstance(n.args[1].value, str):
                owner = typer.type_of(n.args[0])
                if owner is not None:
                    guarded = n.func.id == "hasattr" or len(n.args) == 3
                    uses.append(Use(f"{owner[1]}.{n.args[1].value}".lstrip("."), where,
                                    "getattr-default" if guarded else "direct"))
            elif isinstance(n, ast.Attribute) and not n.attr.startswith("__"):
                owner = typer.type_of(n.value)
                if owner is not None:
                    uses.append(Use(f"{owner[1]}.{n.attr}".lstrip("."), where,
                                    "annotation" if id(n) in annotations else "direct"))
    return uses


def api_table(trt: Any, uses: list[Use]) -> list[dict[str, Any]]:
    """One row per used attribute path: where, how, and ok / guarded / MISSING in this module."""
    # the same probe table and attribute-path test the builder's capability check uses
    from zsdeploy.runtime.tensorrt.precision import CAPABILITY_ATTRIBUTES as probes, has_attribute_path

    probed = {p: cap for cap, paths in probes.items() for p in paths}
    rows: dict[str, dict[str, Any]] = {}
    for cap, paths in probes.items():
        for p in paths:
            rows[p] = {"attribute": p, "kinds": {"probe"}, "where": [f"CAPABILITY_ATTRIBUTES[{cap!r}]"]}
    for u in uses:
        row = rows.setdefault(u.path, {"attribute": u.path, "kinds": set(), "where": []})
        row["kinds"].add(u.kind)
        row["where"].append(u.where)
    out = []
    for path, row in sorted(rows.items()):
        present = has_attribute_path(trt, path)
        covering = next((probed[p] for p in probed if path == p or path.startswith(p + ".")), None)
        unguarded = row["kinds"] & {"direct"}
        if present:
            status = OK
        elif covering is not None or not unguarded:
            status = GUARDED
        else:
            status = MISSING
        guard = (f"capability {covering}" if covering else
                 "getattr/hasattr" if "getattr-default" in row["kinds"] else
                 "annotation only" if row["kinds"] == {"annotation"} else "")
        out.append({"attribute": path, "status": status, "present": present, "guard": guard,
                    "kinds": sorted(row["kinds"]), "where": sorted(set(row["where"]))[:3],
                    "uses": len(row["where"])})
    return out


def print_table(results: list[dict[str, Any]]) -> None:
    """One row per attribute, one column per version: ok / guarded (absent, behind a guard) / MISSING."""
    versions = [r["version"] for r in results]
    by_attr: dict[str, dict[str, Any]] = {}
    for res in results:
        for row in res["rows"]:
            entry = by_attr.setdefault(row["attribute"], {"row": row, "status": {}})
            entry["status"][res["version"]] = row["status"]
    width = max(len(a) for a in by_attr)
    cols = [max(len(v), 7) for v in versions]
    print(f"TensorRT attributes used by zsdeploy ({len(by_attr)}; collected by an AST walk of "
          f"{len({w.split(':')[0] for e in by_attr.values() for w in e['row']['where'] if '.py' in w})} modules) "
          "against the real bindings:")
    print(f"  {'attribute':<{width}}  " + "  ".join(f"{v:<{c}}" for v, c in zip(versions, cols))
          + "  guard / first use")
    for attr, entry in sorted(by_attr.items()):
        row = entry["row"]
        cells = "  ".join(f"{entry['status'].get(v, '-'):<{c}}" for v, c in zip(versions, cols))
        note = row["guard"] or row["where"][0]
        print(f"  {attr:<{width}}  {cells}  {note}")
    for res in results:
        absent = [r for r in res["rows"] if not r["present"]]
        missing = [r for r in absent if r["status"] == MISSING]
        print(f"  TensorRT {res['version']}: {len(res['rows']) - len(absent)} present, {len(absent) - len(missing)} "
              f"absent but guarded, {len(missing)} MISSING"
              + (": " + ", ".join(f"{r['attribute']} ({r['where'][0]})" for r in missing) if missing else ""))


def inside(version: str, extra: list[Path], json_path: Path | None) -> int:
    """Run in the child whose sys.path holds the real bindings."""
    import tensorrt as trt  # the real module (alias of tensorrt_bindings)

    if trt.__version__ != version:
        print(f"expected TensorRT {version}, imported {trt.__version__} from {trt.__file__}", file=sys.stderr)
        return 3
    rows = api_table(trt, collect_uses(modules_touching_tensorrt() + extra, trt))
    if json_path is not None:
        json_path.write_text(json.dumps({"version": version, "rows": rows}, indent=1))
    return 1 if any(r["status"] == MISSING for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", nargs="+", default=list(VERSIONS))
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where the bindings are installed (reused)")
    ap.add_argument("--extra-source", type=Path, action="append", default=[], help="one more file to scan")
    ap.add_argument("--json", type=Path, help="write the tables as JSON (one file; list of versions)")
    ap.add_argument("--inside", help=argparse.SUPPRESS)  # the child: the version whose bindings are importable
    args = ap.parse_args(argv)
    extra = [p.resolve() for p in args.extra_source]
    if args.inside:
        return inside(args.inside, extra, args.json)
    results, status = [], 0
    for version in args.versions:
        try:
            env = prepare(version, args.root)
        except SetupError as e:
            print(f"error: TensorRT {version}: {e}. Fix: run where the package index is reachable and a C compiler "
                  "is installed.", file=sys.stderr)
            return 3
        out = args.root / f"api-{version}.json"
        cmd = [sys.executable, __file__, "--inside", version, "--json", str(out)]
        cmd += [a for p in extra for a in ("--extra-source", str(p))]
        res = subprocess.run(cmd, env=env.environ(), check=False)
        status = max(status, res.returncode)
        if out.is_file():
            results.append(json.loads(out.read_text()))
    if results:
        print_table(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    print("TensorRT API check: " + ("every used attribute exists or is guarded in " + ", ".join(args.versions)
                                    if status == 0 else "FAILED (see MISSING above)"))
    return status


if __name__ == "__main__":
    sys.exit(main())
