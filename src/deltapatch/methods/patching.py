"""Δ-Patching (``delta``: Δ(n) via ``stages``) and the FC-only baseline (``linear``: a patch with
no Δ-stage, only a new head). Their task folder is a :class:`~deltapatch.patch.Patch`'s."""

from __future__ import annotations

from ..metrics import folder_bytes
from ..model import PatchedModel
from ..patch import PatchConfig
from ..train import fit_patch
from .base import Method, MethodContext, MethodOptions, MethodOutcome, register_method
from .sequence import patch_per_task


def train_patch(ctx: MethodContext, method: str, stages, gate: str, norm: str) -> MethodOutcome:
    """Add a fresh patch named ``ctx.name`` (started as ``ctx.init`` says), train it, save it
    as ``ctx.out``."""
    model = ctx.model
    model.add_patch(ctx.name, ctx.data.num_classes, stages=stages, gate=gate, norm=norm,
                    reduction=MethodOptions.parse(method, ctx.options).reduction, init=ctx.init,
                    class_names=ctx.data.class_names, method=method)
    result = fit_patch(model, ctx.name, ctx.data, ctx.train, out=ctx.out)
    outcome = patch_outcome(model, ctx.name)
    outcome.patch_bytes = folder_bytes(ctx.out)
    outcome.extra = {"best_epoch": result.best_epoch, "val_top1": result.best_val_top1,
                     "train_seconds": round(result.seconds, 2),
                     "stages": model.get_patch(ctx.name).config.stages}
    return outcome


def patch_outcome(model: PatchedModel, name: str) -> MethodOutcome:
    return MethodOutcome(patch_forward=lambda x: model(x, patch=name),
                         base_forward=lambda x: model(x),
                         trainable_params=model.trainable_parameters(name), patch_bytes=0)


def load_patch(model: PatchedModel, config: PatchConfig, tensors: dict) -> MethodOutcome:
    """A Δ-family folder becomes a patch of ``model`` (refused, model unchanged, if unfit)."""
    return patch_outcome(model, model.attach_patch(config, tensors))


def check_reduction(model: PatchedModel, stages, options: MethodOptions) -> None:
    """The Δ-module's second width C/r must be at least one channel on every patched stage:
    past that, ``reduction`` would be silently clamped and the patch not the one asked for."""
    r = options.reduction
    for s in model.resolve_stages(stages):
        c = model.stage_shapes()[s].in_channels
        if r > c:
            raise ValueError(f"--reduction {r} leaves the Δ-module of stage "
                             f"{model.stage_names[s]} ({c} channels) under one channel; use "
                             f"1..{c}")


def patch_method(name: str, summary: str, train) -> Method:
    """A method whose task is one :class:`~deltapatch.patch.Patch` (Δ, FC-only, ablations)."""
    return register_method(Method(name, summary, train, load_patch,
                                  sequential=patch_per_task(train), check=check_reduction,
                                  batchable=True))


patch_method("delta", "Δ-Patching: Δ-modules on the chosen stages (--stages) + a new head",
             lambda ctx: train_patch(ctx, "delta", ctx.stages, ctx.gate, ctx.norm))
patch_method("linear", "FC-only baseline: a new head on the frozen backbone's features",
             lambda ctx: train_patch(ctx, "linear", 0, "delta", "none"))
