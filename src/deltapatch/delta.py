"""The Δ-module and the Δ-stage (paper §2, DESIGN.md "The method, precisely").

A Δ-stage runs one frozen stage of k sub-blocks with all k(k+1)/2 skips between the stage input
h_0 and the sub-block outputs h_1..h_k, each weighted per sample:

    h_j = post_j( F_j(h_{j-1}) + Σ_{i<j} λ_{i,j}(h_0) · P_{i→j}(h_i) )

P_{j-1→j} is the block's own shortcut S_j; where h_i already has h_j's shape P is the identity;
otherwise (h_0 of a downsampling stage) the first block's frozen shortcut S_1(h_0), computed once.
Where Λ comes from is a *gate*: the input-conditioned Δ-module, or one of the ablations of the
paper's Table 8 (learnable / fixed / random weights, existing skips only). Only the gate, the
task-owned norm and the patch's head hold parameters; the blocks are the backbone's, untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .backbones.spec import block_split
from .baseinit import (
    DEFAULT_INIT,
    LEGACY_INIT,
    GatedBatchNorm,
    check_init,
    clip_unit,
    existing_targets,
)
from .registry import Registry
from .skips import existing_skips, num_skips, skip_index


class DeltaModule(nn.Module):
    """Δ: conv3x3(C→C/2)+BN+ReLU, conv3x3(C/2→C/r)+BN+ReLU, global pool, Linear → sigmoid.

    ``r = 4`` is DESIGN.md's module. ``r = 2`` reproduces 11 of the 12 parameter counts of the
    paper's tables (ResNet-50, ConvNeXt-T, ResNet-18 Δ(2)/Δ(4)); see the README's table.
    ``init="base"``: Λ = clip(t + Linear(·)) with the Linear zeroed, so Λ starts at the base
    network's targets t (see :mod:`deltapatch.baseinit`); the convs keep their random init.
    """

    base_init = True

    def __init__(self, channels: int, k: int, reduction: int = 4, init: str = "random") -> None:
        super().__init__()
        c2, c4 = max(channels // 2, 1), max(channels // reduction, 1)
        self.features = nn.Sequential(
            nn.Conv2d(channels, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.Conv2d(c2, c4, 3, padding=1, bias=False), nn.BatchNorm2d(c4), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
        )
        self.fc = nn.Linear(c4, num_skips(k))
        self.init = init
        if init == "base":
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)
            self.register_buffer("target", existing_targets(k), persistent=False)

    def forward(self, h0: Tensor) -> Tensor:
        z = self.fc(self.features(h0))
        return clip_unit(self.target + z) if self.init == "base" else torch.sigmoid(z)


class LearnedGate(nn.Module):
    """Ablation "all skips (learnable)": one learned weight per skip, the same for every input.
    ``init="random"`` (the ablation as published here): every weight starts at 1, unbounded;
    ``init="base"``: weights start at the base targets and Λ = clip(weight) stays in [0, 1]."""

    base_init = True

    def __init__(self, channels: int, k: int, init: str = "random") -> None:
        super().__init__()
        self.init = init
        start = existing_targets(k) if init == "base" else torch.ones(num_skips(k))
        self.weight = nn.Parameter(start)

    def forward(self, h0: Tensor) -> Tensor:
        w = clip_unit(self.weight) if self.init == "base" else self.weight
        return w.expand(h0.shape[0], -1)


class FixedGate(nn.Module):
    """Ablation "all skips": every skip weighted 1, nothing learned."""

    def __init__(self, channels: int, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, h0: Tensor) -> Tensor:
        return h0.new_ones(h0.shape[0], num_skips(self.k))


class RandomGate(nn.Module):
    """Ablation "random Λ": fresh uniform weights in [0, 1] for every sample and call."""

    def __init__(self, channels: int, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, h0: Tensor) -> Tensor:
        return torch.rand(h0.shape[0], num_skips(self.k), dtype=h0.dtype, device=h0.device)


class ExistingSkipGate(nn.Module):
    """Ablation "learnable skip connections": a learned scalar on each existing shortcut, no
    new skips (their weights stay 0). It starts at the base network either way; ``init="base"``
    also bounds the scalars to [0, 1] (clip), as the paper's Λ is."""

    base_init = True

    def __init__(self, channels: int, k: int, init: str = "random") -> None:
        super().__init__()
        self.k, self.init = k, init
        self.weight = nn.Parameter(torch.ones(k))
        self.register_buffer("index", torch.tensor(existing_skips(k)), persistent=False)

    def forward(self, h0: Tensor) -> Tensor:
        lam = h0.new_zeros(h0.shape[0], num_skips(self.k))
        w = clip_unit(self.weight) if self.init == "base" else self.weight
        return lam.index_copy(1, self.index, w.expand(h0.shape[0], -1))


GateFactory = Callable[..., nn.Module]
"""``factory(channels, k) -> gate``, a module mapping h_0 (N, C, H, W) to Λ (N, k(k+1)/2).
A factory with a true ``base_init`` attribute also takes ``init="base"`` (start at the base
network's Λ); the others are only ever called the plain way."""

GATES: Registry[str, GateFactory] = Registry("gate")


def register_gate(name: str, factory: GateFactory, override: bool = False) -> GateFactory:
    """Make ``add_patch(..., gate=name)`` build its Λ with ``factory(channels, k)``. An existing
    name raises unless ``override=True`` (patches saved with that name would change meaning)."""
    return GATES.register(name, factory, override=override)


for _name, _factory in [("delta", DeltaModule), ("learned", LearnedGate), ("fixed", FixedGate),
                        ("random", RandomGate), ("existing", ExistingSkipGate)]:
    register_gate(_name, _factory)

NORMS = ("output", "skip", "none")


def supports_base_init(gate: str) -> bool:
    return bool(getattr(GATES[gate], "base_init", False))


def resolve_init(init: str | None, gate: str, family_default: str | None = None) -> str:
    """``None`` is the measured default (docs/INIT.md) for a gate that can start at the base
    network: the backbone's own where it has one (``BackboneEntry.default_init``, looked up by
    the backbone's registered name), else the library's; a gate that fixes Λ itself always gets
    the paper's random start."""
    if init is not None:
        return init
    if gate in GATES and supports_base_init(gate):
        return family_default or DEFAULT_INIT
    return LEGACY_INIT


class DeltaStage(nn.Module):
    """The task-owned part of one patched stage: a gate giving Λ and one BatchNorm.

    ``norm`` says where the BatchNorm sits: on the stage output h_k (``"output"``), on the
    weighted skip sum entering every sub-block (``"skip"``, one BN shared by the stage), or
    nowhere (``"none"``). DESIGN.md leaves the place open; docs/RESULTS.md has the measurement.
    ``init`` says how gate and norm start (:mod:`deltapatch.baseinit`): ``"base"`` gives the
    base network exactly (Λ at its targets, the norm a :class:`GatedBatchNorm` at identity).
    """

    def __init__(self, in_channels: int, out_channels: int, k: int, gate: str = "delta",
                 norm: str = "output", reduction: int = 4, init: str = "random") -> None:
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"unknown gate '{gate}'; choose from {GATES.names()}")
        if norm not in NORMS:
            raise ValueError(f"unknown norm '{norm}'; choose from {NORMS}")
        check_init(init, gate, supports_base_init(gate))
        self.k, self.norm_at = k, norm
        extra = {"reduction": reduction} if gate == "delta" else {}
        if init == "base":
            extra["init"] = init
        self.gate = GATES[gate](in_channels, k, **extra)
        bn = GatedBatchNorm if init == "base" else nn.BatchNorm2d
        self.norm = bn(out_channels) if norm != "none" else nn.Identity()

    def forward(self, h0: Tensor, blocks: Sequence[nn.Module],
                first_residual: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run the frozen ``blocks`` with all skips weighted; returns (h_k, Λ).

        ``first_residual``: F_1(h_0) if already known. It depends on h_0 and frozen weights
        only, so cached-feature training computes it once with h_0 (see deltapatch.cache).
        """
        if len(blocks) != self.k:
            raise ValueError(f"Δ-stage built for {self.k} sub-blocks, stage has {len(blocks)}")
        lam = self.gate(h0).to(h0.dtype)  # under autocast as routing.mixed_stage casts it
        skip_norm = self.norm if self.norm_at == "skip" else None
        out = weighted_blocks(h0, blocks, lam, first_residual, skip_norm)
        return (self.norm(out) if self.norm_at == "output" else out), lam


def weighted_blocks(h0: Tensor, blocks: Sequence[nn.Module], lam: Tensor,
                    first_residual: Tensor | None = None,
                    skip_norm: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """The frozen ``blocks`` with every skip weighted per row by ``lam`` (N, k(k+1)/2); h_k.

    Rows whose Λ is the base network's (1 on the existing shortcuts, 0 elsewhere) get exactly
    the backbone's block outputs: each skip sum ends with the existing shortcut (1·S = S, and
    adding the ±0 terms before it changes no finite value), and ``residual + skip`` is the
    block's own ``residual + shortcut``. That is what lets one pass serve a batch mixing patches
    and the base task (``PatchedModel`` routing)."""
    hs: list[Tensor] = [h0]
    s1_h0: Tensor | None = None  # S_1(h_0), shared by every skip h_0 → h_j
    for j, block in enumerate(blocks, start=1):
        split = block_split(block)
        h_prev = hs[-1]
        skip = None
        for i, h_i in enumerate(hs):
            if i == j - 1:
                p = split.shortcut(block, h_prev)
                if i == 0:
                    s1_h0 = p
            elif i == 0 and s1_h0 is not None and h_i.shape != s1_h0.shape:
                p = s1_h0
            else:
                p = h_i
            term = lam[:, skip_index(i, j)].view(-1, 1, 1, 1) * p
            skip = term if skip is None else skip + term
        if skip_norm is not None:
            skip = skip_norm(skip)
        known = first_residual if j == 1 else None
        residual = known if known is not None else split.residual(block, h_prev)
        hs.append(split.post(block, residual + skip))
    return hs[-1]
