"""Backbones by name: how to build each (random init), its preprocessing, and its named weights;
and ``load_backbone``, which also takes a user's model factory (``file.py:build``)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..devices import resolve_device
from ..errors import BackboneError
from ..preprocess import Preprocess
from ..registry import Registry
from ..weights import load_state_dict_file
from .cifar import CIFAR10_CLASSES
from .factory import build_from_factory, is_factory_ref
from .hub import imagenet_download


@dataclass(frozen=True)
class BackboneEntry:
    """``build()`` gives a randomly initialised model; ``named_weights[name]()`` a pretrained one."""

    build: Callable[[], nn.Module]
    preprocess: Preprocess
    named_weights: Mapping[str, Callable[[], nn.Module]] = field(default_factory=dict)
    default_init: str | None = None
    """How its patches start when ``add_patch`` gets no ``init`` (measured per backbone,
    docs/INIT.md); ``None`` takes the library's default."""


BACKBONES: Registry[str, BackboneEntry] = Registry("backbone")

WEIGHT_CLASSES: Registry[str, Callable[[], list[str]]] = Registry("weight set's class names")
"""Class names, in head order, of the data a named weight set was trained on (``"imagenet"``,
``"cifar10"``): a backbone loaded with that set labels its base task with them."""


def register_weight_classes(weights: str, names: Callable[[], list[str]],
                            override: bool = False) -> None:
    """Name the base classes of every backbone loaded with named set ``weights``; an existing
    name raises unless ``override=True``."""
    WEIGHT_CLASSES.register(weights, names, override=override)


def register_backbone(name: str, entry: BackboneEntry, override: bool = False) -> None:
    """Make ``load_backbone(name)`` build ``entry``; an existing name raises unless
    ``override=True``."""
    BACKBONES.register(name, entry, override=override)


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
            named_weights={"imagenet": imagenet_download(lambda fn=fn: fn(weights="DEFAULT"),
                                                         "torchvision", name)},
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
            named_weights={"imagenet": imagenet_download(
                lambda name=name: timm.create_model(name, pretrained=True), "timm", name)},
        ))


def _register_cifar() -> None:
    from ..paths import shared_data_file
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
    from . import efficientnet_lite as lite

    lite.register_blocks()
    register_backbone("efficientnet_lite0", BackboneEntry(
        build=lite.build, preprocess=lite.LITE_PREPROCESS, named_weights={"imagenet": lite.imagenet},
        # on its ImageNet base, init=random scored below init=base in every Δ cell (far below
        # for Δ(5); 3 seeds, docs/INIT.md)
        default_init="base"))


register_weight_classes("imagenet", lambda: imagenet_classes())
register_weight_classes("cifar10", lambda: list(CIFAR10_CLASSES))
_register_torchvision()
_register_timm()
_register_cifar()
_register_efficientnet_lite()


def family_init(name: str) -> str | None:
    """How patches of backbone ``name`` start when no ``init`` is given: its entry's measured
    ``default_init`` (docs/INIT.md); ``None`` (the library's default) for a backbone without
    one, a model factory or an unregistered name. By name, so that run settings and suite
    fingerprints resolve it exactly as ``add_patch`` does, without building anything."""
    return BACKBONES[name].default_init if name in BACKBONES else None


def load_backbone(name: str, weights: str | Path | None = None,
                  device: str | torch.device | None = None) -> nn.Module:
    """Build backbone ``name`` in eval mode.

    Args:
        name: a registered name (``deltapatch.list_backbones()``), e.g. ``resnet18``,
            ``timm/convnext_tiny``, ``cifar_resnet56``; or a model factory
            ``path/to/file.py:function`` / ``package.module:function`` (see
            :mod:`deltapatch.backbones.factory`). A factory file is executed: pass only files
            you trust.
        weights: ``None`` for random init (or the factory's own); a file (``.safetensors``, or
            a torch file read with ``weights_only=True``); or a named set such as
            ``"imagenet"`` or ``"cifar10"``. Named sets that need a download fail at once,
            naming ``--weights PATH``, when the machine is offline.
        device: where to put it (``"auto"``, ``"cuda:1"``, a ``torch.device``;
            :func:`deltapatch.devices.resolve_device`); ``None`` leaves it on the CPU, where
            its weights were read. Checked before the model is built.
    """
    target = resolve_device(device) if device is not None else None
    if name in BACKBONES:
        entry = BACKBONES[name]
        named, preprocess = entry.named_weights, entry.preprocess
        if weights is not None and str(weights) in named:
            model = named[str(weights)]()
        else:
            model = _with_weights_file(entry.build(), weights, name, named)
    elif is_factory_ref(name):
        model = _with_weights_file(build_from_factory(name), weights, name, {})
        preprocess = getattr(model, "deltapatch_preprocess", Preprocess(224))
    else:
        raise BackboneError(f"unknown backbone '{name}'. Known: {', '.join(BACKBONES.names())}; "
                            "or a model factory PATH.py:FUNCTION (docs/BRING_YOUR_OWN.md).")
    model.eval()
    if weights is not None and str(weights) in WEIGHT_CLASSES:  # a named set's own labels
        model.deltapatch_class_names = WEIGHT_CLASSES[str(weights)]()
    model.deltapatch_name = name
    model.deltapatch_preprocess = preprocess
    return model if target is None else model.to(target)


def _with_weights_file(model: nn.Module, weights: str | Path | None, name: str,
                       named: Mapping[str, object]) -> nn.Module:
    """``model`` with the state dict in file ``weights`` loaded (``None``: as it is)."""
    if weights is None:
        return model
    if not Path(weights).is_file():
        sets = ", ".join(named) or "none"
        raise BackboneError(f"weights '{weights}' is neither a file nor a named set for '{name}' "
                            f"(named sets: {sets}).")
    state = load_state_dict_file(Path(weights))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise BackboneError(f"{weights} does not fit backbone '{name}': "
                            f"{str(err).splitlines()[0]}") from None
    return model


def list_backbones() -> list[str]:
    return BACKBONES.names()


def default_preprocess(model: nn.Module) -> Preprocess:
    """The preprocessing ``load_backbone`` recorded, else ImageNet's at 224 px."""
    return getattr(model, "deltapatch_preprocess", Preprocess(224))


def backbone_name(model: nn.Module) -> str:
    return getattr(model, "deltapatch_name", type(model).__qualname__)


def base_class_names(model: nn.Module, num_classes: int) -> list[str] | None:
    """The base task's class names: those recorded for the model's weights
    (``model.deltapatch_class_names``, set by ``load_backbone`` for a named set or by a model
    factory), else ImageNet-1k's for a 1000-way head (the only 1000-class weights these
    backbones have), else ``None``; names of another length than the head are not the head's."""
    names = getattr(model, "deltapatch_class_names", None)
    if names is not None and len(names) == num_classes:
        return [str(n) for n in names]
    return imagenet_classes() if num_classes == 1000 else None


def imagenet_classes() -> list[str]:
    """ImageNet-1k class names in index order; torchvision ships them (no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.DEFAULT.meta["categories"])
