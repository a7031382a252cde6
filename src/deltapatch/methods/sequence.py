"""Sequential patching for methods whose tasks are separate modules (Δ, FC-only and the skip
ablations): each task gets its own patch and earlier ones are never touched, so the procedure is
"train every task in turn, then score every task"; what any forgetting would cost shows as
``drop_by_task``. PAINT carries its weights forward and has its own (:mod:`.paint`)."""

from __future__ import annotations

import torch

from ..batches import device_of, evaluate
from ..model import PatchedModel
from .base import BaseTask, MethodContext, Sequential, Train


def final_scores(after: dict[str, float], final: dict[str, float]) -> dict:
    """The numbers every sequential procedure reports, rounded alike."""
    return {"final_top1": {k: round(v, 6) for k, v in final.items()},
            "after_training_top1": {k: round(a, 6) for k, a in after.items()},
            "drop_by_task": {k: round(after[k] - final[k], 6) for k in after}}


def patch_per_task(train: Train) -> Sequential:
    def run(model: PatchedModel, contexts: list[MethodContext], base: BaseTask) -> dict:
        outcomes, after = [], {}
        device = device_of(model)
        for ctx in contexts:
            torch.manual_seed(ctx.train.seed)
            outcome = train(ctx)
            model.eval()
            after[ctx.name] = evaluate(outcome.patch_forward, ctx.data.test, model.preprocess,
                                       device=device)
            outcomes.append(outcome)
        final = {}
        if base.test is not None:
            final["base"] = evaluate(outcomes[-1].base_forward, base.test, model.preprocess,
                                     device=device)
        for ctx, outcome in zip(contexts, outcomes, strict=True):
            final[ctx.name] = evaluate(outcome.patch_forward, ctx.data.test, model.preprocess,
                                       device=device)
        return {**final_scores(after, final),
                "trainable_params": sum(o.trainable_params for o in outcomes),
                "patch_bytes": sum(o.patch_bytes for o in outcomes),
                "n_test": {ctx.name: len(ctx.data.test) for ctx in contexts}}
    return run
