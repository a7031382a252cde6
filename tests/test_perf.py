"""Issue 5: cached-feature training agrees with image training; routing shares the trunk pass
without changing any row's result; the base path stays the plain backbone, bit for bit."""

from __future__ import annotations

import pytest
import torch

from deltapatch import BASE, PatchedModel
from deltapatch.backbones.cifar import CifarResNet
from deltapatch.cache import cache_features, use_cache
from deltapatch.cli import build_parser
from deltapatch.data.sets import ImageSet, TaskData
from deltapatch.train import TrainConfig, fit_patch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is faster, and much faster on a loaded machine (OpenMP spin)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(seed: int = 0) -> PatchedModel:
    torch.manual_seed(seed)
    backbone = CifarResNet(8)  # 3 stages of 1 block: small and fast
    # non-trivial BN statistics, so eval-mode BN is not the identity
    for m in backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return PatchedModel(backbone.eval())


def _data(n: int = 48, classes: int = 4) -> TaskData:
    g = torch.Generator().manual_seed(1)

    def split(k: int) -> ImageSet:
        return ImageSet(torch.randint(0, 256, (k, 3, 32, 32), generator=g, dtype=torch.uint8),
                        torch.arange(k) % classes)

    return TaskData("toy", split(n), split(16), split(16), [str(c) for c in range(classes)])


def _train(cache: str, dtype: str = "float32", stages=1) -> tuple[PatchedModel, list[dict]]:
    model = _model()
    torch.manual_seed(5)
    model.add_patch("t", 4, stages=stages)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-2, augment=False, progress=False,
                      cache_features=cache, cache_dtype=dtype)
    result = fit_patch(model, "t", _data(), cfg)
    return model, result.history


@pytest.mark.parametrize("stages", [1, 2, 0])
def test_cache_on_off_agree(stages):
    on, h_on = _train("on", stages=stages)
    off, h_off = _train("off", stages=stages)
    for (k, a), b in zip(on.get_patch("t").state_dict().items(),
                         off.get_patch("t").state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-4), k
    for a, b in zip(h_on, h_off, strict=True):
        assert a["val_top1"] == b["val_top1"]
        assert a["train_top1"] == b["train_top1"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_auto_cache_follows_augment():
    assert use_cache("auto", augment=False) and not use_cache("auto", augment=True)
    assert not use_cache("off", augment=False) and use_cache("on", augment=False)
    with pytest.raises(ValueError, match="augmentation"):
        use_cache("on", augment=True)


def test_fp16_cache_trains_close():
    half, _ = _train("on", "float16")
    full, _ = _train("on", "float32")
    w_half = half.get_patch("t").head.weight
    w_full = full.get_patch("t").head.weight
    assert torch.allclose(w_half, w_full, atol=5e-2)


def test_memmap_cache_equals_ram_cache():
    model, data = _model(), _data()
    pre = model.preprocess
    ram, unpack = cache_features(model, 2, data.train, pre, batch_size=10)
    disk, _ = cache_features(model, 2, data.train, pre, batch_size=10, max_ram_bytes=0)
    assert torch.equal(ram.images, disk.images) and torch.equal(ram.labels, disk.labels)
    h0, r1 = unpack.model_input(ram.images[:3])
    with torch.no_grad():
        ref = model.stage_input(pre.normalize(data.train.images[:3]), 2)
        assert torch.allclose(h0, ref, atol=1e-6)
        assert torch.allclose(r1, model.first_residual(ref, 2), atol=1e-6)


def test_forward_from_trunk_equals_forward():
    model = _model().eval()
    model.add_patch("a", 3, stages=2)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        for s in (0, 1):
            assert torch.equal(model.forward_from(model.stage_input(x, s), s, patch="a"),
                               model(x, patch="a"))
        h = model.stage_input(x, 1)
        assert torch.equal(model.forward_from(h, 1, patch="a",
                                              first_residual=model.first_residual(h, 1)),
                           model(x, patch="a"))
        with pytest.raises(ValueError, match="skip patched stage"):
            model.forward_from(model.stage_input(x, 2), 2, patch="a")


def test_routed_rows_equal_per_patch_runs():
    model = _model().eval()
    torch.manual_seed(3)
    model.add_patch("a", 3, stages=1)
    model.add_patch("b", 5, stages=2)
    model.add_patch("c", 2, stages=0)
    names = ["a", BASE, "b", "c", "a", "b", BASE, "c", "b"]
    x = torch.randn(len(names), 3, 32, 32)
    with torch.no_grad():
        mixed = model(x, patches=names)
        for r, n in enumerate(names):
            one = model(x[r:r + 1], patch=n)
            width = one.shape[1]
            assert torch.allclose(mixed[r, :width], one[0], atol=1e-5), (r, n)
            assert torch.isinf(mixed[r, width:]).all()


def test_base_only_batch_bit_identical():
    model = _model().eval()
    model.add_patch("a", 3, stages=1)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref = model.backbone(x)
        assert torch.equal(model(x), ref)
        assert torch.equal(model(x, patches=[BASE] * 8), ref)
        model.set_patch("a")
        with model.disable_patch():
            assert torch.equal(model(x), ref)


@pytest.mark.parametrize("flags, cached", [
    (["--cache-features", "on", "--cache-dtype", "float16"], "float16"),
    (["--cache-features", "off"], None),
])
def test_cli_cache_flags_reach_training(tmp_path, monkeypatch, capsys, flags, cached):
    """``train --cache-features/--cache-dtype`` decide what the training loop runs on: the
    frozen-trunk features cached in that dtype, or (off) no cache at all."""
    import deltapatch.cache as cache
    from deltapatch.cli import main

    args = build_parser().parse_args(["train", "--backbone", "cifar_resnet20", "--data",
                                      "digits", "--out", "x", *flags])
    assert args.cache_features == flags[1]
    calls = []
    real = cache.cached_training

    def recording(model, name, data, pre, dtype):
        out = real(model, name, data, pre, dtype)
        calls.append((dtype, out[0].train.images.dtype))
        return out
    monkeypatch.setattr(cache, "cached_training", recording)
    assert main(["train", "--backbone", "cifar_resnet20", "--data", "digits", "--image-size",
                 "16", "--max-train", "80", "--max-test", "10", "--epochs", "1", "--no-augment",
                 "--no-progress", "--out", str(tmp_path / "p"), *flags]) == 0
    capsys.readouterr()
    if cached is None:
        assert calls == []
    else:
        assert calls == [(cached, getattr(torch, cached))]


def test_routed_mixed_batch_trains_every_patch():
    """Autograd flows through the in-place row scatter to each patch on its own rows."""
    model = _model().train()
    model.add_patch("a", 3, stages=1)
    model.add_patch("b", 3, stages=2)
    names = ["a", "b", BASE, "a"]
    out = model(torch.randn(4, 3, 32, 32), patches=names)
    out[[0, 1, 3]].logsumexp(1).sum().backward()
    for n in ("a", "b"):
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for p in model.get_patch(n).head.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())
