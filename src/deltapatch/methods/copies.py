"""Networks the baselines own: deep copies of the backbone (fine-tuning, PAINT, PNC's clone) and
structural copies that share its tensors (LoRA's injected network).
They run through the backbone's own :class:`~deltapatch.StageSpec` walk (``spec.features(net,
x)``), the same one :class:`~deltapatch.PatchedModel` uses. The baselines keep what they train
outside the user's backbone, so the base task keeps running the untouched backbone bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from torch import Tensor, nn


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


def shared_copy(backbone: nn.Module) -> nn.Module:
    """A structural copy of ``backbone`` whose parameters and buffers ARE the backbone's tensors.

    A method that rewires modules (PEFT swaps each targeted Conv2d for a LoRA layer) does it on
    this copy, so the user's module tree, and with it the base path, stays untouched, while no
    weight memory is duplicated. The shared tensors must then never be written: keep the copy
    in eval mode (its BatchNorms would update the backbone's running statistics) and frozen.
    """
    memo = {id(t): t for t in (*backbone.parameters(), *backbone.buffers())}
    return copy.deepcopy(backbone, memo)
