"""Δ-Patching (``delta``: Δ(n) via ``stages``) and the FC-only baseline (``linear``: a patch with
no Δ-stage, only a new head), plus the skip ablations of the paper's Table 8 as gates."""

from __future__ import annotations

from ..metrics import folder_bytes
from ..train import fit_patch
from .base import MethodContext, MethodOutcome, register_method


def _train_patch(ctx: MethodContext, stages, gate: str, norm: str, method: str) -> MethodOutcome:
    model = ctx.model
    model.add_patch(ctx.name, ctx.data.num_classes, stages=stages, gate=gate, norm=norm,
                    reduction=int(ctx.options.get("reduction", 4)),
                    class_names=ctx.data.class_names, method=method)
    result = fit_patch(model, ctx.name, ctx.data, ctx.train, run_dir=ctx.out / "run")
    model.save_patch(ctx.name, ctx.out)
    return MethodOutcome(
        patch_forward=lambda x: model(x, patch=ctx.name),
        base_forward=lambda x: model(x),
        trainable_params=model.trainable_parameters(ctx.name),
        patch_bytes=folder_bytes(ctx.out),
        extra={"best_epoch": result.best_epoch, "val_top1": result.best_val_top1,
               "train_seconds": round(result.seconds, 2),
               "stages": model.get_patch(ctx.name).config.stages},
    )


@register_method("delta")
def delta(ctx: MethodContext) -> MethodOutcome:
    return _train_patch(ctx, ctx.stages, ctx.gate, ctx.norm, "delta")


@register_method("linear")
def linear(ctx: MethodContext) -> MethodOutcome:
    return _train_patch(ctx, 0, "delta", "none", "linear")
