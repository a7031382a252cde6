"""Every supported family: its spec reproduces the model's own forward, and a Δ(all) patch runs
forward and backward at a small input size with the backbone untouched."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers import assert_unchanged, snapshot
from torch import nn

import deltapatch as dp
from deltapatch.backbones import BACKBONES
from deltapatch.backbones.spec import stage_module

REPRESENTATIVES = ["cifar_resnet20", "resnet18", "resnet50", "resnext50_32x4d",
                   "wide_resnet50_2", "convnext_tiny"]
if importlib.util.find_spec("timm"):
    REPRESENTATIVES += ["timm/resnet18", "timm/resnet50", "timm/convnext_tiny"]


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_delta_all_forward_backward_and_base_untouched(name):
    backbone = dp.load_backbone(name)
    before = snapshot(backbone)
    x = torch.randn(2, 3, 32, 32)
    plain = backbone(x)
    model = dp.PatchedModel(backbone)
    model.add_patch("p", 3, stages=model.num_stages)
    model.train()
    out = model(x, patch="p")
    assert out.shape == (2, 3)
    out.sum().backward()
    patch = model.get_patch("p")
    assert all(p.grad is not None for p in patch.parameters())
    assert all(p.grad is None for p in backbone.parameters())
    model.eval()
    assert torch.equal(model(x), plain)
    with torch.no_grad():  # the spec's stage-by-stage path is the model's own forward
        torch.testing.assert_close(model._head(model.features(x)), plain, atol=1e-4, rtol=1e-4)
    assert_unchanged(backbone, before)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_registered_name_has_a_working_spec(name):
    """Cheap structural check for all names (the big ConvNeXts included)."""
    entry = BACKBONES[name]
    with torch.device("meta"):
        model = entry.build()
    spec = dp.backbones.spec_for(model)
    assert len(spec.stages) >= 3
    for path in spec.stages:
        for block in stage_module(model, path):
            dp.backbones.block_split(block)
    assert isinstance(model.get_submodule(spec.head), nn.Linear)


def test_unknown_backbone_and_model_errors_say_what_to_provide():
    with pytest.raises(dp.BackboneError, match="Known"):
        dp.load_backbone("resnet9000")

    class Odd(nn.Module):
        def forward(self, x):
            return x
    with pytest.raises(TypeError, match="StageSpec"):
        dp.PatchedModel(Odd())


@pytest.mark.parametrize("name", ["resnet18", "timm/resnet18"])
def test_imagenet_weights_offline_fail_at_once_naming_weights_path(monkeypatch, name):
    """Offline (the probe says so) and not cached: the error comes before any download try."""
    if name.startswith("timm/") and not importlib.util.find_spec("timm"):
        pytest.skip("needs timm")
    from deltapatch.backbones import hub

    def no_download(*args, **kwargs):
        raise AssertionError("must not try to download when offline")
    probed = []
    monkeypatch.setattr(hub, "host_reachable", lambda host, timeout=2.0: probed.append(host))
    monkeypatch.setattr(hub, "cached_weights", lambda family, name: False)
    monkeypatch.setattr("torch.hub.load_state_dict_from_url", no_download)
    with pytest.raises(dp.BackboneError, match="--weights PATH"):
        dp.load_backbone(name, weights="imagenet")
    assert len(probed) == 1  # asked once, and its "no" ended it (no wall clock: a busy machine)


def test_connectivity_probe_is_bounded(monkeypatch):
    """The probe's timeout reaches the connection attempt, and a lookup that never returns
    (a hung DNS) is abandoned after the timeout: checked by what is called with which
    timeout, not by the wall clock (which a busy machine stretches)."""
    import threading

    from deltapatch.backbones import hub

    seen, joins, hang = [], [], threading.Event()

    def connect(address, timeout=None):
        seen.append((address, timeout))
        hang.wait(30)  # never answers within the test
        raise OSError("unreachable")
    real_join = threading.Thread.join

    def join(self, timeout=None):
        joins.append(timeout)
        return real_join(self, 0.01)
    monkeypatch.setattr(hub.socket, "create_connection", connect)
    monkeypatch.setattr(threading.Thread, "join", join)
    try:
        assert hub.host_reachable("deltapatch-no-such-host.invalid", timeout=0.5) is False
    finally:
        hang.set()
    assert seen == [(("deltapatch-no-such-host.invalid", 443), 0.5)]
    assert joins == [1.0]  # the caller waits the timeout plus a margin, then gives up


def test_weights_from_files(tmp_path):
    from safetensors.torch import save_file

    src = dp.load_backbone("cifar_resnet20")
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}},
               tmp_path / "w.pt")
    x = torch.randn(2, 3, 32, 32)
    for f in ("w.safetensors", "w.pt"):
        loaded = dp.load_backbone("cifar_resnet20", weights=tmp_path / f)
        assert torch.equal(loaded(x), src.eval()(x))
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(dp.BackboneError, match="cannot read"):
        dp.load_backbone("cifar_resnet20", weights=tmp_path / "bad.safetensors")
    with pytest.raises(dp.BackboneError, match="neither a file"):
        dp.load_backbone("cifar_resnet20", weights=tmp_path / "missing.pt")
