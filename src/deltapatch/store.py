"""TEMPORARY stand-in for the crash-safe store (branch `store` replaces this file)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import PatchError

CONFIG_FILE = "config.json"
TENSORS_FILE = "patch.safetensors"
_HELD: set = set()


def content_hash(file: Path) -> str:
    return "sha256:" + hashlib.sha256(Path(file).read_bytes()).hexdigest()


class FolderLock:
    def __init__(self, target):
        self.target = Path(target)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def recover(target) -> None:
    return None


def check_writable(target) -> None:
    t = Path(target)
    if t.exists() and not t.is_dir():
        raise PatchError(f"{t} exists and is not a folder")


def write_folder(target, config: dict, tensors: dict) -> Path:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / TENSORS_FILE))
    cfg = {**config, "content_hash": content_hash(tmp / TENSORS_FILE)}
    (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    if target.exists():
        for e in target.iterdir():
            if e.name not in (CONFIG_FILE, TENSORS_FILE):
                os.replace(e, tmp / e.name)
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def read_config_json(folder) -> dict:
    f = Path(folder) / CONFIG_FILE
    if not f.is_file():
        raise PatchError(f"{folder} is not a patch folder: no {CONFIG_FILE} in it")
    try:
        d = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise PatchError(f"{f} is not valid JSON: {err}") from None
    if not isinstance(d, dict):
        raise PatchError(f"{f} is not a JSON object")
    return d


def read_folder(folder, *, check_finite: bool = True, require_hash: bool = True):
    config = read_config_json(folder)
    file = Path(folder) / TENSORS_FILE
    if not file.is_file():
        raise PatchError(f"{folder} holds no {TENSORS_FILE}")
    if "content_hash" in config and config["content_hash"] != content_hash(file):
        raise PatchError(f"{file} does not match its config (content hash)")
    try:
        tensors = load_file(str(file))
    except Exception as err:
        raise PatchError(f"{file} is corrupt or truncated: {err}") from None
    for k, t in tensors.items():
        if check_finite and t.is_floating_point() and not torch.isfinite(t).all():
            raise PatchError(f"tensor {k} holds NaN/Inf")
    return config, tensors
