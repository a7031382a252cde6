"""What a run reads: its model and its data, built once per process where runs share them.

A bench process runs many cells on the same tasks and backbones; decoding CIFAR-10 or building a
backbone only to read its input size once per run would dominate small runs. :data:`READS` is an
explicit, bounded cache of those reads (least recently used first out); what it hands out is
shared between runs, so callers treat it as read-only.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

import torch

from .backbones import load_backbone
from .data import load_data, load_test
from .data.sets import ImageSet, TaskData
from .model import PatchedModel

T = TypeVar("T")

DATA_PROTOCOL = 2
"""Version of how bench data are drawn; a stored run of another version is redone, not mixed
into the same table. 1: seeded subsets drawn after resizing, validation held out of the whole
train split (then capped at ``max_val``). 2 (main from 8733333 on): subsets drawn before
resizing, validation held out of the ``max_train`` images."""


class ReadCache:
    """At most ``max_items`` reads kept, keyed by everything that shapes them; the least
    recently used goes first when a new one does not fit."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: OrderedDict[Hashable, object] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]  # type: ignore[return-value]
        value = make()
        self._items[key] = value
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


READS = ReadCache(max_items=64)
"""The process's reads: a suite's tasks, base tasks and backbones' input sizes (a cpu suite
touches about 20 of them)."""


def task_data(spec: str, size: int, *, seed: int, max_train: int | None,
              max_test: int | None, val_fraction: float = 0.1, max_val: int | None = None
              ) -> TaskData:
    """A task, cached; ``max_val`` caps the validation split (10% of MNIST's train is 6,000
    images scored every epoch, which would dominate a small CPU run)."""
    def make() -> TaskData:
        data = load_data(spec, size, val_fraction=val_fraction, seed=seed,
                         max_train=max_train, max_test=max_test)
        data.val = data.val.sample(max_val, seed, rng="torch")  # as every published run drew it
        return data
    return READS.get(("data", spec, size, seed, max_train, max_test, val_fraction, max_val), make)


def base_task_data(spec: str, size: int, *, seed: int, max_test: int | None,
                   val_fraction: float = 0.1) -> TaskData:
    """The full base task for methods that choose on it (train not capped; its test split is
    the same seeded subset that ``load_test`` gives)."""
    return task_data(spec, size, seed=seed, max_train=None, max_test=max_test,
                     val_fraction=val_fraction)


def test_split(spec: str, size: int, *, seed: int, max_test: int | None) -> ImageSet:
    return READS.get(("test", spec, size, seed, max_test),
                  lambda: load_test(spec, size, max_test=max_test, seed=seed)[0])


def build_model(backbone: str, weights: str | None, image_size: int | None = None,
                device: torch.device | None = None) -> PatchedModel:
    """The wrapped backbone on ``device`` (None: the CPU)."""
    model = PatchedModel(load_backbone(backbone, weights or None, device=device))
    model.preprocess = model.preprocess.with_size(image_size or model.preprocess.size)
    return model


def native_size(backbone: str, weights: str | None) -> int:
    return READS.get(("size", backbone, weights),
                  lambda: build_model(backbone, weights).preprocess.size)


def data_fingerprint(data: TaskData) -> str:
    """sha256 of every split's images and labels: two runs on "the same" path with other
    contents are two runs."""
    h = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        for t in (split.images, split.labels):
            t = t.contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]
