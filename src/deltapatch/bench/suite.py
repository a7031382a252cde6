"""Suite files: a TOML description of a grid (backbones × tasks × method variants × seeds, per
scenario). Suites shipped with the package live in ``bench/suites/NAME.toml``; any other path
works too. See ``suites/smoke.toml`` for the annotated format.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

try:
    import tomllib  # Python >= 3.11
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

from ..baseinit import INITS
from ..errors import DeltaPatchError
from ..train import TrainConfig

SUITES_DIR = Path(__file__).with_name("suites")
TRAIN_KEYS = {f.name for f in fields(TrainConfig)} - {"seed", "progress"}
DATA_KEYS = {"max_train", "max_test", "max_val", "image_size", "base_image_size",
             "val_fraction"}
TUNING_KEYS = {"lr_grid"}  # one learning-rate grid for every method (bench/tuning.py)
SETTING_KEYS = TRAIN_KEYS | DATA_KEYS | TUNING_KEYS | {"lambda_images"}
"""Keys a suite's ``[defaults]``, task and variant tables may set: TrainConfig's fields and
RunSpec's data fields, the same definitions the CLI's flags come from, and ``lr_grid``."""
VARIANT_KEYS = {"method", "label", "stages", "gate", "norm", "init", "options"}
FULL_TRAINING = {"scratch", "transfer"}  # scenario kinds whose variants name no method
FULL_ALLOWED = {"zsda"}  # kinds that also take method = "full" (the whole network ± Δ)


@dataclass
class Backbone:
    key: str
    name: str
    weights: str | None
    base_data: str | None


@dataclass
class Task:
    key: str
    data: str
    settings: dict = field(default_factory=dict)  # data sizes and training overrides


@dataclass
class Variant:
    """A method with its options, e.g. ``delta`` with stages=1 is the variant "Δ(1)"."""

    key: str
    method: str
    label: str
    stages: int | list = 1
    gate: str = "delta"
    norm: str = "output"
    options: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)  # training overrides (e.g. finetune's lr)
    init: str | None = None  # how a patch starts (docs/INIT.md); None: the gate's default


@dataclass
class Suite:
    name: str
    path: Path
    description: str
    seeds: int
    defaults: dict
    backbones: dict[str, Backbone]
    tasks: dict[str, Task]
    variants: dict[str, Variant]
    scenarios: list[dict]
    not_implemented: list[dict]
    text: str
    device: torch.device = torch.device("cpu")  # where its runs train: not a setting

    def settings(self, *layers: dict) -> dict:
        """Suite defaults overridden by each layer in turn (task, then variant)."""
        out = dict(self.defaults)
        for layer in layers:
            out.update(layer)
        return out


def placed(suite: Suite, device: torch.device, precision: str = "fp32") -> Suite:
    """``suite`` run on ``device`` in ``precision``. The device is not a setting (records
    keep their fingerprints); a precision other than fp32 is, so its runs are new runs, while
    fp32 leaves every stored run's fingerprint as it was."""
    defaults = suite.defaults if precision == "fp32" else {**suite.defaults,
                                                            "precision": precision}
    return replace(suite, device=device, defaults=defaults)


def train_config(settings: dict, seed: int, progress: bool = False) -> TrainConfig:
    return TrainConfig(seed=seed, progress=progress,
                       **{k: v for k, v in settings.items() if k in TRAIN_KEYS})


def data_settings(settings: dict) -> dict:
    return {k: settings.get(k) for k in DATA_KEYS if k in settings}


def resolve(name_or_path: str) -> Path:
    """A shipped suite name (``smoke``, ``cpu``, ``paper``) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.exists():
        return path
    shipped = SUITES_DIR / f"{name_or_path}.toml"
    if shipped.exists():
        return shipped
    names = ", ".join(sorted(p.stem for p in SUITES_DIR.glob("*.toml")))
    raise DeltaPatchError(f"no suite '{name_or_path}': give a .toml path or one of {names}")


def load_suite(name_or_path: str) -> Suite:
    path = resolve(name_or_path)
    if tomllib is None:
        raise DeltaPatchError("reading suite files needs Python 3.11+ or `pip install tomli`")
    text = path.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise DeltaPatchError(f"{path}: {err}") from None
    backbones = {k: Backbone(k, v.get("name", k), v.get("weights") or None, v.get("base_data"))
                 for k, v in raw.get("backbones", {}).items()}
    tasks = {k: Task(k, v.get("data", k), {x: y for x, y in v.items() if x != "data"})
             for k, v in raw.get("tasks", {}).items()}
    variants = {}
    for k, v in raw.get("variants", {}).items():
        variants[k] = Variant(k, v.get("method", k), v.get("label", k), v.get("stages", 1),
                              v.get("gate", "delta"), v.get("norm", "output"),
                              v.get("options", {}),
                              {x: y for x, y in v.items() if x not in VARIANT_KEYS},
                              _init(path, k, v.get("init")))
    suite = Suite(raw.get("name", path.stem), path, raw.get("description", ""),
                  int(raw.get("seeds", 1)), raw.get("defaults", {}), backbones, tasks, variants,
                  raw.get("scenarios", []), raw.get("not_implemented", []), text)
    _check(suite)
    return suite


def _init(path: Path, variant: str, init) -> str | None:
    if init is not None and init not in INITS:
        raise DeltaPatchError(f"{path}: variant '{variant}' sets init = {init!r}; choose from "
                              f"{', '.join(INITS)}")
    return init


def _check(suite: Suite) -> None:
    """Refuse a suite with a key no run understands, a method that is not registered, or a
    scenario naming a backbone, task or variant it does not define: a typo must be an error
    that names the valid choices, never a silently skipped or silently default run."""
    from ..methods import METHODS

    layers = [("defaults", suite.defaults)]
    layers += [(f"tasks.{t.key}", t.settings) for t in suite.tasks.values()]
    layers += [(f"variants.{v.key}", v.settings) for v in suite.variants.values()]
    for where, layer in layers:
        unknown = sorted(set(layer) - SETTING_KEYS)
        if unknown:
            raise DeltaPatchError(f"{suite.path}: [{where}] sets unknown key(s) "
                                  f"{', '.join(unknown)}; valid: {', '.join(sorted(SETTING_KEYS))}")
        grid = layer.get("lr_grid")
        if grid is not None and (not isinstance(grid, list) or not grid or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and x > 0 for x in grid)):
            raise DeltaPatchError(f"{suite.path}: [{where}] lr_grid must be a non-empty list of "
                                  f"positive learning rates, got {grid!r}")
    for sc in suite.scenarios:
        if sc.get("kind") in FULL_TRAINING:  # trains the whole network, no method
            continue
        for v in (suite.variants.get(k) for k in sc.get("variants", [])):
            if v is None or (v.method == "full" and sc.get("kind") in FULL_ALLOWED):
                continue
            if v.method not in METHODS:
                raise DeltaPatchError(f"{suite.path}: variant '{v.key}' names unknown method "
                                      f"'{v.method}'; choose from {', '.join(METHODS.names())}")
    pools = {"backbones": suite.backbones, "tasks": suite.tasks, "variants": suite.variants}
    for i, sc in enumerate(suite.scenarios):
        if "kind" not in sc:
            raise DeltaPatchError(f"{suite.path}: scenario {i} has no 'kind'")
        for pool, items in pools.items():
            names = list(sc.get(pool, []))
            if pool == "tasks":
                names += [t for group in sc.get("groups", []) for t in group]
                names += [sc[k] for k in ("source", "target") if k in sc]
            for n in names:
                if n not in items:
                    raise DeltaPatchError(f"{suite.path}: scenario {i} ({sc['kind']}) names "
                                          f"unknown {pool[:-1]} '{n}'")
