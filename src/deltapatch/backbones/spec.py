"""How a CNN is seen as stem → stages of sub-blocks → pre-logits → head.

Δ-Patching needs to run a frozen network stage by stage and, inside a patched stage, sub-block by
sub-block with the residual branch and the shortcut kept apart. A :class:`StageSpec` says where
those pieces are in a model (module paths, or small callables for functional glue such as
``torch.flatten``), and :func:`register_block` says how one sub-block type splits into

    h_j = post(residual(h_{j-1}) + shortcut(h_{j-1}))

The built-in families use exactly this mechanism; a user brings their own CNN the same way (see the
README, "Bring your own CNN"). Nothing here copies or rewires the model: the base path always runs
the untouched module's own ``forward``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

import torch
from torch import Tensor, nn

Step = Union[str, Callable[[Tensor], Tensor]]
"""One step of a spec: a dotted module path in the model, or a callable on the tensor."""

BlockFn = Callable[[nn.Module, Tensor], Tensor]


def _identity(_block: nn.Module, x: Tensor) -> Tensor:
    return x


@dataclass(frozen=True)
class BlockSplit:
    """The three parts of one residual sub-block; each takes ``(block, x)``."""

    residual: BlockFn
    shortcut: BlockFn = _identity
    post: BlockFn = _identity


_BLOCKS: dict[type, BlockSplit] = {}


def register_block(
    cls: type, *, residual: BlockFn, shortcut: BlockFn = _identity, post: BlockFn = _identity
) -> None:
    """Tell deltapatch how sub-blocks of type ``cls`` split (subclasses inherit it)."""
    _BLOCKS[cls] = BlockSplit(residual=residual, shortcut=shortcut, post=post)


def block_split(block: nn.Module) -> BlockSplit:
    """The registered split of ``block``, looked up along its class hierarchy."""
    for cls in type(block).__mro__:
        if cls in _BLOCKS:
            return _BLOCKS[cls]
    raise TypeError(
        f"deltapatch does not know how a {type(block).__module__}.{type(block).__qualname__} "
        "sub-block splits into residual branch, shortcut and post-activation. Register it with "
        "deltapatch.register_block(YourBlock, residual=..., shortcut=..., post=...)."
    )


@dataclass(frozen=True)
class StageSpec:
    """Where stem, stages, transitions and head sit in one model.

    Attributes:
        stem: steps from the input to the first stage's input.
        stages: dotted paths of the stages; each must iterate over its sub-blocks in order
            (an ``nn.Sequential`` or ``nn.ModuleList``). A slice ``"path[i:j]"`` takes a run of
            blocks out of a flat list (EfficientNet's ``_blocks``) without changing the model.
        pre_logits: steps from the last stage's output to the head's input (pool, flatten, norm).
        head: dotted path of the classifier (an ``nn.Linear``).
        transitions: steps run before stage ``i`` that belong to no stage (ConvNeXt's
            downsampling layers, an EfficientNet block without a skip).
        names: optional display names of the stages (default: the paths).
    """

    stem: Sequence[Step]
    stages: Sequence[str]
    pre_logits: Sequence[Step]
    head: str
    transitions: Mapping[int, Sequence[Step]] = field(default_factory=dict)
    names: Sequence[str] | None = None

    def stage_names(self) -> list[str]:
        return list(self.names) if self.names is not None else list(self.stages)


_SPECS: dict[type, Callable[[nn.Module], StageSpec]] = {}


def register_spec(cls: type) -> Callable[[Callable[[nn.Module], StageSpec]], Callable]:
    """Decorator: ``fn(model) -> StageSpec`` describes every model of type ``cls``."""

    def deco(fn: Callable[[nn.Module], StageSpec]) -> Callable[[nn.Module], StageSpec]:
        _SPECS[cls] = fn
        return fn

    return deco


def spec_for(model: nn.Module) -> StageSpec:
    """The registered spec of ``model`` (looked up along its class hierarchy)."""
    for cls in type(model).__mro__:
        if cls in _SPECS:
            return _SPECS[cls](model)
    raise TypeError(
        f"deltapatch has no stage spec for {type(model).__qualname__}. Pass one: "
        "PatchedModel(model, spec=deltapatch.StageSpec(stem=[...], stages=[...], "
        "pre_logits=[...], head='fc')) and register its sub-block type with "
        "deltapatch.register_block (README: 'Bring your own CNN')."
    )


def resolve(model: nn.Module, step: Step) -> Callable[[Tensor], Tensor]:
    """A callable for one step: the submodule at a dotted path, or the callable itself."""
    if callable(step):
        return step
    try:
        return model.get_submodule(step)
    except AttributeError as err:
        raise ValueError(f"stage spec names '{step}', which is not a submodule: {err}") from None


_SLICE = re.compile(r"^(?P<path>[\w.]+)\[(?P<start>\d*):(?P<stop>\d*)\]$")


def stage_module(model: nn.Module, path: str) -> nn.Module:
    """The stage at ``path``: a submodule, or for ``"path[i:j]"`` a view of blocks i..j-1 of a
    flat block list. The view is an ``nn.Sequential`` that shares (never copies) the blocks and
    is not registered in ``model``, so the model's ``state_dict`` and forward stay untouched."""
    match = _SLICE.match(path)
    if match is None:
        return resolve(model, path)
    blocks = list(resolve(model, match["path"]))
    start = int(match["start"]) if match["start"] else None
    stop = int(match["stop"]) if match["stop"] else None
    return nn.Sequential(*blocks[start:stop])


def run_steps(model: nn.Module, steps: Iterable[Step], x: Tensor) -> Tensor:
    for step in steps:
        x = resolve(model, step)(x)
    return x


def flatten(x: Tensor) -> Tensor:
    """``torch.flatten(x, 1)``, the glue most ResNets use between pool and head."""
    return torch.flatten(x, 1)
