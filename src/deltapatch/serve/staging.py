"""A batch's images onto the model's device in one copy.

The requests' images are decoded and resized on the host, one uint8 tensor each (a quarter of
float32's bytes cross the bus); they are normalized on the device. A GPU is fed best
by one large copy from pinned (page-locked) memory that does not block the host, not by one
small copy per request or per group, so every image of a batch is written once into one flat
pinned buffer, the buffer goes to the device in a single ``non_blocking`` copy
(:func:`deltapatch.devices.to_device`), and each group of the batch is a view of it. On the CPU
there is nothing to copy: each group is one ``torch.stack`` of its images, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..devices import to_device


def stage(groups: Sequence[Sequence[Tensor]], device: torch.device) -> list[Tensor]:
    """One ``(n, *image shape)`` tensor per group of same-shaped host images, on ``device``, in
    the images' dtype."""
    if device.type == "cpu":
        return [torch.stack(list(images)) for images in groups]
    flat = _host_buffer([x for images in groups for x in images], device)
    on_device = to_device(flat, device)
    out, start = [], 0
    for images in groups:
        n = len(images) * images[0].numel()
        out.append(on_device[start:start + n].view(len(images), *images[0].shape))
        start += n
    return out


def _host_buffer(images: list[Tensor], device: torch.device) -> Tensor:
    """The images back to back in one flat host tensor, allocated pinned when the copy goes to
    a CUDA device (so :func:`to_device` copies it straight, with no second pinned copy)."""
    total = sum(x.numel() for x in images)
    flat = torch.empty(total, dtype=images[0].dtype, pin_memory=device.type == "cuda")
    return torch.cat([x.reshape(-1) for x in images], out=flat)
