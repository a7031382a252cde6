"""In-memory image sets: uint8 (N, 3, S, S) at the backbone's input size, int64 labels.

Everything deltapatch trains on fits in RAM at CPU scale, and holding uint8 images already resized
means each epoch only normalizes (and augments) batches instead of decoding files again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError


@dataclass
class ImageSet:
    images: Tensor  # uint8 (N, 3, S, S)
    labels: Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: Tensor) -> ImageSet:
        return ImageSet(self.images[idx], self.labels[idx])

    def batches(self, batch_size: int, generator: torch.Generator | None = None
                ) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches in order, or shuffled by ``generator``."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else None
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size] if order is not None else slice(start,
                                                                                   start + batch_size)
            yield self.images[idx], self.labels[idx]


@dataclass
class TaskData:
    """A classification task: train / validation / test sets and class names.

    ``hflip`` says whether a horizontal flip keeps labels (not for digits or traffic signs).
    """

    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    class_names: list[str]
    hflip: bool = True
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def to_image_tensor(x: np.ndarray | Tensor, size: int) -> Tensor:
    """Images (N, H, W), (N, H, W, C) or (N, C, H, W), uint8 or float in [0, 1] → uint8
    (N, 3, size, size); grayscale becomes 3-channel, resizing is bilinear with antialiasing."""
    t = x if isinstance(x, Tensor) else torch.from_numpy(np.array(x))  # a writable copy
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif t.ndim == 4 and t.shape[-1] in (1, 3, 4) and t.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2)
    if t.ndim != 4 or t.shape[1] not in (1, 3, 4):
        raise DataError(f"images must be (N, H, W[, C]) or (N, C, H, W); got {tuple(t.shape)}")
    t = t[:, :3]
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    if t.dtype == torch.uint8:
        if t.shape[-2:] == (size, size):
            return t.contiguous()
        t = t.float()
    else:
        t = t.float()
        if t.max() <= 1.0 + 1e-6:
            t = t * 255
    out = []
    for chunk in t.split(2048):
        if chunk.shape[-2:] != (size, size):
            chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True,
                                  align_corners=False)
        out.append(chunk.round().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def make_set(x: np.ndarray | Tensor, y: np.ndarray | Tensor, size: int, where: str) -> ImageSet:
    labels = torch.as_tensor(np.asarray(y)).long().reshape(-1)
    if len(labels) == 0:
        raise DataError(f"{where} is empty")
    if len(x) != len(labels):
        raise DataError(f"{where}: {len(x)} images but {len(labels)} labels")
    return ImageSet(to_image_tensor(x, size), labels)


def check_labels(data: TaskData) -> TaskData:
    """Refuse labels outside 0..C-1 and a training set missing classes."""
    c = data.num_classes
    for split in ("train", "val", "test"):
        s = getattr(data, split)
        if len(s) == 0:
            raise DataError(f"{data.name}: the {split} split is empty")
        lo, hi = int(s.labels.min()), int(s.labels.max())
        if lo < 0 or hi >= c:
            raise DataError(f"{data.name}: {split} labels span {lo}..{hi}, but there are {c} "
                            "classes; labels must be 0..C-1")
    missing = sorted(set(range(c)) - set(data.train.labels.tolist()))
    if missing:
        raise DataError(f"{data.name}: classes {missing[:10]} have no training image")
    return data


def split_off(s: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """A seeded random (rest, held-out) split; the held-out part has ≥ 1 image if fraction > 0."""
    n = len(s)
    k = 0 if fraction <= 0 else max(1, int(round(n * fraction)))
    if k >= n:
        raise DataError(f"cannot hold out {fraction:.0%} of only {n} images")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return s.subset(order[k:]), s.subset(order[:k])


def seeded_subset(images: ImageSet, n: int | None, seed: int) -> ImageSet:
    """At most ``n`` images of ``images``, a seeded random subset kept in the original order."""
    if n is None or n >= len(images):
        return images
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images.subset(order[:n].sort().values)
