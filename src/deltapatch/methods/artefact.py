"""One task folder for every method: written by :func:`save_task`, read by :func:`load_task`.

A Δ-patch folder and a fine-tuned network's folder differ only in what ``config.json`` says
(``method``, ``options``) and which tensors ``patch.safetensors`` holds. :func:`load_task` reads
and checks the folder (bounds, content hash, finite values, backbone fingerprint) before the
method named in its config rebuilds anything, so a bad folder never touches the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from ..batches import device_of
from ..errors import PatchError
from ..metrics import folder_bytes
from ..model import PatchedModel
from ..patch import PatchConfig, check_head, read_patch, write_patch
from .base import METHODS, Method, MethodContext, MethodOutcome


@dataclass
class LoadedTask:
    config: PatchConfig
    outcome: MethodOutcome


def save_task(ctx: MethodContext, method: str, tensors: dict[str, Tensor], *,
              trainable_params: int, options: dict | None = None) -> int:
    """Write a baseline's tensors and facts as ``ctx.out``; returns the folder's bytes (what a
    user stores for this task, counted like a Δ-patch folder)."""
    model = ctx.model
    config = PatchConfig(name=ctx.name, num_classes=ctx.data.num_classes, stages=[],
                         backbone=model.backbone_name, fingerprint=model.fingerprint,
                         preprocess=model.preprocess, method=method,
                         class_names=list(ctx.data.class_names),
                         trainable_params=int(trainable_params), options=dict(options or {}))
    write_patch(ctx.out, config, {k: v.detach().contiguous().cpu().clone()
                                  for k, v in tensors.items()})
    return folder_bytes(ctx.out)


def method_of(config: PatchConfig, folder: str | Path) -> Method:
    """The registered method that wrote ``folder``; one this deltapatch does not know is
    refused (a folder made by a plug-in, or tampered with), whoever reads it."""
    method = METHODS.find(config.method)
    if method is None:
        raise PatchError(f"{folder} was made by method '{config.method}', which this deltapatch "
                         f"does not know ({', '.join(METHODS.names())})")
    return method


def load_task(model: PatchedModel, folder: str | Path) -> LoadedTask:
    """The task in ``folder`` on ``model``, whatever method made it."""
    config, tensors = read_patch(folder)
    model.check_fits(config)
    method = method_of(config, folder)
    try:
        outcome = method.load(model, config, tensors)
    except (AttributeError, KeyError, RuntimeError, TypeError, ValueError) as err:
        raise PatchError(f"{folder}: its tensors do not fit this backbone ({err})") from None
    outcome.trainable_params = int(config.trainable_params or 0)
    outcome.patch_bytes = folder_bytes(Path(folder))
    return LoadedTask(config, outcome)


def prefixed(prefix: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`prefixed`."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def new_head(model: PatchedModel, config: PatchConfig, tensors: dict[str, Tensor]) -> nn.Linear:
    """The task's stored head, checked against the config before it is allocated."""
    check_head(config, tensors, model.feature_width)
    head = nn.Linear(model.feature_width, config.num_classes)
    head.load_state_dict(unprefixed("head", tensors))
    return beside(model, head).requires_grad_(False).eval()


def beside(model: PatchedModel, module: nn.Module) -> nn.Module:
    """``module`` (built on the host, e.g. a new head) moved to where ``model`` runs: every
    module a method makes must take the backbone's device."""
    return module.to(device_of(model))
