"""A model factory for ``deltapatch``: a small MobileNet-style CNN brought as a backbone.

    deltapatch train --backbone examples/my_cnn.py:build --data digits --out out/digits
    deltapatch eval  --backbone examples/my_cnn.py:build --patch out/digits --data digits
    python -c "import deltapatch as dp; dp.PatchedModel(dp.load_backbone('examples/my_cnn.py:build'))"

The convention (docs/BRING_YOUR_OWN.md): ``build()`` takes no arguments and returns the model;
it sets ``model.deltapatch_spec`` (where stem, stages and head are) and
``model.deltapatch_preprocess`` (input size and normalization); sub-block types are registered
with ``deltapatch.register_block`` when this file is imported (deltapatch imports it once).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import deltapatch as dp


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1x1 → depthwise 3x3 → project 1x1; the input is added back
    only when stride is 1 and the width stays (``use_skip``)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, expand: int = 4) -> None:
        super().__init__()
        hidden = c_in * expand
        self.use_skip = stride == 1 and c_in == c_out
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_skip else self.conv(x)


class MyCNN(nn.Module):
    """stem → 7 inverted-residual blocks in one flat list → 1x1 head conv → pool → classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU6())
        self.features = nn.Sequential(
            InvertedResidual(16, 24, stride=2),  # 0: no skip (stride 2) → a transition
            InvertedResidual(24, 24),            # 1, 2: stage "s1"
            InvertedResidual(24, 24),
            InvertedResidual(24, 32, stride=2),  # 3: no skip → a transition
            InvertedResidual(32, 32),            # 4, 5, 6: stage "s2"
            InvertedResidual(32, 32),
            InvertedResidual(32, 32),
        )
        self.head_conv = nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64),
                                       nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head_conv(self.features(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def _flatten(x: Tensor) -> Tensor:
    return torch.flatten(x, 1)


SEED = 0
"""Seeds the init in :func:`build`: one model, whichever process builds it."""

# A block with a skip: h = conv(h) + h. No activation after the add, so no post=.
dp.register_block(InvertedResidual, residual=lambda b, x: b.conv(x))


def build() -> nn.Module:
    """The same model in every process: its random init is seeded (``SEED``) inside a forked RNG,
    so ``train``, ``eval``, ``predict`` and ``verify`` each see the weights the patch was made
    for, and the caller's own random state is left as it was. A CNN you trained would instead
    load its weights here, or take ``--weights FILE``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = MyCNN()
    model.deltapatch_spec = dp.StageSpec(
        stem=["stem"],
        stages=["features[1:3]", "features[4:7]"],            # runs of blocks with a skip
        transitions={0: ["features.0"], 1: ["features.3"]},  # blocks without one
        pre_logits=["head_conv", "pool", _flatten],
        head="classifier",
        names=["s1", "s2"],
    )
    model.deltapatch_preprocess = dp.Preprocess(32)
    return model
