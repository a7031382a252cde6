"""The Δ-stage: skip indexing, Λ ranges, and that it reduces to the base stage exactly when only
the existing shortcuts carry weight 1."""

from __future__ import annotations

import pytest
import torch

import deltapatch as dp
from deltapatch.delta import DeltaModule, DeltaStage, existing_skips, num_skips, skip_index


def test_skip_index_enumerates_every_pair_once():
    for k in range(1, 7):
        idx = [skip_index(i, j) for j in range(1, k + 1) for i in range(j)]
        assert sorted(idx) == list(range(num_skips(k)))
        assert existing_skips(k) == [skip_index(j - 1, j) for j in range(1, k + 1)]


def test_delta_module_output_in_unit_interval():
    lam = DeltaModule(channels=16, k=3)(torch.randn(5, 16, 8, 8) * 10)
    assert lam.shape == (5, 6)
    assert bool((lam >= 0).all() and (lam <= 1).all())


def test_delta_module_parameter_count_matches_design():
    c, k = 256, 2  # ResNet-18 layer4: C = 256 in, 2 sub-blocks
    expected = (c * c // 2 * 9 + 2 * (c // 2)) + (c // 2 * c // 4 * 9 + 2 * (c // 4)) + (c // 4 + 1) * 3
    assert sum(p.numel() for p in DeltaModule(c, k).parameters()) == expected


@pytest.mark.parametrize("name", ["cifar_resnet20", "resnet18", "resnet50", "convnext_tiny"])
def test_existing_skips_at_one_reproduce_base_stage(name):
    """With Λ = 1 on the backbone's own shortcuts, 0 elsewhere and no norm, every patched stage
    computes exactly what the frozen stage computes — the Δ-stage wiring is the method's."""
    backbone = dp.load_backbone(name).eval()
    model = dp.PatchedModel(backbone)
    model.add_patch("same", 5, stages=model.num_stages, gate="existing", norm="none")
    model.add_patch("all", 5, stages=model.num_stages, gate="fixed", norm="none")
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        base = model.features(x)
        torch.testing.assert_close(model.features(x, "same"), base, atol=1e-5, rtol=1e-5)
        # the control: the same wiring with every new skip on is not the base stage (compared
        # at a stage output: ConvNeXt's final LayerNorm hides a mere rescaling)
        last = model.num_stages - 1
        h = model.stage_input(x, last)
        out, _ = model.get_patch("all").delta(last)(h, list(model._stages[last]))
        assert not torch.allclose(out, model._stages[last](h), atol=1e-3, rtol=1e-3)


def test_stage_refuses_wrong_block_count(backbone):
    stage = DeltaStage(16, 16, k=2)
    with pytest.raises(ValueError, match="2 sub-blocks"):
        stage(torch.randn(1, 16, 8, 8), list(backbone.layer1))


@pytest.mark.parametrize("gate", ["delta", "learned", "fixed", "random", "existing"])
@pytest.mark.parametrize("norm", ["output", "skip", "none"])
def test_every_gate_and_norm_runs_and_gives_lambda_per_skip(backbone, x, gate, norm):
    model = dp.PatchedModel(backbone)
    model.add_patch("p", 4, stages=3, gate=gate, norm=norm)
    model.eval()
    lams = model.lambdas(x, "p")
    assert sorted(lams) == [0, 1, 2]
    assert all(v.shape == (6, 6) for v in lams.values())
    assert model(x, patch="p").shape == (6, 4)
