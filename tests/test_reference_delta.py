"""The library's Δ-stage against a plain, loop-based reference of the paper's equation
(tests/reference_delta.py): forward and gradient, random Λ far from 0 and 1, every gate, every
norm position, every backbone family the tests build; and what each gate's Λ is."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers import FAMILIES, random_backbone
from reference_delta import (
    base_lambda,
    pair_positions,
    ref_blocks,
    ref_delta_preactivation,
    ref_features,
    ref_gate,
    ref_logits,
    ref_stage,
)

import deltapatch as dp
from deltapatch.backbones.spec import block_split
from deltapatch.baseinit import GatedBatchNorm
from deltapatch.model import BASE

GATES = ["delta", "learned", "fixed", "random", "existing"]
BASE_GATES = ["delta", "learned", "existing"]
NORMS = ["output", "skip", "none"]
TOL = {"atol": 1e-9, "rtol": 1e-9}
"""Everything runs in float64: in float32 a pre-activation within rounding of 0 can flip a ReLU
between two correct computations, which shows in gradients; in float64 both agree to ~1e-13."""


@functools.lru_cache(maxsize=None)
def _model(family: str) -> dp.PatchedModel:
    """One wrapped backbone per family, with random weights and non-trivial BN statistics."""
    if family == "cifar_resnet20":
        net = random_backbone()
    else:
        net = dp.load_backbone(family)
        g = torch.Generator().manual_seed(1)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return dp.PatchedModel(net).eval().double()  # patches added later follow its dtype


def _images(family: str, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(2),
                       dtype=torch.float64)


def _uniform(shape, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g)


@torch.no_grad()
def perturb(stage, g: torch.Generator) -> None:
    """Move every task-owned tensor off its start, so Λ lies well inside (0, 1) and the norms
    do something: a test at the start alone cannot tell the new skips from no skips."""
    gate, base = stage.gate, getattr(stage.gate, "init", "random") == "base"
    kind = type(gate).__name__
    if kind == "DeltaModule":
        k = gate.fc.out_features
        fan_in = gate.fc.in_features
        gate.fc.weight.copy_(torch.randn(gate.fc.weight.shape, generator=g) * 0.3 / fan_in)
        centre = 0.5 - gate.target if base else torch.zeros(k)  # Λ ≈ 0.5 either way
        gate.fc.bias.copy_(centre + _uniform(k, -0.3, 0.3, g))
        for m in gate.features:
            if isinstance(m, torch.nn.BatchNorm2d):
                _perturb_bn(m, g)
    elif kind in ("LearnedGate", "ExistingSkipGate"):
        # the random start is unbounded: there every other weight lies above 1 (and must pass
        # through unclipped); all stay 0.05 or more away from 0 and 1
        w = _uniform(gate.weight.shape, 0.15, 0.85, g)
        if not base:
            w[::2] += 0.9
        gate.weight.copy_(w)
    if isinstance(stage.norm, torch.nn.BatchNorm2d):
        _perturb_bn(stage.norm, g)
    if isinstance(stage.norm, GatedBatchNorm):
        stage.norm.mix.copy_(_uniform(stage.norm.num_features, 0.2, 0.8, g))


def _perturb_bn(bn: torch.nn.BatchNorm2d, g: torch.Generator) -> None:
    c = bn.num_features
    bn.weight.copy_(_uniform(c, 0.5, 1.5, g))
    bn.bias.copy_(torch.randn(c, generator=g) * 0.1)
    bn.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
    bn.running_var.copy_(_uniform(c, 0.5, 1.5, g))


def _cases():
    """On the CIFAR ResNet every (gate, norm, init); on every other family every gate and
    every norm position (gate i with norm (i + f) mod 3, the init alternating), so across the
    families each gate meets each norm several times and the suite stays fast."""
    out = []
    for f, fam in enumerate(FAMILIES):
        for gi, gate in enumerate(GATES):
            for ni, norm in enumerate(NORMS):
                if fam == "cifar_resnet20":
                    inits = ["random", "base"] if gate in BASE_GATES else ["random"]
                elif ni == (gi + f) % 3:
                    inits = [["random", "base"][(gi + f) % 2] if gate in BASE_GATES else "random"]
                else:
                    continue
                out += [pytest.param(fam, gate, norm, init, id=f"{fam}-{gate}-{norm}-{init}")
                        for init in inits]
    return out


def _stages(model: dp.PatchedModel) -> list[list[torch.nn.Module]]:
    return [list(model.spec.stage_module(model.backbone, s)) for s in range(model.num_stages)]


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_at_base_lambda_is_the_frozen_stage(family):
    """The reference itself, anchored: with the base network's Λ it computes each stage
    exactly as the backbone's own forward does; with every skip on it does not."""
    model = _model(family)
    x = _images(family)
    with torch.no_grad():
        for s, blocks in enumerate(_stages(model)):
            h = model.stage_input(x, s)
            k = len(blocks)
            base = base_lambda(k).expand(len(h), -1)
            own = model.spec.stage_module(model.backbone, s)(h)
            torch.testing.assert_close(ref_blocks(h, blocks, base), own, **TOL)
            if k > 1:
                ones = torch.ones_like(base)
                assert not torch.allclose(ref_blocks(h, blocks, ones), own, atol=1e-3)


@pytest.mark.parametrize("family, gate, norm, init", _cases())
def test_stage_matches_reference(family, gate, norm, init):
    """Forward (eval and train mode), Λ, end-to-end logits and the gradients w.r.t. the
    stage's own parameters and its input, for a patch on every stage with Λ far from 0/1."""
    model = _model(family)
    x = _images(family)
    name = f"ref_{gate}_{norm}_{init}"
    patch = model.add_patch(name, 4, stages=model.num_stages, gate=gate, norm=norm, init=init)
    try:
        g = torch.Generator().manual_seed(5)
        for d in patch.deltas.values():
            perturb(d, g)
        torch.nn.init.normal_(patch.head.weight, generator=g)
        _compare(model, patch, name, x, gate)
    finally:
        model.remove_patch(name)
        model.eval()


def _compare(model, patch, name, x, gate):
    blocks = _stages(model)
    model.eval()
    with torch.no_grad():  # frozen stages only: the same in train mode
        inputs = {s: model.stage_input(x, s) for s in patch.config.stages}
        for s in patch.config.stages:
            d = patch.delta(s)
            h0 = inputs[s]
            out, lam = d(h0, blocks[s])
            ref_out, ref_lam = ref_stage(d, h0, blocks[s], False,
                                         lam if gate == "random" else None)
            torch.testing.assert_close(lam, ref_lam, **TOL)
            torch.testing.assert_close(out, ref_out, **TOL)
            if gate in ("delta", "learned"):  # Λ really is off the corners on every skip
                assert float(lam.min()) > 0.02 and float(lam.max()) < 2
                assert float((lam - base_lambda(len(blocks[s]))).abs().min()) > 0.02
        torch.manual_seed(11)  # the random gate draws in stage order in both walks
        logits = model(x, patch=name)
        torch.manual_seed(11)
        torch.testing.assert_close(logits, ref_logits(model, x, name), **TOL)

    model.train()
    for s in patch.config.stages:
        d = patch.delta(s)
        h0 = inputs[s].clone().requires_grad_(True)
        params = [h0] + [p for p in d.parameters() if p.requires_grad]
        out, lam = d(h0, blocks[s])
        ref_out, _ = ref_stage(d, h0, blocks[s], True, lam.detach() if gate == "random" else None)
        torch.testing.assert_close(out, ref_out, **TOL)
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(s), dtype=out.dtype)
        got = torch.autograd.grad((out * w).sum(), params)
        want = torch.autograd.grad((ref_out * w).sum(), params)
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            scale = float(b.abs().max()) + 1e-6
            torch.testing.assert_close(a / scale, b / scale, atol=1e-7, rtol=1e-6,
                                       msg=lambda m, i=i, s=s: f"gradient {i} of stage {s}: {m}")
            if i == 0 or gate == "delta":
                assert float(b.abs().max()) > 0  # the gradient really reaches them
    model.eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_batch_rows_match_reference(family):
    """Rows routed to two patches and the base task in one batch (one pass of the frozen blocks
    with per-row Λ): each row equals its own task's reference logits / the backbone's."""
    model = _model(family)
    x = _images(family, 4)
    model.add_patch("ref_a", 3, stages=2, norm="skip", init="random")
    model.add_patch("ref_b", 5, stages=1, gate="learned", norm="output", init="base")
    try:
        g = torch.Generator().manual_seed(3)
        for n in ("ref_a", "ref_b"):
            for d in model.get_patch(n).deltas.values():
                perturb(d, g)
        with torch.no_grad():
            out = model(x, patches=["ref_a", BASE, "ref_b", "ref_a"])
            a, b = ref_logits(model, x, "ref_a"), ref_logits(model, x, "ref_b")
            base = model.backbone(x)
        torch.testing.assert_close(out[[0, 3], :3], a[[0, 3]], **TOL)
        torch.testing.assert_close(out[2, :5], b[2], **TOL)
        torch.testing.assert_close(out[1], base[1], atol=0, rtol=0)
        assert bool(torch.isinf(out[[0, 3], 3:]).all() and torch.isinf(out[2, 5:]).all())
    finally:
        model.remove_patch("ref_a")
        model.remove_patch("ref_b")


# --------------------------------------------------------------------------- each gate's Λ
def _gate_lambdas(backbone, x, gate, init, perturbed=False):
    model = dp.PatchedModel(backbone).eval()
    patch = model.add_patch("p", 4, stages=1, gate=gate, norm="none", init=init)
    if perturbed:
        g = torch.Generator().manual_seed(9)
        for d in patch.deltas.values():
            perturb(d, g)
    with torch.no_grad():
        return model, patch, model.lambdas(x, "p")


def test_fixed_gate_is_all_ones(backbone, x):
    for mode in (False, True):
        model, _, lams = _gate_lambdas(backbone, x, "fixed", "random")
        model.train(mode)
        with torch.no_grad():
            lams = model.lambdas(x, "p")
        for lam in lams.values():
            assert torch.equal(lam, torch.ones(len(x), len(pair_positions(3))))


@pytest.mark.parametrize("init", ["random", "base"])
def test_existing_gate_is_base_lambda_at_start_and_never_opens_new_skips(backbone, x, init):
    _, _, lams = _gate_lambdas(backbone, x, "existing", init)
    for lam in lams.values():
        assert torch.equal(lam, base_lambda(3).expand(len(x), -1))
    _, patch, lams = _gate_lambdas(backbone, x, "existing", init, perturbed=True)
    new = [pos for (i, j), pos in pair_positions(3).items() if i != j - 1]
    old = [pos for (i, j), pos in pair_positions(3).items() if i == j - 1]
    for s, lam in lams.items():
        assert torch.equal(lam[:, new], torch.zeros(len(x), len(new)))
        w = patch.delta(s).gate.weight.detach()
        torch.testing.assert_close(lam[:, old], w.clamp(0, 1).expand(len(x), -1) if init == "base"
                                   else w.expand(len(x), -1), atol=0, rtol=0)


@pytest.mark.parametrize("init", ["random", "base"])
def test_learned_gate_starts_where_the_paper_and_the_base_net_say(backbone, x, init):
    """Random start: every skip weighted 1 (the ablation as published); base: the base Λ.
    The weight is the same for every input."""
    _, _, lams = _gate_lambdas(backbone, x, "learned", init)
    start = torch.ones(6) if init == "random" else base_lambda(3)
    for lam in lams.values():
        assert torch.equal(lam, start.expand(len(x), -1))


def test_delta_gate_is_a_sigmoid_strictly_inside_the_unit_interval(backbone, x):
    """Λ = sigmoid(z) of its pre-activation z (a clamp of z would also stay in [0, 1]), and
    strictly inside (0, 1) even for a far-off z; it depends on the input."""
    model, patch, lams = _gate_lambdas(backbone, x, "delta", "random", perturbed=True)
    for s, lam in lams.items():
        gate = patch.delta(s).gate
        with torch.no_grad():
            h0 = model.stage_input(x, s)
            z = ref_delta_preactivation(gate, h0, False)
            torch.testing.assert_close(lam, torch.sigmoid(z), atol=1e-6, rtol=1e-6)
            assert not torch.allclose(lam, z.clamp(0, 1), atol=1e-3)
            assert bool((lam > 0).all() and (lam < 1).all())
            assert float((lam - lam[:1]).abs().max()) > 1e-4  # per sample, not one vector
            gate.fc.bias.add_(torch.linspace(-8, 8, gate.fc.out_features))
            far = gate(h0)
            assert bool((far > 0).all() and (far < 1).all())
            torch.testing.assert_close(far, torch.sigmoid(ref_delta_preactivation(gate, h0, False)))


def test_delta_gate_base_start_is_the_base_lambda_then_a_clamped_offset(backbone, x):
    model, patch, lams = _gate_lambdas(backbone, x, "delta", "base")
    for lam in lams.values():
        assert torch.equal(lam, base_lambda(3).expand(len(x), -1))
    model, patch, lams = _gate_lambdas(backbone, x, "delta", "base", perturbed=True)
    for s, lam in lams.items():
        gate = patch.delta(s).gate
        with torch.no_grad():
            want = ref_gate(gate, 3, model.stage_input(x, s), False)
        torch.testing.assert_close(lam, want, atol=1e-6, rtol=1e-6)
        assert float(lam.min()) > 0 and float(lam.max()) < 1


def test_random_gate_draws_fresh_uniform_values(backbone, x):
    model, _, first = _gate_lambdas(backbone, x, "random", "random")
    with torch.no_grad():
        second = model.lambdas(x, "p")
    for s in first:
        a, b = first[s], second[s]
        assert bool((a >= 0).all() and (a <= 1).all())
        assert not torch.equal(a, b)  # a fresh draw per call
        assert float((a - a[:1]).abs().max()) > 0  # and per sample
    many = torch.cat([model.lambdas(x, "p")[2] for _ in range(30)])
    assert 0.4 < float(many.mean()) < 0.6 and float(many.min()) < 0.05 and float(many.max()) > 0.95
    torch.manual_seed(4)
    drawn = model.lambdas(x, "p")
    torch.manual_seed(4)
    for s in sorted(drawn):  # reproducible under the global seed: one uniform draw per stage
        torch.testing.assert_close(drawn[s], ref_gate(model.get_patch("p").delta(s).gate, 3,
                                                      x, False), atol=0, rtol=0)


def test_reference_features_match_the_model_on_the_cifar_fixture(backbone, x):
    """A quick end-to-end smoke of the reference walk on the shared fixture."""
    model = dp.PatchedModel(backbone).eval()
    patch = model.add_patch("p", 4, stages=3, init="random")
    g = torch.Generator().manual_seed(1)
    for d in patch.deltas.values():
        perturb(d, g)
    with torch.no_grad():
        torch.testing.assert_close(model.features(x, "p"), ref_features(model, x, "p"),
                                   atol=2e-5, rtol=2e-5)  # float32 here


@pytest.mark.parametrize("gate", ["learned", "existing"])
@pytest.mark.parametrize("init", ["random", "base"])
def test_learned_weights_are_clipped_to_the_unit_interval_only_at_the_base_start(backbone, x,
                                                                                 gate, init):
    """init="base" bounds Λ to [0, 1] (a weight pushed past a bound reads as the bound); the
    paper's random start leaves the ablation's weights unbounded."""
    model, patch, _ = _gate_lambdas(backbone, x, gate, init)
    g = patch.delta(2).gate
    with torch.no_grad():
        g.weight.copy_(torch.linspace(-0.5, 1.75, g.weight.numel()))
        lam = model.lambdas(x, "p")[2]
        torch.testing.assert_close(lam, ref_gate(g, 3, x, False), atol=0, rtol=0)
    values = g.weight.detach() if init == "random" else g.weight.detach().clamp(0, 1)
    seen = lam[0] if gate == "learned" else lam[0, [pos for (i, j), pos in
                                                    pair_positions(3).items() if i == j - 1]]
    seen = seen.detach()
    assert torch.equal(seen, values)
    assert (float(seen.min()), float(seen.max())) == ((-0.5, 1.75) if init == "random" else (0, 1))


def test_delta_module_widths_never_drop_below_one_channel():
    """C/2 and C/r are floored at 1 (not more): a 2- or 3-channel stage input still gets
    one-channel hidden convs, and the widths follow C otherwise."""
    from deltapatch.delta import DeltaModule

    for c, r, widths in [(2, 4, (1, 1)), (3, 2, (1, 1)), (4, 4, (2, 1)), (16, 4, (8, 4))]:
        m = DeltaModule(c, 2, reduction=r)
        assert (m.features[0].out_channels, m.features[3].out_channels) == widths
        assert m(torch.randn(2, c, 4, 4)).shape == (2, 3)


def test_stage_defaults_reduction_and_refusals_name_what_is_wrong():
    from deltapatch.delta import DeltaStage

    assert DeltaStage(16, 16, 2).gate.features[3].out_channels == 4  # DESIGN.md: C/4
    assert DeltaStage(16, 16, 2, reduction=2).gate.features[3].out_channels == 8
    base = DeltaStage(16, 16, 2, init="base")
    assert not any("target" in k for k in base.state_dict())  # derived, never stored
    with pytest.raises(ValueError, match="unknown gate 'nope'"):
        DeltaStage(16, 16, 2, gate="nope")
    with pytest.raises(ValueError, match="unknown norm 'nope'"):
        DeltaStage(16, 16, 2, norm="nope")
    with pytest.raises(ValueError, match="gate 'fixed' fixes"):
        DeltaStage(16, 16, 2, gate="fixed", init="base")


def test_stage_uses_a_given_first_residual_for_the_first_block_only():
    """``first_residual`` = F_1(h_0) (cached training passes it): the stage equals the
    reference with it, and a wrong one changes exactly what F_1 feeds."""
    model = _model("cifar_resnet20")
    x = _images("cifar_resnet20")
    model.add_patch("ref_r", 4, stages=1, init="random")
    try:
        d = model.get_patch("ref_r").delta(2)
        perturb(d, torch.Generator().manual_seed(2))
        blocks = _stages(model)[2]
        with torch.no_grad():
            h0 = model.stage_input(x, 2)
            f1 = model.first_residual(h0, 2)
            torch.testing.assert_close(d(h0, blocks, f1)[0], ref_stage(d, h0, blocks, False)[0],
                                       **TOL)
            other = d(h0, blocks, f1 + 1.0)[0]
            assert not torch.allclose(other, d(h0, blocks)[0])
            b0 = blocks[0]
            shifted = [_Shifted(b0)] + blocks[1:]  # the same +1 on F_1 inside the reference
            torch.testing.assert_close(other, ref_stage(d, h0, shifted, False)[0], **TOL)
    finally:
        model.remove_patch("ref_r")


class _Shifted(torch.nn.Module):
    """A sub-block whose residual branch is the wrapped block's plus 1 (F_1 + 1)."""

    def __init__(self, block):
        super().__init__()
        self.block = block


def _shifted_residual(b, h):
    return block_split(b.block).residual(b.block, h) + 1.0


dp.register_block(_Shifted, residual=_shifted_residual,
                  shortcut=lambda b, h: block_split(b.block).shortcut(b.block, h),
                  post=lambda b, h: block_split(b.block).post(b.block, h))


class _Projected(torch.nn.Module):
    """A sub-block whose own shortcut is a shape-preserving 1×1 projection (no built-in family
    has one: their first shortcut is the identity or changes the shape)."""

    def __init__(self, c: int, g: torch.Generator):
        super().__init__()
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.proj = torch.nn.Conv2d(c, c, 1, bias=False)
        for w in (self.conv.weight, self.proj.weight):
            w.data.copy_(torch.randn(w.shape, generator=g) * 0.3)

    def forward(self, h):
        return torch.relu(self.conv(h) + self.proj(h))


dp.register_block(_Projected, residual=lambda b, h: b.conv(h), shortcut=lambda b, h: b.proj(h),
                  post=lambda b, h: torch.relu(h))


def test_a_skip_from_h0_is_the_identity_where_shapes_agree_even_with_a_projected_shortcut():
    """P_{0→j} = S_1(h_0) only where h_0 has another shape (DESIGN.md): with a shortcut that
    projects without changing the shape, the skips h_0 → h_2, h_3 carry h_0 itself."""
    from deltapatch.delta import DeltaStage

    g = torch.Generator().manual_seed(6)
    blocks = [_Projected(4, g) for _ in range(3)]
    stage = DeltaStage(4, 4, 3, gate="learned", norm="none")
    perturb(stage, g)
    h0 = torch.randn(2, 4, 5, 5, generator=g)
    with torch.no_grad():
        out, lam = stage(h0, blocks)
        want, _ = ref_stage(stage, h0, blocks, False)
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
