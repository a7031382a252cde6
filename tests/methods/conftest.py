"""Fixtures for the method tests: a tiny random CIFAR ResNet-8 with non-trivial BN statistics,
and a tiny 3-class task of random images (CPU, a second or two per method)."""

from __future__ import annotations

import pytest
import torch

import deltapatch as dp
from deltapatch.backbones.cifar import CifarResNet
from deltapatch.data.sets import ImageSet, TaskData
from deltapatch.preprocess import Preprocess
from deltapatch.train import TrainConfig

SIZE = 16


def _images(n: int, classes: int, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    images[:, labels % 3] = 255  # a learnable cue: one channel saturated per class (mostly)
    return ImageSet(images, labels)


@pytest.fixture
def tiny_backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    net = CifarResNet(8)
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.num_batches_tracked.fill_(7)
    net.deltapatch_preprocess = Preprocess(SIZE)
    net.deltapatch_name = "tiny_resnet8"
    return net.eval()


@pytest.fixture
def tiny_model(tiny_backbone) -> dp.PatchedModel:
    return dp.PatchedModel(tiny_backbone)


@pytest.fixture
def tiny_task() -> TaskData:
    return TaskData("tiny", _images(48, 3, 1), _images(12, 3, 2), _images(12, 3, 3),
                    ["a", "b", "c"], hflip=False)


@pytest.fixture
def tiny_base() -> TaskData:
    """A stand-in base task with the backbone's 10 classes."""
    return TaskData("base", _images(20, 10, 4), _images(20, 10, 5), _images(20, 10, 6),
                    [str(i) for i in range(10)], hflip=False)


@pytest.fixture
def tiny_config() -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=16, lr=1e-2, warmup_epochs=0, augment=False,
                       progress=False)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(9))
