"""``paint``: PAINT (Ilharco et al. 2022) for CNNs, as the Δ-Patching paper runs it.

Fine-tune all weights with a new head (on a deep copy, see :mod:`.finetune`), then interpolate
θ_α = (1−α)·θ_base + α·θ_ft for α ∈ {0, 0.1, …, 1}: the base task runs θ_α through the base head,
the patch task runs θ_α through the new head. α is picked on *validation* splits by the harmonic
mean of base and patch top-1 (sequential patching: the mean over all tasks so far, see
:func:`paint_sequential_step`). Interpolation happens in memory on one scratch network; only the
chosen θ_α is written.

BatchNorm buffers: running means and variances are floating-point state of θ and are
interpolated like the weights (the only choice that makes α=0 the base model and α=1 the
fine-tuned model exactly, and needs no base-task data to recompute statistics). Integer buffers
(``num_batches_tracked``) are not interpolable; they are taken from θ_base (they only matter for
``momentum=None`` cumulative averaging, which no backbone here uses).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..backbones.spec import StageSpec
from ..batches import device_of, evaluate
from ..data.sets import ImageSet, TaskData
from ..metrics import count_params, harmonic_mean, tensor_bytes
from ..model import PatchedModel
from ..options import option
from ..patch import PatchConfig
from ..preprocess import Preprocess
from ..train import FitResult, TrainConfig
from .artefact import new_head, prefixed, save_task, unprefixed
from .base import BaseTask, Method, MethodContext, MethodOptions, MethodOutcome, register_method
from .copies import restored_copy
from .finetune import finetune_copy
from .sequence import final_scores

ALPHAS: tuple[float, ...] = tuple(round(i / 10, 1) for i in range(11))


def interpolate(theta_0: dict[str, Tensor], theta_1: dict[str, Tensor],
                alpha: float) -> dict[str, Tensor]:
    """(1−α)·θ_0 + α·θ_1 for floating-point tensors; integer tensors come from θ_0.

    α = 0 and α = 1 return θ_0's and θ_1's tensors exactly (no rounding through the formula).
    """
    if set(theta_0) != set(theta_1):
        raise ValueError("cannot interpolate state dicts with different keys")
    out = {}
    for k, t0 in theta_0.items():
        t1 = theta_1[k]
        if not t0.is_floating_point() or alpha == 0:
            out[k] = t0
        elif alpha == 1:
            out[k] = t1
        else:
            out[k] = torch.lerp(t0, t1.to(t0.dtype), float(alpha))
    return out


SCORES: dict[str, Callable[[Sequence[float]], float]] = {
    "harmonic": lambda accs: harmonic_mean(*accs),
    "mean": lambda accs: sum(accs) / len(accs),
}


@dataclass
class EvalTask:
    """One task a PAINT network must still serve.

    Attributes:
        head: the task's classifier on the trunk's pre-logit features; ``None`` means the
            network's own head (the base task).
        val: split used to choose α; ``test``: optional split reported per α (paper Table 11).
    """

    name: str
    val: ImageSet
    head: nn.Module | None = None
    test: ImageSet | None = None


@dataclass
class AlphaChoice:
    alpha: float
    score: float
    table: list[dict] = field(default_factory=list)


def task_forward(net: nn.Module, spec: StageSpec, head: nn.Module | None
                 ) -> Callable[[Tensor], Tensor]:
    """Logits of one task on ``net``: its own head for the base task, else ``head``."""
    if head is None:
        return net
    return lambda x: head(spec.features(net, x))


def alpha_sweep(net: nn.Module, spec: StageSpec, theta_0: dict[str, Tensor],
                theta_1: dict[str, Tensor], tasks: Sequence[EvalTask], preprocess: Preprocess,
                alphas: Sequence[float] = ALPHAS, score: str = "harmonic") -> AlphaChoice:
    """Load θ_α into ``net`` for each α, score every task on its val split (and test split if
    given), pick α by ``score`` over the val top-1s, and leave ``net`` holding the chosen θ_α.

    Ties go to the smaller α (closer to the base model).
    """
    pick = SCORES[score]
    net.eval()
    best: AlphaChoice | None = None
    table = []
    for alpha in alphas:
        net.load_state_dict(interpolate(theta_0, theta_1, alpha))
        row: dict = {"alpha": alpha}
        vals = []
        for t in tasks:
            fwd = task_forward(net, spec, t.head)
            row[f"{t.name}_val"] = evaluate(fwd, t.val, preprocess, device=device_of(net))
            vals.append(row[f"{t.name}_val"])
            if t.test is not None:
                row[f"{t.name}_test"] = evaluate(fwd, t.test, preprocess,
                                                 device=device_of(net))
        row["score"] = pick(vals)
        table.append(row)
        if best is None or row["score"] > best.score:
            best = AlphaChoice(alpha, row["score"])
    best.table = table
    net.load_state_dict(interpolate(theta_0, theta_1, best.alpha))
    return best


@dataclass
class PaintStep:
    """The result of one (sequential) PAINT step."""

    net: nn.Module          # the interpolated network θ_α (base head inside)
    head: nn.Linear         # the new task's head
    choice: AlphaChoice
    finetune_fit: FitResult
    trainable_params: int   # what the fine-tuning trained (all but the old head) + new head


def paint_sequential_step(model: PatchedModel, previous: nn.Module | None,
                          tasks: Sequence[EvalTask], data: TaskData, config: TrainConfig,
                          run_dir: Path | None, name: str = "new",
                          alphas: Sequence[float] = ALPHAS, score: str = "mean") -> PaintStep:
    """One step of sequential PAINT (paper §3.1 "Sequential Patching" and Table 11).

    Fine-tunes a copy of ``previous`` (the last step's interpolated network; ``None`` for the
    first task, meaning the untouched backbone) with a new head on ``data``, then interpolates
    between ``previous`` and the fine-tuned weights and picks α by ``score`` ("mean" as the paper
    does for sequences) of the val top-1 over ``tasks`` (every earlier task *including the base
    task*, each with its head; the base task has ``head=None``) plus the new task itself.

    Neither ``previous`` nor the backbone is modified. Carry ``step.net`` into the next call
    and append ``EvalTask(name, data.val, step.head)`` to ``tasks``.
    """
    start = previous if previous is not None else model.backbone
    run = finetune_copy(model, data, config, run_dir, start=start)
    theta_0 = {k: v.detach().clone() for k, v in start.state_dict().items()}
    theta_1 = {k: v.detach().clone() for k, v in run.model.net.state_dict().items()}
    net = copy.deepcopy(run.model.net).requires_grad_(False).eval()
    all_tasks = [*tasks, EvalTask(name, data.val, run.model.head, data.test)]
    choice = alpha_sweep(net, model.spec, theta_0, theta_1, all_tasks, model.preprocess,
                         alphas, score)
    trained = count_params(run.model, trainable=True)
    return PaintStep(net, run.model.head.requires_grad_(False), choice, run.fit, trained)


def base_task(ctx: MethodContext) -> EvalTask:
    """The base task's val split (capped by option ``base_val_max``, default 2000) and test."""
    if ctx.base_data is None:
        raise ValueError("paint picks α on the base task's validation split: pass --base-data "
                         "(MethodContext.base_data)")
    limit = PaintOptions.parse("paint", ctx.options).base_val_max
    return EvalTask("base", ctx.base_data.val.sample(limit, ctx.train.seed, rng="torch"), None,
                    ctx.base_data.test)


def train(ctx: MethodContext) -> MethodOutcome:
    alphas = [float(a) for a in PaintOptions.parse("paint", ctx.options).alphas]
    step = paint_sequential_step(ctx.model, None, [base_task(ctx)], ctx.data, ctx.train,
                                 ctx.out / "run", name="patch", alphas=alphas, score="harmonic")
    net, head = step.net, step.head
    tensors = {**prefixed("net", net.state_dict()), **prefixed("head", head.state_dict())}
    nbytes = save_task(ctx, "paint", tensors, trainable_params=step.trainable_params,
                       options={"alpha": step.choice.alpha, "bn_buffers": "running stats "
                                "interpolated; num_batches_tracked from base"})
    return MethodOutcome(
        patch_forward=task_forward(net, ctx.model.spec, head), base_forward=net,
        trainable_params=step.trainable_params,
        patch_bytes=nbytes,
        extra={"alpha": step.choice.alpha, "alpha_score_val": round(step.choice.score, 6),
               "alpha_table": _rounded(step.choice.table),
               "finetune_best_epoch": step.finetune_fit.best_epoch,
               "finetune_val_top1": step.finetune_fit.best_val_top1},
    )


def _rounded(table: list[dict]) -> list[dict]:
    return [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()}
            for r in table]


def load(model: PatchedModel, config: PatchConfig, tensors: dict[str, Tensor]) -> MethodOutcome:
    """θ_α serves both tasks: the base task through the old head, the new one through its own."""
    net = restored_copy(model.backbone, unprefixed("net", tensors))
    head = new_head(model, config, tensors)
    return MethodOutcome(patch_forward=task_forward(net, model.spec, head), base_forward=net,
                         trainable_params=0, patch_bytes=0)


def sequential(model: PatchedModel, contexts: list[MethodContext], base: BaseTask) -> dict:
    """Sequential PAINT (paper §3.1, Table 11): fine-tune the last interpolated network on the
    next task, pick α by the mean val top-1 over all tasks so far (base included), carry θ_α
    forward."""
    if base.full is None:
        raise ValueError("sequential PAINT needs the base task's data (α is chosen on it)")
    full = base.full()
    val_max = PaintOptions.parse("paint", contexts[0].options).base_val_max
    tasks = [EvalTask("base", full.val.sample(val_max, contexts[0].train.seed, rng="torch"), None,
                      base.test)]
    previous, heads, after, steps = None, {}, {}, []
    device = device_of(model)
    for ctx in contexts:
        torch.manual_seed(ctx.train.seed)
        step = paint_sequential_step(model, previous, tasks, ctx.data, ctx.train,
                                     ctx.out / "run", name=ctx.name, score="mean")
        previous, heads[ctx.name] = step.net, step.head
        after[ctx.name] = evaluate(task_forward(step.net, model.spec, step.head),
                                   ctx.data.test, model.preprocess, device=device)
        tasks.append(EvalTask(ctx.name, ctx.data.val, step.head, ctx.data.test))
        steps.append(step)
    net = previous
    final = {"base": evaluate(net, base.test, model.preprocess, device=device)}
    for ctx in contexts:
        final[ctx.name] = evaluate(task_forward(net, model.spec, heads[ctx.name]),
                                   ctx.data.test, model.preprocess, device=device)
    last = steps[-1].choice
    stored = list(net.state_dict().values()) + [p for h in heads.values() for p in h.parameters()]
    return {**final_scores(after, final),
            "alpha_by_step": [s.choice.alpha for s in steps], "alpha": last.alpha,
            "alpha_table": _rounded(last.table),
            "trainable_params": max(s.trainable_params for s in steps),
            "patch_bytes": tensor_bytes(stored),
            "n_test": {ctx.name: len(ctx.data.test) for ctx in contexts}}


@dataclass(frozen=True)
class PaintOptions(MethodOptions):
    base_val_max: int = option("int", "base validation images α is chosen on (default 2000)",
                               2000, min=1)
    alphas: list[float] = option("numbers", f"the α tried (default {list(ALPHAS)})", ALPHAS,
                                 min=0, max=1)


register_method(Method("paint", "PAINT: fine-tune, then interpolate with the base weights "
                       "(α picked on validation)", train, load, needs_base_data=True,
                       default_lr=1e-3, sequential=sequential, options=PaintOptions))
