"""The training loop's bookkeeping: the schedule spans every step with its warm-up, the
caller's mode switch is the one used, a run's settings record its train split size, and a run
with nothing to train says so."""

from __future__ import annotations

import math

import pytest
import torch
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
