"""Standard training augmentation on uint8 batches: random crop after zero padding, and a
horizontal flip where it keeps labels. Driven by an explicit generator so that an epoch's
augmentation depends only on (seed, epoch) — which is what makes resumed runs identical."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop_flip(x: Tensor, generator: torch.Generator, hflip: bool = True,
                     pad_fraction: float = 0.125) -> Tensor:
    """Pad by ``pad_fraction`` of the side (4 px at 32 px), crop back at random offsets, flip
    half the images left-right if ``hflip``."""
    n, _, h, w = x.shape
    pad = max(1, int(round(h * pad_fraction)))
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    flip = (torch.rand(n, generator=generator) < 0.5).tolist() if hflip else [False] * n
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out
