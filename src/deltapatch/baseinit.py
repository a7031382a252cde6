"""How a patch starts (issue 11): ``init="random"`` is the paper's literal initialisation,
``init="base"`` makes the patched network compute exactly the base network at step 0.

With ``"random"``, Λ = sigmoid(Linear(·)) ≈ 0.5 on every skip at step 0: the backbone's own
shortcuts are halved, every new skip adds half an earlier activation, and a fresh BatchNorm
re-standardises the stage output before the frozen later stages see it. With ``"base"``:

    Λ = clip(t + z)              t = 1 on the backbone's own shortcuts, 0 on the new skips
                                 z = the gate's learned offset, exactly 0 at step 0
                                 (the Δ-module's last Linear is zero-initialised)
    norm(h) = h + m ⊙ (BN(h) − h)    m ∈ R^C, zero-initialised: the norm is the identity

``clip`` is a hard clamp to [0, 1] (Λ can reach 0 and 1 exactly, as the targets need) whose
backward passes a gradient inside [0, 1] and, outside, only the part that points back inside.
So at the targets (on the boundary) Λ can move inwards from the first step, and an offset pushed
past a boundary is never stuck there: the loss can always pull it back. The gated norm is the
identity in train mode too (batch statistics are multiplied by m = 0), so the first training
steps see the base network's activations, not only evaluation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .skips import existing_skips, num_skips

INITS = ("base", "random")
LEGACY_INIT = "random"
"""What every patch written before ``init`` existed used; a config without the key reads so."""
DEFAULT_INIT = "random"
"""What ``init=None`` gives a gate that can start at the base network (docs/INIT.md)."""


def existing_targets(k: int) -> Tensor:
    """Λ of the base network: 1 on the backbone's shortcuts h_{j-1} → h_j, 0 on the new skips."""
    t = torch.zeros(num_skips(k))
    t[existing_skips(k)] = 1.0
    return t


class _InwardClamp(torch.autograd.Function):
    """clamp(x, 0, 1); the gradient passes inside [0, 1] and, outside, only where a descent
    step (x ← x − lr·g) moves x back towards the interval (g > 0 above 1, g < 0 below 0)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        return x.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # noqa: D102
        (x,) = ctx.saved_tensors
        keep = ((x >= 0) & (x <= 1)) | ((x > 1) & (g > 0)) | ((x < 0) & (g < 0))
        return g * keep.to(g.dtype)


def clip_unit(x: Tensor) -> Tensor:
    """Λ in [0, 1] that reaches 0 and 1 exactly and never loses its inward gradient."""
    return _InwardClamp.apply(x)


class GatedBatchNorm(nn.BatchNorm2d):
    """``h + m ⊙ (BN(h) − h)`` with a per-channel mix ``m`` starting at 0: the task-owned norm
    starts as the identity (in train and eval mode) and learns how much normalising it needs."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        self.mix = nn.Parameter(torch.zeros(num_features))

    def forward(self, h: Tensor) -> Tensor:
        return self.blend(h, super().forward(h))

    def blend(self, h: Tensor, normed: Tensor) -> Tensor:
        """The mix around ``normed`` = BN(h), however its statistics were taken (torchrun's
        :class:`~deltapatch.distributed.GlobalBatchNorm` takes them over all ranks)."""
        mix = self.mix.to(h.dtype)  # autocast leaves it float32: the output keeps h's dtype
        return h + mix.view(1, -1, 1, 1) * (normed - h)


def check_init(init: str, gate: str, supports_base: bool) -> None:
    """``init="base"`` needs a gate with parameters to start at the base targets; the
    parameter-free ablations (``fixed``: all ones, ``random``: fresh noise) define Λ themselves,
    so asking them for the base network is refused rather than silently ignored."""
    if init not in INITS:
        raise ValueError(f"unknown init '{init}'; choose from {', '.join(INITS)}")
    if init == "base" and not supports_base:
        raise ValueError(f"init='base' needs a gate that learns Λ (delta, learned, existing); "
                         f"gate '{gate}' fixes Λ itself: use init='random'")
