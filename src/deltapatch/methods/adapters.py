"""The adapted baselines of the paper's Table 1, as task-owned modules around a frozen backbone.

- ``adapter-series``: Rebuffi et al. 2017 residual adapters, a 1×1 conv (+BN) after each 3×3
  conv of the residual blocks, every BatchNorm of the network per-task, a new head.
- ``adapter-parallel``: Rebuffi et al. 2018, a 1×1 conv beside each 3×3 conv, per-task BNs,
  a new head.
- ``bn-adapt`` (:mod:`.bn_adapt`) uses the same hooks with per-task BatchNorms only.

The base task runs the untouched backbone with no hook; see :mod:`.taskhooks`.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..metrics import count_params
from ..model import PatchedModel
from ..patch import PatchConfig
from ..train import fit
from .artefact import beside, new_head, save_task
from .base import Method, MethodContext, MethodOutcome, register_method
from .taskhooks import TaskModules, adapted_convs, batchnorms


class HookedTask(nn.Module):
    """Runs the PatchedModel's frozen trunk with ``modules`` hooked in, then their head."""

    def __init__(self, model, modules: TaskModules) -> None:
        super().__init__()
        self.owned = modules
        self._model = [model]  # not a submodule: the backbone is not owned, nor saved

    def forward(self, x: Tensor) -> Tensor:
        model = self._model[0]
        with self.owned.active(model.backbone):
            return self.owned.head(model.features(x))


def train_hooked(ctx: MethodContext, method: str, mode: str | None) -> MethodOutcome:
    model = ctx.model
    bns = batchnorms(model.backbone)
    if not bns:
        raise ValueError(f"{method} needs BatchNorm layers; {model.backbone_name} has none")
    stages = [model.spec.stage_module(model.backbone, i) for i in range(model.spec.num_stages)]
    convs = adapted_convs(model.backbone, stages) if mode else []
    modules = beside(model, TaskModules(model.backbone, nn.Linear(model.feature_width,
                                                                  ctx.data.num_classes),
                                        bns, convs, mode))
    task = HookedTask(model, modules)
    result = fit(task, modules, ctx.data, model.preprocess, ctx.train, ctx.out / "run")
    modules.eval()
    nbytes = save_task(ctx, method, modules.state_dict(),
                       trainable_params=count_params(modules, trainable=True),
                       options={"batchnorms": bns, "adapted_convs": convs, "adapter_mode": mode})
    return MethodOutcome(
        patch_forward=task, base_forward=lambda x: model(x),
        trainable_params=count_params(modules, trainable=True), patch_bytes=nbytes,
        extra={"best_epoch": result.best_epoch, "val_top1": result.best_val_top1,
               "train_seconds": round(result.seconds, 2), "n_batchnorms": len(bns),
               "n_adapters": len(convs)},
    )


def load_hooked(model: PatchedModel, config: PatchConfig, tensors: dict[str, Tensor]
                ) -> MethodOutcome:
    opts = config.options
    modules = TaskModules(model.backbone, new_head(model, config, tensors), opts["batchnorms"],
                          opts["adapted_convs"], opts["adapter_mode"])
    modules.load_state_dict(tensors)
    modules.requires_grad_(False).eval()
    return MethodOutcome(patch_forward=HookedTask(model, modules),
                         base_forward=lambda x: model(x), trainable_params=0, patch_bytes=0)


for _mode, _paper in (("series", "Rebuffi et al. 2017"), ("parallel", "Rebuffi et al. 2018")):
    register_method(Method(
        f"adapter-{_mode}", f"residual adapters, {_mode} ({_paper}), per-task BNs, a new head",
        lambda ctx, m=_mode: train_hooked(ctx, f"adapter-{m}", m), load_hooked))
