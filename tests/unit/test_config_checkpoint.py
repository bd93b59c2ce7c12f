"""Upstream configs and detectron2 checkpoints: every key used or dropped on purpose, clear errors otherwise."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import FIXTURES
from zsdeploy.export import checkpoint, config
from zsdeploy.export.models.pading import PADing, PADingSpec
from zsdeploy.export.standin import standin_tensor
from zsdeploy.runtime.errors import ZsdError

UPSTREAM = FIXTURES / "upstream_configs" / "pading"
MANIFESTS = FIXTURES / "manifests"


@pytest.mark.parametrize("task,folder,classes", [
    ("panoptic", "panoptic-segmentation", 133), ("instance", "instance-segmentation", 65),
    ("semantic", "semantic-segmentation", 171)])
def test_user_upstream_yaml_equals_released_config(task, folder, classes):
    ours = config.load_config(config.released_config("pading", task))
    theirs = config.load_config(UPSTREAM / folder / "PADing.yaml")  # with _BASE_ (and a python tag for semantic)
    assert config.pading_spec(ours) == config.pading_spec(theirs)
    assert config.test_settings(ours) == config.test_settings(theirs)
    assert config.pading_spec(ours).num_classes == classes
    assert config.pading_spec(ours).dec_layers == 9 and not config.pading_spec(ours).stride_in_1x1


def test_python_tag_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f'INPUT:\n  MIN_SIZE_TRAIN: !!python/object/apply:os.system ["touch {marker}"]\n')
    loaded = config.load_config(cfg)
    assert not marker.exists()
    assert loaded.INPUT.MIN_SIZE_TRAIN is None
    assert loaded.ignored_python_tags and "line 2" in loaded.ignored_python_tags[0]


def test_unsupported_architecture_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("MODEL:\n  SEM_SEG_HEAD:\n    PIXEL_DECODER_NAME: BasePixelDecoder\n")
    with pytest.raises(ZsdError, match="PIXEL_DECODER_NAME='BasePixelDecoder'"):
        config.pading_spec(config.load_config(cfg))


def _manifest(name: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in (MANIFESTS / name).read_text().splitlines():
        key, shape = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.split("x")) if shape else ()))
    return rows


@pytest.fixture(scope="module")
def official_like_checkpoint(tmp_path_factory):
    """A checkpoint with exactly the official key list (manifest), saved as DetectionCheckpointer does."""
    sd = {k: standin_tensor(k, s) for k, s in _manifest("pading_panoptic.tsv")}
    path = tmp_path_factory.mktemp("ckpt") / "model_final.pth"
    torch.save({"model": sd, "iteration": 20000, "trainer": {}}, path)
    return path, sd


@pytest.mark.parametrize("manifest,classes", [("pading_panoptic.tsv", 133), ("pading_instance.tsv", 65),
                                              ("pading_semantic.tsv", 171)])
def test_official_key_lists_fully_accounted(manifest, classes):
    keys = dict(_manifest(manifest))
    model = PADing(PADingSpec(num_classes=classes))
    own = model.state_dict()
    used = set(own) & set(keys)
    dropped = {k for k in keys if k.startswith(checkpoint.PADING_TRAINING_ONLY)}
    assert used | dropped == set(keys) and not (used & dropped)
    assert set(own) <= set(keys)
    assert all(tuple(own[k].shape) == keys[k] for k in used)


def test_load_official_layout_pth(official_like_checkpoint):
    path, sd = official_like_checkpoint
    model = PADing(PADingSpec())
    report = checkpoint.load_into(model, path, checkpoint.PADING_TRAINING_ONLY)
    assert report.used == len(model.state_dict()) == 557
    assert "new_fc.weight" not in report.dropped and "criterion.empty_weight" in report.dropped
    assert len(report.dropped) == 635 - 557  # training-only incl. class_embed
    torch.testing.assert_close(model.new_fc.weight, sd["new_fc.weight"], rtol=0, atol=0)
    assert len(report.sha256) == 64


def test_load_detectron2_pkl_of_numpy_arrays(tmp_path, official_like_checkpoint):
    _, sd = official_like_checkpoint
    path = tmp_path / "model.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in sd.items()}, "__author__": "test"}, f)
    model = PADing(PADingSpec())
    checkpoint.load_into(model, path, checkpoint.PADING_TRAINING_ONLY)
    np.testing.assert_array_equal(model.backbone.stem.conv1.weight.detach().numpy(),
                                  sd["backbone.stem.conv1.weight"].numpy())


def test_missing_extra_and_misshaped_keys_are_named(tmp_path, official_like_checkpoint):
    _, sd = official_like_checkpoint
    bad = dict(sd)
    del bad["sem_seg_head.predictor.query_feat.weight"]
    bad["sem_seg_head.predictor.surprise.weight"] = torch.zeros(3)
    bad["new_fc.weight"] = torch.zeros(66, 256)
    path = tmp_path / "bad.pth"
    torch.save({"model": bad}, path)
    with pytest.raises(ZsdError) as e:
        checkpoint.load_into(PADing(PADingSpec()), path, checkpoint.PADING_TRAINING_ONLY)
    msg = str(e.value)
    assert "1 missing key(s): sem_seg_head.predictor.query_feat.weight" in msg
    assert "1 unexpected key(s): sem_seg_head.predictor.surprise.weight" in msg
    assert "new_fc.weight (66, 256) (model expects (134, 256))" in msg


class _Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_that_executes_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {"x": _Exploit()}}, f)
    with pytest.raises(ZsdError, match="refuses to execute code"):
        checkpoint.read_state_dict(path)
    assert "this must never run" not in capsys.readouterr().out


def test_protocol_2_pickle_of_arrays_loads_and_other_codecs_are_refused(tmp_path, official_like_checkpoint):
    """Python 3's pickle at protocol 2 stores an array's bytes through `_codecs.encode(text, "latin1")`: it only
    holds arrays and loads; a pickle that calls _codecs.encode with another codec is refused like any code."""
    _, sd = official_like_checkpoint
    path = tmp_path / "model.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in sd.items()}}, f, protocol=2)
    assert b"_codecs" in path.read_bytes()
    model = PADing(PADingSpec())
    checkpoint.load_into(model, path, checkpoint.PADING_TRAINING_ONLY)
    np.testing.assert_array_equal(model.backbone.stem.conv1.weight.detach().numpy(),
                                  sd["backbone.stem.conv1.weight"].numpy())

    class Rot13:
        def __reduce__(self):
            import _codecs

            return (_codecs.encode, ("payload", "rot13"))

    bad = tmp_path / "bad.pkl"
    with open(bad, "wb") as f:
        pickle.dump({"model": {"x": Rot13()}}, f, protocol=2)
    with pytest.raises(ZsdError, match="refuses to execute code"):
        checkpoint.read_state_dict(bad)


def test_base_chain_that_loops_is_named(tmp_path):
    (tmp_path / "a.yaml").write_text("_BASE_: b.yaml\nMODEL:\n  META_ARCHITECTURE: MaskFormer\n")
    (tmp_path / "b.yaml").write_text("_BASE_: a.yaml\n")
    with pytest.raises(ZsdError, match=r"_BASE_ chain loops \(a.yaml -> b.yaml -> a.yaml\)"):
        config.load_config(tmp_path / "a.yaml")


def test_truncated_checkpoint(tmp_path, official_like_checkpoint):
    path, _ = official_like_checkpoint
    cut = tmp_path / "cut.pth"
    cut.write_bytes(Path(path).read_bytes()[:100_000])
    with pytest.raises(ZsdError, match="corrupt or truncated|not a readable checkpoint"):
        checkpoint.read_state_dict(cut)
