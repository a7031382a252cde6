"""Dense data sets: photos with boxes and per-pixel labels. Built in: ``pennfudan`` (Penn-Fudan
pedestrians from ``../shared/data/pennfudan.npz``, its seeded 120 / 50 split)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from .. import devices
from ..data.sources import TASK_DATA, decode_image
from ..errors import DataError
from ..paths import shared_data_file
from ..registry import Registry
from .heads import IGNORE

CPU = torch.device("cpu")


@dataclass
class DenseSample:
    """One photo: ``image`` uint8 (3, H, W); ``boxes`` (n, 4) x1 y1 x2 y2 in pixel edges;
    ``labels`` (n,) in 1..classes-1; ``mask`` uint8 (H, W) semantic class per pixel."""

    image: Tensor
    boxes: Tensor
    labels: Tensor
    mask: Tensor


@dataclass
class DenseData:
    train: list[DenseSample]
    test: list[DenseSample]
    class_names: list[str]  # index 0 is the background

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


DENSE_DATA: Registry[str, Callable[[], DenseData]] = Registry("dense data set")


def load_dense_data(name: str, *, max_train: int | None = None, max_test: int | None = None
                    ) -> DenseData:
    if name not in DENSE_DATA:
        raise DataError(f"unknown dense data set '{name}' (known: {', '.join(DENSE_DATA.names())})")
    data = DENSE_DATA.get(name)()
    return DenseData(data.train[:max_train], data.test[:max_test], data.class_names)


@functools.lru_cache(maxsize=1)
def _pennfudan() -> DenseData:
    """Decoded once per process (callers never write the samples)."""
    with np.load(shared_data_file("pennfudan.npz"), allow_pickle=False) as z:
        d = {k: z[k] for k in ("jpeg_bytes", "offsets", "shapes", "masks", "mask_offsets",
                                "boxes", "box_offsets", "labels", "train_idx", "test_idx")}
    off, moff, boff = d["offsets"], d["mask_offsets"], d["box_offsets"]

    def sample(i: int) -> DenseSample:
        img = decode_image(d["jpeg_bytes"][off[i]:off[i + 1]].tobytes(), f"pennfudan photo {i}")
        h, w = (int(v) for v in d["shapes"][i])
        inst = d["masks"][moff[i]:moff[i + 1]].reshape(h, w)
        boxes = torch.from_numpy(d["boxes"][boff[i]:boff[i + 1]].copy())
        boxes[:, 2:] += 1  # the file's boxes are inclusive pixel indices; edges are + 1
        return DenseSample(torch.from_numpy(np.array(img)).permute(2, 0, 1),
                           boxes, torch.from_numpy(d["labels"][boff[i]:boff[i + 1]].copy()),
                           torch.from_numpy((inst > 0).astype(np.uint8)))

    return DenseData([sample(int(i)) for i in d["train_idx"]],
                     [sample(int(i)) for i in d["test_idx"]], ["background", "pedestrian"])


DENSE_DATA.register("pennfudan", _pennfudan)
TASK_DATA.register("pennfudan", ("detection", "segmentation"))  # listed with the built-ins


def flipped(s: DenseSample) -> DenseSample:
    """The horizontal mirror image (boxes mirrored with it)."""
    w = s.image.shape[-1]
    boxes = s.boxes.clone()
    boxes[:, 0], boxes[:, 2] = w - s.boxes[:, 2], w - s.boxes[:, 0]
    return DenseSample(s.image.flip(-1), boxes, s.labels, s.mask.flip(-1))


def detection_batch(samples: list[DenseSample], device: torch.device = CPU
                    ) -> tuple[list[Tensor], list[dict]]:
    """Images in [0, 1] and torchvision targets on ``device`` (the photos cross as uint8, a
    quarter of the bytes, and become floats there); the detector resizes them itself."""
    on = devices.to_device
    return ([on(s.image, device).float() / 255 for s in samples],
            [{"boxes": on(s.boxes, device), "labels": on(s.labels, device)} for s in samples])


def segmentation_batch(samples: list[DenseSample], size: int, device: torch.device = CPU
                       ) -> tuple[Tensor, Tensor]:
    """Images resized so the longer side is ``size`` and padded to ``size`` × ``size`` (the
    padding labelled IGNORE), as floats in [0, 1], and their (N, size, size) int64 labels; made
    on ``device`` (each photo and mask crosses as uint8 and is resized there)."""
    x = torch.zeros(len(samples), 3, size, size, device=device)
    y = torch.full((len(samples), size, size), IGNORE, dtype=torch.long, device=device)
    for i, s in enumerate(samples):
        h, w = s.image.shape[-2:]
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        image, mask = devices.to_device(s.image, device), devices.to_device(s.mask, device)
        img = F.interpolate(image[None].float() / 255, size=(nh, nw), mode="bilinear",
                            align_corners=False, antialias=True)[0]
        mask = F.interpolate(mask[None, None].float(), size=(nh, nw), mode="nearest")[0, 0]
        x[i, :, :nh, :nw] = img.clamp(0, 1)
        y[i, :nh, :nw] = mask.long()
    return x, y
