"""Networks the baselines own: deep copies of the backbone (fine-tuning, PAINT, PNC's clone),
and the stage walk that runs such a copy through the backbone's :class:`StageSpec`.

The baselines keep what they train outside the user's backbone, so the base task keeps running
the untouched backbone bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from torch import Tensor, nn

from ..backbones.spec import StageSpec, run_steps, stage_module


def stage_input(net: nn.Module, spec: StageSpec, x: Tensor, stage: int) -> Tensor:
    """The input of stage ``stage`` (after its transition steps) when ``net`` sees ``x``."""
    h = run_steps(net, spec.stem, x)
    for s in range(stage):
        h = stage_module(net, spec.stages[s])(run_steps(net, spec.transitions.get(s, ()), h))
    return run_steps(net, spec.transitions.get(stage, ()), h)


def suffix_features(net: nn.Module, spec: StageSpec, h: Tensor, stage: int) -> Tensor:
    """Pre-logit features of ``net`` from the input ``h`` of stage ``stage`` onwards."""
    for s in range(stage, len(spec.stages)):
        if s > stage:
            h = run_steps(net, spec.transitions.get(s, ()), h)
        h = stage_module(net, spec.stages[s])(h)
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


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
