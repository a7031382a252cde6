"""In-memory image sets: uint8 (N, 3, S, S) at the backbone's input size, int64 labels.

Everything deltapatch trains on fits in RAM at CPU scale, and holding uint8 images already resized
means each epoch only normalizes (and augments) batches instead of decoding files again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError
from .checks import check_image_side, pixel_scales

Rng = Literal["numpy", "torch"]


@dataclass
class ImageSet:
    images: Tensor  # uint8 (N, 3, S, S)
    labels: Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: Tensor) -> ImageSet:
        return ImageSet(self.images[idx], self.labels[idx])

    def sample(self, n: int | None, seed: int, *, rng: Rng = "numpy") -> ImageSet:
        """At most ``n`` images, a seeded subset kept in the original order (``seeded_subset``)."""
        if n is None or n >= len(self):
            return self
        return self.subset(seeded_subset(len(self), n, seed, rng=rng))

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


def seeded_subset(n_items: int, n: int | None, seed: int, *, rng: Rng = "numpy") -> Tensor:
    """Indices (sorted, int64) of a seeded random subset of ``n`` of ``n_items`` items.

    The one place a "seeded subset" is drawn, so that ``max_train`` / ``max_test`` pick the same
    images everywhere. ``rng="numpy"`` is ``default_rng(seed).permutation(n_items)[:n]``, the
    selection the loaders have always used (published numbers depend on it); ``rng="torch"`` is
    ``torch.randperm`` with ``Generator().manual_seed(seed)``, the selection of the older
    ``methods.common.cap``, kept so that its callers can switch without moving their numbers.
    ``n=None`` or ``n >= n_items`` selects everything.
    """
    if n is not None and (isinstance(n, bool) or n < 1):
        raise DataError(f"a subset needs at least 1 item, got n={n!r}")
    if n is None or n >= n_items:
        return torch.arange(n_items)
    if rng == "numpy":
        return torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(n_items)[:n]))
    if rng == "torch":
        return torch.randperm(n_items, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    raise ValueError(f"rng must be 'numpy' or 'torch', got {rng!r}")


def _as_nchw(x: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) → (N, C, H, W) with C in 1, 3, 4 (a view)."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3):
        return x.transpose(0, 3, 1, 2) if isinstance(x, np.ndarray) else x.permute(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4):
        raise DataError(f"images must be (N, H, W[, C]) or (N, C, H, W); got {tuple(x.shape)}")
    return x


def resize_images(t: Tensor, size: int) -> Tensor:
    """Float (N, C, H, W) on the 0..255 scale → uint8 (N, C, size, size): bilinear with
    antialiasing, in chunks to bound memory. Every resize in ``data`` goes through here, so an
    image gets the same pixels whether it came alone or in a batch of equal-sized ones."""
    out = []
    for chunk in t.split(2048):
        if chunk.shape[-2:] != (size, size):
            chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True,
                                  align_corners=False)
        out.append(chunk.round().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else t.to(torch.uint8).new_empty((0, t.shape[1], size, size))


def to_image_tensor(x: np.ndarray | Tensor, size: int, *, scale: float | None = None,
                    where: str = "images") -> Tensor:
    """Images (N, H, W), (N, H, W, C) or (N, C, H, W) → uint8 (N, 3, size, size); grayscale
    becomes 3-channel, alpha is dropped, resizing is ``resize_images``.

    ``scale`` brings non-uint8 values to 0..255 (the loaders decide it once per data set with
    ``checks.pixel_scales``); without it the decision is made on ``x`` alone by the same rules,
    which refuse NaN and out-of-range values. Images thinner than ``MIN_IMAGE_SIDE`` are
    refused as they are for image files (``where`` names them).
    """
    if isinstance(x, Tensor) and x.dtype != torch.uint8 and scale is None:
        x = x.detach().cpu().numpy()
    x = _as_nchw(x)
    check_image_side(*x.shape[-2:], f"{where}: each image")
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 and scale is None:
            scale = pixel_scales({"images": x}, "images")["images"]
        x = x[:, :3]
        t = torch.from_numpy(np.ascontiguousarray(x if x.dtype == np.uint8 else
                                                  x.astype(np.float32)))
    else:
        t = x[:, :3]
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    if t.dtype == torch.uint8:
        if t.shape[-2:] == (size, size):
            return t.contiguous()
        return resize_images(t.float(), size)
    t = t.float()
    if scale is not None and scale != 1.0:
        t = t * scale
    return resize_images(t, size)


def make_set(x: np.ndarray | Tensor, y: np.ndarray | Tensor, size: int, where: str, *,
             scale: float | None = None) -> ImageSet:
    labels = torch.as_tensor(np.asarray(y)).long().reshape(-1)
    if len(labels) == 0:
        raise DataError(f"{where} is empty")
    if len(x) != len(labels):
        raise DataError(f"{where}: {len(x)} images but {len(labels)} labels")
    return ImageSet(to_image_tensor(x, size, scale=scale, where=where), labels)


def check_labels(data: TaskData) -> TaskData:
    """Refuse labels outside 0..C-1 and a training set missing classes (unless the data set is
    an evaluation set, ``info["eval_only"]``: a base task is scored, never trained on)."""
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
    if missing and not data.info.get("eval_only"):
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
