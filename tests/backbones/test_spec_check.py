"""A stage spec proves itself when PatchedModel wraps a backbone: each kind of wrong spec raises
SpecError naming what is wrong; every built-in family's spec passes; the probe changes nothing."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers import assert_unchanged, snapshot
from torch import nn

import deltapatch as dp
from deltapatch.backbones import efficientnet_lite


class SkipBlock(nn.Module):
    """relu(conv(x) + x): registered below with its post activation."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x) + x)


class NoPostBlock(SkipBlock):
    """The same block, registered as if it had no activation after the add (a wrong split)."""


dp.register_block(SkipBlock, residual=lambda b, x: b.conv(x), post=lambda b, x: torch.relu(x))
dp.register_block(NoPostBlock, residual=lambda b, x: b.conv(x))


class TwoOut(nn.Module):
    """A stem that returns a pair the network adds up."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1)

    def forward(self, x):
        return self.a(x), self.b(x)


class FlatNet(nn.Module):
    """stem → blocks 0-1 (8 ch) → down → blocks 2-4 (16 ch) → pool → fc, blocks in one flat list."""

    def __init__(self, block: type = SkipBlock, tuple_stem: bool = False, pairs: bool = False):
        super().__init__()
        self.stem = TwoOut() if tuple_stem else nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList([block(8), block(8), block(16), block(16), block(16)])
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)
        self.aux = nn.Linear(32, 5)
        self.pairs = pairs

    def forward(self, x):
        x = self.stem(x)
        if isinstance(x, tuple):
            x = x[0] + x[1]
        x = self.blocks[1](self.blocks[0](x))
        x = self.down(x)
        for b in self.blocks[2:]:
            x = b(x)
        logits = self.fc(self.pool(x).flatten(1))
        return (logits, x) if self.pairs else logits


def flat_spec(**changes) -> dp.StageSpec:
    fields = dict(stem=["stem"], stages=["blocks[0:2]", "blocks[2:5]"], transitions={1: ["down"]},
                  pre_logits=["pool", lambda x: x.flatten(1)], head="fc")
    return dp.StageSpec(**{**fields, **changes})


def wrap(net: nn.Module, spec: dp.StageSpec) -> dp.PatchedModel:
    net.deltapatch_preprocess = dp.Preprocess(16)
    return dp.PatchedModel(net, spec=spec, name="flat")


def test_correct_flat_spec_passes_and_walk_equals_backbone():
    net = FlatNet().eval()
    model = wrap(net, flat_spec())
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.spec.logits(net, x), net(x))
        h1 = model.spec.stage_input(net, x, 1)
        assert torch.equal(model.spec.run_from(net, model.spec.stage_input(net, x, 0), 0, 1), h1)
        assert torch.equal(net.fc(model.spec.features_from(net, h1, 1)), net(x))
    assert [s.blocks for s in model.stage_shapes()] == [2, 3]
    assert model.spec.suffix_paths(1) == ["blocks[2:5]", "pool"]


@pytest.mark.parametrize("net_kw, spec_kw, message", [
    ({}, {"stages": ["blocks[0:2]", "blocks[2:4]"]},  # block 4 left out of the slice
     r"head 'fc'.*pre_logits.*runs 'blocks\.4'"),
    ({}, {"stages": ["blocks[0:1]", "blocks[2:5]"]},  # block 1 left out of the first slice
     r"stage 'blocks\[2:5\]'.*transitions\[1\].*runs 'blocks\.1'"),
    ({}, {"transitions": {}},  # the downsampling conv between the stages forgotten
     r"stage 'blocks\[2:5\]'.*transitions\[1\].*runs 'down'"),
    ({"tuple_stem": True}, {"stem": ["stem", lambda t: t[0]]},  # second element dropped
     r"input of stage 'blocks\[0:2\]'.*spec\.stem"),
    ({"tuple_stem": True}, {},  # the pair is passed on as it is
     r"spec\.stem\[0\] 'stem' returns a tuple"),
    ({"block": NoPostBlock}, {},  # the split forgets the ReLU after the add
     r"block 0 \('blocks\.0'\).*registered split of NoPostBlock.*post"),
    ({}, {"head": "aux"},  # a Linear whose in_features are not the pre-logit width
     r"spec\.head 'aux' takes 32 features but spec\.pre_logits give shape \(2, 16\)"),
    ({"pairs": True}, {},  # forward returns (logits, features)
     r"backbone\(x\) returns a tuple"),
    ({}, {"pre_logits": ["pool", "flat"]},  # a missing submodule
     r"spec\.pre_logits\[1\] names 'flat', which is not a submodule of FlatNet"),
    ({}, {"head": "pool"},
     r"spec\.head 'pool' is a AdaptiveAvgPool2d"),
    ({}, {"stages": ["blocks[0:2]", "down"]},
     r"spec\.stages\[1\] 'down' must be a container"),
    ({}, {"transitions": {2: ["down"]}},
     r"spec\.transitions has keys \[2\]"),
    ({}, {"pre_logits": ["pool"]},  # flatten forgotten: shape error caught, field named
     r"spec\.head 'fc' takes 16 features but spec\.pre_logits give shape \(2, 16, 1, 1\)"),
])
def test_wrong_spec_raises_spec_error_naming_the_field(net_kw, spec_kw, message):
    net = FlatNet(**net_kw)
    before = snapshot(net)
    with pytest.raises(dp.SpecError, match=message):
        wrap(net, flat_spec(**spec_kw))
    assert_unchanged(net, before)


def test_spec_error_is_a_deltapatch_error():
    assert issubclass(dp.SpecError, dp.DeltaPatchError)


def test_unregistered_block_type_is_a_spec_error():
    net = FlatNet()
    net.blocks[3] = nn.Sequential(nn.Conv2d(16, 16, 1))
    with pytest.raises(dp.SpecError, match=r"stage 'blocks\[2:5\]' block 1: .*register_block"):
        wrap(net, flat_spec())


def test_probe_changes_nothing_and_restores_modes():
    net = dp.load_backbone("cifar_resnet20").train()
    net.layer1.eval()
    modes = {n: m.training for n, m in net.named_modules()}
    before = snapshot(net)
    rng = torch.get_rng_state()
    from deltapatch.backbones.check import check_spec
    check_spec(net, dp.backbones.spec_for(net), 32)
    assert torch.equal(torch.get_rng_state(), rng)
    assert {n: m.training for n, m in net.named_modules()} == modes
    assert_unchanged(net, before)


class Fixed80(FlatNet):
    """Its pooling fits 80 px inputs only (no adaptive pool): the 64 px probe fails."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(40)


def test_probe_falls_back_to_the_backbones_own_size():
    net = Fixed80()
    net.deltapatch_preprocess = dp.Preprocess(80)
    assert dp.PatchedModel(net, spec=flat_spec()).stage_shapes()[1].out_channels == 16
    with pytest.raises(dp.SpecError, match=r"backbone\(x\) fails on a probe batch.*Preprocess"):
        wrap(Fixed80(), flat_spec())  # told 16 px: the backbone fails at every size


FAMILIES = ["cifar_resnet20", "resnet18", "convnext_tiny"]  # more in test_families.py, whose
if importlib.util.find_spec("timm"):                          # PatchedModel(...) checks too
    FAMILIES += ["timm/resnet18"]
if efficientnet_lite.available():
    FAMILIES += ["efficientnet_lite0"]


BLOCKS = {"cifar_resnet20": [3, 3, 3], "resnet18": [2, 2, 2, 2], "convnext_tiny": [3, 3, 9, 3],
          "timm/resnet18": [2, 2, 2, 2], "efficientnet_lite0": [1, 1, 2, 2, 3]}
"""Sub-blocks per stage, from each architecture's definition (EfficientNet-Lite0: the residual
MBConv runs; the blocks without a skip are transitions)."""


@pytest.mark.parametrize("name", FAMILIES)
def test_every_builtin_family_spec_proves_itself(name):
    backbone = dp.load_backbone(name)
    before = snapshot(backbone)
    model = dp.PatchedModel(backbone)  # raises SpecError if the spec were wrong
    shapes = model.stage_shapes()
    assert [s.blocks for s in shapes] == BLOCKS[name]  # the paper's stages, not the probe's
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pyramid = list(model.pyramid(x).values())
        for s, shape in enumerate(shapes):  # what the probe measured is what the stages do
            h = model.stage_input(x, s)
            out = model.spec.stage_module(backbone, s)(h)
            assert (h.shape[1], out.shape[1]) == (shape.in_channels, shape.out_channels)
            assert torch.equal(out, pyramid[s])
    assert_unchanged(backbone, before)
