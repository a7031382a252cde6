"""PyramidBody: a patched backbone as the body of torchvision's own detection and segmentation
models; the base pyramid is the frozen stages' outputs, only the patch and the heads train."""

from __future__ import annotations

import torch
from helpers import assert_unchanged, snapshot
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.segmentation import DeepLabV3
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.ops import MultiScaleRoIAlign

import deltapatch as dp
from deltapatch.dense import PyramidBody


def test_torchvision_faster_rcnn_trains_on_a_patched_body(backbone):
    model = dp.PatchedModel(backbone)
    model.add_patch("p", 2, stages=2, init="random")
    body = PyramidBody(model, "p", fpn_channels=16, probe_size=64)
    assert body.levels == [0, 1, 2] and body.out_channels == 16
    anchors = AnchorGenerator(((16,), (32,), (64,), (128,)), ((1.0,),) * 4)
    net = FasterRCNN(body, num_classes=2, min_size=64, max_size=64,
                     rpn_anchor_generator=anchors,
                     box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 7, 2))
    before = snapshot(backbone)
    net.train()
    assert not backbone.training  # the frozen statistics stay frozen
    images = [torch.rand(3, 64, 48), torch.rand(3, 40, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([1])}] * 2
    loss = sum(net(images, targets).values())
    loss.backward()
    assert model.get_patch("p").deltas["2"].parameters().__next__().grad is not None
    assert all(p.grad is None for p in backbone.parameters())
    torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1).step()
    assert_unchanged(backbone, before)


def test_deeplabv3_reads_the_base_pyramid_bit_identical(backbone, x):
    model = dp.PatchedModel(backbone).eval()
    body = PyramidBody(model, levels=[2], names=["out"])
    seg = DeepLabV3(body, DeepLabHead(64, 2)).eval()
    with torch.inference_mode():
        assert seg(x)["out"].shape == (len(x), 2, 32, 32)
        assert torch.equal(body(x)["out"], model.pyramid(x)["layer3"])
