"""How a batch reaches a model and is scored: the one input path (host batch → device, augmented
and normalized there as a whole) and right answers counted on the device, read once.

Training, evaluation, prediction, the feature cache, torchrun shards, dense tasks and the demo
all prepare batches here, so a batch is prepared the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from . import devices
from .data.augment import Crops, apply_crops
from .data.sets import ImageSet
from .preprocess import ModelInput

Forward = Callable[[Tensor], Tensor]

CPU = torch.device("cpu")


def model_inputs(x: Tensor, preprocess: ModelInput, device: torch.device = CPU,
                 crops: Crops | None = None):
    """The one input path from a host batch to a model: to ``device`` (pinned, non-blocking
    from the host to a GPU: uint8, a quarter of float32's bytes), then augmented and normalized
    there for the whole batch. Training, evaluation, prediction and the feature cache all use
    it, so a batch is prepared the same way everywhere."""
    x = devices.to_device(x, device)
    return preprocess.model_input(x if crops is None else apply_crops(x, crops))


def correct_count(forward: Forward, data: ImageSet, preprocess: ModelInput, batch_size: int,
                  device: torch.device = CPU) -> Tensor:
    """How many of ``data`` ``forward`` classifies right, summed on ``device`` (one read at the
    end instead of a host sync per batch)."""
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for x, y in data.batches(batch_size):
        logits = forward(model_inputs(x, preprocess, device))
        correct += (logits.argmax(1) == devices.to_device(y, device)).sum()
    return correct


@torch.inference_mode()
def evaluate(forward: Forward, data: ImageSet, preprocess: ModelInput,
             batch_size: int = 256, device: torch.device = CPU) -> float:
    """Top-1 accuracy (a fraction) of ``forward`` on ``data``, each batch moved to ``device``
    (where ``forward``'s model is); the caller sets eval mode."""
    return int(correct_count(forward, data, preprocess, batch_size, device)) / max(1, len(data))


@torch.inference_mode()
def predict(forward: Forward, data: ImageSet, preprocess: ModelInput,
            batch_size: int = 256, device: torch.device = CPU) -> Tensor:
    """Predicted class per image (on the host)."""
    return torch.cat([forward(model_inputs(x, preprocess, device)).argmax(1)
                      for x, _ in data.batches(batch_size)]).cpu()


def device_of(module: nn.Module) -> torch.device:
    """Where ``module`` runs: where its batches must go."""
    return devices.placement(module)[0]


def sum_dtype(device: torch.device) -> torch.dtype:
    """The dtype losses are summed in on ``device``: float64, as the host's Python floats
    summed them (same rounding), except on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64
