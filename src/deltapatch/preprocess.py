"""The input a backbone expects: square size and per-channel normalization."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

MIN_SIZE = 8
"""Smallest input side anything accepts (a config, a flag); below it no backbone here has a
feature map."""
MAX_SIZE = 4096
"""Largest input side anything accepts (a config, a flag): a batch of 256 float images at
4096 px is already 51 GB."""

SIZE_FACTOR = 4
SIZE_FLOOR = 512


def size_limit(native: int) -> int:
    """The largest input side a patch *file* may ask of a backbone whose own side is ``native``:
    ``SIZE_FACTOR`` times it, at least ``SIZE_FLOOR``, at most ``MAX_SIZE``. A forward costs the
    square of the side, so a tampered ``preprocess.size`` of 4096 on a 32 px backbone would make
    one prediction 16,000 times as slow; a user raises the limit for a patch of their own
    (``--max-image-size``)."""
    return min(MAX_SIZE, max(SIZE_FACTOR * native, SIZE_FLOOR))


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelInput(Protocol):
    """The last step of the one input path (:func:`deltapatch.batches.model_inputs`): a batch on
    the device becomes the forward's argument. :class:`Preprocess` normalizes images; the
    feature cache's :class:`~deltapatch.cache.CachedInput` unpacks stored prefix outputs, so
    training and evaluation read either without knowing which."""

    def model_input(self, x: Tensor) -> Any: ...


@dataclass(frozen=True)
class Preprocess:
    """Images are resized to ``size`` x ``size`` RGB in [0, 1], then normalized."""

    size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 or [0, 1] float images (N, 3, H, W) → normalized float32, on ``x``'s device
        (move uint8 batches first: a quarter of the bytes cross the bus)."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        if x.device.type != "cpu":
            mean, std = mean.to(x.device, non_blocking=True), std.to(x.device, non_blocking=True)
        return (x - mean) / std

    def model_input(self, x: Tensor) -> Tensor:
        """:class:`ModelInput`: images are normalized."""
        return self.normalize(x)

    def with_size(self, size: int | None) -> Preprocess:
        return self if size is None else Preprocess(size, self.mean, self.std)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(int(d["size"]), tuple(d["mean"]), tuple(d["std"]))
