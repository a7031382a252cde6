"""Reading a baseline method's artefact (``weights.safetensors`` + ``method.json``, written by
:func:`.common.save_artefact`) back onto a wrapped backbone, so that ``deltapatch eval`` scores
a fine-tuned, PAINT, adapter, BN-adapted or PNC task exactly as ``train`` did.

Each method registers how it rebuilds its forwards from the stored tensors (``LOADERS``). The
format and the base fingerprint are checked before anything is built, tensor names and shapes as
they are loaded into fresh modules; the user's backbone is only read, never changed.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from ..errors import DeltaPatchError
from ..metrics import folder_bytes
from ..model import PatchedModel
from .base import MethodOutcome
from .common import ARTEFACT_FORMAT, CONFIG_FILE, WEIGHTS_FILE

Loader = Callable[[PatchedModel, dict, dict[str, Tensor]], MethodOutcome]
LOADERS: dict[str, Loader] = {}


class ArtefactError(DeltaPatchError):
    """A method artefact that cannot be read or does not fit the backbone."""


def register_loader(*methods: str):
    def deco(fn: Loader) -> Loader:
        for m in methods:
            LOADERS[m] = fn
        return fn
    return deco


def is_artefact(folder: Path) -> bool:
    return (Path(folder) / CONFIG_FILE).is_file()


def read_artefact(folder: Path) -> tuple[dict, dict[str, Tensor]]:
    """``(config, tensors)`` of an artefact folder, or an :class:`ArtefactError` saying what is
    wrong with it."""
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ArtefactError(f"{folder / CONFIG_FILE}: not a readable method config ({err})") from None
    if config.get("format") != ARTEFACT_FORMAT:
        raise ArtefactError(f"{folder}: format {config.get('format')!r}, expected "
                            f"{ARTEFACT_FORMAT!r}")
    if config.get("method") not in LOADERS:
        raise ArtefactError(f"{folder}: method {config.get('method')!r} has no loader; known: "
                            f"{', '.join(sorted(LOADERS))}")
    try:
        tensors = load_file(str(folder / WEIGHTS_FILE))
    except (OSError, SafetensorError) as err:
        raise ArtefactError(f"{folder / WEIGHTS_FILE}: cannot read the tensors ({err})") from None
    return config, tensors


def load_artefact(folder: Path, model: PatchedModel) -> tuple[dict, MethodOutcome]:
    """The artefact's config and its forwards on ``model``; refused before anything is built if
    it was trained on another backbone or other weights."""
    config, tensors = read_artefact(folder)
    if (config.get("backbone") != model.backbone_name
            or config.get("base_fingerprint") != model.fingerprint):
        raise ArtefactError(
            f"{folder}: made for backbone '{config.get('backbone')}' with weights fingerprint "
            f"{config.get('base_fingerprint')}; this model is '{model.backbone_name}' with "
            f"{model.fingerprint}. Load it onto the backbone and weights it was trained on.")
    try:
        outcome = LOADERS[config["method"]](model, config, tensors)
    except (KeyError, RuntimeError, ValueError) as err:  # missing / misshapen tensors
        raise ArtefactError(f"{folder}: tensors do not fit this backbone ({err})") from None
    outcome.patch_bytes = folder_bytes(folder)
    outcome.trainable_params = int(config.get("trainable_params") or 0)
    return config, outcome


def unprefixed(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`.common.prefixed`."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def new_head(model: PatchedModel, config: dict, tensors: dict[str, Tensor]) -> nn.Linear:
    head = nn.Linear(model._head.in_features, int(config["num_classes"]))
    head.load_state_dict(unprefixed("head", tensors))
    return head.eval()


def restored_copy(backbone: nn.Module, state: dict[str, Tensor], paths: list[str] | None = None
                  ) -> nn.Module:
    """A frozen copy of ``backbone`` holding ``state``: all of it, or (``paths``) only the
    modules under those paths, whose tensors must then all be present."""
    net = copy.deepcopy(backbone).requires_grad_(False).eval()
    missing = net.load_state_dict(state, strict=paths is None).missing_keys
    lost = [k for k in missing if paths and any(k.startswith(p + ".") for p in paths)]
    if lost:
        raise KeyError(f"missing tensors {lost[:3]}")
    return net
