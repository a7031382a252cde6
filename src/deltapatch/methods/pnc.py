"""``pnc``: Partial Network Cloning (Ye, Liu & Wang, CVPR 2023), our reading for CNN patching.

PNC clones a part of a *source* network that knows the new task and inserts it, through a small
adapter, into the untouched *target* network; the inserted module can be removed to get the
target back exactly. Its learning scheme localises what to clone and searches where to insert it,
with network weights fixed. Our reading, on the Δ-Patching setting (one backbone, one new task):

1. **Source.** There is no source model for the new task, so we make one: a deep copy of the
   backbone fine-tuned with a new head (exactly the ``finetune`` method).
2. **Cloned module.** The source's suffix from stage ``l`` on (its stages ``l..n-1``, the
   pre-logit steps and the new head), copied verbatim and frozen. We do not implement PNC's
   filter-level localisation (pruning the module to the filters the new classes use); the unit we
   clone is a whole suffix of stages, so "partial" means "the last n−l stages".
3. **Insertion and adapter.** The target runs its own frozen stem and stages ``0..l-1``; an adapter
   x ↦ x + conv1x1(ReLU(BN(conv1x1(x)))) (last conv zero-initialised, so it starts as the identity)
   maps those features into the clone's input space. Only the adapter is trained (cross-entropy on
   the new task; the paper's network weights stay fixed).
4. **Position search.** Each candidate ``l`` (option ``pnc_positions``, default every stage) gets
   an adapter trained for ``pnc_search_epochs`` (default 1) epochs and scored on the validation
   split; the chosen ``l`` is the *latest* (smallest clone) whose score is within
   ``pnc_tolerance`` (default 0.01) of the best. Its adapter is then trained from scratch for the
   full epochs.
5. **Removable, and locality.** The base task is the untouched backbone (task id known), so its
   predictions cannot change: ``locality_routed`` measures it (base test predictions before
   PNC ran vs after). PNC's own locality is
   task-agnostic: the target's logits and the clone's are concatenated into one head and a base
   sample keeps its prediction only if a base class still wins; that is ``locality_merged``, next
   to ``patch_top1_merged`` (new-task accuracy in the same merged head).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ..batches import device_of, model_inputs, predict
from ..data.sets import ImageSet
from ..metrics import count_params, learned_values
from ..model import PatchedModel
from ..options import option
from ..patch import PatchConfig
from ..train import fit
from .artefact import beside, new_head, prefixed, save_task, unprefixed
from .base import Method, MethodContext, MethodOptions, MethodOutcome, register_method
from .copies import restored_copy
from .finetune import FineTuned, finetune_copy


class InsertAdapter(nn.Module):
    """x ↦ x + conv1x1(ReLU(BN(conv1x1(x)))); the identity at initialisation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ClonedBranch(nn.Module):
    """Target prefix (frozen, up to stage ``stage``) → adapter → cloned source suffix + head."""

    def __init__(self, model: PatchedModel, source: FineTuned, stage: int,
                 adapter: InsertAdapter) -> None:
        super().__init__()
        self.stage, self.adapter = stage, adapter
        self._model, self._source = [model], [source]  # not owned: neither is trained here

    def forward(self, x: Tensor) -> Tensor:
        model, source = self._model[0], self._source[0]
        with torch.no_grad():
            h = model.spec.stage_input(model.backbone, x, self.stage)
        h = self.adapter(h)
        return source.head(model.spec.features_from(source.net, h, self.stage))

    def clone_tensors(self) -> dict[str, Tensor]:
        """What the inserted module stores: the source suffix's tensors and the new head."""
        net = self._source[0].net
        paths = self._model[0].spec.suffix_paths(self.stage)
        state = net.state_dict()
        out = {k: v for k, v in state.items() if any(k.startswith(p + ".") for p in paths)}
        return {**prefixed("clone", out), **prefixed("head", self._source[0].head.state_dict())}


def _train_branch(model: PatchedModel, source: FineTuned, stage: int, ctx: MethodContext,
                  epochs: int, tag: str) -> tuple[ClonedBranch, float]:
    channels = model.stage_shapes()[stage].in_channels
    branch = ClonedBranch(model, source, stage, beside(model, InsertAdapter(channels)))
    config = dataclasses.replace(ctx.train, epochs=epochs)
    result = fit(branch, branch.adapter, ctx.data, model.preprocess, config,
                 ctx.out / "run" / tag)
    branch.eval()
    return branch, result.best_val_top1


def choose_position(scores: dict[int, float], tolerance: float) -> int:
    """The latest stage (smallest clone) whose val score is within ``tolerance`` of the best."""
    best = max(scores.values())
    return max(s for s, v in scores.items() if v >= best - tolerance)


@torch.inference_mode()
def merged_predictions(base: nn.Module, branch: nn.Module, images: ImageSet, preprocess
                       ) -> tuple[Tensor, Tensor]:
    """(base-head argmax, argmax over [base logits ; clone logits]) per image."""
    plain, merged = [], []
    device = device_of(base)
    for x, _ in images.batches(256):
        x = model_inputs(x, preprocess, device)
        b = base(x)
        plain.append(b.argmax(1))
        merged.append(torch.cat([b, branch(x)], 1).argmax(1))
    return torch.cat(plain).cpu(), torch.cat(merged).cpu()


def train(ctx: MethodContext) -> MethodOutcome:
    model = ctx.model
    opts = PncOptions.parse("pnc", ctx.options)
    base_test = ctx.base_data.test if ctx.base_data is not None else None
    before = (predict(model, base_test, model.preprocess, device=device_of(model))
              if base_test is not None else None)
    source_run = finetune_copy(model, ctx.data, ctx.train, ctx.out / "run" / "source")
    source_params = count_params(source_run.model, trainable=True)
    source = source_run.model.requires_grad_(False).eval()
    positions = (range(model.num_stages) if opts.pnc_positions is None
                 else [int(s) for s in opts.pnc_positions])
    scores = {s: _train_branch(model, source, s, ctx, opts.pnc_search_epochs, f"search-{s}")[1]
              for s in positions}
    stage = choose_position(scores, float(opts.pnc_tolerance))
    branch, val = _train_branch(model, source, stage, ctx, ctx.train.epochs, "adapter")
    tensors = {**prefixed("adapter", branch.adapter.state_dict()), **branch.clone_tensors()}
    nbytes = save_task(ctx, "pnc", tensors,
                       trainable_params=source_params + count_params(branch.adapter, trainable=True),
                       options={"insert_stage": stage,
                                "cloned_paths": model.spec.suffix_paths(stage)})
    adapter_params = count_params(branch.adapter, trainable=True)
    clone_params = learned_values({k: v for k, v in tensors.items()
                                   if not k.startswith("adapter.")})
    extra = {"insert_stage": stage, "insert_stage_name": model.stage_names[stage],
             "search_val_top1": {str(s): round(v, 6) for s, v in scores.items()},
             "val_top1": val, "source_val_top1": source_run.fit.best_val_top1,
             "adapter_params": adapter_params, "clone_params": clone_params,
             "source_trainable_params": source_params}
    n_base = model.base_classes
    if base_test is not None:
        plain, merged = merged_predictions(model, branch, base_test, model.preprocess)
        extra["locality_routed"] = float((plain == before).float().mean())
        extra["locality_merged"] = float((merged == before).float().mean())
    _, merged_new = merged_predictions(model, branch, ctx.data.test, model.preprocess)
    extra["patch_top1_merged"] = float((merged_new == ctx.data.test.labels + n_base)
                                       .float().mean())
    return MethodOutcome(
        patch_forward=branch, base_forward=lambda x: model(x),
        trainable_params=source_params + adapter_params,
        patch_bytes=nbytes, extra=extra)


def load(model: PatchedModel, config: PatchConfig, tensors: dict[str, Tensor]) -> MethodOutcome:
    """The cloned suffix is rebuilt on a copy of the target (only its cloned modules hold the
    stored tensors); the base task runs the untouched backbone."""
    stage = int(config.options["insert_stage"])
    if not 0 <= stage < model.num_stages:
        raise ValueError(f"insert_stage {stage} is not a stage of this backbone")
    net = restored_copy(model.backbone, unprefixed("clone", tensors),
                        paths=model.spec.suffix_paths(stage))
    source = FineTuned(net, new_head(model, config, tensors), model.spec).eval()
    adapter = beside(model, InsertAdapter(model.stage_shapes()[stage].in_channels))
    adapter.load_state_dict(unprefixed("adapter", tensors))
    branch = ClonedBranch(model, source, stage, adapter.requires_grad_(False)).eval()
    return MethodOutcome(patch_forward=branch, base_forward=lambda x: model(x),
                         trainable_params=0, patch_bytes=0)


@dataclasses.dataclass(frozen=True)
class PncOptions(MethodOptions):
    pnc_positions: list[int] | None = option(
        "ints", "stages tried as the insertion point (default: all)", min=0)
    pnc_search_epochs: int = option("int", "epochs per candidate position (default 1)", 1,
                                    min=1, max=100_000)
    pnc_tolerance: float = option("number", "val top-1 within which the earliest position wins "
                                  "(default 0.01)", 0.01, min=0, max=1)


def check(model: PatchedModel, stages, options: PncOptions) -> None:
    """Candidate positions must be stages of this backbone."""
    bad = [s for s in options.pnc_positions or [] if s >= model.num_stages]
    if bad:
        raise ValueError(f"pnc option pnc_positions: {bad} not in 0..{model.num_stages - 1}")


register_method(Method("pnc", "Partial Network Cloning: a fine-tuned suffix inserted through "
                       "an adapter (our reading, docs/METHODS.md)", train, load,
                       needs_base_data=True, default_lr=1e-3, check=check, options=PncOptions))
