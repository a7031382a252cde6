"""A dense task ready to run: a detection or segmentation head bound to the feature pyramid of a
Δ-patch (or of the frozen base, for heads alone), or of a fine-tuned copy of the backbone.

The patch route keeps the backbone untouched: its pyramid is :meth:`PatchedModel.pyramid`, so the
base task, and every classification patch beside the dense one, is served exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from ..devices import placement
from ..methods.artefact import prefixed, unprefixed
from ..methods.copies import restored_copy, trainable_copy
from ..metrics import count_params, tensor_bytes
from ..model import PatchedModel
from ..patch import HEADS, PatchConfig, check_tensors, read_patch, write_patch
from .heads import level_sizes, pick_levels

FINETUNE = "finetune"
"""The dense baseline that trains a copy of the whole backbone with the head; its folder holds
``net.*`` (the copy) and ``head.*``. Every other dense folder is a patch (Δ-stages + head)."""


@dataclass
class DenseTask:
    """What training, evaluation and prediction run: the head, where its features come from,
    and what trains."""

    config: PatchConfig
    head: nn.Module
    owned: nn.Module  # every module the task trains (the patch, or the copy and the head)
    net: nn.Module | None = None  # the fine-tuned copy, for FINETUNE

    @property
    def kind(self) -> str:
        return self.config.task


def add_dense_patch(model: PatchedModel, name: str, task: str, num_classes: int,
                    stages: int | list = 0, *, levels: list[int] | None = None,
                    channels: int = 64, size: int = 320, init: str | None = None,
                    class_names: list[str] | None = None, method: str = "delta") -> DenseTask:
    """Add a patch whose head is a ``task`` head (detection, segmentation) reading ``levels``
    of its pyramid (default: the last stage of each of the three coarsest resolutions).
    ``stages=0`` gives heads alone on the frozen backbone."""
    HEADS.get(task)
    if levels is None:
        levels = pick_levels(level_sizes(model.pyramid, size, model.device))
    model.add_patch(name, num_classes, stages, init=init, class_names=class_names,
                    method=method, task=task,
                    options={"levels": list(levels), "channels": channels, "size": size})
    return patched_task(model, name)


def patched_task(model: PatchedModel, name: str) -> DenseTask:
    """The dense patch ``name`` of ``model``, its head reading the patch's own pyramid."""
    patch = model.get_patch(name)
    levels = patch.config.options["levels"]

    def features(x: Tensor) -> list[Tensor]:
        maps = list(model.pyramid(x, name).values())
        return [maps[s] for s in levels]

    patch.head.bind(features)
    return DenseTask(patch.config, patch.head, patch)


def finetuned_task(model: PatchedModel, config: PatchConfig, net: nn.Module | None = None,
                   head: nn.Module | None = None) -> DenseTask:
    """A head on a copy of the backbone that trains with it (the full fine-tuning baseline).
    The copy's BatchNorms keep the base statistics (eval mode): detection batches of a few
    images cannot estimate them, which is why torchvision freezes them too."""
    net = net if net is not None else trainable_copy(model.backbone)
    head = head if head is not None else HEADS.get(config.task)(
        config, model.stage_shapes(), model.feature_width)
    device, dtype = placement(model.backbone)
    head.to(device=device, dtype=dtype)  # beside the copy, as a patch follows its backbone
    levels = config.options["levels"]

    def features(x: Tensor) -> list[Tensor]:
        maps = model.spec.pyramid(net, x)
        return [maps[s] for s in levels]

    head.bind(features)
    owned = nn.ModuleDict({"net": net, "head": head})
    return DenseTask(config, head, owned, net)


def dense_config(model: PatchedModel, name: str, task: str, num_classes: int, *,
                 levels: list[int] | None = None, channels: int = 64, size: int = 320,
                 class_names: list[str] | None = None) -> PatchConfig:
    """The config of a fine-tuned dense task (no Δ-stages)."""
    if levels is None:
        levels = pick_levels(level_sizes(model.pyramid, size, model.device))
    return PatchConfig(name=name, num_classes=num_classes, stages=[],
                       backbone=model.backbone_name, fingerprint=model.fingerprint,
                       preprocess=model.preprocess, method=FINETUNE, task=task,
                       class_names=class_names,
                       options={"levels": list(levels), "channels": channels, "size": size})


def save_dense(model: PatchedModel, task: DenseTask, out: Path) -> Path:
    """Write the task folder (atomic, like every patch)."""
    if task.net is None:
        return model.save_patch(task.config.name, out)
    task.config.trainable_params = count_params(task.owned, trainable=True)
    tensors = {**prefixed("net", task.net.state_dict()), **prefixed("head", task.head.state_dict())}
    return write_patch(out, task.config, {k: v.detach().contiguous().clone()
                                          for k, v in tensors.items()})


def load_dense(model: PatchedModel, folder: str | Path, name: str | None = None) -> DenseTask:
    """A dense task folder on ``model``: every file check (bounds, hash, fingerprint, tensor
    names and shapes) runs before the model changes."""
    config, tensors = read_patch(folder)
    model.check_fits(config)
    if config.method != FINETUNE:
        return patched_task(model, model.attach_patch(config, tensors, name))
    head = HEADS.get(config.task)(config, model.stage_shapes(), model.feature_width)
    check_tensors(head, unprefixed("head", tensors))
    check_tensors(model.backbone, unprefixed("net", tensors))
    head.load_state_dict(unprefixed("head", tensors))
    net = restored_copy(model.backbone, unprefixed("net", tensors))
    return finetuned_task(model, config, net, head)


def head_bytes(task: DenseTask) -> int:
    return tensor_bytes(task.head.state_dict().values())
