"""Suite files: a TOML description of a grid (backbones × tasks × method variants × seeds, per
scenario). Suites shipped with the package live in ``bench/suites/NAME.toml``; any other path
works too. See ``suites/smoke.toml`` for the annotated format.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

try:
    import tomllib  # Python >= 3.11
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

from ..errors import DeltaPatchError
from ..train import TrainConfig
from .schema import (  # noqa: F401  (the key sets are part of this module's interface)
    DATA_KEYS,
    FULL_ALLOWED,
    FULL_TRAINING,
    MAX_SUITE_BYTES,
    SETTING_KEYS,
    SHAPES,
    TRAIN_KEYS,
    TUNING_KEYS,
    VARIANT_KEYS,
    check,
    data_exists,
    factory_exists,
    missing_data,
    refuse,
    weights_exist,
)

SUITES_DIR = Path(__file__).with_name("suites")


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
        if not path.is_file():
            raise DeltaPatchError(f"suite {path} is not a file")
        return path
    shipped = SUITES_DIR / f"{name_or_path}.toml"
    if shipped.exists():
        return shipped
    raise DeltaPatchError(f"no suite '{name_or_path}': give a .toml path or one of "
                          f"{', '.join(shipped_suites())}")


def shipped_suites() -> list[str]:
    """Names of the suites shipped with the package (``bench --suite NAME``), from the folder
    itself, so help and errors list every one."""
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def _parse(path: Path) -> tuple[dict, str]:
    """The file's TOML and text, read within a size bound."""
    if tomllib is None:
        raise DeltaPatchError("reading suite files needs Python 3.11+ or `pip install tomli`")
    if path.stat().st_size > MAX_SUITE_BYTES:
        raise DeltaPatchError(f"{path}: a suite file is at most {MAX_SUITE_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
        return tomllib.loads(text), text
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise DeltaPatchError(f"{path}: {err}") from None


def load_suite(name_or_path: str) -> Suite:
    """Read and check a suite in full (``schema.check``): every key, type, bound and name,
    before anything can run."""
    path = resolve(name_or_path)
    raw, text = _parse(path)
    check(path, raw)
    backbones = {k: Backbone(k, v.get("name", k), v.get("weights") or None, v.get("base_data"))
                 for k, v in raw.get("backbones", {}).items()}
    tasks = {k: Task(k, v.get("data", k), {x: y for x, y in v.items() if x != "data"})
             for k, v in raw.get("tasks", {}).items()}
    variants = {k: Variant(k, v.get("method", k), v.get("label", k), v.get("stages", 1),
                           v.get("gate", "delta"), v.get("norm", "output"), v.get("options", {}),
                           {x: y for x, y in v.items() if x not in VARIANT_KEYS}, v.get("init"))
                for k, v in raw.get("variants", {}).items()}
    return Suite(raw.get("name", path.stem), path, raw.get("description", ""),
                 raw.get("seeds", 1), raw.get("defaults", {}), backbones, tasks, variants,
                 raw["scenarios"], raw.get("not_implemented", []), text)


def selected(suite: Suite, only: set[str] | None = None) -> list[dict]:
    """The scenario entries that run: not ``skip``ped, and of a kind in ``only`` (if given)."""
    return [sc for sc in suite.scenarios
            if not sc.get("skip") and (not only or sc["kind"] in only)]


def check_sources(suite: Suite, entries: list[dict]) -> None:
    """Refuse, before any run starts, data, weights or factory files the runs of ``entries``
    would read but that are not there (names only: nothing is read or built)."""
    bbs = {b for sc in entries for b in sc["backbones"]}
    for key in sorted(bbs):
        bb = suite.backbones[key]
        if not factory_exists(bb.name):
            raise refuse(suite.path, f"backbones.{key}", f"no factory file for '{bb.name}'")
        if not weights_exist(bb.name, bb.weights):
            raise refuse(suite.path, f"backbones.{key}", f"weights '{bb.weights}' is neither "
                         f"a file nor a named set of '{bb.name}'")
        if bb.base_data is not None and not data_exists(bb.base_data):
            raise refuse(suite.path, f"backbones.{key}", missing_data(bb.base_data))
    tasks = {t for sc in entries for t in SHAPES.get(sc["kind"]).task_keys(sc)}
    for key in sorted(tasks):
        if not data_exists(suite.tasks[key].data):
            raise refuse(suite.path, f"tasks.{key}", missing_data(suite.tasks[key].data))
