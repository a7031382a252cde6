"""A patch: its config, its modules (Δ-stages + head), and its small folder on disk.

Every method's ``train --out`` folder has one format: ``config.json`` (what the task is, which
method made it, which backbone it fits, a content hash of the tensors) and ``patch.safetensors``.
:class:`PatchConfig` is that config for every method: a Δ-patch fills ``stages``/``gate``/
``norm``; a baseline keeps what it needs to rebuild itself in ``options``. Folders are written and
read only through :mod:`deltapatch.store` (atomic, locked, bounded); every config value is checked
against sane bounds here, before anything is built from it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import store
from .baseinit import INITS, LEGACY_INIT
from .delta import GATES, NORMS, DeltaStage
from .errors import PatchError
from .preprocess import MAX_SIZE, MIN_SIZE, Preprocess
from .registry import Registry
from .store import CONFIG_FILE, TENSORS_FILE

FORMAT = "deltapatch.patch/2"
LEGACY_FORMATS = ("deltapatch.patch/1",)  # Δ-patches written before content hashes
MAX_CLASSES = 100_000
MAX_NAME = 100

CLASSIFICATION = "classification"

__all__ = ["CLASSIFICATION", "CONFIG_FILE", "FORMAT", "HEADS", "TENSORS_FILE", "Patch",
           "PatchConfig", "StageShape", "check_head", "fingerprint", "read_config", "read_patch",
           "register_head", "write_patch"]


def class_labels(names: list[str] | None, num_classes: int) -> list[str]:
    """Each class's label: its name, or its index as text where the task has no names. The one
    labelling rule of local ``predict`` and the server, so both answer the same for any task."""
    return list(names) if names else [str(i) for i in range(num_classes)]


@dataclass
class PatchConfig:
    """Everything needed to rebuild one task's modules and to check they fit a backbone."""

    name: str
    num_classes: int
    stages: list[int]
    backbone: str
    fingerprint: str
    preprocess: Preprocess
    gate: str = "delta"
    norm: str = "output"
    reduction: int = 4
    method: str = "delta"
    init: str = LEGACY_INIT
    """How the patch started (:mod:`deltapatch.baseinit`); it also fixes the forward's form
    (clip vs sigmoid, gated vs plain norm), so it is part of what rebuilds the modules."""
    class_names: list[str] | None = None
    trainable_params: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """Method-specific facts (PAINT's α, the BatchNorms an adapter hooks, ...)."""
    task: str = CLASSIFICATION
    """The kind of head (:data:`HEADS`): a classifier, or a detection / segmentation head
    (:mod:`deltapatch.dense`) that reads the patched feature pyramid."""

    @property
    def labels(self) -> list[str]:
        return class_labels(self.class_names, self.num_classes)

    def to_json(self) -> dict:
        from . import __version__

        return {"format": FORMAT, "library_version": __version__, "method": self.method,
                "name": self.name, "num_classes": self.num_classes,
                "class_names": self.class_names, "backbone": self.backbone,
                "fingerprint": self.fingerprint, "preprocess": self.preprocess.to_dict(),
                "stages": self.stages, "gate": self.gate, "norm": self.norm,
                "reduction": self.reduction, "init": self.init,
                "trainable_params": self.trainable_params,
                "options": self.options, "task": self.task}

    @classmethod
    def from_json(cls, d: Any) -> PatchConfig:
        """A config from untrusted JSON: every field typed and bounded, or a :class:`PatchError`
        that names the field."""
        if not isinstance(d, dict):
            raise PatchError(f"patch config must be a JSON object, not {type(d).__name__}")
        fmt = d.get("format")
        if fmt != FORMAT and fmt not in LEGACY_FORMATS:
            raise PatchError(f"not a deltapatch patch config (format {fmt!r}, expected "
                             f"{FORMAT!r}); a folder from another tool or a newer deltapatch?")
        num_classes = _int(d, "num_classes", 1, MAX_CLASSES)
        names = d.get("class_names")
        if names is not None and (not isinstance(names, list) or len(names) != num_classes
                                  or not all(isinstance(n, str) and len(n) <= 1000 for n in names)):
            raise PatchError(f"patch config: class_names must be {num_classes} strings")
        stages = d.get("stages")
        if not isinstance(stages, list) or len(stages) > 64 or not all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 64 for s in stages):
            raise PatchError("patch config: stages must be a list of stage indices 0..63")
        options = d.get("options", d.get("extra", {}))
        if not isinstance(options, dict):
            raise PatchError("patch config: options must be a JSON object")
        trainable = d.get("trainable_params")
        return cls(
            name=check_name(_str(d, "name")), num_classes=num_classes,
            stages=sorted(set(stages)), backbone=_str(d, "backbone"),
            fingerprint=_str(d, "fingerprint"), preprocess=_preprocess(d.get("preprocess")),
            gate=_choice(d, "gate", sorted(GATES), "delta"),
            norm=_choice(d, "norm", NORMS, "output"),
            reduction=_int(d, "reduction", 1, 1024, default=4),
            init=_choice(d, "init", INITS, LEGACY_INIT),
            method=_str(d, "method", default="delta"), class_names=names,
            trainable_params=None if trainable is None else _int(d, "trainable_params", 0,
                                                                 10**12),
            options=options, task=_choice(d, "task", HEADS.names(), CLASSIFICATION))


def check_name(name: str) -> str:
    """A patch name usable as a routing key and a URL segment."""
    if (not name or len(name) > MAX_NAME or name == "__base__" or "." in name
            or any(c in name for c in "/\\\0") or not name.isprintable()):
        raise PatchError(f"invalid patch name {name!r}: 1-{MAX_NAME} printable characters, no "
                         "'.', '/' or '\\', not '__base__'")
    return name


def _int(d: dict, key: str, lo: int, hi: int, default: int | None = None) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise PatchError(f"patch config: {key} must be an integer in {lo}..{hi}, got {v!r}")
    return v


def _str(d: dict, key: str, default: str | None = None) -> str:
    v = d.get(key, default)
    if not isinstance(v, str) or not v or len(v) > 4096:
        raise PatchError(f"patch config: {key} must be a non-empty string, got {v!r}")
    return v


def _choice(d: dict, key: str, choices, default: str) -> str:
    v = d.get(key, default)
    if v not in choices:
        raise PatchError(f"patch config: {key} must be one of {', '.join(choices)}, got {v!r}")
    return v


def _preprocess(p: Any) -> Preprocess:
    def triple(v: Any, positive: bool) -> tuple[float, float, float]:
        ok = (isinstance(v, list) and len(v) == 3 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            and (x > 0 or not positive) for x in v))
        if not ok:
            raise PatchError("patch config: preprocess mean/std must be 3 finite numbers "
                             "(std > 0)")
        return tuple(float(x) for x in v)

    if not isinstance(p, dict):
        raise PatchError("patch config: preprocess must be an object {size, mean, std}")
    size = _int(p, "size", MIN_SIZE, MAX_SIZE)
    return Preprocess(size, triple(p.get("mean"), False), triple(p.get("std"), True))


@dataclass(frozen=True)
class StageShape:
    """What a Δ-stage needs to know of one backbone stage."""

    in_channels: int
    out_channels: int
    blocks: int


class Patch(nn.Module):
    """The task-owned modules: one :class:`DeltaStage` per patched stage and a new head."""

    def __init__(self, config: PatchConfig, shapes: list[StageShape], feature_dim: int) -> None:
        super().__init__()
        self.config = config
        self.deltas = nn.ModuleDict({
            str(s): DeltaStage(shapes[s].in_channels, shapes[s].out_channels, shapes[s].blocks,
                               gate=config.gate, norm=config.norm, reduction=config.reduction,
                               init=config.init)
            for s in config.stages
        })
        self.head = HEADS.get(config.task)(config, shapes, feature_dim)

    def delta(self, stage: int) -> DeltaStage | None:
        return self.deltas[str(stage)] if str(stage) in self.deltas else None


HeadBuilder = Callable[[PatchConfig, list[StageShape], int], nn.Module]
"""``build(config, stage shapes, pre-logit width)``: a task's head, sized by its config. A
builder bounds every size it reads from the config: configs come from untrusted files."""

HEADS: Registry[str, HeadBuilder] = Registry("task head")


def register_head(task: str, build: HeadBuilder, *, override: bool = False) -> HeadBuilder:
    return HEADS.register(task, build, override=override)


register_head(CLASSIFICATION, lambda config, _shapes, dim: nn.Linear(dim, config.num_classes))


def fingerprint(model: nn.Module) -> str:
    """sha256 of every parameter and buffer (names, dtypes, shapes, bytes): two backbones get
    the same fingerprint exactly when their weights and statistics are the same."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def write_patch(path: str | Path, config: PatchConfig, tensors: dict[str, torch.Tensor]) -> Path:
    """Write one task folder of any method (atomic, locked; see :mod:`deltapatch.store`)."""
    return store.write_folder(path, config.to_json(), tensors)


def read_config(path: str | Path) -> PatchConfig:
    """The checked config of a task folder, without reading its tensors."""
    return PatchConfig.from_json(store.read_config_json(path))


def read_patch(path: str | Path) -> tuple[PatchConfig, dict[str, torch.Tensor]]:
    """Config and tensors of a task folder: bounded, hash-checked, finite, never unpickled."""
    legacy = store.read_config_json(path).get("format") in LEGACY_FORMATS
    raw, tensors = store.read_folder(path, require_hash=not legacy)
    return PatchConfig.from_json(raw), tensors


def check_head(config: PatchConfig, tensors: dict[str, torch.Tensor], feature_dim: int) -> None:
    """The stored head must be ``num_classes × feature_dim``: checked before any module is
    built, so a config cannot make us allocate what its tensors do not hold. Other heads are
    bounded by their builders and checked tensor by tensor after building."""
    if config.task != CLASSIFICATION:
        return
    w = tensors.get("head.weight")
    if w is None or tuple(w.shape) != (config.num_classes, feature_dim):
        got = None if w is None else tuple(w.shape)
        raise PatchError(f"patch '{config.name}': head.weight has shape {got}, expected "
                         f"({config.num_classes}, {feature_dim}) for {config.num_classes} "
                         "classes on this backbone")


def check_tensors(module: nn.Module | Mapping[str, torch.Tensor],
                  tensors: dict[str, torch.Tensor]) -> None:
    """Refuse tensors whose names, shapes or dtypes differ from what ``module`` holds (a module,
    or the state dict a method expects)."""
    expected = module.state_dict() if isinstance(module, nn.Module) else module
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise PatchError(f"patch tensors do not match its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for k, v in expected.items():
        if tensors[k].shape != v.shape or tensors[k].dtype != v.dtype:
            raise PatchError(f"patch tensor '{k}' has shape {tuple(tensors[k].shape)} "
                             f"{tensors[k].dtype}, expected {tuple(v.shape)} {v.dtype}")
