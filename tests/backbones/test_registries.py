"""Every name table refuses a second registration unless override=True."""

from __future__ import annotations

import pytest
import torch
from helpers import needs_shared
from torchvision.models import resnet

import deltapatch as dp
from deltapatch.backbones import BACKBONES
from deltapatch.backbones.spec import BLOCKS, SPECS, block_split
from deltapatch.delta import GATES


def test_reregistering_torchvision_basic_block_raises_and_override_replaces():
    original = BLOCKS[resnet.BasicBlock]
    with pytest.raises(dp.DeltaPatchError, match="BasicBlock.*override=True"):
        dp.register_block(resnet.BasicBlock, residual=lambda b, x: x)
    assert BLOCKS[resnet.BasicBlock] is original
    try:
        dp.register_block(resnet.BasicBlock, residual=lambda b, x: x, override=True)
        assert block_split(resnet.resnet18().layer1[0]) is not original
    finally:
        BLOCKS.register(resnet.BasicBlock, original, override=True)
    assert block_split(resnet.resnet18().layer1[0]) is original


def test_spec_backbone_and_gate_names_refuse_duplicates():
    spec_fn = SPECS[resnet.ResNet]
    with pytest.raises(dp.DeltaPatchError, match="override=True"):
        dp.register_spec(resnet.ResNet)(lambda model: None)
    assert SPECS[resnet.ResNet] is spec_fn
    with pytest.raises(dp.DeltaPatchError, match="resnet18"):
        dp.register_backbone("resnet18", BACKBONES["resnet18"])
    with pytest.raises(dp.DeltaPatchError, match="delta"):
        dp.register_gate("delta", GATES["delta"])


def test_override_registers_a_gate_a_patch_can_use(backbone):
    from deltapatch.delta import FixedGate

    dp.register_gate("test-ones", FixedGate)
    try:
        dp.register_gate("test-ones", FixedGate, override=True)
        model = dp.PatchedModel(backbone)
        model.add_patch("p", 3, stages=1, gate="test-ones")
        assert model.lambdas(torch.randn(2, 3, 32, 32), "p")[2].eq(1).all()
    finally:
        GATES.unregister("test-ones")


@needs_shared
def test_base_class_names_come_from_the_weights_provenance():
    from deltapatch.backbones.catalog import imagenet_classes
    from deltapatch.backbones.cifar import CIFAR10_CLASSES

    named = dp.PatchedModel(dp.load_backbone("cifar_resnet20", weights="cifar10"))
    assert named.base_class_names == list(CIFAR10_CLASSES) and named.base_labels[3] == "cat"
    random = dp.PatchedModel(dp.load_backbone("cifar_resnet20"))  # no provenance: indices
    assert random.base_class_names is None and random.base_labels == [str(i) for i in range(10)]
    assert dp.PatchedModel(dp.load_backbone("resnet18")).base_class_names == imagenet_classes()


def test_weight_set_class_names_refuse_duplicates():
    from deltapatch.backbones.catalog import register_weight_classes

    with pytest.raises(dp.DeltaPatchError, match="cifar10"):
        register_weight_classes("cifar10", lambda: ["x"] * 10)
