"""What a suite turns into: independent, resumable :class:`Job` s, one per run, built by the
scenario kinds registered in ``SCENARIOS`` (``SCENARIOS.get(kind)(suite, entry, seeds)``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..backbones.catalog import family_init
from ..baseinit import LEGACY_INIT
from ..delta import resolve_init
from ..registry import Registry
from ..run import RunSpec
from .schema import SHAPES, Shape
from .suite import Suite, Task, Variant, data_settings, train_config
from .tuning import TUNE_SEED


class Skip(Exception):
    """A job that cannot run here and now (method not registered, scenario not supported)."""


@dataclass
class Job:
    key: str  # where its JSON lives under runs/, unique in a suite
    scenario: str
    table: str
    backbone: str
    task: str
    variant: str
    label: str
    seed: int
    run: Callable[[Path, float | list[float] | None], dict] = field(repr=False)
    method: dict = field(default_factory=dict)  # the variant: method, stages, gate, norm
    config: str = ""  # fingerprint of every setting that shapes the run's numbers
    lr_grid: list[float] = field(default_factory=list)  # the suite's lr_grid (empty: untuned)
    lr_from: list[str] = field(default_factory=list)  # runs whose chosen rate this one uses
    lr_extend: int = 0  # protocol 4: steps the search may add past the grid's edge

    def __post_init__(self) -> None:
        if self.lr_grid and not self.lr_from:  # its own cell's run at the tuning seed
            self.lr_from = [self.tuning_key]

    @property
    def cell(self) -> str:
        """The key without its seed: every seed of one (backbone, task, variant)."""
        return self.key.rsplit("/seed", 1)[0]

    @property
    def tuning_key(self) -> str:
        return f"{self.cell}/seed{TUNE_SEED}"

    @property
    def tunes(self) -> bool:
        """Whether this run searches the grid itself (rather than reusing a choice)."""
        return self.lr_from == [self.key]

    def context(self) -> dict:
        return {"key": self.key, "scenario": self.scenario, "table": self.table,
                "backbone": self.backbone, "task": self.task, "variant": self.variant,
                "label": self.label, "seed": self.seed, "method": self.method,
                "config": self.config}


def fingerprint(suite: Suite, bb: str, tasks: list[Task], v: Variant, **extra) -> str:
    """A short hash of what determines a run: backbone, every task's data and settings, the
    variant. A stored run whose fingerprint differs (the suite file changed) is redone, and two
    tables that ask for the same run share one."""
    blob = {"backbone": asdict(suite.backbones[bb]),
            "variant": _variant_blob(v, family_init(suite.backbones[bb].name)),
            "tasks": [[t.data, suite.settings(t.settings, v.settings)] for t in tasks], **extra}
    text = json.dumps(blob, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _variant_blob(v: Variant, family_default: str | None) -> dict:
    """The variant as the fingerprint sees it. ``init`` enters as the start the run really
    gets (a default resolved), and only where that is not the start every run before ``init``
    existed used: those runs keep their fingerprints, and a changed default cannot silently
    pass old records off as new runs."""
    d = {**asdict(v), "label": None}
    del d["init"]
    init = resolve_init(v.init, v.gate, family_default)
    if init != LEGACY_INIT:
        d["init"] = init
    return d


SCENARIOS: Registry[str, Callable[[Suite, dict, int], list[Job]]] = Registry("scenario kind")


def scenario(kind: str, shape: Shape):
    """Register ``fn(suite, entry, seeds) -> jobs`` as scenario kind ``kind``, whose entries
    have ``shape`` (checked when a suite is read)."""
    def deco(fn):
        SCENARIOS.register(kind, fn)
        SHAPES.register(kind, shape)
        return fn
    return deco


def run_spec(suite: Suite, bb_key: str, task: Task, v: Variant, seed: int,
             lr: float | None = None, **kw) -> RunSpec:
    """The run of one cell at one seed; ``lr`` (a rate of the suite's grid) overrides the
    settings' rate."""
    bb = suite.backbones[bb_key]
    s = suite.settings(task.settings, v.settings, {} if lr is None else {"lr": lr})
    return RunSpec(backbone=bb.name, weights=bb.weights, data=task.data, method=v.method,
                   stages=v.stages, norm=v.norm, gate=v.gate, init=v.init,
                   base_data=bb.base_data,
                   seed=seed, train=train_config(s, seed), options=dict(v.options),
                   lambda_images=int(s.get("lambda_images", 0)), name=task.key,
                   **data_settings(s), **kw)


def lr_grid(suite: Suite, task: Task, v: Variant) -> list[float]:
    return list(suite.settings(task.settings, v.settings).get("lr_grid", []))


def tuning(suite: Suite, task: Task, v: Variant) -> dict:
    """A tuned job's search: its grid and how far past the grid's edge it may go (``Job``'s
    keyword arguments)."""
    s = suite.settings(task.settings, v.settings)
    return {"lr_grid": list(s.get("lr_grid", [])), "lr_extend": int(s.get("lr_extend", 0))}


def describe(v: Variant) -> dict:
    d = {"name": v.method, "stages": v.stages, "gate": v.gate, "norm": v.norm}
    return d if v.init is None else {**d, "init": v.init}


def grid(suite: Suite, entry: dict, seeds: int):
    for bb in entry["backbones"]:
        for v in entry["variants"]:
            for seed in range(seeds):
                yield bb, suite.variants[v], seed


