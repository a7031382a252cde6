"""Patch folders: round trip, atomic saves, and refusals that leave the model untouched."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import deltapatch as dp
from deltapatch.patch import CONFIG_FILE, TENSORS_FILE


def _trained_model(backbone):
    model = dp.PatchedModel(backbone)
    patch = model.add_patch("task", 4, stages=2, class_names=list("abcd"))
    with torch.no_grad():  # make every tensor (incl. BN statistics) differ from its init
        for t in patch.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand_like(t) * 0.1)
    return model.eval()


def test_save_load_round_trip_gives_identical_outputs(backbone, x, tmp_path):
    model = _trained_model(backbone)
    model.save_patch("task", tmp_path / "p")
    assert sorted(f.name for f in (tmp_path / "p").iterdir()) == [CONFIG_FILE, TENSORS_FILE]
    fresh = dp.PatchedModel(dp.load_backbone("cifar_resnet20")).eval()
    fresh.backbone.load_state_dict(backbone.state_dict())
    fresh._fingerprint = None
    name = fresh.load_patch(tmp_path / "p")
    assert name == "task" and fresh.get_patch(name).config.class_names == list("abcd")
    assert torch.equal(fresh(x, patch="task"), model(x, patch="task"))
    assert torch.equal(fresh(x), backbone(x))


def test_config_json_describes_the_patch(backbone, tmp_path):
    model = _trained_model(backbone)
    model.save_patch("task", tmp_path / "p")
    cfg = json.loads((tmp_path / "p" / CONFIG_FILE).read_text())
    assert cfg["backbone"] == "cifar_resnet20" and cfg["fingerprint"] == model.fingerprint
    assert cfg["stages"] == [1, 2] and cfg["num_classes"] == 4
    assert cfg["preprocess"]["size"] == 32 and "library_version" in cfg


def _refused(model, x, path, match):
    before = {n: model(x, patch=n) for n in model.patches}
    names = list(model.patches)
    with pytest.raises(dp.PatchError, match=match):
        model.load_patch(path, name="other")
    assert list(model.patches) == names
    for n, out in before.items():
        assert torch.equal(model(x, patch=n), out)


def test_refuses_patch_from_differently_initialised_backbone(backbone, x, tmp_path):
    _trained_model(backbone).save_patch("task", tmp_path / "p")
    other = dp.PatchedModel(dp.load_backbone("cifar_resnet20")).eval()  # other random init
    other.add_patch("kept", 3)
    _refused(other, x, tmp_path / "p", "fingerprint")


def test_refuses_truncated_tensor_file(backbone, x, tmp_path):
    model = _trained_model(backbone)
    model.save_patch("task", tmp_path / "p")
    f = tmp_path / "p" / TENSORS_FILE
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    _refused(model, x, tmp_path / "p", "content hash|corrupt|truncated")


def test_refuses_wrong_shape_tensor(backbone, x, tmp_path):
    model = _trained_model(backbone)
    model.save_patch("task", tmp_path / "p")
    f = tmp_path / "p" / TENSORS_FILE
    tensors = load_file(str(f))
    tensors["head.weight"] = torch.zeros(5, 64)
    save_file(tensors, str(f))
    _refused(model, x, tmp_path / "p", "shape")


def test_refuses_missing_or_garbled_config(backbone, x, tmp_path):
    model = _trained_model(backbone)
    model.save_patch("task", tmp_path / "p")
    (tmp_path / "p" / CONFIG_FILE).write_text("{not json")
    _refused(model, x, tmp_path / "p", "not valid JSON")
    _refused(model, x, tmp_path / "nothing", "not a patch folder")


def test_failed_save_leaves_old_patch_intact(backbone, tmp_path, monkeypatch):
    model = _trained_model(backbone)
    model.save_patch("task", tmp_path / "p")
    old = (tmp_path / "p" / TENSORS_FILE).read_bytes()
    (tmp_path / "p" / "run").mkdir()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr("deltapatch.store._save_bytes", boom)
    with pytest.raises((OSError, dp.PatchError)):
        model.save_patch("task", tmp_path / "p")
    assert (tmp_path / "p" / TENSORS_FILE).read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no temp folders, no lock file
    monkeypatch.undo()
    model.save_patch("task", tmp_path / "p")
    assert (tmp_path / "p" / "run").is_dir()  # other entries survive a re-save


def test_base_identical_after_save_load_remove_cycle(backbone, x, tmp_path):
    plain = backbone(x)
    model = _trained_model(backbone)
    model.save_patch("task", tmp_path / "p")
    model.remove_patch("task")
    assert model.load_patch(tmp_path / "p") == "task"
    assert torch.equal(model(x), plain)
    model.remove_patch("task")
    assert torch.equal(model(x), plain)
