"""How a forward runs: rows grouped by task, the frozen stages walked once, each task's
Δ-stages and head on its own rows.

Every task of a forward is a :class:`Task`: the stages it patches, its Δ-stage at a stage (or
none), and its logits on its rows of the pooled features. A :class:`~deltapatch.patch.Patch` is
one; the base task is another (:class:`BaseTask`: no Δ-stage, the backbone's own head), so a
batch of patches, base rows or both runs one path. The one exception is the whole batch on the
base task with logits wanted: that is ``backbone(x)`` itself (:meth:`Trunk.base`), the sacred
path, never the spec walk.

:class:`~deltapatch.model.PatchedModel` owns the patches and their names; this module owns how
they run. Row grouping and placement are :mod:`deltapatch.routing`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from .backbones.spec import StageSpec, block_split
from .delta import DeltaStage
from .devices import own_dtype
from .routing import delta_fn, group_rows, mixed_stage, place_rows

Groups = dict[str, Tensor]
"""Row indices per task name (:func:`~deltapatch.routing.group_rows`)."""
Record = dict[str, dict[int, Tensor]]
"""Λ per task and stage, filled by a forward that is asked for them."""


class Task(Protocol):
    """What a forward needs of a task (a patch, or the base task)."""

    @property
    def stages(self) -> Sequence[int]: ...

    def delta(self, stage: int) -> DeltaStage | None: ...

    def logits(self, feats: Tensor, rows: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class BaseTask:
    """The base task as a task: it patches no stage, and its head is the backbone's own."""

    head: nn.Module
    stages: tuple[int, ...] = ()

    def delta(self, stage: int) -> None:
        return None

    def logits(self, feats: Tensor, rows: Tensor) -> Tensor:
        """The head on every row, then this task's rows: the backbone runs its head on the
        whole batch, and a matmul on fewer rows may take another kernel and round otherwise."""
        out = self.head(feats)
        return out if rows.numel() == feats.shape[0] else out.index_select(0, rows)


@dataclass(frozen=True)
class Trunk:
    """The frozen backbone seen as stages (through its spec): what every forward walks."""

    backbone: nn.Module
    spec: StageSpec
    stages: tuple[nn.Module, ...]
    """Resolved once: slice stages are views built per lookup, and forwards run them often."""

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def base(self, x: Tensor) -> Tensor:
        """The base task on every row: ``backbone(x)`` itself, in the backbone's own dtype."""
        with own_dtype(x.device):
            return self.backbone(x)

    def run_stage(self, s: int, h: Tensor) -> Tensor:
        return self.stages[s](h)

    def stage_input(self, x: Tensor, stage: int) -> Tensor:
        return self.spec.stage_input(self.backbone, x, stage, self.run_stage)

    def first_residual(self, h: Tensor, stage: int) -> Tensor:
        block = next(iter(self.stages[stage]))
        return block_split(block).residual(block, h)


def first_stage(tasks: Sequence[Task], num_stages: int) -> int:
    """The earliest stage any of ``tasks`` patches (``num_stages`` for the base / head-only)."""
    return min((s for t in tasks for s in t.stages), default=num_stages)


def forward(trunk: Trunk, x: Tensor, names: Sequence[str], tasks: dict[str, Task],
            head: bool = True, record: Record | None = None) -> Tensor:
    """Logits (or pre-logit features) of each row's task, from the images ``x``: row ``r`` is
    task ``names[r]``, ``tasks`` maps each name (and, for an empty batch, the one task whose
    width the empty result takes) to its :class:`Task`."""
    if head and all(isinstance(t, BaseTask) for t in tasks.values()):
        return trunk.base(x)
    groups = group_rows(list(names), next(iter(tasks)), x.device)
    start = first_stage(list(tasks.values()), trunk.num_stages)
    return run_from(trunk, trunk.stage_input(x, start), start, tasks, groups, head, record)


def run_from(trunk: Trunk, h: Tensor, start: int, tasks: dict[str, Task], groups: Groups,
             head: bool = True, record: Record | None = None,
             first_residual: Tensor | None = None) -> Tensor:
    """Stages ``start``.. on ``h`` (stage ``start``'s input), routed per row group: each stage
    runs once for all rows not patched there, and per patch only on that patch's rows."""
    runner = stage_runner(trunk, tasks, groups, start, record, first_residual)
    feats = trunk.spec.features_from(trunk.backbone, h, start, runner)
    if not head:
        return feats
    logits = {n: tasks[n].logits(feats, rows) for n, rows in groups.items()}
    return place_rows(logits, groups, feats.shape[0], fill=float("-inf"))


def stage_runner(trunk: Trunk, tasks: dict[str, Task], groups: Groups, start: int,
                 record: Record | None = None, first_residual: Tensor | None = None
                 ) -> Callable[[int, Tensor], Tensor]:
    """``run_stage(s, h)`` for a spec walk: the frozen stage where no task has a Δ-stage,
    else the routed Δ-stage."""
    def run_stage(s: int, h: Tensor) -> Tensor:
        deltas = {n: d for n, t in tasks.items() if (d := t.delta(s)) is not None}
        if not deltas:
            return trunk.stages[s](h)
        r1 = first_residual if s == start else None
        return _delta_stage(h, s, list(trunk.stages[s]), deltas, groups, record, r1)
    return run_stage


def _delta_stage(h: Tensor, s: int, blocks: list, deltas: dict[str, DeltaStage],
                 groups: Groups, record: Record | None, first_residual: Tensor | None) -> Tensor:
    """One patch on every row: its Δ-stage; rows of several tasks: one pass of the stage's
    blocks with a per-row Λ (:func:`~deltapatch.routing.mixed_stage`)."""
    if len(groups) == 1 and len(deltas) == 1:
        (n, d), = deltas.items()
        return delta_fn(d, blocks, s, record.setdefault(n, {}) if record is not None
                        else None, first_residual)(h)
    return mixed_stage(h, s, blocks, deltas, groups, record, first_residual)


def fanout(trunk: Trunk, x: Tensor, tasks: dict[str, Task]) -> dict[str, Tensor]:
    """Logits of every task on every row (see :meth:`PatchedModel.fanout`): the base chain
    once, as far as some task needs it; each task from the stage input of its first stage;
    tasks starting at one stage share F_1 there; tasks with no Δ-stage share the features."""
    if not tasks:
        return {}
    n_stages, every = trunk.num_stages, torch.arange(x.shape[0], device=x.device)
    if all(isinstance(t, BaseTask) for t in tasks.values()):
        return {n: trunk.base(x) for n in tasks}
    first = {n: first_stage([t], n_stages) for n, t in tasks.items()}
    start, stop = min(first.values()), max(first.values())
    hs = {start: trunk.stage_input(x, start)}
    for s in range(start, stop):  # the base chain, only as far as some task needs it
        hs[s + 1] = trunk.spec.run_from(trunk.backbone, hs[s], s, s + 1, trunk.run_stage)
    feats = (trunk.spec.features_from(trunk.backbone, hs[n_stages], n_stages)
             if stop == n_stages else None)
    starts = [s for s in first.values() if s < n_stages]
    shared = {s: trunk.first_residual(hs[s], s) for s in set(starts) if starts.count(s) > 1}
    out: dict[str, Tensor] = {}
    for n, t in tasks.items():
        if first[n] == n_stages:  # the base task and head-only patches: features are shared
            out[n] = t.logits(feats, every)
        else:
            out[n] = run_from(trunk, hs[first[n]], first[n], {n: t}, {n: every},
                              first_residual=shared.get(first[n]))
    return out


def pyramid(trunk: Trunk, x: Tensor, name: str, task: Task, groups: Groups) -> list[Tensor]:
    """Every stage's output, in stage order, for one task on every row."""
    return trunk.spec.pyramid(trunk.backbone, x, stage_runner(trunk, {name: task}, groups, 0))
