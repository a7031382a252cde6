"""A reference Δ-stage: the paper's equation written out with loops, for reading, not speed.

    h_j = post_j( F_j(h_{j-1}) + Σ_{i<j} λ_{i,j}(h_0) · P_{i→j}(h_i) )        j = 1 .. k

Only the *pieces* of a sub-block come from the library (F_j, S_j and post_j through its block
split, the backbone's own frozen modules); the sum over skips, Λ's layout, the projections P, the
gates and the task-owned norms are all written here again from DESIGN.md, independently of
``deltapatch.delta``. tests/test_reference_delta.py compares the library's Δ-stage with this.

Λ's layout (DESIGN.md): one entry per pair i < j, skips into h_1 first, then into h_2, ...
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deltapatch.backbones.spec import block_split


def pair_positions(k: int) -> dict[tuple[int, int], int]:
    """{(i, j): position of λ_{i,j} in Λ}, counted out in the order DESIGN.md fixes."""
    positions, pos = {}, 0
    for j in range(1, k + 1):
        for i in range(0, j):
            positions[(i, j)] = pos
            pos += 1
    return positions


def base_lambda(k: int) -> Tensor:
    """The base network's Λ: 1 on the backbone's own shortcuts h_{j-1} → h_j, 0 on new skips."""
    positions = pair_positions(k)
    lam = torch.zeros(len(positions))
    for (i, j), pos in positions.items():
        if i == j - 1:
            lam[pos] = 1.0
    return lam


def ref_batchnorm(bn: nn.BatchNorm2d, h: Tensor, training: bool) -> Tensor:
    """BatchNorm by hand: batch statistics (biased variance) in training, running ones in eval."""
    if training:
        mean = h.mean(dim=(0, 2, 3))
        var = h.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    shape = (1, -1, 1, 1)
    normed = (h - mean.view(shape)) / torch.sqrt(var.view(shape) + bn.eps)
    return normed * bn.weight.view(shape) + bn.bias.view(shape)


def ref_norm(norm: nn.Module, h: Tensor, training: bool) -> Tensor:
    """The task-owned norm: none, a BatchNorm, or the gated one h + m ⊙ (BN(h) − h)."""
    if isinstance(norm, nn.Identity):
        return h
    normed = ref_batchnorm(norm, h, training)
    mix = getattr(norm, "mix", None)
    if mix is None:
        return normed
    return h + mix.view(1, -1, 1, 1) * (normed - h)


def ref_delta_preactivation(gate: nn.Module, h0: Tensor, training: bool) -> Tensor:
    """z = Linear(pool(ReLU(BN(conv3x3(ReLU(BN(conv3x3(h_0)))))))), the Δ-module before its
    squashing (DESIGN.md: conv C→C/2 + BN + ReLU, conv C/2→C/r + BN + ReLU, pool, Linear)."""
    conv1, bn1, _, conv2, bn2 = list(gate.features)[:5]
    h = F.relu(ref_batchnorm(bn1, F.conv2d(h0, conv1.weight, padding=1), training))
    h = F.relu(ref_batchnorm(bn2, F.conv2d(h, conv2.weight, padding=1), training))
    pooled = h.mean(dim=(2, 3))
    return pooled @ gate.fc.weight.t() + gate.fc.bias


def ref_gate(gate: nn.Module, k: int, h0: Tensor, training: bool) -> Tensor:
    """Λ (N, k(k+1)/2) of each gate, from its parameters. ``init="base"`` gates clamp the base
    targets plus their offset into [0, 1]; the paper's Δ-module is a sigmoid."""
    n, kind = h0.shape[0], type(gate).__name__
    base = getattr(gate, "init", "random") == "base"
    if kind == "DeltaModule":
        z = ref_delta_preactivation(gate, h0, training)
        return torch.clamp(base_lambda(k).to(z.dtype) + z, 0, 1) if base else torch.sigmoid(z)
    if kind == "LearnedGate":
        w = torch.clamp(gate.weight, 0, 1) if base else gate.weight
        return w.unsqueeze(0).repeat(n, 1)
    if kind == "FixedGate":
        return torch.ones(n, len(pair_positions(k)), dtype=h0.dtype)
    if kind == "ExistingSkipGate":
        w = torch.clamp(gate.weight, 0, 1) if base else gate.weight
        lam = []
        for (i, j) in pair_positions(k):  # in Λ's order
            lam.append(w[j - 1].expand(n) if i == j - 1 else torch.zeros(n, dtype=w.dtype))
        return torch.stack(lam, dim=1)
    if kind == "RandomGate":
        return torch.rand(n, len(pair_positions(k)), dtype=h0.dtype)
    raise TypeError(f"no reference for gate {kind}")


def ref_blocks(h0: Tensor, blocks: list[nn.Module], lam: Tensor, skip_norm=None) -> Tensor:
    """h_k of the frozen ``blocks`` with every skip weighted by ``lam``: the equation above."""
    k = len(blocks)
    positions = pair_positions(k)
    first = blocks[0]
    s1_h0 = block_split(first).shortcut(first, h0)  # P_{0→j} where h_0 has another shape
    hs = [h0]
    for j in range(1, k + 1):
        block = blocks[j - 1]
        split = block_split(block)
        f_j = split.residual(block, hs[j - 1])
        total = torch.zeros_like(f_j)
        for i in range(0, j):
            if i == j - 1:
                p = split.shortcut(block, hs[j - 1])  # P_{j-1→j} = S_j
            elif hs[i].shape == f_j.shape:
                p = hs[i]  # same shape: identity
            elif i == 0:
                p = s1_h0
            else:
                raise AssertionError(f"h_{i} has shape {tuple(hs[i].shape)}, h_{j} needs "
                                     f"{tuple(f_j.shape)}: no projection defined")
            total = total + lam[:, positions[(i, j)]].reshape(-1, 1, 1, 1) * p
        if skip_norm is not None:
            total = skip_norm(total)
        hs.append(split.post(block, f_j + total))
    return hs[k]


def ref_stage(stage: nn.Module, h0: Tensor, blocks: list[nn.Module], training: bool,
              lam: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(h_k, Λ) of a :class:`~deltapatch.delta.DeltaStage`, recomputed from its parameters;
    ``lam`` replaces the gate (the random gate's draws, say)."""
    k = len(blocks)
    if lam is None:
        lam = ref_gate(stage.gate, k, h0, training)
    where = stage.norm_at

    def norm(h: Tensor) -> Tensor:
        return ref_norm(stage.norm, h, training)

    out = ref_blocks(h0, blocks, lam, norm if where == "skip" else None)
    return (norm(out) if where == "output" else out), lam


def ref_features(model, x: Tensor, patch: str, training: bool = False) -> Tensor:
    """Pre-logit features of ``patch`` with every Δ-stage replaced by :func:`ref_stage`; the
    frozen stages, transitions and pre-logits are walked through the backbone's spec."""
    p = model.get_patch(patch)
    stages = [list(model.spec.stage_module(model.backbone, s)) for s in range(model.num_stages)]

    def run_stage(s: int, h: Tensor) -> Tensor:
        d = p.delta(s)
        if d is None:
            for block in stages[s]:
                h = block(h)
            return h
        return ref_stage(d, h, stages[s], training)[0]

    spec, net = model.spec, model.backbone
    h = spec.stage_input(net, x, 0)
    return spec.features_from(net, h, 0, run_stage)


def ref_logits(model, x: Tensor, patch: str, training: bool = False) -> Tensor:
    head = model.get_patch(patch).head
    return F.linear(ref_features(model, x, patch, training), head.weight, head.bias)
