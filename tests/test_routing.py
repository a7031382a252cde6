"""One pass of a shared Δ-stage for a batch mixing tasks: base rows get the backbone's outputs
bit for bit, each patch's rows what that patch gives alone, whatever gates, norm positions,
starts and stage sets the patches use."""

from __future__ import annotations

import pytest
import torch
from helpers import FAMILIES

from deltapatch import PatchedModel, load_backbone
from deltapatch.model import BASE
from deltapatch.routing import delta_fn, group_rows, mixed_stage, place_rows, scatter_rows


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


# ------------------------------------------------------------ the row helpers themselves
def test_group_rows_gives_long_indices_per_task_and_an_empty_batch_one_empty_group():
    groups = group_rows(["a", "b", "a"], "z")
    assert {n: g.tolist() for n, g in groups.items()} == {"a": [0, 2], "b": [1]}
    empty = group_rows([], "z")
    assert list(empty) == ["z"] and empty["z"].numel() == 0
    assert all(g.dtype == torch.long for g in (*groups.values(), empty["z"]))


def test_group_rows_puts_the_indices_on_the_batchs_device():
    groups = group_rows(["a", "b"], "z", torch.device("meta"))
    assert {g.device.type for g in groups.values()} == {"meta"}
    assert group_rows(["a"], "z", torch.device("cpu"))["a"].device.type == "cpu"


def test_scatter_rows_runs_each_group_on_its_rows_and_pads_narrower_outputs():
    h = torch.arange(8.0).reshape(4, 2)
    groups = group_rows(["w", "n", "w", "n"], "w")
    fns = {"w": lambda t: t * 10, "n": lambda t: t[:, :1] + 0.5}
    out = scatter_rows(h, groups, fns)  # default fill 0.0
    assert out.tolist() == [[0, 10], [2.5, 0], [40, 50], [6.5, 0]]
    padded = scatter_rows(h, groups, fns, fill=float("-inf"))
    assert padded[1, 1] == float("-inf") and padded[0, 1] == 10
    one = scatter_rows(h, group_rows(["w"] * 4, "w"), fns)  # one group on every row
    assert torch.equal(one, h * 10)


def test_place_rows_puts_a_group_covering_part_of_the_rows_in_its_place():
    o = torch.ones(2, 3)
    out = place_rows({"a": o}, {"a": torch.tensor([1, 3])}, 4, fill=-1.0)
    assert out.tolist() == [[-1] * 3, [1] * 3, [-1] * 3, [1] * 3]
    assert place_rows({"a": o}, {"a": torch.tensor([0, 1])}, 2) is o  # all rows: as it is


def test_place_rows_pads_outputs_with_trailing_dimensions():
    wide, narrow = torch.ones(1, 3, 2), torch.full((1, 1, 2), 2.0)
    out = place_rows({"w": wide, "n": narrow}, {"w": torch.tensor([1]), "n": torch.tensor([0])},
                     2)
    assert out.shape == (2, 3, 2)
    assert out[0].tolist() == [[2, 2], [0, 0], [0, 0]] and out[1].tolist() == [[1, 1]] * 3


def _stage_parts(model: PatchedModel, names: list[str]):
    s = model.num_stages - 1
    blocks = list(model.spec.stage_module(model.backbone, s))
    h = model.stage_input(torch.randn(len(names), 3, 32, 32), s)
    deltas = {n: model.get_patch(n).delta(s) for n in dict.fromkeys(names) if n != BASE}
    return s, blocks, h, deltas, group_rows(names, names[0])


def test_a_given_first_residual_is_the_one_the_stage_uses():
    """F_1(h_0) handed in (what feature caching computes once) is used, not recomputed: a
    different tensor handed in changes the result."""
    model = _model()
    model.add_patch("a", 3, stages=1)
    model.add_patch("b", 3, stages=1)
    _perturb(model, "a")
    s, blocks, h, deltas, groups = _stage_parts(model, ["a", "b", BASE])
    r1 = model.first_residual(h, s)
    with torch.no_grad():
        plain = mixed_stage(h, s, blocks, deltas, groups, None)
        given = mixed_stage(h, s, blocks, deltas, groups, None, first_residual=r1)
        other = mixed_stage(h, s, blocks, deltas, groups, None, first_residual=r1 + 1)
        torch.testing.assert_close(given, plain)
        assert not torch.allclose(other, plain, atol=1e-3)
        run = delta_fn(deltas["a"], blocks, s, None, first_residual=r1 + 1)
        assert not torch.allclose(run(h), delta_fn(deltas["a"], blocks, s, None)(h), atol=1e-3)


def test_a_mixed_stage_records_each_patchs_lambdas_on_its_own_rows():
    model = _model()
    model.add_patch("a", 3, stages=1)
    model.add_patch("b", 3, stages=1)
    _perturb(model, "a")
    _perturb(model, "b")
    names = ["a", BASE, "b", "a"]
    s, blocks, h, deltas, groups = _stage_parts(model, names)
    record: dict = {}
    with torch.no_grad():
        mixed_stage(h, s, blocks, deltas, groups, record)
        for n in ("a", "b"):
            rows = groups[n]
            assert set(record[n]) == {s}
            assert torch.equal(record[n][s], deltas[n].gate(h.index_select(0, rows)))
    assert set(record) == {"a", "b"}
