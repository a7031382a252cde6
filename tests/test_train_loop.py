"""The training loop's bookkeeping: the schedule spans every step with its warm-up (each
parameter group at its scale), the caller's mode switch and loop are the ones used, a run's
settings record its train split size, a run with nothing to train says so, objectives without a
score or validation, the progress bar, bf16 autocast and the fp16 grad scaler's resume."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deltapatch import train
from deltapatch.data.sets import ImageSet, TaskData
from deltapatch.preprocess import Preprocess
from deltapatch.train import CHECKPOINT, TrainConfig, fit

N_TRAIN, BATCH, EPOCHS = 10, 4, 2


def _task() -> TaskData:
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> ImageSet:
        return ImageSet(torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8),
                        torch.arange(n) % 2)
    return TaskData("t", split(N_TRAIN), split(4), split(4), ["a", "b"])


def _owned() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": EPOCHS, "batch_size": BATCH, "lr": 0.05,
                          "warmup_epochs": 0.5, "progress": False, "augment": False, **kw})


def test_the_schedule_spans_every_step_with_its_warmup(monkeypatch):
    calls = []
    real = train.lr_at
    monkeypatch.setattr(train, "lr_at", lambda *a: calls.append(a) or real(*a))
    owned = _owned()
    result = fit(owned, owned, _task(), Preprocess(8), _config())
    per_epoch = math.ceil(N_TRAIN / BATCH)  # 3
    total, warmup = per_epoch * EPOCHS, round(0.5 * per_epoch)  # 6 steps, 2 of warm-up
    assert calls == [(s, total, warmup, 0.05) for s in range(total)]
    assert result.history[-1]["lr"] == real(total - 1, total, warmup, 0.05)  # scale 1


def test_the_callers_mode_switch_is_the_one_used():
    modes = []
    owned = _owned()
    fit(owned, owned, _task(), Preprocess(8), _config(), set_mode=modes.append)
    assert modes == [True, False] * EPOCHS + [False]  # train, validate; eval at the end


def test_a_checkpoint_records_the_train_split_size(tmp_path):
    owned = _owned()
    fit(owned, owned, _task(), Preprocess(8), _config(epochs=1), run_dir=tmp_path)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["settings"]["n_train"] == N_TRAIN


def test_nothing_to_train_is_refused_before_a_step():
    owned = _owned().requires_grad_(False)
    with pytest.raises(ValueError, match="^nothing to train: the owned module has no parameter "
                                         "requiring grad$"):
        fit(owned, owned, _task(), Preprocess(8), _config())


def test_each_epoch_row_holds_its_mean_loss_scores_rate_and_time(monkeypatch):
    """With a frozen-in-place model (lr 1e-12) the epoch's mean loss is the model's own
    cross-entropy on the train split; scores are fractions; the clock is a fake one so that
    the times are exact: 100 at the start, 105 at every later reading."""
    clock = iter([100.0])
    monkeypatch.setattr(train, "time", SimpleNamespace(perf_counter=lambda: next(clock, 105.0)))
    owned, data = _owned(), _task()
    with torch.no_grad():
        x = Preprocess(8).normalize(data.train.images)
        expected = F.cross_entropy(owned(x), data.train.labels).item()
    result = fit(owned, owned, data, Preprocess(8), _config(lr=1e-12, epochs=1))
    (row,) = result.history
    assert set(row) == {"epoch", "train_loss", "train_top1", "val_top1", "lr", "seconds"}
    assert row["train_loss"] == pytest.approx(expected, rel=1e-5)
    assert 0 <= row["train_top1"] <= 1 and 0 <= row["val_top1"] <= 1
    assert row["seconds"] == 5.0 and result.seconds == 5.0


def test_the_first_of_equally_good_epochs_is_the_best():
    """lr 1e-12 leaves every epoch's validation score the same: the earliest is kept."""
    owned = _owned()
    result = fit(owned, owned, _task(), Preprocess(8), _config(lr=1e-12, epochs=3))
    assert len({r["val_top1"] for r in result.history}) == 1 and result.best_epoch == 1


def test_a_resumed_run_counts_its_time_from_the_checkpoint(monkeypatch, tmp_path):
    clock = iter([100.0])
    monkeypatch.setattr(train, "time", SimpleNamespace(perf_counter=lambda: next(clock, 105.0)))
    real = train._epoch_generator

    def stop_at_the_second(seed: int, epoch: int) -> torch.Generator:
        if epoch == 1:
            raise KeyboardInterrupt  # Ctrl-C after the first epoch's checkpoint
        return real(seed, epoch)
    monkeypatch.setattr(train, "_epoch_generator", stop_at_the_second)
    owned = _owned()
    with pytest.raises(KeyboardInterrupt):
        fit(owned, owned, _task(), Preprocess(8), _config(epochs=2), run_dir=tmp_path)
    monkeypatch.setattr(train, "_epoch_generator", real)
    monkeypatch.setattr(train, "time", SimpleNamespace(perf_counter=lambda: 200.0))
    owned = _owned()
    result = fit(owned, owned, _task(), Preprocess(8), _config(epochs=2), run_dir=tmp_path)
    assert [r["seconds"] for r in result.history] == [5.0, 5.0] and result.seconds == 5.0


@pytest.mark.parametrize("progress", [True, False])
def test_progress_logs_one_line_per_epoch_and_nothing_without_it(progress, capsys):
    owned = _owned()
    fit(owned, owned, _task(), Preprocess(8), _config(progress=progress))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("epoch ")]
    if progress:
        assert len(lines) == EPOCHS
        assert all(re.fullmatch(rf"epoch {e}/{EPOCHS}  loss \d\.\d{{4}}  train \d\.\d{{4}}  "
                                r"val \d\.\d{4}  \d+\.\d s", ln)
                   for e, ln in enumerate(lines, 1)), lines
    else:
        assert lines == []


def _scored_task(n: int) -> TaskData:
    """``n`` training images (the other splits as in ``_task``)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    data = _task()
    return TaskData("t", ImageSet(x, torch.arange(n) % 2), data.val, data.test, data.class_names)


def test_the_train_score_counts_every_rows_right_answer():
    """With a frozen-in-place model (lr 1e-12) the epoch's train_top1 is the model's own top-1
    on the whole train split: every batch's correct rows are counted, argmax over the classes."""
    owned, data = _owned(), _task()
    with torch.no_grad():
        logits = owned(Preprocess(8).normalize(data.train.images))
    expected = (logits.argmax(1) == data.train.labels).sum().item() / N_TRAIN
    assert 0 < expected < 1  # neither all right nor all wrong: a miscount shows
    result = fit(owned, owned, data, Preprocess(8), _config(lr=1e-12, epochs=1))
    assert result.history[0]["train_top1"] == expected


@dataclass
class _Unscored(train.Classification):
    """Classification without a training score and/or without validation, as a dense task has
    neither: its step gives None for the score and its validation None."""

    train_score: str | None = None
    val_score: str | None = None

    def step(self, step, batch):
        loss, summed, right, n = super().step(step, batch)
        return loss, summed, right if self.train_score else None, n

    def validate(self, forward, config):
        return super().validate(forward, config) if self.val_score else None


@pytest.mark.parametrize("train_score,val_score", [(None, None), ("train_top1", None),
                                                   (None, "val_top1")])
def test_an_objective_without_a_score_trains_and_its_columns_are_left_out(
        train_score, val_score, tmp_path):
    """A column is written only for a score the objective has; without validation the last
    epoch is the result (no best copy kept: the checkpoint's best has no state)."""
    owned, data = _owned(), _task()
    loop = train.Local(N_TRAIN)
    objective = _Unscored(loop, data, Preprocess(8), train_score, val_score)
    result = train.fit_objective(objective, loop, owned, owned, _config(epochs=3), tmp_path)
    keys = {"epoch", "train_loss", "lr", "seconds"} | {k for k in (train_score, val_score) if k}
    assert all(set(row) == keys for row in result.history)
    best = torch.load(tmp_path / CHECKPOINT, weights_only=True)["best"]
    if val_score is None:
        assert (result.best_epoch, result.best_val_top1) == (3, None)
        assert best == {"epoch": 3, "val_top1": None, "state": None}
        last = torch.load(tmp_path / CHECKPOINT, weights_only=True)["owned"]
        assert all(torch.equal(v, owned.state_dict()[k]) for k, v in last.items())
    else:
        assert result.best_val_top1 == max(r["val_top1"] for r in result.history)


@dataclass
class _Grouped(train.Classification):
    """The bias at half the configured learning rate, the weight at the full one."""

    def param_groups(self, owned):
        return [([owned[1].bias], 0.5), ([owned[1].weight], 1.0)]


def test_each_parameter_group_steps_at_its_scale_of_the_schedule():
    rates = []
    real = torch.optim.AdamW.step

    def step(opt, *a, **kw):
        rates.append([g["lr"] for g in opt.param_groups])
        return real(opt, *a, **kw)
    owned, loop = _owned(), train.Local(N_TRAIN)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", step)
        result = train.fit_objective(_Grouped(loop, _task(), Preprocess(8)), loop, owned, owned,
                                     _config())
    total, warmup = 6, 2
    assert rates == [[0.5 * train.lr_at(s, total, warmup, 0.05), train.lr_at(s, total, warmup,
                                                                            0.05)]
                     for s in range(total)]
    assert result.history[-1]["lr"] == rates[-1][0]  # the first group's rate


class _SideObjective(train.Classification):
    """Uses the owned module's ``side`` layer in the run's first step only."""

    calls = 0

    def step(self, step, batch):
        loss, summed, right, n = super().step(step, batch)
        if _SideObjective.calls == 0:
            loss = loss + self.side(torch.ones(1, 2)).sum()
        _SideObjective.calls += 1
        return loss, summed, right, n


def test_a_parameter_without_a_gradient_in_a_step_is_not_stepped(tmp_path):
    """Gradients are reset to None, not to zeros, before each step: AdamW skips a parameter
    that no loss of the step reached (a zero gradient would still move it by its momentum and
    weight decay)."""
    owned = _owned()
    side = nn.Linear(2, 1)
    model = nn.ModuleDict({"net": owned, "side": side})
    loop = train.Local(N_TRAIN)
    objective = _SideObjective(loop, _task(), Preprocess(8))
    objective.side = side
    _SideObjective.calls = 0
    before = side.weight.detach().clone()
    train.fit_objective(objective, loop, owned, model, _config(), tmp_path)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)["optimizer"]["state"]
    steps = {i: int(s["step"]) for i, s in state.items()}
    assert steps == {0: 6, 1: 6, 2: 1, 3: 1}  # net weight, bias: every step; side: the first
    assert not torch.equal(side.weight.detach(), before)


def test_bf16_runs_the_training_forward_under_autocast():
    """precision bf16: the trained forward's logits come out in bfloat16 (autocast on the
    module's device); validation runs outside autocast, in float32."""
    owned = _owned()
    dtypes = []

    def forward(x):
        out = owned(x)
        dtypes.append(out.dtype)
        return out
    fit(forward, owned, _task(), Preprocess(8), _config(epochs=1, precision="bf16"))
    assert dtypes == [torch.bfloat16] * 3 + [torch.float32]  # 3 steps, then 1 val batch


def test_a_resumed_fp16_run_continues_the_grad_scaler_where_it_stopped(monkeypatch, tmp_path):
    """The grad scaler's state (scale, growth tracker) is resumed with the rest: the resumed
    run's last checkpoint equals the uninterrupted run's, scaler included (this run's scaler
    backs off from its initial 2**16 in the first epoch, so a fresh one would differ)."""
    config = _config(epochs=2, precision="fp16")
    owned = _owned()
    fit(owned, owned, _task(), Preprocess(8), config, run_dir=tmp_path / "full")
    real = train._epoch_generator

    def stop_at_the_second(seed: int, epoch: int) -> torch.Generator:
        if epoch == 1:
            raise KeyboardInterrupt
        return real(seed, epoch)
    monkeypatch.setattr(train, "_epoch_generator", stop_at_the_second)
    owned = _owned()
    with pytest.raises(KeyboardInterrupt):
        fit(owned, owned, _task(), Preprocess(8), config, run_dir=tmp_path / "cut")
    monkeypatch.setattr(train, "_epoch_generator", real)
    owned = _owned()
    fit(owned, owned, _task(), Preprocess(8), config, run_dir=tmp_path / "cut")
    full, cut = (torch.load(tmp_path / d / CHECKPOINT, weights_only=True) for d in ("full", "cut"))
    assert full["scaler"]["scale"] < 2.0 ** 16  # backed off from its start: not a fresh one's
    assert cut["scaler"] == full["scaler"]
    assert all(torch.equal(v, cut["owned"][k]) for k, v in full["owned"].items())


class _Bar:
    """A stand-in for tqdm: records each bar's arguments and postfixes."""

    made: list = []

    def __init__(self, iterable, total=None, desc="", **kw):
        self.iterable, self.postfix = iterable, []
        _Bar.made.append({"total": total, "desc": desc, "postfix": self.postfix})

    def __iter__(self):
        return iter(self.iterable)

    def set_postfix(self, **kw):
        self.postfix.append(kw)

    @staticmethod
    def write(msg, file=None):
        print(msg, file=file)


def _bars(monkeypatch) -> list:
    """Bars forced on (as on a terminal), drawn by ``_Bar``."""
    from deltapatch import progress

    monkeypatch.setattr(progress, "bars_enabled", lambda enabled=True: bool(enabled))
    monkeypatch.setattr(progress, "tqdm", _Bar)
    _Bar.made = []
    return _Bar.made


def test_the_bar_counts_the_epochs_steps_and_shows_the_running_mean_loss(monkeypatch):
    """One bar per epoch over its steps, named "epoch e/E"; every 25 steps (from the first)
    it shows the mean loss of the epoch's rows so far."""
    made = _bars(monkeypatch)
    owned, data = _owned(), _scored_task(26)
    x, y = next(data.train.batches(1, train._epoch_generator(0, 0)))
    with torch.no_grad():
        first = F.cross_entropy(owned(Preprocess(8).normalize(x)), y).item()
    result = fit(owned, owned, data, Preprocess(8), _config(batch_size=1, progress=True))
    assert [(b["total"], b["desc"]) for b in made] == [(26, "epoch 1/2"), (26, "epoch 2/2")]
    assert made[0]["postfix"][0] == {"loss": f"{first:.3f}"}  # after the first step
    for bar, row in zip(made, result.history, strict=True):
        assert len(bar["postfix"]) == 2  # steps 1 and 26
        assert bar["postfix"][1] == {"loss": f"{row['train_loss']:.3f}"}  # all 26 rows


def test_no_bar_without_progress_even_on_a_terminal(monkeypatch):
    made = _bars(monkeypatch)
    owned = _owned()
    fit(owned, owned, _task(), Preprocess(8), _config(progress=False))
    assert made == []


class _Recording(train.Local):
    prepared: list

    def prepare(self, owned, forward, seed):
        self.prepared = [seed]
        return super().prepare(owned, forward, seed)


def test_fit_trains_with_the_loop_it_is_given_prepared_with_the_runs_seed(monkeypatch):
    monkeypatch.setattr(train.distributed, "shard_for", lambda *a, **kw: pytest.fail(
        "a given loop needs no torchrun lookup"))
    owned, loop = _owned(), _Recording(N_TRAIN)
    result = fit(owned, owned, _task(), Preprocess(8), _config(seed=7), shard=loop)
    assert loop.prepared == [7] and len(result.history) == EPOCHS


class _Found(Exception):
    pass


def test_fit_looks_for_a_torchrun_shard_of_its_data_on_the_owned_modules_device(monkeypatch):
    """Under torchrun the shard splits ``data`` and starts the process group with the backend
    of the trained module's device (nccl for a GPU): both must reach ``shard_for``."""
    asked = []

    def shard_for(*a, **kw):
        asked.append((a, kw))
        raise _Found
    monkeypatch.setattr(train.distributed, "shard_for", shard_for)
    owned, data = _owned().to("meta"), _task()
    with pytest.raises(_Found):
        fit(owned, owned, data, Preprocess(8), _config())
    assert asked == [((data,), {"device": torch.device("meta")})]
