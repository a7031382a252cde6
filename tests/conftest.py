"""Shared fixtures: small real backbones (random init unless a test needs real weights)."""

from __future__ import annotations

import pytest
import torch
from helpers import random_backbone


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a real GPU: without one they skip, saying so."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def backbone():
    """A CIFAR ResNet-20 with random weights and non-trivial BN statistics."""
    return random_backbone()


@pytest.fixture
def x():
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
