"""`zsd-bench compare`: real accuracy reports of two graphs side by side (the trained demo model, exact vs degraded)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zsdeploy.benchmarks.accuracy import run_accuracy
from zsdeploy.benchmarks.compare import compare, load_report, markdown
from zsdeploy.benchmarks.datasets import open_dataset
from zsdeploy.runtime.errors import ZsdError

from helpers import HalfResolution


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Two real zsd-bench accuracy reports on the same 2 scenes: the demo model itself and a half-resolution run of
    it (a real degradation that costs small objects most), written as zsd-bench writes them."""
    from zsdeploy.families import MODELS

    ref = MODELS.get("pading-demo").torch_reference("panoptic", {"weights": "demo"}, threads=2)
    scenes = open_dataset("synthetic:2", scene_size="128x128", size_range=(8, 60), n_objects=12, seed=20261201)
    d = tmp_path_factory.mktemp("cmp")
    paths = []
    for name, backend in (("exact", ref), ("half", HalfResolution(ref))):
        report = run_accuracy(backend, ref, scenes, short_edge=128)
        report["model"]["path"] = str(d / f"{name}.onnx")
        p = d / f"{name}.json"
        p.write_text(json.dumps(report))
        paths.append(p)
    return paths


def test_rows_and_changes_are_the_reports_numbers(reports):
    exact, half = (load_report(p) for p in reports)
    cmp = compare([exact, half])
    assert cmp["ground_truth"] is True and [r["path"] for r in cmp["rows"]] == [str(p) for p in reports]
    for bucket in ("small", "all"):
        for m in ("panoptic.pq", "instance.ap", "semantic.miou"):
            want = half["vs_ground_truth"]["backend"][bucket][m] - exact["vs_ground_truth"]["backend"][bucket][m]
            assert cmp["rows"][1]["delta_vs_baseline"][bucket][m] == pytest.approx(want, abs=1e-9)
            assert cmp["rows"][0]["delta_vs_baseline"][bucket][m] == 0.0
    # the exact run equals its reference; the degraded one loses small-object agreement
    assert cmp["rows"][0]["vs_reference"]["small"]["semantic.pixel_agreement"] == 1.0
    assert cmp["rows"][1]["vs_reference"]["small"]["semantic.pixel_agreement"] < 0.99
    # another baseline flips the sign of the change
    flipped = compare([exact, half], baseline=1)
    assert flipped["rows"][0]["delta_vs_baseline"]["small"]["panoptic.pq"] == \
        pytest.approx(-cmp["rows"][1]["delta_vs_baseline"]["small"]["panoptic.pq"])
    md = markdown(cmp)
    assert "exact.onnx" in md and "half.onnx" in md and "Against ground truth" in md


def test_cli_writes_table_and_plot(reports, tmp_path):
    out = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, "-m", "zsdeploy.benchmarks.cli", "compare", *map(str, reports),
                           "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["compare.json", "compare.md", "compare.png"]
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "compare.json").read_text())
    assert len(doc["rows"]) == 2 and doc["plot"].endswith("compare.png")
    assert "half.onnx" in proc.stdout and "vs ground truth small PQ" in proc.stdout


def test_reports_of_different_images_are_refused(reports, tmp_path):
    other = json.loads(reports[1].read_text())
    other["dataset"]["images"] = 3
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps(other))
    with pytest.raises(ZsdError, match="same --dataset"):
        compare([load_report(reports[0]), load_report(bad)])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "zsdeploy.benchmarks.cli", "compare", str(reports[0]), str(bad),
                           "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "measured synthetic:2 (3 images" in proc.stderr + proc.stdout
    assert not out.exists()


@pytest.mark.parametrize("content, problem", [("{not json", "not a readable JSON"),
                                               ('{"kind": "latency"}', "not a zsd-bench accuracy report")])
def test_foreign_files_are_refused(tmp_path, content, problem):
    p = tmp_path / "r.json"
    p.write_text(content)
    with pytest.raises(ZsdError, match=problem):
        load_report(p)
    with pytest.raises(ZsdError, match="does not exist"):
        load_report(tmp_path / "missing.json")


def test_a_report_with_the_old_runtime_precision_spelling_still_reads(reports, tmp_path):
    """A runtime precision spelled `f32` (the spelling before fp32 was the one spelling) reads as `fp32`."""
    old = json.loads(reports[1].read_text())
    old["model"].update(runtime_precision="f32", runtime="OpenVINO")
    p = tmp_path / "old.json"
    p.write_text(json.dumps(old))
    report = load_report(p)
    assert report["model"]["runtime_precision"] == "fp32"
    cmp = compare([load_report(reports[0]), report])
    assert "graph run in fp32 by OpenVINO" in cmp["rows"][1]["label"]
