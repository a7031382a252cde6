"""torchrun training: 2 CPU processes (gloo, 1 thread each) train the same patch as 1 process
with the same global batch, with and without the per-rank feature cache, and resume to the same
patch after both ranks stopped at an epoch boundary (what a kill leaves: rank 0's checkpoint);
rank 0 alone writes the run folder."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import random_backbone

import deltapatch as dp
from deltapatch import distributed
from deltapatch.train import TrainConfig, fit_patch

WORLD = 2
CASES = {  # name: (TrainConfig fields, patch stages, init). SGD: AdamW would blow float
    # noise on near-zero gradients up to lr-sized steps, hiding what is compared (the gradients).
    # init="base" puts a GatedBatchNorm (a BatchNorm subclass) in the patch.
    "cached": ({"augment": False, "cache_features": "on", "optimizer": "sgd"}, 2, "random"),
    "augmented": ({"augment": True, "optimizer": "sgd"}, 1, "base"),
    # global batch 3: a rank often holds 0 or 1 of a batch's rows (BatchNorm still global)
    "uneven": ({"augment": False, "optimizer": "sgd", "batch_size": 3}, 1, "random"),
}


class _Stop(Exception):
    """Raised at the start of epoch 2 to stop a run the way a kill at the boundary would."""


def _task():
    from test_model import _tiny_task

    return _tiny_task(4)  # 24 train images, batch 8: ranks get uneven shares per batch


def _model(stages: int, init: str) -> dp.PatchedModel:
    """The conftest backbone (random init, non-trivial BN statistics) with patch "a"."""
    torch.manual_seed(0)
    model = dp.PatchedModel(random_backbone())
    torch.manual_seed(0)
    model.add_patch("a", 4, stages=stages, init=init)
    return model


def _train(case: str, run_dir: Path | None) -> dict[str, torch.Tensor]:
    fields, stages, init = CASES[case]
    model = _model(stages, init)
    config = TrainConfig(**{"epochs": 2, "batch_size": 8, "lr": 1e-2, "progress": False,
                            "seed": 5, **fields})
    fit_patch(model, "a", _task(), config, run_dir)
    return {k: v.detach().clone() for k, v in model.get_patch("a").state_dict().items()}


def _worker(rank: int, port: int, out: str, jobs: list[tuple[str, str, bool]]) -> None:
    """One torchrun-like rank: (case, run folder, stop after epoch 1) for each job."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from deltapatch import train

    real = train._epoch_generator
    for case, run, stop in jobs:
        def stopping(seed, epoch, stop=stop):
            if stop and epoch == 1:
                raise _Stop
            return real(seed, epoch)
        train._epoch_generator = stopping
        try:
            state = _train(case, Path(run))
        except _Stop:
            continue
        torch.save(state, Path(out) / f"{case}-rank{rank}.pt")


def _spawn(tmp: Path, jobs: list[tuple[str, str, bool]]):
    """Start the ranks; returns a wait(timeout) that joins them (bounded, killed after it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.start_processes(_worker, args=(port, str(tmp), jobs), nprocs=WORLD, join=False,
                             start_method="spawn")

    def wait(timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail(f"distributed workers still running after {timeout} s")
    return wait


def _assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


def test_two_processes_train_the_patch_one_process_does(tmp_path):
    # one spawn (starting a process costs seconds here): the stopped run is resumed from
    # rank 0's checkpoint by fresh models in the same processes
    wait = _spawn(tmp_path, [("augmented", str(tmp_path / "two-augmented"), False),
                             ("uneven", str(tmp_path / "two-uneven"), False),
                             ("cached", str(tmp_path / "two-cached"), True),
                             ("cached", str(tmp_path / "two-cached"), False)])
    torch.set_num_threads(1)
    one = {case: _train(case, tmp_path / f"one-{case}") for case in CASES}  # while they start
    wait()
    for case in CASES:
        r0, r1 = (torch.load(tmp_path / f"{case}-rank{r}.pt", weights_only=True)
                  for r in range(WORLD))
        _assert_close(r0, one[case])
        for k in r0:  # the replicas are one patch
            assert torch.equal(r0[k], r1[k]), k
        one_ckpt, two_ckpt = (torch.load(tmp_path / f"{w}-{case}" / "checkpoint.pt",
                                         weights_only=True) for w in ("one", "two"))
        assert two_ckpt["epoch"] == 2
        got = [row["val_top1"] for row in two_ckpt["history"]]
        assert got == [row["val_top1"] for row in one_ckpt["history"]]
        for a, b in zip(one_ckpt["history"], two_ckpt["history"], strict=True):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
            assert a["train_top1"] == b["train_top1"]


def test_plain_process_is_not_distributed(monkeypatch):
    for k in distributed.ENV:
        monkeypatch.delenv(k, raising=False)
    assert distributed.session() is None and distributed.is_main()
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: the plain path
    assert distributed.env_world() is None
    assert distributed.private_out(Path("x")) == Path("x")


def test_global_norms_hold_the_norms_own_tensors_and_go_back():
    model = _model(1, "base")  # a GatedBatchNorm in the patch
    owned = model.get_patch("a")
    before = owned.state_dict(keep_vars=True)
    norms = [m for m in owned.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    swapped = distributed.globalize_norms(owned, group=None)
    assert not any(m in norms for m in owned.modules())  # every norm's place is taken
    after = owned.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)  # the same tensors: DDP, optimizer, ckpt
    owned.eval()
    distributed.restore_norms(swapped)
    assert [m for m in owned.modules() if isinstance(m, torch.nn.BatchNorm2d)] == norms
    assert not any(m.training for m in norms)  # the mode set meanwhile is kept
