"""``finetune``: all weights + a new head, trained on a deep copy of the backbone.

The user's backbone never changes (the copy shares no tensor with it). What fine-tuning costs the
*base* task is measured honestly: the base task is served by the fine-tuned trunk with the OLD
head (the copy's own, frozen head), which is what forgetting means. The stored artefact is the
whole fine-tuned network plus the new head, so ``patch_bytes`` is the size of a full model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from ..backbones.spec import StageSpec
from ..data.sets import TaskData
from ..metrics import count_params
from ..model import PatchedModel
from ..patch import PatchConfig
from ..train import FitResult, TrainConfig, fit
from .artefact import beside, new_head, prefixed, save_task, unprefixed
from .base import Method, MethodContext, MethodOutcome, register_method
from .copies import restored_copy, trainable_copy


class FineTuned(nn.Module):
    """A fine-tuned copy of the backbone (``net``, old head inside, frozen) + the new ``head``."""

    def __init__(self, net: nn.Module, head: nn.Linear, spec: StageSpec) -> None:
        super().__init__()
        self.net, self.head = net, head
        self.spec = spec

    def forward(self, x: Tensor) -> Tensor:
        """The new task's logits."""
        return self.head(self.spec.features(self.net, x))

    def base(self, x: Tensor) -> Tensor:
        """The base task's logits: the fine-tuned trunk through the old head."""
        return self.net(x)


@dataclass
class FineTuneRun:
    model: FineTuned
    fit: FitResult


def finetune_copy(model: PatchedModel, data: TaskData, config: TrainConfig,
                  run_dir: Path | None, start: nn.Module | None = None) -> FineTuneRun:
    """Fine-tune a deep copy of ``start`` (default: the backbone) with a new head on ``data``.

    ``start`` lets sequential PAINT continue from its previous interpolated network; it is
    copied too, never modified.
    """
    net = trainable_copy(start if start is not None else model.backbone, frozen=[model.spec.head])
    head = beside(model, nn.Linear(model.feature_width, data.num_classes))
    ft = FineTuned(net, head, model.spec)
    result = fit(ft, ft, data, model.preprocess, config, run_dir)
    ft.eval()
    return FineTuneRun(ft, result)


def train(ctx: MethodContext) -> MethodOutcome:
    run = finetune_copy(ctx.model, ctx.data, ctx.train, ctx.out / "run")
    ft = run.model
    tensors = {**prefixed("net", ft.net.state_dict()), **prefixed("head", ft.head.state_dict())}
    nbytes = save_task(ctx, "finetune", tensors, trainable_params=count_params(ft, trainable=True))
    return MethodOutcome(
        patch_forward=ft, base_forward=ft.base, trainable_params=count_params(ft, trainable=True),
        patch_bytes=nbytes,
        extra={"best_epoch": run.fit.best_epoch, "val_top1": run.fit.best_val_top1,
               "train_seconds": round(run.fit.seconds, 2)},
    )


def load(model: PatchedModel, config: PatchConfig, tensors: dict[str, Tensor]) -> MethodOutcome:
    ft = FineTuned(restored_copy(model.backbone, unprefixed("net", tensors)),
                   new_head(model, config, tensors), model.spec).eval()
    return MethodOutcome(patch_forward=ft, base_forward=ft.base, trainable_params=0,
                         patch_bytes=0)


register_method(Method("finetune", "every weight + a new head, on a copy of the backbone "
                       "(the base task runs the fine-tuned trunk: forgetting)", train, load,
                       default_lr=1e-3))
