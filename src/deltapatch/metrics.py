"""The numbers every run reports, in one shape (DESIGN.md: accuracies are fractions)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn


def harmonic_mean(*accuracies: float) -> float:
    """Harmonic mean of accuracies: the paper's patching metric (base and patch task, or every
    task of a joint / sequential run); 0 when any of them is 0."""
    if not accuracies or min(accuracies) <= 0:
        return 0.0
    return len(accuracies) / sum(1.0 / a for a in accuracies)


def count_params(module: nn.Module, trainable: bool = False) -> int:
    """Parameters of ``module`` (only those that require grad with ``trainable``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of tensor data, as a weights file holds them (less its header)."""
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def learned_values(tensors: dict[str, torch.Tensor]) -> int:
    """Values in a state dict that are learned, not BatchNorm statistics or counters."""
    return sum(t.numel() for k, t in tensors.items()
               if "running_" not in k and "num_batches" not in k)


def folder_bytes(folder: Path) -> int:
    """Bytes on disk of the files directly in a patch folder (config + tensors)."""
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file()
               and f.name != "metrics.json")


def report(*, patch_top1: float, base_top1: float | None, trainable_params: int,
           patch_bytes: int, **extra) -> dict:
    """One JSON-able metrics object: patch_top1, base_top1, harmonic_mean, sizes, extras."""
    out = {"patch_top1": round(patch_top1, 6),
           "base_top1": None if base_top1 is None else round(base_top1, 6),
           "harmonic_mean": None if base_top1 is None else round(harmonic_mean(patch_top1,
                                                                               base_top1), 6),
           "trainable_params": int(trainable_params), "patch_bytes": int(patch_bytes)}
    out.update(extra)
    return out
