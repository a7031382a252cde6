"""Real weights and data from ../shared/data (skipped with a reason where it is absent)."""

from __future__ import annotations

import pytest
import torch
from helpers import needs_shared

import deltapatch as dp
from deltapatch.data import load_data, load_test
from deltapatch.train import TrainConfig, evaluate, fit_patch

pytestmark = needs_shared


@pytest.fixture(scope="module")
def cifar_test():
    return load_test("cifar10", 32)[0]


def test_cifar_resnet20_scores_its_listed_accuracy(cifar_test):
    model = dp.load_backbone("cifar_resnet20", weights="cifar10")
    acc = evaluate(model, cifar_test, model.deltapatch_preprocess)
    assert len(cifar_test) == 10_000
    assert acc == pytest.approx(0.810, abs=0.005)  # shared/data/README.md: 81.0 on this split


def test_mnist_patch_beats_chance_and_cifar_stays_exactly_the_same(cifar_test):
    backbone = dp.load_backbone("cifar_resnet20", weights="cifar10")
    pre = backbone.deltapatch_preprocess
    sub = cifar_test.subset(torch.arange(0, 10_000, 5))
    with torch.inference_mode():
        before = torch.cat([backbone(pre.normalize(x)) for x, _ in sub.batches(500)])
    model = dp.PatchedModel(backbone)
    model.add_patch("mnist", 10, stages=1)
    mnist = load_data("mnist", 32, max_train=2000, max_test=1000)
    fit_patch(model, "mnist", mnist, TrainConfig(epochs=2, lr=1e-2, batch_size=64,
                                                 augment=False, progress=False))
    acc = evaluate(lambda x: model(x, patch="mnist"), mnist.test, pre)
    assert acc > 0.6  # chance is 0.1
    with torch.inference_mode():
        after = torch.cat([model(pre.normalize(x)) for x, _ in sub.batches(500)])
    assert torch.equal(before, after)  # hence the same CIFAR-10 predictions and accuracy
