"""model.pyramid: the base's stage outputs are the backbone's own (captured by hooks inside
``backbone(x)``) on every family; a patch changes only its Δ-stages and those after them."""

from __future__ import annotations

import pytest
import torch
from helpers import FAMILIES

import deltapatch as dp
from deltapatch.backbones.spec import stage_module


def _hooked_outputs(model: dp.PatchedModel, x: torch.Tensor) -> list[torch.Tensor]:
    """Each stage's output as the plain ``backbone(x)`` computes it (its last block's output)."""
    outs, handles = [], []
    for path in model.spec.stages:
        last = list(stage_module(model.backbone, path))[-1]
        handles.append(last.register_forward_hook(lambda _m, _i, o: outs.append(o)))
    try:
        model.backbone(x)
    finally:
        for h in handles:
            h.remove()
    return outs


@pytest.mark.parametrize("name", FAMILIES)
def test_base_pyramid_is_the_backbones_own_stage_outputs(name):
    torch.manual_seed(0)
    model = dp.PatchedModel(dp.load_backbone(name)).eval()
    model.add_patch("p", 3, stages=1, init="random")
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        base = model.pyramid(x)
        patched = model.pyramid(x, patch="p")
        want = _hooked_outputs(model, x)
    assert list(base) == model.stage_names
    last = model.num_stages - 1
    assert not torch.equal(patched[model.stage_names[last]], base[model.stage_names[last]])
    for s, (got, exp) in enumerate(zip(base.values(), want, strict=True)):
        assert torch.equal(got, exp), f"{name} stage {s}"
        if s < last:  # stages before the Δ-stage are the base's, bit for bit
            assert torch.equal(patched[model.stage_names[s]], got)


def test_pyramid_of_a_base_init_patch_starts_at_the_base(backbone, x):
    model = dp.PatchedModel(backbone).eval()
    model.add_patch("b", 4, stages=3, init="base")
    with torch.inference_mode():
        for got, want in zip(model.pyramid(x, "b").values(), model.pyramid(x).values(),
                             strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
