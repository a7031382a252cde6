"""The real paths on a CUDA GPU (skipped with a reason where there is none; run by
benchmarks/gpu_check.sh): the base task is ``backbone(x)`` bit for bit on the GPU, and patches,
mixed batches, fan-out, Λ and a training step run there and agree with the CPU to float32
rounding (TF32 off, so the GPU computes in float32 as the CPU does)."""

from __future__ import annotations

import copy

import pytest
import torch

import deltapatch as dp

pytestmark = pytest.mark.cuda

NAMES = ["delta", "head", dp.BASE]


@pytest.fixture
def device(monkeypatch) -> torch.device:
    """The first GPU, with TF32 off for the test (restored after)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    return torch.device("cuda", 0)


def _models(device: torch.device) -> tuple[dp.PatchedModel, dp.PatchedModel]:
    """The same patched ResNet-18 on the CPU and on ``device``: a Δ(2) patch and a head-only
    one, their tensors moved off their init so that they really act."""
    torch.manual_seed(0)
    model = dp.PatchedModel(dp.load_backbone("resnet18")).eval()
    model.add_patch("delta", 5, stages=2)
    model.add_patch("head", 3, stages=0)
    with torch.no_grad():
        for name in ("delta", "head"):
            for t in model.get_patch(name).state_dict().values():
                if t.is_floating_point():
                    t.add_(torch.rand_like(t) * 0.1)
    return copy.deepcopy(model), model.to(device)


def _x(n: int = 6, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return torch.allclose(got.cpu(), want, rtol=1e-4, atol=1e-4)


@torch.inference_mode()
def test_base_is_the_backbone_bit_for_bit_on_the_gpu(device):
    _, model = _models(device)
    for batch in (1, 6):
        x = _x(batch).to(device)
        base = model(x)
        assert base.device == device and torch.equal(base, model.backbone(x))
        with model.disable_patch():
            assert torch.equal(model(x), model.backbone(x))


@torch.inference_mode()
def test_one_patch_runs_on_the_gpu_as_on_the_cpu(device):
    cpu, model = _models(device)
    x = _x()
    for name in ("delta", "head"):
        got = model(x.to(device), patch=name)
        assert got.device == device and _close(got, cpu(x, patch=name)), name


@torch.inference_mode()
def test_mixed_batch_of_delta_head_only_and_base_rows(device):
    cpu, model = _models(device)
    x = _x()
    rows = [NAMES[i % 3] for i in range(len(x))]
    got = model(x.to(device), patches=rows)
    assert got.device == device
    for i, name in enumerate(rows):
        want = cpu(x[i:i + 1], patch=None if name == dp.BASE else name)[0]
        width = want.shape[-1]
        assert _close(got[i, :width], want), (i, name)


@torch.inference_mode()
def test_fanout_on_the_gpu_keeps_the_base_exact(device):
    cpu, model = _models(device)
    x = _x()
    xd = x.to(device)
    out = model.fanout(xd, NAMES)
    assert torch.equal(out[dp.BASE], model.backbone(xd))
    for name in ("delta", "head"):
        assert out[name].device == device and _close(out[name], cpu(x, patch=name)), name


def test_patches_added_or_loaded_after_placement_land_on_the_gpu(device, tmp_path):
    _, model = _models(device)
    model.add_patch("late", 4, stages=1)
    model.save_patch("late", tmp_path / "late")
    model.remove_patch("late")
    loaded = model.load_patch(tmp_path / "late")
    for name in ("late", loaded):
        assert {t.device for t in model.get_patch(name).state_dict().values()} == {device}
    with torch.inference_mode():
        assert model(_x().to(device), patch="late").device == device


@torch.inference_mode()
def test_lambdas_on_the_gpu(device):
    cpu, model = _models(device)
    x = _x()
    got, want = model.lambdas(x.to(device), patch="delta"), cpu.lambdas(x, patch="delta")
    assert set(got) == set(want)
    for stage, lam in got.items():
        assert lam.device == device and ((lam >= 0) & (lam <= 1)).all()
        assert _close(lam, want[stage]), stage


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_training_step_on_the_gpu_changes_the_patch_only(device, precision):
    from deltapatch.devices import autocast

    _, model = _models(device)
    before = model.fingerprint
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    params = [p for p in model.get_patch("delta").parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.1)
    model.train()
    x, y = _x(8).to(device), torch.arange(8, device=device) % 5
    with autocast(device, precision):
        loss = torch.nn.functional.cross_entropy(model(x, patch="delta"), y)
    loss.backward()
    opt.step()
    model.eval()
    assert any(not torch.equal(p, s) for p, s in zip(params, start, strict=True))
    assert all(torch.equal(v, backbone[k]) for k, v in model.backbone.state_dict().items())
    assert dp.PatchedModel(model.backbone).fingerprint == before
