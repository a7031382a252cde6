"""What the training loop draws per epoch (issue 28, survivor 2): each epoch its own shuffle and
augmentation, the same ones again for the same (seed, epoch), through ``fit`` itself."""

from __future__ import annotations

import pytest
import torch
from test_model import _tiny_task

import deltapatch as dp
from deltapatch import train
from deltapatch.train import TrainConfig, fit_patch

_RUNS: dict[int, list] = {}


def _first_run(backbone, seed: int) -> list[list[tuple]]:
    """One recorded run per seed, shared by the tests (each run is a whole ``fit``)."""
    if seed not in _RUNS:
        with pytest.MonkeyPatch.context() as mp:
            _RUNS[seed] = _draws(backbone, mp, seed)
    return _RUNS[seed]


def _draws(backbone, monkeypatch, seed: int, epochs: int = 2) -> list[list[tuple]]:
    """Per epoch, every batch the loop trained on: (row identities in order, crop offsets,
    flips). A row's identity is its image's pixel sum (the tiny task's images are random)."""
    seen: list[list[tuple]] = []
    real = train.Local.epoch

    def recording(self, data, config, g):
        seen.append([])
        for x, y, crops in real(self, data, config, g):
            ids = tuple(x.flatten(1).sum(1).tolist())
            seen[-1].append((ids, tuple(crops.dy.tolist()), tuple(crops.dx.tolist()),
                             tuple(crops.flip.tolist())))
            yield x, y, crops
    monkeypatch.setattr(train.Local, "epoch", recording)
    torch.manual_seed(0)
    model = dp.PatchedModel(backbone)
    model.add_patch("a", 4, stages=1)
    fit_patch(model, "a", _tiny_task(4),
              TrainConfig(epochs=epochs, batch_size=8, progress=False, seed=seed))
    monkeypatch.undo()
    return seen


def test_each_epoch_draws_its_own_order_and_augmentation(backbone, monkeypatch):
    first, second = _first_run(backbone, 5)
    assert len(first) == len(second) == 3  # 24 rows in batches of 8
    rows = [[r for b in epoch for r in b[0]] for epoch in (first, second)]
    assert sorted(rows[0]) == sorted(rows[1])  # every row once per epoch ...
    assert rows[0] != rows[1]  # ... in another order
    assert [b[1:] for b in first] != [b[1:] for b in second]  # and other crops / flips


def test_same_seed_and_epoch_draw_the_same_and_another_seed_does_not(backbone, monkeypatch):
    a = _first_run(backbone, 5)
    b = _draws(backbone, monkeypatch, seed=5)  # a fresh run
    c = _first_run(backbone, 6)
    assert a == b
    assert a[0] != c[0] and a[1] != c[1]
    g = [train._epoch_generator(5, e).initial_seed() for e in range(4)]
    assert len(set(g)) == 4 and g == [train._epoch_generator(5, e).initial_seed() for e in range(4)]
