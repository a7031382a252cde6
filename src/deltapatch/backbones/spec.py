"""How a CNN is seen as stem → stages of sub-blocks → pre-logits → head.

Δ-Patching needs to run a frozen network stage by stage and, inside a patched stage, sub-block by
sub-block with the residual branch and the shortcut kept apart. A :class:`StageSpec` says where
those pieces are in a model (module paths, or small callables for functional glue such as
``torch.flatten``), and :func:`register_block` says how one sub-block type splits into

    h_j = post(residual(h_{j-1}) + shortcut(h_{j-1}))

The built-in families use exactly this mechanism; a user brings their own CNN the same way (see
docs/BRING_YOUR_OWN.md). Nothing here copies or rewires the model: the base path always runs
the untouched module's own ``forward``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

import torch
from torch import Tensor, nn

from ..registry import Registry

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


BLOCKS: Registry[type, BlockSplit] = Registry("block split")


def register_block(cls: type, *, residual: BlockFn, shortcut: BlockFn = _identity,
                   post: BlockFn = _identity, override: bool = False) -> None:
    """Tell deltapatch how sub-blocks of type ``cls`` split (subclasses inherit it).

    A second registration of the same type raises :class:`~deltapatch.registry.RegistryError`
    unless ``override=True``: a silently replaced split changes the patched outputs of models
    already built.
    """
    BLOCKS.register(cls, BlockSplit(residual=residual, shortcut=shortcut, post=post),
                    override=override)


def block_split(block: nn.Module) -> BlockSplit:
    """The registered split of ``block``, looked up along its class hierarchy."""
    for cls in type(block).__mro__:
        split = BLOCKS.find(cls)
        if split is not None:
            return split
    raise TypeError(
        f"deltapatch does not know how a {type(block).__module__}.{type(block).__qualname__} "
        "sub-block splits into residual branch, shortcut and post-activation. Register it with "
        "deltapatch.register_block(YourBlock, residual=..., shortcut=..., post=...)."
    )


RunStage = Callable[[int, Tensor], Tensor]
"""``run_stage(s, h)``: how a walk runs stage ``s`` on its input (default: the stage's forward)."""


@dataclass(frozen=True)
class StageSpec:
    """Where stem, stages, transitions and head sit in one model, and the walk through them.

    The walk methods take the network as an argument, so one spec serves the backbone itself
    and any module laid out like it (a fine-tuned deep copy, say). With ``h_s`` the input of
    stage ``s`` (after its transition steps)::

        stage_input(net, x, s)          = h_s      (s == num_stages: the last stage's output)
        run_from(net, h_a, a, b)        = h_b      (so run_from(net, stage_input(net, x, 0), 0, s)
                                                    == stage_input(net, x, s))
        features_from(net, h_a, a)      = the head's input (pre-logit features)
        logits(net, x)                  = head(features_from(net, stage_input(net, x, 0), 0))

    ``PatchedModel`` proves on a probe batch that ``logits(backbone, x) == backbone(x)`` bit for
    bit (:func:`deltapatch.backbones.check.check_spec`).

    Attributes:
        stem: steps from the input to the first stage's input.
        stages: dotted paths of the stages; each must iterate over its sub-blocks in order
            (an ``nn.Sequential`` or ``nn.ModuleList``). A slice ``"path[i:j]"`` takes a run of
            blocks out of a flat list (EfficientNet's ``_blocks``) without changing the model.
        pre_logits: steps from the last stage's output to the head's input (pool, flatten, norm).
        head: dotted path of the classifier (an ``nn.Linear``).
        transitions: steps run before stage ``i`` that belong to no stage (ConvNeXt's
            downsampling layers, a block without a skip); keys are 0 .. num_stages - 1.
        names: optional display names of the stages (default: the paths).
    """

    stem: Sequence[Step]
    stages: Sequence[str]
    pre_logits: Sequence[Step]
    head: str
    transitions: Mapping[int, Sequence[Step]] = field(default_factory=dict)
    names: Sequence[str] | None = None

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def stage_names(self) -> list[str]:
        return list(self.names) if self.names is not None else list(self.stages)

    def stage_module(self, net: nn.Module, stage: int) -> nn.Module:
        """Stage ``stage`` of ``net`` (a submodule, or a view for a slice path)."""
        return stage_module(net, self.stages[stage])

    def head_module(self, net: nn.Module) -> nn.Module:
        return resolve(net, self.head)

    def transition(self, stage: int) -> Sequence[Step]:
        """The steps run just before stage ``stage`` (none for most stages)."""
        return self.transitions.get(stage, ())

    def stage_input(self, net: nn.Module, x: Tensor, stage: int,
                    run_stage: RunStage | None = None) -> Tensor:
        """h_stage: stem, stages before ``stage`` with their transitions, then ``stage``'s own
        transition. ``stage == num_stages`` gives the last stage's output."""
        h = run_steps(net, self.stem, x)
        return self.run_from(net, run_steps(net, self.transition(0), h), 0, stage, run_stage)

    def run_from(self, net: nn.Module, h: Tensor, start: int, stop: int | None = None,
                 run_stage: RunStage | None = None) -> Tensor:
        """From h_start (stage ``start``'s input) to h_stop: stages ``start .. stop-1`` and the
        transitions after them (``stop`` defaults to ``num_stages``: the last stage's output).

        ``run_stage(s, h)`` replaces a stage's own forward (a patched stage, a cached module).
        """
        n = self.num_stages
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise ValueError(f"stages {start}..{stop} out of range 0..{n}")
        for s in range(start, stop):
            h = run_stage(s, h) if run_stage is not None else self.stage_module(net, s)(h)
            if s + 1 < n:
                h = run_steps(net, self.transition(s + 1), h)
        return h

    def pyramid(self, net: nn.Module, x: Tensor, run_stage: RunStage | None = None
                ) -> list[Tensor]:
        """Every stage's output on images ``x`` (before the next stage's transition): the
        multi-scale features a detector or segmenter reads. Walked by the same steps as
        :meth:`stage_input`, so with ``run_stage=None`` each equals what the stage module
        itself returns inside ``net(x)``."""
        h = run_steps(net, self.transition(0), run_steps(net, self.stem, x))
        outs = []
        for s in range(self.num_stages):
            h = run_stage(s, h) if run_stage is not None else self.stage_module(net, s)(h)
            outs.append(h)
            if s + 1 < self.num_stages:
                h = run_steps(net, self.transition(s + 1), h)
        return outs

    def features_from(self, net: nn.Module, h: Tensor, start: int,
                      run_stage: RunStage | None = None) -> Tensor:
        """Pre-logit features (the head's input) from h_start onwards."""
        return run_steps(net, self.pre_logits, self.run_from(net, h, start, None, run_stage))

    def features(self, net: nn.Module, x: Tensor) -> Tensor:
        """Pre-logit features of ``net`` on images ``x``, walked stage by stage."""
        return self.features_from(net, self.stage_input(net, x, 0), 0)

    def logits(self, net: nn.Module, x: Tensor) -> Tensor:
        """``net``'s logits through the spec; equals ``net(x)`` for a correct spec."""
        return self.head_module(net)(self.features(net, x))

    def suffix_paths(self, start: int) -> list[str]:
        """Module paths run from h_start to the head's input: the stages (slice paths as
        written), later transitions and pre-logit steps that are paths (callables left out)."""
        paths = list(self.stages[start:])
        for s in range(start + 1, self.num_stages):
            paths += [p for p in self.transition(s) if isinstance(p, str)]
        return paths + [p for p in self.pre_logits if isinstance(p, str)]


SpecFn = Callable[[nn.Module], StageSpec]
SPECS: Registry[type, SpecFn] = Registry("stage spec")


def register_spec(cls: type, override: bool = False) -> Callable[[SpecFn], SpecFn]:
    """Decorator: ``fn(model) -> StageSpec`` describes every model of type ``cls``. A second
    registration for the same type raises unless ``override=True``."""

    def deco(fn: SpecFn) -> SpecFn:
        SPECS.register(cls, fn, override=override)
        return fn

    return deco


def has_spec(model: nn.Module) -> bool:
    """Whether :func:`spec_for` finds a spec for ``model`` (without building it)."""
    if isinstance(getattr(model, "deltapatch_spec", None), StageSpec):
        return True
    return any(SPECS.find(cls) is not None for cls in type(model).__mro__)


def spec_for(model: nn.Module) -> StageSpec:
    """The spec of ``model``: its ``deltapatch_spec`` attribute (set by a model factory, see
    docs/BRING_YOUR_OWN.md), else the one registered for its type or a base class."""
    own = getattr(model, "deltapatch_spec", None)
    if isinstance(own, StageSpec):
        return own
    for cls in type(model).__mro__:
        fn = SPECS.find(cls)
        if fn is not None:
            return fn(model)
    raise TypeError(
        f"deltapatch has no stage spec for {type(model).__qualname__}. Pass one: "
        "PatchedModel(model, spec=deltapatch.StageSpec(stem=[...], stages=[...], "
        "pre_logits=[...], head='fc')) and register its sub-block type with "
        "deltapatch.register_block (docs/BRING_YOUR_OWN.md)."
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
    flat block list. A view (also made for an ``nn.ModuleList`` stage, which has no forward) is
    an ``nn.Sequential`` that shares (never copies) the blocks and is not registered in
    ``model``, so the model's ``state_dict`` and forward stay untouched."""
    match = _SLICE.match(path)
    if match is None:
        stage = resolve(model, path)
        return nn.Sequential(*stage) if isinstance(stage, nn.ModuleList) else stage
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
