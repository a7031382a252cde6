"""``lora``: LoRA (Hu et al. 2021) on the Conv2d layers of the chosen stages, through the real
``peft`` package, + a new head: the baseline a user would reach for today.

- PEFT rewires modules (each targeted Conv2d becomes a ``peft`` LoRA layer around it). It does
  so on a :func:`~.copies.shared_copy` of the backbone, whose parameters and buffers are the
  backbone's own tensors: no weight memory is duplicated, the user's module tree is never
  rewired, and the base task runs the untouched backbone, bit for bit.
- The copy stays in eval mode all through training: its BatchNorms normalise with, and never
  update, the backbone's statistics (which it shares). Training them is how PEFT users end up
  with drifting BN statistics (PEFT issue #1732). Only LoRA's A/B and the head train.
- Rank ``"auto"`` (the default) is the smallest rank whose LoRA parameters are at least those
  of the Δ-patch the same run would train on the same stages (head excluded, counted on a
  throwaway :class:`~deltapatch.patch.Patch`), so Δ and LoRA compare at equal trainable
  parameters; ``rank_scale=2`` doubles it (the "one higher rank" of a comparison).
- Grouped (depthwise) convolutions are not targeted: PEFT needs the rank divisible by groups.
  PEFT builds A and B with a layer's own class and ``nn.Conv2d``'s arguments, which breaks
  Conv2d subclasses with another constructor; pointwise ones (EfficientNet-Lite's "same"-padding
  expand/project convs, whose padding is then zero) are swapped in the copy for a plain Conv2d
  on the same tensors, proved equal on a probe; other subclasses are not targeted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..backbones.catalog import family_init
from ..delta import resolve_init
from ..errors import DeltaPatchError, PatchError
from ..metrics import count_params
from ..model import PatchedModel
from ..options import option
from ..patch import Patch, PatchConfig, check_tensors
from ..train import fit
from .artefact import beside, new_head, prefixed, save_task, unprefixed
from .base import Method, MethodContext, MethodOptions, MethodOutcome, register_method
from .copies import shared_copy
from .finetune import FineTuned
from .sequence import patch_per_task

MAX_TARGETS = 10_000


def _peft():
    try:
        import peft
    except ImportError:
        raise DeltaPatchError("method lora needs the peft package: pip install "
                              "'deltapatch[lora]' (or pip install peft)") from None
    return peft


@dataclass(frozen=True)
class LoraOptions(MethodOptions):
    """``lora_alpha`` None is the rank: LoRA's scale alpha/rank is then 1 whatever the rank, so
    ranks compare at one scale."""

    rank: int | str = option("int", 'LoRA rank ("auto": the Δ-patch\'s parameter count)', "auto",
                             min=1, also=("auto",))
    rank_scale: int = option("int", "multiplies the automatic rank", 1, min=1)
    lora_alpha: float | None = option("number", "PEFT's lora_alpha > 0 (default: the rank)")
    targets: str | list[str] | None = option(
        "names", "Conv2d module names to adapt (default: the stages')")

    def __post_init__(self) -> None:
        if self.rank != "auto" and self.rank_scale != 1:
            raise ValueError("lora option rank_scale multiplies the automatic rank; with an "
                             "explicit rank leave it out")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"lora option lora_alpha must be a number > 0, got "
                             f"{self.lora_alpha!r}")

    @property
    def fixed_rank(self) -> int | None:
        """The rank asked for, or None for "auto"."""
        return None if self.rank == "auto" else int(self.rank)

    @property
    def target_names(self) -> tuple[str, ...] | None:
        if self.targets is None:
            return None
        return (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)


# ---------------------------------------------------------------- targets and ranks
def _plain(m: nn.Module) -> bool:
    return type(m).__init__ is nn.Conv2d.__init__


def _pointwise(m: nn.Conv2d) -> bool:
    """1×1, stride 1, no padding: whatever "same" padding a subclass computes is then zero."""
    return (tuple(m.kernel_size) == (1, 1) and tuple(m.stride) == (1, 1)
            and m.padding in ((0, 0), 0) and tuple(m.dilation) == (1, 1))


def _lora_convs(module: nn.Module) -> list[nn.Conv2d]:
    """The convs PEFT can adapt: ungrouped, and built like ``nn.Conv2d``, or pointwise of a
    subclass (EfficientNet-Lite's same-padding convs), which :func:`_peft_ready` swaps for a
    plain conv on the same tensors."""
    return [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.groups == 1
            and (_plain(m) or _pointwise(m))]


def _as_plain(conv: nn.Conv2d) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` holding the SAME weight and bias tensors as ``conv``; refused
    unless it computes exactly what ``conv`` computes on a probe (a subclass may do more than
    pad, e.g. standardise its weight)."""
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None,
                      device="meta")
    plain.weight, plain.bias = conv.weight, conv.bias
    probe = torch.randn(1, conv.in_channels, 3, 3,
                        generator=torch.Generator().manual_seed(0)).to(conv.weight)
    if not torch.equal(plain(probe), conv(probe)):
        raise ValueError(f"lora: {type(conv).__name__} does not compute a plain convolution; "
                         "PEFT cannot adapt it")
    return plain


def _peft_ready(net: nn.Module, targets: list[str]) -> None:
    """In the copy ``net``, swap each targeted conv PEFT cannot rebuild (a subclass with its own
    constructor: PEFT builds A and B with the layer's class and nn.Conv2d's arguments) for an
    exactly equivalent plain one."""
    for t in targets:
        m = net.get_submodule(t)
        if not _plain(m):
            parent, _, leaf = t.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, leaf, _as_plain(m))


def stage_convs(model: PatchedModel, stages: list[int]) -> list[str]:
    """Names in the backbone of the chosen stages' Conv2d layers that LoRA can adapt."""
    ids = {id(m) for s in stages for m in _lora_convs(model.spec.stage_module(model.backbone, s))}
    return [n for n, m in model.backbone.named_modules() if id(m) in ids]


def resolve_targets(model: PatchedModel, stages: list[int], wanted: tuple[str, ...] | None
                    ) -> list[str]:
    """The convs to adapt: all of ``stages``' by default, or those that ``wanted`` names the
    way PEFT's ``target_modules`` does (the full name, or a dotted suffix like ``conv1``)."""
    convs = stage_convs(model, stages)
    if not convs:
        raise ValueError(f"lora: no Conv2d that PEFT can adapt in stages {stages} of "
                         f"{model.backbone_name} (ungrouped convs only; ConvNeXt's stages have "
                         "none, docs/METHODS.md); choose other --stages or another method")
    if wanted is None:
        return convs
    unknown = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in convs)]
    if unknown:
        raise ValueError(f"lora option targets: {', '.join(unknown)} name(s) no Conv2d of "
                         f"the chosen stages; those are {', '.join(convs)}")
    return [n for n in convs if any(n == t or n.endswith("." + t) for t in wanted)]


def max_rank(model: PatchedModel, targets: list[str]) -> int:
    """The largest full rank among the targets: a higher rank adds parameters, not power."""
    return max(min(c.in_channels * c.kernel_size[0] * c.kernel_size[1], c.out_channels)
               for c in (model.backbone.get_submodule(t) for t in targets))


def delta_params(model: PatchedModel, ctx: MethodContext) -> int:
    """Trainable parameters, head excluded, of the Δ-patch this run would train on the same
    stages (same gate, norm, init and reduction), counted on a throwaway Patch."""
    gate = ctx.gate
    config = PatchConfig(name="count", num_classes=1, stages=model.resolve_stages(ctx.stages),
                         backbone=model.backbone_name, fingerprint=model.fingerprint,
                         preprocess=model.preprocess, gate=gate, norm=ctx.norm,
                         reduction=LoraOptions.parse("lora", ctx.options).reduction,
                         init=resolve_init(ctx.init, gate, family_init(model.backbone_name)))
    patch = Patch(config, model.stage_shapes(), model.feature_width)
    return count_params(patch, trainable=True) - count_params(patch.head, trainable=True)


def lora_net(model: PatchedModel, targets: list[str], rank: int, alpha: float) -> nn.Module:
    """A shared copy of the backbone with PEFT LoRA (adapter "default") on ``targets``: B = 0,
    so at step 0 it computes exactly the backbone's function."""
    peft = _peft()
    net = shared_copy(model.backbone)
    with torch.no_grad():
        _peft_ready(net, targets)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                             lora_dropout=0.0, bias="none")
    return peft.inject_adapter_in_model(config, net).eval()


def lora_params(model: PatchedModel, targets: list[str], rank: int) -> int:
    """LoRA's trainable parameters at ``rank``, counted on a throwaway injected copy."""
    return count_params(lora_net(model, targets, rank, float(rank)), trainable=True)


def auto_rank(model: PatchedModel, targets: list[str], budget: int) -> int:
    """The smallest rank whose LoRA parameters reach ``budget`` (LoRA's count is linear in the
    rank, A: r×in×k×k and B: out×r, so it is read off rank 1)."""
    return max(1, math.ceil(budget / lora_params(model, targets, 1)))


def _check_rank(model: PatchedModel, targets: list[str], rank: int) -> int:
    limit = max_rank(model, targets)
    if rank > limit:
        raise ValueError(f"lora rank {rank} exceeds the largest full rank {limit} of the "
                         "targeted convs; choose a smaller rank or rank_scale")
    return rank


def _targets(model: PatchedModel, stages, opts: LoraOptions) -> list[str]:
    _peft()
    targets = resolve_targets(model, model.resolve_stages(stages), opts.target_names)
    if opts.fixed_rank is not None:
        _check_rank(model, targets, opts.fixed_rank)
    return targets


def check(model: PatchedModel, stages, options: LoraOptions) -> None:
    """What ``run_one`` calls before it claims the run folder: peft, targets, the rank."""
    _targets(model, stages, options)


@dataclass(frozen=True)
class LoraPlan:
    targets: list[str]
    rank: int
    alpha: float
    delta_params: int | None = None  # the Δ count an automatic rank matched


def plan(model: PatchedModel, ctx: MethodContext) -> LoraPlan:
    """Targets, rank and alpha for ``ctx``; every option is checked before anything trains."""
    opts = LoraOptions.parse("lora", ctx.options)
    targets = _targets(model, ctx.stages, opts)
    if opts.fixed_rank is not None:
        return LoraPlan(targets, opts.fixed_rank, opts.lora_alpha or float(opts.fixed_rank))
    budget = delta_params(model, ctx)
    rank = _check_rank(model, targets, auto_rank(model, targets, budget) * opts.rank_scale)
    return LoraPlan(targets, rank, opts.lora_alpha or float(rank), budget)


# ---------------------------------------------------------------- the task
class LoraTask(FineTuned):
    """The LoRA-injected shared copy (``net``) walked by the backbone's StageSpec + the new
    head. Only the head follows ``train()``: the copy stays in eval mode (shared BN stats)."""

    def train(self, mode: bool = True) -> LoraTask:
        super().train(mode)
        self.net.eval()
        return self


def adapters(net: nn.Module) -> nn.ModuleList:
    """LoRA's A/B modules of every adapted layer (what trains, what a checkpoint keeps)."""
    layer = _peft().tuners.lora.LoraLayer
    return nn.ModuleList(nn.ModuleDict({"A": m.lora_A, "B": m.lora_B})
                         for m in net.modules() if isinstance(m, layer))


def train(ctx: MethodContext) -> MethodOutcome:
    model = ctx.model
    p = plan(model, ctx)
    net = lora_net(model, p.targets, p.rank, p.alpha)
    task = LoraTask(net, beside(model, nn.Linear(model.feature_width, ctx.data.num_classes)),
                    model.spec)
    owned = nn.ModuleDict({"lora": adapters(net), "head": task.head})
    result = fit(task, owned, ctx.data, model.preprocess, ctx.train, ctx.out / "run",
                 set_mode=task.train)
    task.eval()
    n_lora = count_params(owned["lora"], trainable=True)
    trainable = count_params(owned, trainable=True)
    tensors = {**prefixed("lora", _peft().get_peft_model_state_dict(net)),
               **prefixed("head", task.head.state_dict())}
    nbytes = save_task(ctx, "lora", tensors, trainable_params=trainable, options={
        "rank": p.rank, "lora_alpha": p.alpha, "targets": p.targets,
        "stages": model.resolve_stages(ctx.stages), "peft_version": _peft().__version__})
    return MethodOutcome(
        patch_forward=task, base_forward=lambda x: model(x), trainable_params=trainable,
        patch_bytes=nbytes,
        extra={"best_epoch": result.best_epoch, "val_top1": result.best_val_top1,
               "train_seconds": round(result.seconds, 2), "rank": p.rank, "lora_alpha": p.alpha,
               "rank_auto": p.delta_params is not None, "lora_params": n_lora,
               "delta_params": p.delta_params, "n_targets": len(p.targets),
               "stages": model.resolve_stages(ctx.stages)})


def _stored_plan(model: PatchedModel, options: dict) -> LoraPlan:
    """The stored rank, alpha and targets, checked against this backbone before a module is
    built (a config cannot make us allocate beyond the convs' own full rank)."""
    targets, rank = options.get("targets"), options.get("rank")
    alpha = options.get("lora_alpha")
    convs = set(stage_convs(model, list(range(model.num_stages))))
    if (not isinstance(targets, list) or not 0 < len(targets) <= MAX_TARGETS
            or len(set(map(str, targets))) != len(targets) or not set(targets) <= convs):
        raise PatchError("lora task: options.targets must list distinct adaptable Conv2d "
                         "layers of this backbone's stages")
    if (isinstance(rank, bool) or not isinstance(rank, int)
            or not 1 <= rank <= max_rank(model, targets)):
        raise PatchError(f"lora task: rank {rank!r} does not fit its targets")
    if alpha is None:
        raise PatchError("lora task: options.lora_alpha is missing")
    LoraOptions.parse("lora", {"lora_alpha": alpha})
    return LoraPlan(targets, rank, float(alpha))


def load(model: PatchedModel, config: PatchConfig, tensors: dict[str, Tensor]) -> MethodOutcome:
    p = _stored_plan(model, config.options)
    head = new_head(model, config, tensors)
    net = lora_net(model, p.targets, p.rank, p.alpha)
    peft = _peft()
    expected = {**prefixed("lora", peft.get_peft_model_state_dict(net)),
                **prefixed("head", head.state_dict())}
    check_tensors(expected, tensors)
    peft.set_peft_model_state_dict(net, unprefixed("lora", tensors))
    task = LoraTask(net, head, model.spec).requires_grad_(False).eval()
    return MethodOutcome(patch_forward=task, base_forward=lambda x: model(x),
                         trainable_params=0, patch_bytes=0)


register_method(Method(
    "lora", "PEFT LoRA on the Conv2d layers of the chosen stages (--stages; rank matched to "
    "Δ's parameters) + a new head; the base task runs the untouched backbone",
    train, load, sequential=patch_per_task(train), check=check, options=LoraOptions))
