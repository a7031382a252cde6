"""Helpers the baseline methods share: running a (copied) network through a :class:`StageSpec`,
counting trainable parameters, and writing a method's artefact (safetensors + config JSON).

The baselines keep what they train outside the user's backbone (a deep copy, or task-owned
modules), so the base task can keep running the untouched backbone bit for bit.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ..backbones.spec import StageSpec, run_steps
from ..data.sets import ImageSet
from ..metrics import folder_bytes

ARTEFACT_FORMAT = "deltapatch.method/1"
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "method.json"


def stage_input(net: nn.Module, spec: StageSpec, x: Tensor, stage: int) -> Tensor:
    """The input of stage ``stage`` (after its transition steps) when ``net`` sees ``x``."""
    h = run_steps(net, spec.stem, x)
    for s in range(stage):
        h = run_steps(net, spec.transitions.get(s, ()), h)
        h = net.get_submodule(spec.stages[s])(h)
    return run_steps(net, spec.transitions.get(stage, ()), h)


def suffix_features(net: nn.Module, spec: StageSpec, h: Tensor, stage: int) -> Tensor:
    """Pre-logit features of ``net`` from the input ``h`` of stage ``stage`` onwards."""
    for s in range(stage, len(spec.stages)):
        if s > stage:
            h = run_steps(net, spec.transitions.get(s, ()), h)
        h = net.get_submodule(spec.stages[s])(h)
    return run_steps(net, spec.pre_logits, h)


def trunk_features(net: nn.Module, spec: StageSpec, x: Tensor) -> Tensor:
    """Pre-logit features of any network laid out like ``spec`` (e.g. a fine-tuned copy)."""
    return suffix_features(net, spec, stage_input(net, spec, x, 0), 0)


def suffix_paths(spec: StageSpec, stage: int) -> list[str]:
    """Module paths run from the input of stage ``stage`` to the head's input."""
    paths = list(spec.stages[stage:])
    for s in range(stage + 1, len(spec.stages)):
        paths += [p for p in spec.transitions.get(s, ()) if isinstance(p, str)]
    return paths + [p for p in spec.pre_logits if isinstance(p, str)]


def trainable_copy(backbone: nn.Module, frozen: Iterable[str] = ()) -> nn.Module:
    """A deep copy of ``backbone`` with every parameter trainable except those under the
    ``frozen`` module paths; the original is not touched (its tensors are not shared)."""
    net = copy.deepcopy(backbone)
    net.requires_grad_(True)
    for path in frozen:
        net.get_submodule(path).requires_grad_(False)
    return net


def cap(images: ImageSet, n: int | None, seed: int) -> ImageSet:
    """At most ``n`` images of ``images``, a seeded random subset kept in the original order."""
    if n is None or n >= len(images):
        return images
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images.subset(order[:n].sort().values)


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def tensor_bytes(tensors: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def save_artefact(out: Path, tensors: dict[str, Tensor], config: dict) -> int:
    """Write ``weights.safetensors`` + ``method.json`` into ``out``; returns the folder's bytes
    (what a user must store for this task), counted the same way as a Δ-patch folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    save_file(flat, str(out / WEIGHTS_FILE), metadata={"format": ARTEFACT_FORMAT})
    (out / CONFIG_FILE).write_text(json.dumps({"format": ARTEFACT_FORMAT, **config}, indent=2)
                                   + "\n")
    return folder_bytes(out)


def prefixed(prefix: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


@torch.no_grad()
def snapshot(module: nn.Module) -> dict[str, Tensor]:
    """Detached clones of every parameter and buffer (to prove later that nothing changed)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
