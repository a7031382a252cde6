"""Shared fixtures: small real backbones (random init unless a test needs real weights)."""

from __future__ import annotations

import pytest
import torch

import deltapatch as dp


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def backbone():
    """A CIFAR ResNet-20 with random weights and non-trivial BN statistics."""
    model = dp.load_backbone("cifar_resnet20")
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


@pytest.fixture
def x():
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
