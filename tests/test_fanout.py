"""model.fanout: every task on every row, the trunk once; each result equals that task's own
forward bit for bit, and the base equals the plain backbone's on every family."""

from __future__ import annotations

import pytest
import torch
from helpers import FAMILIES

import deltapatch as dp
from deltapatch.errors import PatchError


def _model(name: str) -> dp.PatchedModel:
    torch.manual_seed(0)
    model = dp.PatchedModel(dp.load_backbone(name)).eval()
    model.add_patch("a", 5, stages=1)
    model.add_patch("b", 3, stages=2)
    model.add_patch("c", 4, stages=0)  # head only
    model.add_patch("d", 7, stages=1)  # shares F_1(h_0) of the last stage with "a"
    for p in model.patches.values():  # non-trivial norms, so a skipped Δ-stage would show
        for m in p.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
    return model


@pytest.mark.parametrize("name", FAMILIES)
def test_fanout_equals_each_forward_and_base_is_bit_identical(name):
    model = _model(name)
    tasks = ["a", "b", "c", "d", dp.BASE]
    for batch in (1, 3, 8):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            out = model.fanout(x, patches=tasks)
            assert list(out) == tasks
            assert torch.equal(out[dp.BASE], model.backbone(x)), f"{name} base, batch {batch}"
            for t in "abcd":
                want = model(x, patch=t)
                assert out[t].shape == want.shape
                assert torch.equal(out[t], want), f"{name} patch {t}, batch {batch}"
            assert not torch.equal(out["a"][:, :5], out["d"][:, :5])


def test_fanout_subsets_empty_batch_and_unknown_names(backbone, x):
    model = dp.PatchedModel(backbone).eval()
    model.add_patch("a", 5, stages=1)
    model.add_patch("b", 3, stages=[0, 2])
    with torch.inference_mode():
        assert model.fanout(x, patches=[]) == {}
        only = model.fanout(x, patches=[dp.BASE])
        assert torch.equal(only[dp.BASE], backbone(x))
        dup = model.fanout(x, patches=["b", "b"])
        assert list(dup) == ["b"] and torch.equal(dup["b"], model(x, patch="b"))
        empty = model.fanout(torch.zeros(0, 3, 32, 32), patches=["a", "b", dp.BASE])
        assert {k: tuple(v.shape) for k, v in empty.items()} == {
            "a": (0, 5), "b": (0, 3), dp.BASE: (0, 10)}
    with pytest.raises(PatchError, match="no patch named 'zz'"):
        model.fanout(x, patches=["a", "zz"])


def test_fanout_runs_the_trunk_once(backbone, x):
    """The stem and the stages before the earliest patched stage run once, not once per task."""
    model = dp.PatchedModel(backbone).eval()
    for i in range(4):
        model.add_patch(f"p{i}", 5, stages=1)
    calls = {"stem": 0, "first_stage": 0}
    stem = model.backbone.conv1
    h1 = stem.register_forward_hook(lambda *_: calls.__setitem__("stem", calls["stem"] + 1))
    h2 = model._stages[0].register_forward_hook(
        lambda *_: calls.__setitem__("first_stage", calls["first_stage"] + 1))
    try:
        with torch.inference_mode():
            model.fanout(x, patches=[f"p{i}" for i in range(4)] + [dp.BASE])
    finally:
        h1.remove()
        h2.remove()
    assert calls == {"stem": 1, "first_stage": 1}
