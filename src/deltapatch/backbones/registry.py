"""Backbones by name: how to build each (random init), its preprocessing, and its named weights."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import BackboneError
from ..preprocess import Preprocess
from ..weights import load_state_dict_file


@dataclass(frozen=True)
class BackboneEntry:
    """``build()`` gives a randomly initialised model; ``named_weights[name]()`` a pretrained one."""

    build: Callable[[], nn.Module]
    preprocess: Preprocess
    named_weights: Mapping[str, Callable[[], nn.Module]] = field(default_factory=dict)


BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(name: str, entry: BackboneEntry) -> None:
    BACKBONES[name] = entry


def _imagenet_download(builder: Callable[..., nn.Module], **kw) -> Callable[[], nn.Module]:
    def load() -> nn.Module:
        try:
            return builder(**kw)
        except Exception as err:  # offline: URLError, socket errors, hub errors
            raise BackboneError(
                f"could not get ImageNet weights ({type(err).__name__}: {err}). This machine "
                "seems offline: download the weights elsewhere and pass them as a file with "
                "--weights PATH (weights='path/to/file.safetensors' in Python)."
            ) from None

    return load


def _register_torchvision() -> None:
    from torchvision import models

    from . import torchvision_models  # noqa: F401  (registers specs and blocks)

    names = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
             "wide_resnet50_2", "convnext_tiny", "convnext_small", "convnext_base",
             "convnext_large"]
    for name in names:
        fn = getattr(models, name)
        register_backbone(name, BackboneEntry(
            build=lambda fn=fn: fn(weights=None),
            preprocess=Preprocess(224),
            named_weights={"imagenet": _imagenet_download(fn, weights="DEFAULT")},
        ))


def _register_timm() -> None:
    if importlib.util.find_spec("timm") is None:
        return
    import timm

    from . import timm_models  # noqa: F401

    names = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
             "wide_resnet50_2", "convnext_tiny", "convnext_small", "convnext_base",
             "convnext_large"]
    for name in names:
        register_backbone(f"timm/{name}", BackboneEntry(
            build=lambda name=name: timm.create_model(name, pretrained=False),
            preprocess=Preprocess(224),
            named_weights={"imagenet": _imagenet_download(timm.create_model, model_name=name,
                                                          pretrained=True)},
        ))


def _register_cifar() -> None:
    from ..data.paths import shared_data_file
    from .cifar import CifarResNet

    for depth in (20, 32, 44, 56, 110):
        def build(depth: int = depth) -> nn.Module:
            return CifarResNet(depth)

        def cifar10(depth: int = depth) -> nn.Module:
            model = CifarResNet(depth)
            path = shared_data_file(f"weights/cifar10_resnet{depth}.safetensors")
            model.load_state_dict(load_state_dict_file(path))
            return model

        named = {"cifar10": cifar10} if depth != 110 else {}
        register_backbone(f"cifar_resnet{depth}", BackboneEntry(build, Preprocess(32), named))


def _register_efficientnet_lite() -> None:
    from .efficientnet_lite import register

    register()


_register_torchvision()
_register_timm()
_register_cifar()
_register_efficientnet_lite()


def load_backbone(name: str, weights: str | Path | None = None) -> nn.Module:
    """Build backbone ``name`` in eval mode.

    Args:
        name: a registered name (``deltapatch.list_backbones()``), e.g. ``resnet18``,
            ``timm/convnext_tiny``, ``cifar_resnet56``.
        weights: ``None`` for random init; a file (``.safetensors``, or a torch file read with
            ``weights_only=True``); or a named set such as ``"imagenet"`` or ``"cifar10"``.
    """
    if name not in BACKBONES:
        raise BackboneError(f"unknown backbone '{name}'. Known: {', '.join(sorted(BACKBONES))}. "
                            "For another CNN, wrap it with PatchedModel(model, spec=StageSpec(...)).")
    entry = BACKBONES[name]
    if weights is None:
        model = entry.build()
    elif str(weights) in entry.named_weights:
        model = entry.named_weights[str(weights)]()
    elif Path(weights).exists():
        model = entry.build()
        state = load_state_dict_file(Path(weights))
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise BackboneError(f"{weights} does not fit backbone '{name}': {err}") from None
    else:
        named = ", ".join(entry.named_weights) or "none"
        raise BackboneError(f"weights '{weights}' is neither a file nor a named set for '{name}' "
                            f"(named sets: {named}).")
    model.eval()
    model.deltapatch_name = name
    model.deltapatch_preprocess = entry.preprocess
    return model


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


def default_preprocess(model: nn.Module) -> Preprocess:
    """The preprocessing ``load_backbone`` recorded, else ImageNet's at 224 px."""
    return getattr(model, "deltapatch_preprocess", Preprocess(224))


def backbone_name(model: nn.Module) -> str:
    return getattr(model, "deltapatch_name", type(model).__qualname__)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers, as a weights file would hold them."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()
               if isinstance(t, torch.Tensor))
