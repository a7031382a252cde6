"""A patch: its config, its modules (Δ-stages + head), and its small folder on disk.

A patch folder holds ``config.json`` (what the patch is and which backbone it fits) and
``patch.safetensors`` (the patch's tensors only). Saving is atomic: the folder is written beside
the target and swapped in, so a failed save leaves an older patch intact. Loading checks the
config, the backbone fingerprint, and every tensor's name and shape before the model is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .delta import DeltaStage
from .errors import PatchError
from .preprocess import Preprocess

FORMAT = "deltapatch.patch/1"
CONFIG_FILE = "config.json"
TENSORS_FILE = "patch.safetensors"


@dataclass
class PatchConfig:
    """Everything needed to rebuild a patch's modules and to check it fits a backbone."""

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
    class_names: list[str] | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        from . import __version__

        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return {"format": FORMAT, "library_version": __version__, **d}

    @classmethod
    def from_json(cls, d: dict) -> PatchConfig:
        if d.get("format") != FORMAT:
            raise PatchError(f"not a deltapatch patch config (format {d.get('format')!r}, "
                             f"expected {FORMAT!r})")
        try:
            return cls(
                name=str(d["name"]), num_classes=int(d["num_classes"]),
                stages=[int(s) for s in d["stages"]], backbone=str(d["backbone"]),
                fingerprint=str(d["fingerprint"]),
                preprocess=Preprocess.from_dict(d["preprocess"]), gate=str(d["gate"]),
                norm=str(d["norm"]), reduction=int(d.get("reduction", 4)),
                method=str(d.get("method", "delta")),
                class_names=d.get("class_names"), extra=dict(d.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise PatchError(f"patch config is incomplete or malformed: {err!r}") from None


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
                               gate=config.gate, norm=config.norm, reduction=config.reduction)
            for s in config.stages
        })
        self.head = nn.Linear(feature_dim, config.num_classes)

    def delta(self, stage: int) -> DeltaStage | None:
        return self.deltas[str(stage)] if str(stage) in self.deltas else None


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


def _atomic_replace_dir(tmp: Path, target: Path) -> None:
    """Swap ``tmp`` in at ``target``; an old ``target`` survives until the new one is in place,
    and whatever else lived in it (a ``run/`` folder, metrics) moves into the new one."""
    old = None
    if target.exists():
        if not target.is_dir():
            raise PatchError(f"{target} exists and is not a folder")
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        for entry in old.iterdir():
            if entry.name not in (CONFIG_FILE, TENSORS_FILE):
                os.replace(entry, target / entry.name)
        shutil.rmtree(old, ignore_errors=True)


def save_patch_dir(patch: Patch, path: str | Path) -> Path:
    """Write ``patch`` to folder ``path`` atomically; returns the folder."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in patch.state_dict().items()}
        save_file(tensors, str(tmp / TENSORS_FILE), metadata={"format": FORMAT})
        (tmp / CONFIG_FILE).write_text(json.dumps(patch.config.to_json(), indent=2) + "\n")
        _atomic_replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_config(path: str | Path) -> PatchConfig:
    folder = Path(path)
    if not (folder / CONFIG_FILE).is_file():
        raise PatchError(f"{folder} is not a patch folder: no {CONFIG_FILE} in it")
    try:
        raw = json.loads((folder / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PatchError(f"{folder / CONFIG_FILE} is not valid JSON: {err}") from None
    return PatchConfig.from_json(raw)


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    file = Path(path) / TENSORS_FILE
    if not file.is_file():
        raise PatchError(f"{Path(path)} holds no {TENSORS_FILE}")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise PatchError(f"{file} is corrupt or truncated: {err}") from None


def check_tensors(patch: Patch, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse tensors whose names or shapes differ from what ``patch`` expects."""
    expected = patch.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise PatchError(f"patch tensors do not match its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for k, v in expected.items():
        if tensors[k].shape != v.shape:
            raise PatchError(f"patch tensor '{k}' has shape {tuple(tensors[k].shape)}, "
                             f"expected {tuple(v.shape)}")
        if tensors[k].dtype != v.dtype:
            raise PatchError(f"patch tensor '{k}' has dtype {tensors[k].dtype}, "
                             f"expected {v.dtype}")
