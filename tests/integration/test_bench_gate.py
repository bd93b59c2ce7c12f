"""zsd-bench gates: a really degraded backend is caught by the accuracy gate (small bucket first); `check` on ratios."""
from __future__ import annotations

import json

import pytest

from zsdeploy.benchmarks.accuracy import apply_tolerances, load_tolerances, run_accuracy
from zsdeploy.benchmarks.cli import main
from zsdeploy.benchmarks.datasets import open_dataset

from helpers import HalfResolution


@pytest.fixture(scope="module")
def torch_ref():
    from zsdeploy.export.torch_backend import TorchBackend

    return TorchBackend.pading("panoptic")


@pytest.fixture(scope="module")
def tiny_scenes():
    # two 96x128 scenes with many small objects (sqrt(area) 4..40 px): small and medium buckets populated
    return open_dataset("synthetic:2", scene_size="96x128", size_range=(4, 40), n_objects=25)


def test_degraded_backend_is_caught_small_bucket_first(torch_ref, tiny_scenes):
    report = run_accuracy(HalfResolution(torch_ref), torch_ref, tiny_scenes, short_edge=96)
    apply_tolerances(report, load_tolerances(None))
    assert report["passed"] is False
    assert report["flagged_buckets"][0] == "small"
    assert report["violations"][0]["bucket"] == "small"
    vr = report["vs_reference"]
    # the damage is largest on small objects (the point of the per-bucket report)
    assert vr["small"]["mask_logits.rel_l2"] > vr["medium"]["mask_logits.rel_l2"]
    assert vr["small"]["mask_logits.sign_agreement"] < vr["medium"]["mask_logits.sign_agreement"]
    assert report["resize"]["short_edge"] == 96 and report["dataset"]["ground_truth"] is True


def test_equivalent_backend_passes(torch_ref, tiny_scenes):
    # Control: the same weights through a different MSDeformAttn computation (the pure grid_sample lowering that the
    # ONNX export inlines) agree within fp32 rounding, so every defined limit holds in every bucket.
    from zsdeploy.export.torch_backend import TorchBackend

    alt = TorchBackend(torch_ref.model, dict(torch_ref.info.raw), msda="gridsample")
    alt.name = "torch-gridsample"
    report = run_accuracy(alt, torch_ref, tiny_scenes, short_edge=96)
    apply_tolerances(report, load_tolerances(None))
    assert report["passed"], report["violations"]
    assert report["vs_reference"]["small"]["semantic.pixel_agreement"] >= 0.999
    # golden stand-in weights: the reference has no panoptic segments -> PQ is N/A, never a silent 100
    if report["vs_reference"]["all"]["panoptic.segments"] == 0:
        assert report["vs_reference"]["all"]["panoptic.pq"] is None


def test_equivalent_backend_passes_with_pq_diverse_standin(tiny_scenes):
    # The same control with the diverse stand-in: the reference has segments, so PQ/AP are defined and gated.
    from zsdeploy.export.torch_backend import TorchBackend

    ref = TorchBackend.pading("panoptic", standin="diverse")
    alt = TorchBackend(ref.model, dict(ref.info.raw), msda="gridsample")
    report = run_accuracy(alt, ref, tiny_scenes, short_edge=96)
    apply_tolerances(report, load_tolerances(None))
    assert report["passed"], report["violations"]
    vr = report["vs_reference"]
    assert vr["all"]["panoptic.segments"] >= 4 and vr["small"]["panoptic.segments"] >= 2
    assert vr["small"]["panoptic.pq"] >= 99.0 and vr["all"]["panoptic.pq"] >= 99.0
    assert vr["all"]["instance.ap"] is not None and vr["all"]["instance.ap"] >= 95.0


def _report(path, speedup, small_agree, small_rel):
    path.write_text(json.dumps({"gate": {
        "speedup": {"onnxruntime/128x160/b1/e2e": speedup, "onnxruntime/128x160/b1/infer": speedup * 1.02},
        "accuracy": {"small/semantic.pixel_agreement": small_agree, "small/mask_logits.rel_l2": small_rel,
                     "all/semantic.pixel_agreement": 1.0}}}))
    return str(path)


def test_check_passes_within_tolerance(tmp_path, capsys):
    base = _report(tmp_path / "base.json", 4.0, 1.0, 2e-6)
    cur = _report(tmp_path / "cur.json", 3.2, 0.9995, 5e-6)  # 0.8 of the speed-up, tiny accuracy change
    assert main(["check", "--baseline", base, "--current", cur]) == 0
    out = capsys.readouterr().out
    assert "verdict: PASS" in out and "onnxruntime/128x160/b1/e2e" in out


@pytest.mark.parametrize("change", ["slower", "less_accurate", "larger_error", "missing"])
def test_check_catches_regressions(tmp_path, capsys, change):
    base = _report(tmp_path / "base.json", 4.0, 1.0, 2e-6)
    speedup, agree, rel = 4.0, 1.0, 2e-6
    if change == "slower":
        speedup = 2.5  # < 0.75 x 4.0
    elif change == "less_accurate":
        agree = 0.99  # dropped 1 % of pixels > 0.001
    elif change == "larger_error":
        rel = 1e-3  # > 10 x baseline and the 1e-5 floor
    cur = _report(tmp_path / "cur.json", speedup, agree, rel)
    if change == "missing":
        doc = json.loads((tmp_path / "cur.json").read_text())
        del doc["gate"]["speedup"]["onnxruntime/128x160/b1/e2e"]
        (tmp_path / "cur.json").write_text(json.dumps(doc))
    assert main(["check", "--baseline", base, "--current", cur]) == 1
    out = capsys.readouterr().out
    assert "verdict: FAIL" in out and ("REGRESSION" in out or "MISSING" in out)


def test_check_bad_input_is_a_user_error(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    assert main(["check", "--baseline", str(bad), "--current", str(bad)]) == 2
    assert "no 'gate' section" in capsys.readouterr().err


def test_check_of_reports_of_another_kind_is_a_user_error_not_a_regression(tmp_path, capsys):
    """Was: a latency baseline checked against an accuracy report said "FAIL: 5 of 5 checks regressed", exit 1, which
    a CI reads as a regression. Nothing in common is the user's file: exit 2, naming both sides' keys."""
    base = _report(tmp_path / "base.json", 4.0, 1.0, 2e-6)
    other = tmp_path / "accuracy.json"
    other.write_text(json.dumps({"gate": {"speedup": {}, "accuracy": {"small/pq": 30.0}}}))
    assert main(["check", "--baseline", base, "--current", str(other)]) == 2
    err = capsys.readouterr().err
    assert "measure none of the baseline's 5 checks" in err and "small/pq" in err and "Traceback" not in err
