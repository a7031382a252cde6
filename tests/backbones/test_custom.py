"""Bring your own CNN: the documented stage spec + block registration is all it takes."""

from __future__ import annotations

import torch
from torch import nn

import deltapatch as dp


class TinyBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x) + x)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.ModuleList([nn.Sequential(TinyBlock(8), TinyBlock(8)),
                                   nn.Sequential(TinyBlock(16), TinyBlock(16), TinyBlock(16))])
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.body[0](self.stem(x))
        x = self.body[1](self.down(x))
        return self.fc(self.pool(x).flatten(1))


def test_custom_cnn_through_stage_spec():
    dp.register_block(TinyBlock, residual=lambda b, x: b.conv(x), post=lambda b, x: torch.relu(x))
    spec = dp.StageSpec(stem=["stem"], stages=["body.0", "body.1"], transitions={1: ["down"]},
                        pre_logits=["pool", lambda x: x.flatten(1)], head="fc")
    net = TinyNet().eval()
    x = torch.randn(3, 3, 16, 16)
    model = dp.PatchedModel(net, spec=spec, name="tinynet")
    model.add_patch("p", 2, stages=2)
    lams = model.lambdas(x, "p")
    assert {k: v.shape[1] for k, v in lams.items()} == {0: 3, 1: 6}
    assert torch.equal(model(x), net(x))
    torch.testing.assert_close(model._head(model.features(x)), net(x))
