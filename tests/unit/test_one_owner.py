"""One owner per fact (DESIGN.md): each of these facts is written in exactly one module, checked over every source
file's AST. Each check names the owner; a second definition fails with its file and line."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from helpers import REPO
from zsdeploy.runtime import options

SOURCES = ("runtime", "export", "benchmarks", "zsdeploy", "scripts")


def source_files() -> list[Path]:
    return sorted(p for folder in SOURCES for p in (REPO / folder).rglob("*.py") if ".venv" not in p.parts)


def parsed() -> list[tuple[Path, ast.AST]]:
    return [(p, ast.parse(p.read_text(encoding="utf-8"), str(p))) for p in source_files()]


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"


# the common keys every export records; they are written by runtime/artifacts/onnx_metadata.ExportRecord only
RECORD_KEYS = {"exporter_version", "checkpoint_sha256", "class_names", "pixel_mean", "min_size_test",
               "max_size_test", "size_divisibility", "object_mask_threshold", "num_queries"}
RECORD_OWNER = Path("runtime/artifacts/onnx_metadata.py")


def metadata_writers(trees: list[tuple[Path, ast.AST]]) -> list[str]:
    """Dict displays that spell out export metadata (three or more of the record's keys) outside its owner."""
    found = []
    for path, tree in trees:
        if path.relative_to(REPO) == RECORD_OWNER:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
                if len(keys & RECORD_KEYS) >= 3:
                    found.append(f"{where(path, node)} writes {sorted(keys & RECORD_KEYS)}")
    return found


def test_export_metadata_has_one_writer():
    assert metadata_writers(parsed()) == []


def test_the_writer_check_sees_a_hand_written_metadata_dict():
    """What both exporters did before the record (each spelled ~40 keys by hand): the check must catch it."""
    bad = REPO / "export" / "_probe_hand_metadata.py"
    tree = ast.parse('def meta(s):\n    return {"model": "x", "min_size_test": "800", "max_size_test": "1333",\n'
                     '            "size_divisibility": "32"}\n')
    assert metadata_writers([(bad, tree)]) == ["export/_probe_hand_metadata.py:2 writes "
                                               "['max_size_test', 'min_size_test', 'size_divisibility']"]


VOCABULARIES = {"TASKS": options.TASKS, "GRAPH_PRECISIONS": options.GRAPH_PRECISIONS,
                "RUNTIME_PRECISIONS": options.RUNTIME_PRECISIONS}
VOCABULARY_OWNER = Path("runtime/options.py")


def vocabulary_copies(trees: list[tuple[Path, ast.AST]]) -> list[str]:
    """Tuple/list/set displays of string constants equal (as sets) to one of options' vocabularies."""
    wanted = {frozenset(v): name for name, v in VOCABULARIES.items()}
    found = []
    for path, tree in trees:
        if path.relative_to(REPO) == VOCABULARY_OWNER:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2 and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                name = wanted.get(frozenset(e.value for e in node.elts))  # type: ignore[attr-defined]
                if name:
                    found.append(f"{where(path, node)} repeats options.{name}")
    return found


def test_tasks_and_precisions_are_defined_once():
    assert vocabulary_copies(parsed()) == []


def test_the_vocabulary_check_sees_a_copy():
    tree = ast.parse(f"CHOICES = {tuple(reversed(options.TASKS))!r}\n")
    assert vocabulary_copies([(REPO / "export" / "_probe.py", tree)]) == [
        "export/_probe.py:1 repeats options.TASKS"]


def test_the_version_lives_in_pyproject_only():
    """runtime/version.py reads it from the installed package's metadata; no source spells it."""
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    spelled = [f"{p.relative_to(REPO)}" for p in source_files() if version in p.read_text(encoding="utf-8")]
    assert spelled == []
    from zsdeploy.runtime.version import PRODUCER, VERSION

    assert VERSION == version and PRODUCER == f"zsdeploy-{version}"


# Writing files: runtime/files.py is the one checked writer (temp file + fsync + rename, the umask's mode, one
# ZsdError paragraph). The exceptions write no output of ours through Python: a compiler writes the file itself, or
# the temporary file is an input handed to a reader.
FILE_WRITER = Path("runtime/files.py")
NOT_OUTPUTS = {
    Path("runtime/backends/ov_extension.py"): "g++ writes the library into a temp file, renamed when it links",
    Path("runtime/serving/steps.py"): "a served request's image bytes, written to a scratch file for load_image",
    Path("runtime/serving/local_server.py"): "pip fills a hidden environment folder, renamed when complete",
}


def renames_and_temp_files(trees: list[tuple[Path, ast.AST]]) -> list[str]:
    found = []
    for path, tree in trees:
        rel = path.relative_to(REPO)
        if rel == FILE_WRITER or rel in NOT_OUTPUTS:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "mkstemp", "NamedTemporaryFile", "replace", "rename") and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id in ("os", "tempfile"):
                found.append(f"{where(path, node)} calls {node.func.value.id}.{node.func.attr}")
    return found


def test_outputs_are_written_by_runtime_files_only():
    assert renames_and_temp_files(parsed()) == []


def test_json_default_is_defined_once():
    defs = [where(p, n) for p, tree in parsed() for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.name.lstrip("_") == "json_default"]
    assert [d.rsplit(":", 1)[0] for d in defs] == ["runtime/files.py"]
