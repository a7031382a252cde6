"""The training loop: trains exactly the parameters of one owned module (a patch, or whatever a
method trains), with AdamW/SGD, linear warm-up + cosine decay, seeded augmentation, a validation
split, best-checkpoint keeping, per-epoch CSV/JSONL metrics and resume after interruption.
What differs between kinds of task (the batches of an epoch, the loss of a batch, the validation
score) is an :class:`Objective`: :class:`Classification` here, dense tasks in
:mod:`deltapatch.dense.train`; everything else comes once, in :func:`fit_objective`.

Every random draw of epoch e comes from a generator seeded with (seed, e), so a run resumed from
its checkpoint at an epoch boundary ends bit-identical to one never interrupted.

Training runs where the trained module is (:func:`deltapatch.devices.placement`): every batch
goes through :func:`model_inputs` (to the device, augmented and normalized there as a whole),
loss and accuracy are summed on the device and read once per epoch, and ``precision`` autocasts
the forward and loss (a grad scaler for fp16). On the CPU in fp32 this is the same arithmetic,
in the same order, as before devices existed: results and resumes are bit-identical.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import devices, distributed
from .batches import (  # noqa: F401  (evaluate, predict: long imported from here too)
    CPU,
    Forward,
    correct_count,
    device_of,
    evaluate,
    model_inputs,
    predict,
    sum_dtype,
)
from .data.augment import Crops, draw_crops
from .data.sets import ImageSet, TaskData
from .errors import DeltaPatchError
from .options import opt, validate
from .preprocess import ModelInput
from .progress import log, progress_bar

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    """How a task is trained. Each field's ``metadata`` (help, bounds, choices) is the one
    definition that the CLI's flags, the suite files' keys and validation are derived from."""

    epochs: int = field(default=10, metadata=opt("training epochs", min=1, max=100_000))
    batch_size: int = field(default=128, metadata=opt(
        "training batch size (CLI default: 128 images; 4 photos with --task detection or "
        "segmentation)", min=1, max=1 << 20))
    lr: float = field(default=1e-3, metadata=opt(
        "learning rate (CLI default: the method's, 1e-2 for patches, 1e-3 for methods that "
        "move pretrained weights)", min=1e-12, max=10.0))
    optimizer: str = field(default="adamw", metadata=opt("optimizer", choices=("adamw", "sgd")))
    weight_decay: float = field(default=1e-4, metadata=opt("weight decay", min=0.0, max=10.0))
    momentum: float = field(default=0.9, metadata=opt("SGD momentum", min=0.0, max=1.0))
    warmup_epochs: float = field(default=1.0, metadata=opt(
        "linear warm-up epochs before cosine decay", min=0.0))
    augment: bool = field(default=True, metadata=opt(
        "augment training images: random crop and horizontal flip (no flip for data whose "
        "labels a flip changes, e.g. digits); --no-augment trains on the images as they are"))
    seed: int = field(default=0, metadata=opt("seed", min=0))
    eval_batch_size: int = field(default=256, metadata=opt("evaluation batch size", min=1,
                                                            max=1 << 20))
    progress: bool = field(default=True, metadata=opt(
        "report progress: a bar while an epoch runs (only when stderr is a terminal) and one "
        "line per epoch on stderr; --no-progress prints neither, only the final JSON"))
    cache_features: str = field(default="auto", metadata=opt(
        "train on cached frozen-trunk features (auto: exactly when augmentation is off; on "
        "needs --no-augment)", choices=("auto", "on", "off")))
    cache_dtype: str = field(default="float32", metadata=opt(
        "storage of cached features (float16 / bfloat16 halve their memory)",
        choices=("float32", "float16", "bfloat16")))
    precision: str = field(default="fp32", metadata=opt(
        "autocast dtype of the trained forward and loss (fp16 adds a grad scaler); the base "
        "task always runs in the backbone's own dtype", choices=tuple(devices.PRECISIONS)))

    def __post_init__(self) -> None:
        validate(self)

    def settings(self) -> dict:
        """What a checkpoint must have been trained with to be resumed: every setting that
        changes the result (not the progress bar or the evaluation batch size). fp32 is left
        out, so checkpoints from before ``precision`` existed stay resumable."""
        d = asdict(self)
        for k in ("progress", "eval_batch_size"):
            d.pop(k)
        if d["precision"] == "fp32":
            del d["precision"]
        return d


@dataclass
class FitResult:
    best_epoch: int
    best_val_top1: float | None  # None: the objective has no validation split
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


OPTIMIZERS: dict[str, Callable[[list, TrainConfig], torch.optim.Optimizer]] = {
    "adamw": lambda ps, c: torch.optim.AdamW(ps, lr=c.lr, weight_decay=c.weight_decay),
    "sgd": lambda ps, c: torch.optim.SGD(ps, lr=c.lr, momentum=c.momentum,
                                         weight_decay=c.weight_decay, nesterov=True),
}


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total`` (0 after it)."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


class Local:
    """The single-process side of the training loop, with the interface of
    :class:`deltapatch.distributed.Shard` (what N torchrun ranks do): ``fit`` runs one loop and
    the two differ only here."""

    main = True

    def __init__(self, n_train: int) -> None:
        self.n_train = n_train
        self.device = CPU

    def broadcast(self, make: Callable[[], object]) -> object:
        return make()

    def prepare(self, owned: nn.Module, forward: Forward, seed: int) -> Forward:
        self.device = device_of(owned)
        return forward

    def epoch(self, data: TaskData, config: TrainConfig, g: torch.Generator
              ) -> Iterator[tuple[Tensor, Tensor, Crops | None]]:
        """The epoch's batches in ``g``'s order, each with its augmentation drawn from ``g``
        when it is drawn (applied on the device by :meth:`step`)."""
        for x, y in data.train.batches(config.batch_size, g):
            crops = draw_crops(len(x), x.shape[2], g, data.hflip) if config.augment else None
            yield x, y, crops

    def step(self, step: Forward, preprocess: ModelInput, batch: tuple
             ) -> tuple[Tensor, Tensor, Tensor, int]:
        """(the mean loss to backward, the summed loss, correct, rows); the sums stay on the
        device."""
        x, y, crops = batch
        logits = step(model_inputs(x, preprocess, self.device, crops))
        y = devices.to_device(y, self.device)
        loss = F.cross_entropy(logits, y)
        summed = loss.detach().to(sum_dtype(self.device)) * len(y)
        return loss, summed, (logits.argmax(1) == y).sum(), len(y)

    def sum(self, *values: Tensor | float) -> list[float]:
        return [float(v) for v in values]

    def evaluate(self, forward: Forward, val: ImageSet, preprocess: ModelInput,
                 batch_size: int) -> float:
        return evaluate(forward, val, preprocess, batch_size, self.device)

    def finish(self) -> None:
        pass


Loop = Local | distributed.Shard

ParamGroup = tuple[list[nn.Parameter], float]
"""Parameters and their learning rate as a multiple of ``TrainConfig.lr``."""

StepSums = tuple[Tensor, Tensor, Tensor | None, int]
"""What one step gives the loop: (the loss to backward, the batch's summed loss, its summed
training score or None, rows); the sums stay on the device until the epoch ends."""


class Objective(Protocol):
    """What one kind of task brings to :func:`fit_objective`; the optimizer, schedule,
    precision, device, checkpoint and resume, metrics files and progress are the loop's.

    ``train_score`` / ``val_score`` name the per-epoch columns of the summed training score and
    of :meth:`validate` (``None``: there is none; without validation the last epoch is kept)."""

    train_score: str | None
    val_score: str | None

    def param_groups(self, owned: nn.Module) -> list[ParamGroup]:
        """The trained parameters of ``owned``, grouped by learning-rate scale."""

    def batches(self, config: TrainConfig, g: torch.Generator) -> Iterable[Any]:
        """The epoch's host batches, every random draw taken from ``g``."""

    def step(self, step: Callable, batch: Any) -> StepSums:
        """One batch through ``step`` (the prepared forward) on the trained module's device."""

    def validate(self, forward: Callable, config: TrainConfig) -> float | None:
        """The validation score of the epoch (eval mode is set)."""


def trainable(owned: nn.Module) -> list[nn.Parameter]:
    """What the optimizer steps: a frozen part of ``owned`` (a backbone copy's frozen layers)
    is left out."""
    return [p for p in owned.parameters() if p.requires_grad]


@dataclass
class Classification:
    """Image classification: cross-entropy, top-1 on the validation split. The batches and
    the step are the loop's (:class:`Local`, or a torchrun rank's
    :class:`~deltapatch.distributed.Shard`), which own augmentation and the rows of a rank."""

    loop: Loop
    data: TaskData
    preprocess: ModelInput
    train_score: str | None = "train_top1"
    val_score: str | None = "val_top1"

    def param_groups(self, owned: nn.Module) -> list[ParamGroup]:
        return [(trainable(owned), 1.0)]

    def batches(self, config: TrainConfig, g: torch.Generator) -> Iterable[Any]:
        return self.loop.epoch(self.data, config, g)

    def step(self, step: Callable, batch: Any) -> StepSums:
        return self.loop.step(step, self.preprocess, batch)

    def validate(self, forward: Callable, config: TrainConfig) -> float:
        return self.loop.evaluate(forward, self.data.val, self.preprocess,
                                  config.eval_batch_size)


def fit(forward: Forward, owned: nn.Module, data: TaskData, preprocess: ModelInput,
        config: TrainConfig, run_dir: str | Path | None = None,
        set_mode: Callable[[bool], object] | None = None,
        shard: distributed.Shard | None = None) -> FitResult:
    """Train the parameters of ``owned`` that require grad so that ``forward`` fits ``data``.

    Args:
        forward: images → logits; it must only depend on trainable state through ``owned``.
        owned: what is trained, checkpointed and restored to its best validation epoch.
        set_mode: switches train/eval mode (default ``owned.train``); PatchedModel.train keeps
            the backbone in eval mode.
        run_dir: where checkpoint.pt, metrics.csv and metrics.jsonl go; an existing checkpoint
            there is resumed.
        shard: this rank's part under torchrun (default: found from the environment; without
            it, one process). :mod:`deltapatch.distributed` says how N processes train what
            one does.
    """
    loop: Loop = (shard or distributed.shard_for(data, device=device_of(owned))
                  or Local(len(data.train)))
    return fit_objective(Classification(loop, data, preprocess), loop, forward, owned, config,
                         run_dir, set_mode)


def fit_objective(objective: Objective, loop: Loop, forward: Callable, owned: nn.Module,
                  config: TrainConfig, run_dir: str | Path | None = None,
                  set_mode: Callable[[bool], object] | None = None) -> FitResult:
    """The training loop of every task: :func:`fit` with the task's parts (batches, loss,
    validation) taken from ``objective`` and the process side from ``loop`` (one process,
    or a torchrun rank). ``forward`` is what ``loop.prepare`` turns into the step function
    and what :meth:`Objective.validate` scores; the other arguments are :func:`fit`'s."""
    set_mode = set_mode or owned.train
    groups = [(ps, scale) for ps, scale in objective.param_groups(owned) if ps]
    if not groups:
        raise ValueError("nothing to train: the owned module has no parameter requiring grad")
    opt = OPTIMIZERS[config.optimizer]([{"params": ps, "lr": config.lr * scale}
                                        for ps, scale in groups], config)
    steps_per_epoch = math.ceil(loop.n_train / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    run = Path(run_dir) if run_dir is not None and loop.main else None
    settings = _settings(config, loop.n_train)
    state = _resume_shared(loop, run, owned, opt, settings)
    step = loop.prepare(owned, forward, config.seed)
    scaler = devices.grad_scaler(loop.device, config.precision)
    if state and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    optimizing = Optimizing(opt, scaler, [scale for _, scale in groups])
    try:  # a failed run leaves no swapped norm behind either
        start, history = (state["epoch"], state["history"]) if state else (0, [])
        best = state["best"] if state else {"epoch": 0, "val_top1": -1.0, "state": None}
        t0 = time.perf_counter() - (state["seconds"] if state else 0.0)
        for epoch in range(start, config.epochs):
            set_mode(True)
            sums = _train_epoch(objective, loop, step, optimizing, config, epoch,
                                (steps_per_epoch, total, warmup))
            set_mode(False)
            # read once per epoch; every rank gets the same numbers, so all keep the same best
            *sums, seen = loop.sum(*[v for v in sums if v is not None])
            val = objective.validate(forward, config)
            row = {"epoch": epoch + 1, "train_loss": sums[0] / seen,
                   **({objective.train_score: sums[1] / seen} if objective.train_score else {}),
                   **({objective.val_score: val} if objective.val_score else {}),
                   "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
            history.append(row)
            best = _best(best, val, epoch + 1, owned)
            if run is not None:
                _write_metrics(run, history)
                _checkpoint(run, owned, optimizing, epoch + 1, history, best, row["seconds"],
                            settings)
            if config.progress and loop.main:  # one line per epoch
                log(_epoch_line(row, objective, config.epochs))
    finally:
        loop.finish()
    if best["state"] is not None:
        owned.load_state_dict(best["state"])
    set_mode(False)
    return FitResult(best["epoch"], best["val_top1"], history, time.perf_counter() - t0)


def _best(best: dict, val: float | None, epoch: int, owned: nn.Module) -> dict:
    """The best epoch so far with a copy of its state; without validation (``val`` None) the
    last epoch, whose state is ``owned``'s own (no copy is kept or checkpointed twice)."""
    if val is None:
        return {"epoch": epoch, "val_top1": None, "state": None}
    if val > best["val_top1"]:
        return {"epoch": epoch, "val_top1": val,
                "state": {k: v.detach().clone() for k, v in owned.state_dict().items()}}
    return best


def _epoch_line(row: dict, objective: Objective, epochs: int) -> str:
    """The log line of an epoch: loss, then the objective's scores, then the time."""
    scores = [(short, row[key]) for short, key in (("train", objective.train_score),
                                                   ("val", objective.val_score)) if key]
    return "  ".join([f"epoch {row['epoch']}/{epochs}", f"loss {row['train_loss']:.4f}",
                      *(f"{short} {v:.4f}" for short, v in scores), f"{row['seconds']:.1f} s"])


@dataclass
class Optimizing:
    """The optimizer, the grad scaler (a pass-through but for fp16) and each parameter group's
    learning-rate scale (the schedule sets ``lr_at(step) × scale``)."""

    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    scales: list[float]


POSTFIX_EVERY = 25  # steps between the progress bar's loss readings (each one is a host sync)


def _train_epoch(objective: Objective, loop: Loop, step: Callable, optimizing: Optimizing,
                 config: TrainConfig, epoch: int, schedule: tuple[int, int, int]
                 ) -> tuple[Tensor, Tensor | None, int]:
    """One pass over this process's batches; (summed loss, summed training score or None,
    rows) seen here, the first two still on the device."""
    opt, scaler = optimizing.opt, optimizing.scaler
    steps_per_epoch, total, warmup = schedule
    device = loop.device
    loss_sum = torch.zeros((), dtype=sum_dtype(device), device=device)
    score = (torch.zeros((), dtype=torch.int64, device=device)
             if objective.train_score is not None else None)
    seen = 0
    bar = progress_bar(objective.batches(config, _epoch_generator(config.seed, epoch)),
                       total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                       enabled=config.progress and loop.main)
    for i, batch in enumerate(bar):
        lr = lr_at(epoch * steps_per_epoch + i, total, warmup, config.lr)
        for group, scale in zip(opt.param_groups, optimizing.scales, strict=True):
            group["lr"] = lr * scale
        # under torchrun: this rank's rows of the global batch; DDP averages the gradients
        with devices.autocast(device, config.precision):
            loss, batch_loss, right, n = objective.step(step, batch)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # fp32 / bf16: the scaler passes everything through
        scaler.step(opt)
        scaler.update()
        loss_sum += batch_loss
        if score is not None:
            score += right
        seen += n
        if hasattr(bar, "set_postfix") and i % POSTFIX_EVERY == 0 and seen:
            bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}")
    return loss_sum, score, seen


def _settings(config: TrainConfig, n_train: int) -> dict:
    """What a checkpoint must have been trained with to be resumed: every setting that changes
    the result (not the progress bar or the evaluation batch size), and the train split size."""
    return {**config.settings(), "n_train": n_train}


def _checkpoint(run: Path, owned: nn.Module, optimizing: Optimizing, epoch: int,
                history: list[dict], best: dict, seconds: float, settings: dict) -> None:
    """The state to resume from; the grad scaler's only where it scales (fp16), so fp32 and
    bf16 checkpoints hold what they always held."""
    opt, scaler = optimizing.opt, optimizing.scaler
    run.mkdir(parents=True, exist_ok=True)
    state = {"epoch": epoch, "owned": owned.state_dict(), "optimizer": opt.state_dict(),
             "history": history, "best": best, "seconds": seconds, "settings": settings}
    if scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    _replace(run / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def _replace(file: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary sibling, then rename it over ``file``: a Ctrl-C or SIGTERM (or a
    full disk) in between leaves the previous ``file`` whole and no temporary behind."""
    tmp = file.with_name(file.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _resume(run: Path, owned: nn.Module, opt: torch.optim.Optimizer, settings: dict
            ) -> dict | None:
    """The checkpoint in ``run``, loaded into ``owned`` and ``opt``; refused (nothing loaded)
    when it was made with other settings, since resuming would silently mix two runs."""
    file = run / CHECKPOINT
    if not file.exists():
        return None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        keys = {"epoch", "owned", "optimizer", "history", "best", "seconds"}
        if not isinstance(state, dict) or not keys <= set(state):
            raise ValueError("not a deltapatch training checkpoint")
    except Exception as err:  # truncated, empty, planted: any unreadable file is refused
        raise DeltaPatchError(f"{file} is unreadable ({type(err).__name__}: {str(err)[:200]}); "
                              "delete it to start afresh") from None
    old = state.get("settings")
    if old is not None and old != settings:
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        raise DeltaPatchError(
            f"{file} was trained with other settings ({', '.join(diff)}: "
            f"{[old.get(k) for k in diff]} there, {[settings.get(k) for k in diff]} now); "
            "delete that checkpoint to start afresh, or use another output folder")
    try:
        owned.load_state_dict(state["owned"])
        opt.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise DeltaPatchError(f"{file} does not fit this run ({str(err)[:200]}); delete it to "
                              "start afresh") from None
    return state


def _resume_shared(loop: Loop, run: Path | None, owned: nn.Module,
                   opt: torch.optim.Optimizer, settings: dict) -> dict | None:
    """The main process resumes from the run folder (or refuses, and every rank with it); other
    ranks load the state it broadcasts, so all continue from the same epoch and moments."""
    state = loop.broadcast(lambda: _resume(run, owned, opt, settings) if run else None)
    if state is not None and not loop.main:
        owned.load_state_dict(state["owned"])
        opt.load_state_dict(state["optimizer"])
    return state


def _write_metrics(run: Path, history: list[dict]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    _replace(run / "metrics.jsonl",
             lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in history)))
    _replace(run / "metrics.csv", lambda tmp: _write_csv(tmp, history))


def _write_csv(path: Path, history: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)


def fit_patch(model, name: str, data: TaskData, config: TrainConfig,
              run_dir: str | Path | None = None, out: str | Path | None = None) -> FitResult:
    """Train patch ``name`` of a :class:`~deltapatch.PatchedModel` on ``data``.

    Without augmentation (and ``cache_features`` not "off") the frozen trunk's output is computed
    once and training runs on it (:mod:`deltapatch.cache`): same model path, far less compute.

    Args:
        out: a task folder, as ``deltapatch train --out`` writes: the trained patch is saved
            there and its training state goes to ``out/run``, so every loader (``load_task``,
            ``eval``, ``predict``, ``verify``, ``serve --patches``) takes ``out``; running the
            same call again resumes.
        run_dir: the training state alone (checkpoint, metrics.csv, metrics.jsonl), without
            saving the patch (``out`` implies ``out/run``; give one of the two).
    """
    if out is not None and run_dir is not None:
        raise ValueError("give fit_patch out= (a task folder, run/ inside) or run_dir= (the "
                         "training state alone), not both")
    result = _fit_patch(model, name, data, config, Path(out) / "run" if out is not None else run_dir)
    if out is not None:
        model.save_patch(name, out)
    return result


def _fit_patch(model, name: str, data: TaskData, config: TrainConfig,
               run_dir: str | Path | None) -> FitResult:
    from .cache import cached_training, use_cache

    patch = model.get_patch(name)
    forward, pre = (lambda x: model(x, patch=name)), patch.config.preprocess
    shard = distributed.shard_for(data, device=device_of(patch))
    if use_cache(config.cache_features, config.augment):
        if shard is not None:  # under torchrun each rank caches only the images it owns
            data, shard.local = shard.take(data), True
        data, forward, pre = cached_training(model, name, data, pre, config.cache_dtype)
    return fit(forward, patch, data, pre, config, run_dir, set_mode=model.train, shard=shard)

