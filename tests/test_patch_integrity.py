"""What a patch folder must match to load (issue 28): every tensor in the dtype its config and
backbone imply, even when the file's content hash is valid; and the backbone's fingerprint
covers its BatchNorm statistics, at the library level and through the CLI."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import refused
from safetensors.torch import save_file

import deltapatch as dp
from deltapatch.methods import load_task
from deltapatch.patch import fingerprint, read_patch, write_patch


def _saved(backbone, tmp_path):
    model = dp.PatchedModel(backbone).eval()
    model.add_patch("task", 4, stages=2)
    return model, model.save_patch("task", tmp_path / "p")


@pytest.mark.parametrize("key, dtype", [
    ("head.weight", torch.float64),
    ("deltas.2.gate.fc.bias", torch.float16),
    ("deltas.1.norm.running_var", torch.bfloat16),
    ("deltas.2.gate.features.1.num_batches_tracked", torch.int32),
])
def test_a_tensor_in_another_dtype_is_refused_even_with_a_valid_hash(backbone, x, tmp_path,
                                                                     key, dtype):
    model, folder = _saved(backbone, tmp_path)
    config, tensors = read_patch(folder)
    assert tensors[key].dtype in (torch.float32, torch.int64)
    tensors[key] = tensors[key].to(dtype)
    config.name = "rewritten"
    rewritten = write_patch(tmp_path / "rewritten", config, tensors)  # hash matches its bytes
    assert read_patch(rewritten)[1][key].dtype == dtype  # the store itself reads it back
    before = model(x, patch="task")
    for load in (lambda m: m.load_patch(rewritten, name="other"),
                 lambda m: load_task(m, rewritten)):
        with pytest.raises(dp.PatchError, match=f"'{key}' has shape .* {dtype}, expected"):
            load(model)
        assert list(model.patches) == ["task"]
        assert torch.equal(model(x, patch="task"), before)


@pytest.mark.parametrize("buffer", ["running_mean", "running_var", "num_batches_tracked"])
def test_fingerprint_covers_batchnorm_statistics(backbone, tmp_path, buffer):
    """Same weights, one BatchNorm buffer changed: another fingerprint, the patch refused."""
    _, folder = _saved(backbone, tmp_path)
    same, other = copy.deepcopy(backbone), copy.deepcopy(backbone)
    bn = other.layer2[0].bn1
    with torch.no_grad():
        getattr(bn, buffer).add_(1)
    assert all(torch.equal(a, b) for a, b in zip(backbone.parameters(), other.parameters(),
                                                 strict=True))
    assert fingerprint(same) == fingerprint(backbone)
    assert fingerprint(other) != fingerprint(backbone)
    dp.PatchedModel(same).load_patch(folder)  # the control: equal weights and statistics load
    refusing = dp.PatchedModel(other)
    with pytest.raises(dp.PatchError, match="fingerprint"):
        refusing.load_patch(folder)
    assert not refusing.patches


def test_cli_refuses_a_patch_on_weights_whose_batchnorm_statistics_differ(tmp_path, capsys):
    torch.manual_seed(0)
    net = dp.load_backbone("cifar_resnet20")
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["layer3.1.bn2.running_var"] += 0.5  # weights equal, statistics not
    save_file(state, str(tmp_path / "w_stats.safetensors"))
    model = dp.PatchedModel(dp.load_backbone("cifar_resnet20",
                                             weights=str(tmp_path / "w.safetensors")))
    model.add_patch("task", 3, stages=1)
    folder = model.save_patch("task", tmp_path / "p")
    common = ["verify", "--backbone", "cifar_resnet20", "--patch", folder, "-n", "2"]
    from deltapatch.cli import main

    assert main([str(a) for a in [*common, "--weights", tmp_path / "w.safetensors"]]) == 0
    capsys.readouterr()
    refused(capsys, [*common, "--weights", tmp_path / "w_stats.safetensors"], "fingerprint")
