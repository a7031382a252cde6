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
    the images' dtype (one copy per dtype: uint8 files, float32 already-normalized tensors)."""
    if device.type == "cpu":
        return [torch.stack(list(images)) for images in groups]
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, images in enumerate(groups):
        by_dtype.setdefault(images[0].dtype, []).append(i)
    out: list[Tensor] = [None] * len(groups)
    for members in by_dtype.values():
        flat = _host_buffer([x for i in members for x in groups[i]], device)
        on_device, start = to_device(flat, device), 0
        for i in members:
            n = len(groups[i]) * groups[i][0].numel()
            out[i] = on_device[start:start + n].view(len(groups[i]), *groups[i][0].shape)
            start += n
    return out


def _host_buffer(images: list[Tensor], device: torch.device) -> Tensor:
    """The images back to back in one flat host tensor, allocated pinned when the copy goes to
    a CUDA device (so :func:`to_device` copies it straight, with no second pinned copy)."""
    total = sum(x.numel() for x in images)
    flat = torch.empty(total, dtype=images[0].dtype, pin_memory=device.type == "cuda")
    return torch.cat([x.reshape(-1) for x in images], out=flat)
