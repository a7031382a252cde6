"""Assertions shared by tests (importable as ``helpers``; tests/ is on the pytest path)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from deltapatch.paths import shared_data_dir

needs_shared = pytest.mark.skipif(
    shared_data_dir() is None,
    reason="../shared/data not found (set DELTAPATCH_DATA to run real-data tests)")

FAMILIES = ["cifar_resnet20", "resnet18", "resnet50", "convnext_tiny"]
"""One backbone of every registered family (optional ones where their package is installed)."""
if importlib.util.find_spec("timm"):
    FAMILIES += ["timm/resnet18"]
if importlib.util.find_spec("efficientnet_lite_pytorch"):
    FAMILIES += ["efficientnet_lite0"]


def random_backbone() -> torch.nn.Module:
    """A CIFAR ResNet-20 with random weights and non-trivial BN statistics (fixed by seed 1), so
    that a BatchNorm that silently switched to batch statistics would change outputs."""
    import deltapatch as dp

    model = dp.load_backbone("cifar_resnet20")
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of every parameter and buffer."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"backbone tensor {k} changed"


def suite_file(tmp_path, text: str):
    """A suite loaded from ``text`` written to a TOML file (suite tests build their own)."""
    from deltapatch.bench.suite import load_suite

    path = tmp_path / "suite.toml"
    path.write_text(text)
    return load_suite(str(path))


def refused(capsys, argv, match: str, code: int = 2) -> str:
    """Run the CLI on ``argv`` and assert it refused: exit ``code``, one line on stderr that
    contains ``match``, no traceback. Returns that line."""
    from deltapatch.cli import main

    assert main([str(a) for a in argv]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert match in err, err
    return err


def fake_on(module: torch.nn.Module, mode, device: str) -> torch.nn.Module:
    """Every parameter and buffer of ``module`` as a fake tensor of ``mode`` on ``device``, in
    place (``FakeTensorMode``: shapes and devices without memory or a GPU). ``module.to`` cannot
    do this: it swaps tensors, which fake ones refuse. Call inside ``with mode:``. Any tensor the
    code under test then makes on another device meets these in an op and raises."""
    for m in module.modules():
        for key, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[key] = torch.nn.Parameter(mode.from_tensor(p).detach().to(device),
                                                        requires_grad=p.requires_grad)
        for key, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[key] = mode.from_tensor(b).to(device)
    return module
