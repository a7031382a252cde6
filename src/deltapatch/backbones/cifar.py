"""The CIFAR-10 ResNets of He et al. 2016 (§4.2), option-A shortcuts, matching the keys of the
real weights in ``../shared/data/weights`` (``conv1 bn1 layer{1,2,3}.i.{conv,bn}{1,2} linear``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .spec import StageSpec, flatten, register_block, register_spec

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
"""The head order of the CIFAR-10 weights (``../shared/data/README.md``; torchvision's
``CIFAR10.classes`` and the image folders' sorted names give the same)."""


class PadShortcut(nn.Module):
    """Option A: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class CifarBasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        changes = stride != 1 or in_planes != planes
        self.shortcut = PadShortcut(planes) if changes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        widths, in_planes = (16, 32, 64), 16
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(CifarBasicBlock(in_planes, planes, stride))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(flatten(self.avgpool(x)))


register_block(
    CifarBasicBlock,
    residual=lambda b, x: b.bn2(b.conv2(b.relu(b.bn1(b.conv1(x))))),
    shortcut=lambda b, x: b.shortcut(x),
    post=lambda b, x: b.relu(x),
)


@register_spec(CifarResNet)
def _cifar_spec(model: nn.Module) -> StageSpec:
    return StageSpec(
        stem=["conv1", "bn1", "relu"],
        stages=["layer1", "layer2", "layer3"],
        pre_logits=["avgpool", flatten],
        head="linear",
    )
