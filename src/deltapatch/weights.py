"""Reading weight files safely: safetensors, or torch files with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from .errors import BackboneError


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path``; a ``module.`` prefix (DataParallel) and a ``state_dict``
    wrapper are undone. Never unpickles arbitrary objects."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise BackboneError(f"cannot read weights file {path}: {err}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneError(f"{path} holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}
