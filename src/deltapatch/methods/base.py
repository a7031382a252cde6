"""What an adaptation method is: one registered :class:`Method` object that trains a task,
loads the task folder it wrote, and (where it can) patches tasks in sequence.

``deltapatch train --method NAME``, ``eval``, ``info``, ``predict``, ``verify`` and every bench
scenario find a method only through ``METHODS``; nothing else keeps a list of methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from ..data.sets import ImageSet, TaskData
from ..model import PatchedModel
from ..options import OptionSet, option
from ..patch import PatchConfig
from ..registry import Registry
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
    init: str | None = None  # None: the measured default for the gate (docs/INIT.md)
    base_data: TaskData | None = None
    options: Mapping = field(default_factory=dict)  # as given; the method reads its OptionSet


@dataclass
class MethodOutcome:
    """A trained (or loaded) task: how to run it and the base task, and what it costs."""

    patch_forward: Forward
    base_forward: Forward
    trainable_params: int
    patch_bytes: int
    extra: dict = field(default_factory=dict)


@dataclass
class BaseTask:
    """The base task as sequential patching sees it: its test split, and (for methods that
    choose on it, like PAINT's α) the full task, loaded only when asked for."""

    test: ImageSet | None
    full: Callable[[], TaskData] | None = None


Train = Callable[[MethodContext], MethodOutcome]
Load = Callable[[PatchedModel, PatchConfig, dict[str, Tensor]], MethodOutcome]
Sequential = Callable[[PatchedModel, list[MethodContext], BaseTask], dict]
Check = Callable[[PatchedModel, "int | list", "MethodOptions"], None]


@dataclass(frozen=True)
class MethodOptions(OptionSet):
    """Options every method accepts (``train`` passes ``reduction`` whatever the method); a
    method with keys of its own subclasses it."""

    reduction: int = option("int", "the Δ-module's second width C/r (train --reduction); every "
                            "run records it, methods that build Δ-modules use it", 4,
                            min=1, max=1024)


@dataclass(frozen=True)
class Method:
    """One adaptation method.

    Attributes:
        train: trains on ``ctx.data`` and writes the task folder ``ctx.out``.
        load: rebuilds the task's forwards from that folder's checked config and tensors.
        needs_base_data: ``ctx.base_data`` must hold the full base task (train/val/test), not
            only its test split: PAINT picks α and PNC its insertion point on its validation
            split. Loading a base train split costs time, so other methods do not get it.
        default_lr: small freshly initialised modules want 1e-2; methods that move pretrained
            weights 1e-3.
        sequential: patches tasks one after another (``None``: not supported).
        check: refuses bad ``stages`` / options on the built model with a ``ValueError`` (or
            a missing optional dependency with a ``DeltaPatchError``) before a run claims its
            folder, so bad input changes nothing on disk; ``train`` checks them again.
        options: the typed ``--option`` keys the method reads (a :class:`MethodOptions`
            subclass: kinds, bounds, defaults); any other key is refused by
            :meth:`check_options`.
        batchable: its tasks load as patches of the shared :class:`PatchedModel`, so one
            routed batch can carry them beside other tasks (what the server batches).
    """

    name: str
    summary: str
    train: Train
    load: Load
    needs_base_data: bool = False
    default_lr: float = 1e-2
    sequential: Sequential | None = None
    check: Check | None = None
    options: type[MethodOptions] = MethodOptions
    batchable: bool = False

    def check_options(self, given: Mapping) -> MethodOptions:
        """The typed options of ``given``; refuses keys this method does not read and values of
        the wrong kind or bounds."""
        return self.options.parse(self.name, given)


METHODS: Registry[str, Method] = Registry("method")


def register_method(method: Method, *, override: bool = False) -> Method:
    return METHODS.register(method.name, method, override=override)


def get_method(name: str) -> Method:
    return METHODS.get(name)
