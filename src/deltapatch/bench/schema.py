"""What a suite file may hold: every key, its type and its bounds, checked in full when the file
is read. A typo or a nonsense value is then one line before any run starts, never a run that
fails (or silently runs with a default) hours into a grid. Training and data settings are typed
and bounded by the same field definitions the CLI's flags come from (``TrainConfig``,
``RunSpec``); scenario kinds declare the fields that name their tasks (:class:`Shape`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import get_args, get_type_hints

from ..backbones.factory import is_factory_ref
from ..backbones.catalog import BACKBONES
from ..baseinit import INITS
from ..data.sources import BUILTINS
from ..delta import GATES, NORMS
from ..errors import DeltaPatchError
from ..patch import check_name
from ..registry import Registry
from ..run import RunSpec
from ..train import TrainConfig

TRAIN_KEYS = {f.name for f in fields(TrainConfig)} - {"seed", "progress"}
DATA_KEYS = {"max_train", "max_test", "max_val", "image_size", "base_image_size",
             "val_fraction"}
TUNING_KEYS = {"lr_grid", "lr_extend"}  # one grid for every method, protocol 4 (bench/tuning.py)
SETTING_KEYS = TRAIN_KEYS | DATA_KEYS | TUNING_KEYS | {"lambda_images"}
"""Keys a suite's ``[defaults]``, task and variant tables may set: TrainConfig's fields and
RunSpec's data fields, the same definitions the CLI's flags come from, ``lr_grid`` and
``lr_extend``."""
FULL_TRAINING = {"scratch", "transfer"}  # scenario kinds whose variants name no method
FULL_ALLOWED = {"zsda"}  # kinds that also take method = "full" (the whole network ± Δ)
MAX_SEEDS = 1000
MAX_STAGES = 64  # more than any backbone here has; the built model checks its own count
MAX_GRID = 64
MAX_SUITE_BYTES = 1 << 20


def _setting_types() -> dict[str, object]:
    hints = {**get_type_hints(RunSpec), **get_type_hints(TrainConfig)}
    return {**{k: hints[k] for k in SETTING_KEYS - TUNING_KEYS}, "lr_grid": list, "lr_extend": int}


SETTINGS = _setting_types()
TOP = {"name": str, "description": str, "seeds": int, "defaults": dict, "backbones": dict,
       "tasks": dict, "variants": dict, "scenarios": list, "not_implemented": list}
BACKBONE = {"name": str, "weights": str, "base_data": str}
TASK = {"data": str, **SETTINGS}
VARIANT = {"method": str, "label": str, "stages": int | list, "gate": str, "norm": str,
           "init": str, "options": dict, **SETTINGS}
VARIANT_KEYS = set(VARIANT) - set(SETTINGS)
SCENARIO = {"kind": str, "backbones": list, "variants": list, "skip": bool | str}
NOT_IMPLEMENTED = {"kind": str, "why": str}
POOLS = ("backbones", "tasks", "variants")
TASK_KEY, TASK_KEYS, TASK_LISTS = "a task key", "a list of task keys", "a list of lists"


@dataclass(frozen=True)
class Shape:
    """How one scenario kind's entry names its tasks: each field holds ``TASK_KEY``,
    ``TASK_KEYS`` or ``TASK_LISTS`` (all required); ``tables``: the report tables its runs may
    be tagged with (``table = ...``; none: the kind has its own)."""

    tasks: dict[str, str]
    tables: tuple[str, ...] = ()

    def schema(self) -> dict[str, object]:
        fields_ = {k: str if v == TASK_KEY else list for k, v in self.tasks.items()}
        return {**SCENARIO, **fields_, **({"table": str} if self.tables else {})}

    def task_keys(self, entry: dict) -> list[str]:
        """Every task key a (checked) entry names, in order."""
        out: list[str] = []
        for k, how in self.tasks.items():
            v = entry[k]
            out += [v] if how == TASK_KEY else v if how == TASK_KEYS else [t for g in v for t in g]
        return out


SHAPES: Registry[str, Shape] = Registry("scenario kind")
"""Filled by ``bench.jobs.scenario`` next to each kind's job builder."""


def refuse(path: Path, where: str, what: str) -> DeltaPatchError:
    return DeltaPatchError(f"{path}: [{where}] {what}")


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
          list: "a non-empty list", dict: "a table"}


def _fits(value: object, hint: object) -> bool:
    """Whether a TOML value has a field's type: a bool is no number, an integer is a float."""
    kinds = tuple(t for t in (get_args(hint) or (hint,)) if t in _NAMES)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds) or (float in kinds and isinstance(value, int))


def typed(path: Path, where: str, table: object, schema: dict[str, object]) -> dict:
    """``table`` as a dict whose keys are all in ``schema`` with values of their types."""
    if not isinstance(table, dict):
        raise refuse(path, where, f"must be a table, got {table!r}")
    unknown = sorted(set(table) - set(schema))
    if unknown:
        raise refuse(path, where, f"sets unknown key(s) {', '.join(unknown)}; valid: "
                                  f"{', '.join(sorted(schema))}")
    for key, value in table.items():
        if not _fits(value, schema[key]):
            kinds = get_args(schema[key]) or (schema[key],)
            want = " or ".join(_NAMES[t] for t in kinds if t in _NAMES)
            raise refuse(path, where, f"{key} must be {want}, got {value!r}")
    return table


def _bounded(path: Path, where: str, layer: dict) -> None:
    """Each setting within its field's bounds and choices (the same check a run makes)."""
    try:
        TrainConfig(**{k: v for k, v in layer.items() if k in TRAIN_KEYS})
        RunSpec(backbone="-", data="-",
                **{k: v for k, v in layer.items() if k in DATA_KEYS | {"lambda_images"}})
    except (ValueError, DeltaPatchError) as err:
        raise refuse(path, where, str(err)) from None


def _rate(x: object) -> bool:
    try:
        return _fits(x, float) and TrainConfig(lr=x) is not None
    except ValueError:
        return False


def settings(path: Path, where: str, layer: object, schema: dict[str, object]) -> dict:
    """A table of settings (``schema``: its other keys too), typed and bounded."""
    layer = typed(path, where, layer, schema)
    grid = layer.get("lr_grid")
    if grid is not None and not (0 < len(grid) <= MAX_GRID and all(map(_rate, grid))):
        raise refuse(path, where, f"lr_grid must be a non-empty list of positive learning "
                                  f"rates (at most {MAX_GRID}), got {grid!r}")
    extend = layer.get("lr_extend")
    if extend is not None and not 0 <= extend <= MAX_GRID:
        raise refuse(path, where, f"lr_extend must be 0 to {MAX_GRID} steps past the grid's "
                                  f"edge, got {extend!r}")
    _bounded(path, where, layer)
    return layer


def _choice(path: Path, where: str, key: str, value: str, choices) -> None:
    if value not in choices:
        raise refuse(path, where, f"sets {key} = {value!r}; choose from {', '.join(choices)}")


def _backbone(path: Path, key: str, table: dict) -> None:
    name = table.get("name", key)
    if name not in BACKBONES and not is_factory_ref(name):
        raise refuse(path, f"backbones.{key}", f"unknown backbone '{name}'; choose from "
                     f"{', '.join(BACKBONES.names())}, or a model factory PATH.py:FUNCTION")
    if table.get("base_data") == "":
        raise refuse(path, f"backbones.{key}", "base_data is empty; leave it out for none")


def _stages(path: Path, where: str, stages: int | list) -> None:
    items = stages if isinstance(stages, list) else [stages]
    ok = [isinstance(s, str) and s.strip() != "" or _fits(s, int) and 0 <= s <= MAX_STAGES
          for s in items]
    if not items or not all(ok) or len(set(map(str, items))) < len(items):
        raise refuse(path, where, f"stages must be a count 0..{MAX_STAGES} (Δ(n): the last n) "
                                  f"or a non-empty list of distinct stage indices or names, "
                                  f"got {stages!r}")


def _variant(path: Path, key: str, table: dict) -> None:
    where = f"variants.{key}"
    _stages(path, where, table.get("stages", 1))
    _choice(path, where, "gate", table.get("gate", "delta"), GATES.names())
    _choice(path, where, "norm", table.get("norm", "output"), NORMS)
    if "init" in table:
        _choice(path, where, "init", table["init"], INITS)


def _key(path: Path, pool: str, key: str) -> None:
    """Pool keys name run folders (and tasks name patches): one safe path segment each."""
    try:
        check_name(key)
    except DeltaPatchError:
        raise refuse(path, pool, f"key {key!r} cannot name a run: 1-100 printable characters, "
                                 "no '.', '/' or '\\', not '__base__'") from None


def _names(path: Path, where: str, field: str, value: object, pool: dict, nested: bool = False
           ) -> None:
    """A non-empty list of distinct keys of ``pool`` (``nested``: of such lists)."""
    if not isinstance(value, list) or not value:
        raise refuse(path, where, f"{field} must be a non-empty list, got {value!r}")
    for item in value if nested else [value]:
        if not isinstance(item, list) or not item or len(set(map(repr, item))) < len(item):
            raise refuse(path, where, f"{field} must list distinct keys, got {item!r}")
        for n in item:
            _known(path, where, field, n, pool)


def _known(path: Path, where: str, field: str, name: object, pool: dict) -> None:
    if not isinstance(name, str) or name not in pool:
        raise refuse(path, where, f"{field} names unknown key {name!r}; defined: "
                                  f"{', '.join(pool) or 'none'}")


def _scenario(path: Path, i: int, sc: object, raw: dict) -> None:
    where = f"scenarios {i}"
    kind = sc.get("kind") if isinstance(sc, dict) else None
    if kind not in SHAPES.names():
        raise refuse(path, where, f"kind must be one of {', '.join(SHAPES.names())}, "
                                  f"got {kind!r}")
    shape = SHAPES.get(kind)
    typed(path, where, sc, shape.schema())
    missing = sorted({"backbones", "variants", *shape.tasks} - set(sc))
    if missing:
        raise refuse(path, where, f"{kind} needs {', '.join(missing)}")
    if "table" in sc:
        _choice(path, where, "table", sc["table"], shape.tables)
    tasks = raw.get("tasks", {})
    for field in ("backbones", "variants"):
        _names(path, where, field, sc[field], raw.get(field, {}))
    for field, how in shape.tasks.items():
        if how == TASK_KEY:
            _known(path, where, field, sc[field], tasks)
        else:
            _names(path, where, field, sc[field], tasks, nested=how == TASK_LISTS)
    _methods(path, where, kind, sc["variants"], raw.get("variants", {}))


def _methods(path: Path, where: str, kind: str, variants: list[str], pool: dict) -> None:
    """Every variant a patching scenario uses names a registered method."""
    from ..methods import METHODS

    if kind in FULL_TRAINING:  # trains the whole network, no method
        return
    for key in variants:
        method = pool[key].get("method", key)
        if method == "full" and kind in FULL_ALLOWED:
            continue
        if method not in METHODS:
            raise refuse(path, where, f"variant '{key}' names unknown method '{method}'; "
                                      f"choose from {', '.join(METHODS.names())}")
        try:  # the method's own --option keys, types and bounds, as `train --option` checks
            METHODS.get(method).check_options(pool[key].get("options", {}))
        except (ValueError, DeltaPatchError) as err:
            raise refuse(path, f"variants.{key}", f"options: {err}") from None


def check(path: Path, raw: dict) -> None:
    """Refuse a suite with a key no run understands, a value of the wrong type or out of
    bounds, a name nothing registers, a scenario naming a backbone, task or variant the suite
    does not define, or no scenario at all: each names the valid choices."""
    typed(path, "suite", raw, TOP)
    seeds = raw.get("seeds", 1)
    if not 1 <= seeds <= MAX_SEEDS:
        raise refuse(path, "suite", f"seeds must be in 1..{MAX_SEEDS}, got {seeds}")
    if not raw.get("name", path.stem).strip():
        raise refuse(path, "suite", "name is empty; leave it out to use the file's name")
    settings(path, "defaults", raw.get("defaults", {}), SETTINGS)
    for pool, schema in (("backbones", BACKBONE), ("tasks", TASK), ("variants", VARIANT)):
        for key, table in raw.get(pool, {}).items():
            _key(path, pool, key)
            settings(path, f"{pool}.{key}", table, schema)
            if pool == "tasks" and not table.get("data", key):
                raise refuse(path, f"tasks.{key}", "data is empty; name a data set")
    for key, table in raw.get("backbones", {}).items():
        _backbone(path, key, table)
    for key, table in raw.get("variants", {}).items():
        _variant(path, key, table)
    for i, item in enumerate(raw.get("not_implemented", [])):
        typed(path, f"not_implemented {i}", item, NOT_IMPLEMENTED)
    if not raw.get("scenarios"):
        raise refuse(path, "suite", "defines no [[scenarios]]: nothing would run (see "
                                    "suites/smoke.toml for the format)")
    for i, sc in enumerate(raw["scenarios"]):
        _scenario(path, i, sc, raw)


def data_exists(spec: str) -> bool:
    """Whether ``spec`` names data a run could read: a built-in name or an existing path (the
    loaders' own rule, without reading anything)."""
    return spec in BUILTINS or Path(spec).exists()


def missing_data(spec: str) -> str:
    return (f"data '{spec}' is neither a file, a folder, nor a built-in name "
            f"({', '.join(BUILTINS.names())})")


def weights_exist(backbone: str, weights: str | None) -> bool:
    """Whether ``weights`` is none, a named set of ``backbone``, or an existing file."""
    entry = BACKBONES.find(backbone)
    named = entry.named_weights if entry is not None else {}
    return weights is None or weights in named or Path(weights).is_file()


def factory_exists(backbone: str) -> bool:
    """A factory ``file.py:fn`` whose file exists (modules are found only by importing)."""
    where = backbone.rpartition(":")[0]
    return not (is_factory_ref(backbone) and where.endswith(".py")) or Path(where).is_file()
