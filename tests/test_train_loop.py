"""The training loop's bookkeeping: the schedule spans every step with its warm-up, the
caller's mode switch is the one used, a run's settings record its train split size, and a run
with nothing to train says so."""

from __future__ import annotations

import math
import re
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
