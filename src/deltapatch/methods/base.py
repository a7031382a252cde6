"""What an adaptation method is: a function from a :class:`MethodContext` to a trained
:class:`MethodOutcome`. ``deltapatch train --method NAME`` looks methods up in ``METHODS``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from ..data.sets import TaskData
from ..model import PatchedModel
from ..train import TrainConfig

Forward = Callable[[Tensor], Tensor]


@dataclass
class MethodContext:
    """What a method gets: the wrapped backbone, the task, options, where to write."""

    model: PatchedModel
    name: str
    data: TaskData
    train: TrainConfig
    out: Path
    stages: int | list[int] = 1
    norm: str = "output"
    gate: str = "delta"
    base_data: TaskData | None = None
    options: dict = field(default_factory=dict)


@dataclass
class MethodOutcome:
    """A trained method: how to run the patch task and the base task, and what it costs."""

    patch_forward: Forward
    base_forward: Forward
    trainable_params: int
    patch_bytes: int
    extra: dict = field(default_factory=dict)


METHODS: dict[str, Callable[[MethodContext], MethodOutcome]] = {}


def register_method(name: str):
    def deco(fn: Callable[[MethodContext], MethodOutcome]):
        METHODS[name] = fn
        return fn
    return deco


def get_method(name: str) -> Callable[[MethodContext], MethodOutcome]:
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; choose from {', '.join(sorted(METHODS))}")
    return METHODS[name]
