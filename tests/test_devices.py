"""Placement: one rule for the device, and a model that runs wherever its backbone is.

CI has no GPU, so CUDA is played by ``FakeTensorMode`` (fake ``cuda`` tensors: any op that meets
a tensor the library made on the CPU raises) and by the meta device (real modules, no data).
"""

from __future__ import annotations

import pytest
import torch
from helpers import fake_on, random_backbone
from torch._subclasses.fake_tensor import FakeTensorMode

import deltapatch as dp
from deltapatch import devices
from deltapatch.devices import DeviceError, resolve_device


def _model() -> dp.PatchedModel:
    model = dp.PatchedModel(random_backbone())
    model.add_patch("delta", num_classes=5, stages=1)
    model.add_patch("two", num_classes=7, stages=2, init="base")
    model.add_patch("head", num_classes=3, stages=0)
    model.add_patch("rnd", num_classes=4, stages=1, gate="random")
    return model.eval()


# ------------------------------------------------------------------ the rule
def test_auto_is_the_cpu_here_and_cpu_is_always_there():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:1", "mps", "tpu", "gpu", "cuda:x", ""])
def test_a_device_that_is_not_here_is_one_clear_error(spec):
    if spec == "":
        assert resolve_device(spec) == torch.device("cpu")  # empty means auto
        return
    with pytest.raises(DeviceError, match="device") as err:
        resolve_device(spec)
    assert "\n" not in str(err.value)


def test_auto_prefers_cuda_then_checks_the_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("CUDA") == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match="2 CUDA device"):
        resolve_device("cuda:2")


def test_load_backbone_checks_the_device_before_building():
    with pytest.raises(DeviceError):
        dp.load_backbone("cifar_resnet20", device="cuda:7")
    assert dp.load_backbone("cifar_resnet20", device="cpu").conv1.weight.device.type == "cpu"


def test_precision_contexts():
    assert devices.grad_scaler(torch.device("cpu"), "fp16").is_enabled()
    assert not devices.grad_scaler(torch.device("cpu"), "bf16").is_enabled()
    with devices.autocast(torch.device("cpu"), "bf16"):
        assert torch.nn.Linear(4, 2)(torch.ones(1, 4)).dtype == torch.bfloat16
    with devices.autocast(torch.device("cpu"), "fp32"):
        assert torch.nn.Linear(4, 2)(torch.ones(1, 4)).dtype == torch.float32
    with pytest.raises(DeviceError, match="choose from"):
        devices.autocast(torch.device("cpu"), "fp8")


# ------------------------------------------------------------------ fake CUDA
@pytest.fixture
def fake_cuda():
    """(the model on a fake cuda device, a fake cuda batch, the mode to run under)."""
    model = _model()
    mode = FakeTensorMode()
    with mode:
        fake_on(model, mode, "cuda")
        yield model, torch.empty(6, 3, 32, 32, device="cuda"), mode


def _cuda(t: torch.Tensor) -> bool:
    return t.device.type == "cuda"


def test_every_path_runs_on_cuda_with_nothing_made_on_the_cpu(fake_cuda):
    model, x, _ = fake_cuda
    assert model.device.type == "cuda"
    assert _cuda(model(x))                                             # base
    assert model(x, patch="delta").shape == (6, 5) and _cuda(model(x, patch="delta"))
    assert _cuda(model(x, patch="rnd"))                                # random Λ made per call
    mixed = model(x, patches=["delta", "__base__", "head", "two", "rnd", "delta"])
    assert mixed.shape == (6, 10) and _cuda(mixed)                     # Δ, head-only, base rows
    out = model.fanout(x, ["delta", "two", "head", "__base__"])
    assert all(_cuda(t) for t in out.values())
    assert all(_cuda(t) for t in model.lambdas(x, patch="two").values())
    assert all(_cuda(t) for t in model.pyramid(x, patch="two").values())
    assert _cuda(model.features(x, patch="delta"))
    start = model.first_patched_stage(["two"])
    assert _cuda(model.forward_from(model.stage_input(x, start), start, patch="two"))
    routed = ["two", "__base__", "head", "two", "head", "two"]  # routed rows from a stage
    assert _cuda(model.forward_from(model.stage_input(x, start), start, patches=routed))


def test_the_checks_see_a_cpu_tensor_in_a_cuda_path(fake_cuda):
    """The fake tensors do catch what this file is about: a CPU tensor in a cuda forward."""
    _, x, _ = fake_cuda
    with pytest.raises(Exception, match="(?i)device"):
        torch.zeros(6, 3, 32, 32) + x


# ------------------------------------------------------------------ meta / dtype
def test_a_patch_added_or_loaded_after_placement_follows_the_backbone(tmp_path):
    model = _model()
    model.save_patch("delta", tmp_path / "delta")
    model.to(torch.float64)
    new = model.add_patch("late", num_classes=2, stages=1)
    assert {p.dtype for p in new.parameters()} == {torch.float64}
    model.remove_patch("delta")
    model.load_patch(tmp_path / "delta")  # fingerprint of the weights as loaded: still fits
    assert {p.dtype for p in model.get_patch("delta").parameters()} == {torch.float64}
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    assert model(x, patches=["late", "delta", "__base__"]).dtype == torch.float64

    model.to("meta")
    late = model.add_patch("later", num_classes=2, stages=2)
    assert {p.device.type for p in late.parameters()} == {"meta"}
    x = torch.empty(4, 3, 32, 32, device="meta", dtype=torch.float64)
    out = model(x, patches=["later", "late", "head", "__base__"])
    assert out.device.type == "meta" and out.shape == (4, 10)


def test_a_training_step_on_the_meta_device():
    model = _model().train()
    model.to("meta")
    x = torch.empty(4, 3, 32, 32, device="meta")
    loss = model(x, patch="two").logsumexp(1).mean()
    loss.backward()
    patch = model.get_patch("two")
    assert all(p.grad is not None and p.grad.device.type == "meta"
               for p in patch.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.backbone.parameters())


def test_base_answers_stay_bit_identical_after_a_round_trip_through_a_dtype():
    """``to`` moves patches and backbone alike; back in float32 the base is the backbone's."""
    model = _model()
    x = torch.randn(4, 3, 32, 32)
    before = model.backbone(x)
    assert not torch.equal(model(x, patch="delta")[:, :5], before[:, :5])
    model.to(torch.float64).to(torch.float32)
    assert torch.equal(model(x), before)
    assert torch.equal(model(x, patches=["__base__", "delta", "__base__", "head"])[[0, 2]],
                       before[[0, 2]])


def test_the_base_task_keeps_its_own_dtype_under_autocast():
    model = _model()
    x = torch.randn(4, 3, 32, 32)
    with devices.autocast(torch.device("cpu"), "bf16"):
        patched, base = model(x, patch="delta"), model(x)
    assert patched.dtype == torch.bfloat16
    assert base.dtype == torch.float32 and torch.equal(base, model.backbone(x))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("gate, init", [("delta", "random"), ("delta", "base"),
                                        ("learned", "random"), ("learned", "base"),
                                        ("existing", "base")])
def test_a_patch_row_answers_alike_alone_and_in_a_mixed_batch_under_autocast(precision, gate,
                                                                             init):
    """Under autocast Λ and the gated norm follow the activations' dtype on both paths, so a
    row's answer does not depend on the tasks beside it (the mixed path cast Λ and the one-patch
    path did not; a gated norm's float32 mix made the mixed path fail)."""
    model = dp.PatchedModel(random_backbone()).eval()
    patch = model.add_patch("p", 5, stages=2, gate=gate, init=init)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in patch.named_parameters():  # off the start: Λ and the mix not 0 or 1
            if name.endswith(("gate.weight", "fc.bias", "norm.mix")):
                t.copy_(0.2 + 0.6 * torch.rand(t.shape, generator=g))
    x = torch.randn(4, 3, 32, 32, generator=g)
    with torch.no_grad(), devices.autocast(torch.device("cpu"), precision):
        alone = model(x, patch="p")
        mixed = model(x, patches=["p", "__base__", "p", "p"])
    assert alone.dtype == mixed.dtype == devices.PRECISIONS[precision]
    assert torch.equal(mixed[[0, 2, 3], :5], alone[[0, 2, 3]])
