"""Training a patch on cached frozen activations instead of on images.

Everything before a patch's first Δ-stage is frozen and runs in eval mode, and so is the residual
branch F_1(h_0) of that stage's first sub-block (the Δ-weights act on skips only). Without data
augmentation they map each image to the same tensors in every epoch, so they are computed once
(:meth:`PatchedModel.stage_input`, :meth:`PatchedModel.first_residual`) and training runs only
:meth:`PatchedModel.forward_from`: the same routed code path as ``model(x, patch=...)``, minus the
part whose result is already known.

:func:`cached_training` is what :func:`deltapatch.train.fit_patch` (``deltapatch train
--cache-features``, the demo, the bench) uses: it caches h_0 and F_1(h_0) where the model runs.
On a GPU the cache lives in the GPU's memory when it takes at most half of what is free there,
else in pinned host memory (copied to the GPU batch by batch, without blocking); on the CPU it is
in RAM, or in an unlinked disk memmap when it would take more than a quarter of the free memory.
It can store float16 or bfloat16 (accuracy and speed: docs/PERFORMANCE.md).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .batches import device_of, model_inputs
from .data.sets import ImageSet, TaskData
from .model import PatchedModel
from .preprocess import Preprocess

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODES = ("auto", "on", "off")
HOST_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16}
"""How a memmap holds each cache dtype (numpy has no bfloat16: its bits, viewed back)."""


class CachedInput:
    """The :class:`~deltapatch.preprocess.ModelInput` of cached rows: they are already
    normalized and through the frozen prefix, so a batch is only unpacked into its parts (each
    row stores the parts flattened side by side, so that one row index fetches all of them) and
    cast back to the dtype the model made them in."""

    def __init__(self, shapes: Sequence[tuple[int, ...]], dtype: torch.dtype = torch.float32
                 ) -> None:
        self.shapes = [tuple(s) for s in shapes]
        self.dtype = dtype

    def model_input(self, rows: Tensor) -> tuple[Tensor, ...]:
        sizes = [math.prod(s) for s in self.shapes]
        return tuple(part.reshape(-1, *shape).to(self.dtype)
                     for part, shape in zip(rows.split(sizes, dim=1), self.shapes, strict=True))


def use_cache(mode: str, augment: bool) -> bool:
    """``auto`` caches exactly when augmentation is off; ``on`` with augmentation is an error
    (augmented images change the frozen features every epoch, so a cache would be wrong)."""
    if mode not in MODES:
        raise ValueError(f"cache mode '{mode}': choose from {', '.join(MODES)}")
    if mode == "on" and augment:
        raise ValueError("cached features need augmentation off (--no-augment): augmented "
                         "images give different frozen features every epoch")
    return mode == "on" or (mode == "auto" and not augment)


def default_ram_limit() -> int:
    """A quarter of the memory available now: the machine is usually shared."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError):
        return 2 << 30


def device_room(device: torch.device) -> int:
    """Bytes a cache may take on an accelerator: half of what is free there now (training
    needs the rest); 0 where that cannot be asked (the cache then stays on the host)."""
    if device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    return free // 2


def _storage(shape: tuple[int, ...], dtype: torch.dtype, max_ram_bytes: int,
             directory: str | Path | None, device: torch.device = torch.device("cpu")) -> Tensor:
    """Where the cache goes: on ``device`` when it fits there, else on the host (pinned when
    batches will be copied to a GPU; a disk memmap past ``max_ram_bytes``)."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if device.type != "cpu" and nbytes <= device_room(device):
        return torch.empty(shape, dtype=dtype, device=device)
    if nbytes <= max_ram_bytes:
        return torch.empty(shape, dtype=dtype, pin_memory=device.type == "cuda")
    fd, name = tempfile.mkstemp(prefix="deltapatch-cache-", suffix=".bin", dir=directory)
    os.close(fd)
    try:
        mm = np.memmap(name, dtype=HOST_DTYPES[dtype], mode="w+", shape=shape)
    finally:
        os.unlink(name)  # the mapping keeps the data; the disk space goes when it is dropped
    return torch.from_numpy(mm).view(dtype)


def frozen_parts(model: PatchedModel, x: Tensor, start: int) -> list[Tensor]:
    """What training a patch that starts at stage ``start`` needs but cannot change: h_0, and
    F_1(h_0) unless the patch is head-only (``start == num_stages``)."""
    h = model.stage_input(x, start)
    return [h] if start >= model.num_stages else [h, model.first_residual(h, start)]


@torch.no_grad()
def cache_features(model: PatchedModel, start: int, images: ImageSet, preprocess: Preprocess,
                   dtype: torch.dtype = torch.float32, batch_size: int = 256,
                   max_ram_bytes: int | None = None, directory: str | Path | None = None
                   ) -> tuple[ImageSet, CachedInput]:
    """:func:`frozen_parts` of every image as one packed row each, and their unpacker.

    ``no_grad`` rather than ``inference_mode``: the features are later saved for backward by
    the Δ-module's first conv, which inference tensors may not be.
    """
    limit = default_ram_limit() if max_ram_bytes is None else max_ram_bytes
    device = device_of(model)
    out: Tensor | None = None
    shapes: list[tuple[int, ...]] = []
    made_in = torch.float32
    for i in range(0, len(images), batch_size):
        x = model_inputs(images.images[i:i + batch_size], preprocess, device)
        parts = frozen_parts(model, x, start)
        row = torch.cat([p.flatten(1) for p in parts], 1)
        if out is None:
            shapes, made_in = [tuple(p.shape[1:]) for p in parts], row.dtype
            out = _storage((len(images), row.shape[1]), dtype, limit, directory, device)
        out[i:i + len(row)] = row.to(dtype)
    assert out is not None
    return ImageSet(out, images.labels.to(out.device)), CachedInput(shapes, made_in)


def cached_training(model: PatchedModel, name: str, data: TaskData, preprocess: Preprocess,
                    dtype: str = "float32", max_ram_bytes: int | None = None
                    ) -> tuple[TaskData, Callable[[tuple[Tensor, ...]], Tensor], CachedInput]:
    """(data with cached train/val features, forward on features, their input) for
    training patch ``name``: drop-in arguments for :func:`deltapatch.train.fit`."""
    if dtype not in DTYPES:
        raise ValueError(f"cache dtype '{dtype}': choose from {', '.join(DTYPES)}")
    start = model.first_patched_stage([name])
    (train, unpack), (val, _) = (cache_features(model, start, s, preprocess, DTYPES[dtype],
                                                max_ram_bytes=max_ram_bytes)
                                 for s in (data.train, data.val))

    def forward(parts: tuple[Tensor, ...]) -> Tensor:
        return model.forward_from(parts[0], start, patch=name,
                                  first_residual=parts[1] if len(parts) > 1 else None)

    return replace(data, train=train, val=val), forward, unpack
