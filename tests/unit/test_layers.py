"""The layers the README's code map states, checked over every module's imports (AST: module level, inside functions
and TYPE_CHECKING blocks alike), and no private name imported from another module.

    runtime  <-  export  <-  families  <-  benchmarks  <-  cli, api
    (runtime never imports torch; each layer imports only the layers to its left)
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import REPO
# source folder -> import name (pyproject.toml's package-dir)
PACKAGES = {"runtime": "zsdeploy.runtime", "export": "zsdeploy.export", "benchmarks": "zsdeploy.benchmarks",
            "zsdeploy": "zsdeploy"}
LAYERS = ["zsdeploy.runtime", "zsdeploy.export", "zsdeploy.families", "zsdeploy.benchmarks", "zsdeploy.cli"]
TOP = {"zsdeploy.api": "zsdeploy.cli", "zsdeploy": "zsdeploy.cli"}  # the API and the package root sit with the CLIs


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO)
    parts = list(rel.with_suffix("").parts)
    parts[0] = PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    if module in TOP:
        return TOP[module]
    return next((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), None)


def imports_of(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, imported module, imported name or None) of every import statement in the file."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found += [(node.lineno, target, alias.name) for alias in node.names]
    return found


def all_modules() -> list[Path]:
    return sorted(p for folder in PACKAGES for p in (REPO / folder).rglob("*.py"))


def violations() -> list[str]:
    bad = []
    for path in all_modules():
        module = module_name(path)
        layer = layer_of(module)
        assert layer is not None, module
        rank = LAYERS.index(layer)
        for line, target, name in imports_of(path):
            where = f"{path.relative_to(REPO)}:{line}"
            if layer == "zsdeploy.runtime" and target.split(".")[0] == "torch":
                bad.append(f"{where}: runtime imports torch")
            for full in (target, f"{target}.{name}" if name else target):
                other = layer_of(full) if full.startswith("zsdeploy") else None
                if other is not None and LAYERS.index(other) > rank:
                    bad.append(f"{where}: {layer} imports {full} (layer {other})")
                    break
            if name and name.startswith("_") and not name.startswith("__") and target.startswith("zsdeploy") \
                    and target != module:
                bad.append(f"{where}: private name {target}.{name} imported from another module")
    return bad


def test_every_module_keeps_to_its_layer_and_imports_no_private_name():
    assert violations() == []


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path, monkeypatch):
    """The rule is not vacuous: a function-level relative import of export from runtime, torch in runtime and a
    private name are each caught."""
    fake = REPO / "runtime" / "_layer_probe_for_test.py"
    assert not fake.exists()
    fake.write_text("def f():\n    from ..export.onnx_export import save_atomic\n    import torch\n"
                    "    from .imageio import _unreadable\n")
    try:
        found = [v for v in violations() if "_layer_probe_for_test" in v]
    finally:
        fake.unlink()
    assert any("runtime imports zsdeploy.export.onnx_export" in v for v in found), found
    assert any("runtime imports torch" in v for v in found), found
    assert any("private name zsdeploy.runtime.imageio._unreadable" in v for v in found), found


@pytest.mark.parametrize("module,layer", [("zsdeploy.runtime.pipeline", "zsdeploy.runtime"),
                                          ("zsdeploy.families.base", "zsdeploy.families"),
                                          ("zsdeploy.cli.trt_infer", "zsdeploy.cli"), ("zsdeploy", "zsdeploy.cli")])
def test_layer_of(module, layer):
    assert layer_of(module) == layer
