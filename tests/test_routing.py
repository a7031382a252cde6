"""One pass of a shared Δ-stage for a batch mixing tasks: base rows get the backbone's outputs
bit for bit, each patch's rows what that patch gives alone, whatever gates, norm positions,
starts and stage sets the patches use."""

from __future__ import annotations

import pytest
import torch
from helpers import FAMILIES

from deltapatch import PatchedModel, load_backbone
from deltapatch.model import BASE


def _model() -> PatchedModel:
    torch.manual_seed(0)
    return PatchedModel(load_backbone("cifar_resnet20")).eval()


def _perturb(model: PatchedModel, name: str) -> None:
    """A trained-looking patch: gate and norm moved off their start (base init is exact)."""
    with torch.no_grad():
        for p in model.get_patch(name).parameters():
            p.add_(torch.randn_like(p) * 0.1)


@pytest.mark.parametrize("family", FAMILIES)
def test_base_rows_of_a_mixed_batch_are_bit_identical_to_the_backbone(family):
    """On every family: the base head runs on every row as the backbone runs it (on the base
    rows alone, a wide head's matmul rounded otherwise on ResNet-18/50, ConvNeXt, Lite0)."""
    torch.manual_seed(0)
    model = PatchedModel(load_backbone(family)).eval()
    for i, stages in enumerate([1, 2, model.num_stages, [0, 2]]):
        model.add_patch(f"p{i}", 10, stages=stages)
    names = [BASE, "p0", "p1", BASE, "p2", "p3", BASE, "p0"]
    x = torch.randn(len(names), 3, 32, 32)
    with torch.no_grad():
        mixed = model(x, patches=names)
        ref = model.backbone(x)
    patched = [r for r, n in enumerate(names) if n != BASE]
    assert not torch.allclose(mixed[patched], ref[patched], atol=1e-3)  # the patches act
    for r, n in enumerate(names):
        if n == BASE:
            assert torch.equal(mixed[r], ref[r]), r


@pytest.mark.parametrize("norm", ["output", "skip", "none"])
def test_each_patch_row_equals_the_patch_alone(norm):
    model = _model()
    model.add_patch("delta1", 3, stages=1, norm=norm)
    model.add_patch("all", 5, stages=3, norm=norm)
    model.add_patch("learned", 7, stages=2, gate="learned", norm=norm)
    model.add_patch("existing", 4, stages=[1, 2], gate="existing", norm=norm)
    model.add_patch("base_init", 6, stages=3, init="base", norm=norm)
    model.add_patch("head_only", 2, stages=0)
    for n in ("delta1", "all", "learned", "existing", "base_init"):
        _perturb(model, n)
    names = ["delta1", "all", BASE, "learned", "existing", "base_init", "head_only", "all",
             "delta1", BASE]
    x = torch.randn(len(names), 3, 32, 32)
    with torch.no_grad():
        mixed = model(x, patches=names)
        for r, n in enumerate(names):
            alone = model(x[r:r + 1], patch=None if n == BASE else n)[0]
            torch.testing.assert_close(mixed[r, :alone.numel()], alone, atol=1e-5, rtol=1e-5)
            assert torch.isinf(mixed[r, alone.numel():]).all()


def test_mixed_batch_records_each_patchs_lambdas_and_trains_each_patch():
    model = _model().train()
    model.add_patch("a", 3, stages=1)
    model.add_patch("b", 3, stages=1)
    names = ["a", "b", BASE, "a", "b"]
    x = torch.randn(len(names), 3, 32, 32)
    with torch.no_grad():
        model.eval()
        lam_a = model.lambdas(x[[0, 3]], patch="a")
        model.train()
    out = model(x, patches=names)
    out[[0, 1, 3, 4]].logsumexp(1).sum().backward()
    for n in ("a", "b"):
        gate = model.get_patch(n).delta(model.num_stages - 1).gate
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gate.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())
    assert set(lam_a) == {model.num_stages - 1}


def test_a_shared_stage_runs_its_frozen_blocks_once_for_the_whole_mixed_batch():
    model = _model()
    for i in range(4):
        model.add_patch(f"p{i}", 3, stages=1)
    last = model.spec.stage_module(model.backbone, model.num_stages - 1)
    convs = [m for m in last.modules() if isinstance(m, torch.nn.Conv2d)]
    calls: list[int] = []
    hooks = [c.register_forward_hook(lambda m, i, o: calls.append(o.shape[0])) for c in convs]
    names = ["p0", "p1", BASE, "p2", "p3", "p0", BASE, "p1"]
    with torch.no_grad():
        model(torch.randn(len(names), 3, 32, 32), patches=names)
    for h in hooks:
        h.remove()
    assert calls and set(calls) == {len(names)}  # every frozen conv once, on all 8 rows
    assert len(calls) == len(convs)
