"""Reading weight files safely: safetensors, or torch files with ``weights_only=True``."""

from __future__ import annotations

import pickle
import re
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
    except pickle.UnpicklingError as err:  # torch's advice (weights_only=False) is not ours
        raise BackboneError(_unpickling(path, str(err))) from None
    except Exception as err:  # noqa: BLE001  (truncated, not a torch file, out of memory, ...)
        raise BackboneError(f"cannot read weights file {path}: {type(err).__name__}: "
                            f"{_first_line(err)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise BackboneError(f"{path} holds no state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _unpickling(path: Path, text: str) -> str:
    """One line for a torch file that ``weights_only=True`` refused: a pickle that asks for a
    Python object (named), or bytes that are no torch file at all."""
    wanted = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if wanted:
        return (f"refused weights file {path}: it holds pickled Python objects ({wanted.group(1)}"
                "), not only tensors, and deltapatch never runs a pickle; save a state dict "
                "of tensors (torch.save(model.state_dict(), ...)) or a .safetensors file")
    why = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    return (f"cannot read weights file {path}: not a torch file of tensors"
            f"{f' ({why.group(1).strip()})' if why else ''}; give a .safetensors file or a "
            "torch.save'd state dict")


def _first_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0][:300] if lines else ""
