"""The training loop: deterministic, resumable to the same result, logs per-epoch metrics."""

from __future__ import annotations

import json

import torch
from test_model import _tiny_task

import deltapatch as dp
from deltapatch.train import TrainConfig, fit_patch, lr_at


def _train(backbone, run_dir, epochs):
    torch.manual_seed(0)
    model = dp.PatchedModel(backbone)
    model.add_patch("a", 4, stages=2)
    result = fit_patch(model, "a", _tiny_task(4),
                       TrainConfig(epochs=epochs, batch_size=8, progress=False, seed=5), run_dir)
    return model.get_patch("a").state_dict(), result


def test_same_seed_same_result(backbone, tmp_path):
    a, _ = _train(backbone, None, 2)
    b, _ = _train(backbone, None, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)


def interrupt_after(monkeypatch, stop: int) -> None:
    """The training loop is interrupted (KeyboardInterrupt) right after it checkpoints epoch
    ``stop``, as a killed run would be; ``monkeypatch.undo()`` ends it."""
    from deltapatch import train

    real = train._checkpoint

    def checkpoint_then_stop(run, owned, opt, epoch, *rest):
        real(run, owned, opt, epoch, *rest)
        if epoch == stop:
            raise KeyboardInterrupt
    monkeypatch.setattr(train, "_checkpoint", checkpoint_then_stop)


def test_resume_after_interruption_gives_same_result(backbone, tmp_path, monkeypatch):
    import pytest

    full, full_res = _train(backbone, tmp_path / "full", 3)
    interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _train(backbone, tmp_path / "cut", 3)
    monkeypatch.undo()
    resumed, res = _train(backbone, tmp_path / "cut", 3)
    last = {d: torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("full", "cut")}
    assert last["cut"]["epoch"] == 3
    for k, v in last["full"]["owned"].items():  # the last epoch's weights, not only the best
        assert torch.equal(v, last["cut"]["owned"][k]), k
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert [r["train_loss"] for r in res.history] == [r["train_loss"] for r in full_res.history]


def test_resume_with_other_settings_is_refused(backbone, tmp_path):
    import pytest

    from deltapatch.errors import DeltaPatchError

    _train(backbone, tmp_path, 2)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(DeltaPatchError, match="epochs"):  # 3 epochs: another lr schedule
        _train(backbone, tmp_path, 3)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_metrics_files_per_epoch(backbone, tmp_path):
    _train(backbone, tmp_path, 2)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (tmp_path / "metrics.csv").read_text().startswith("epoch,train_loss,train_top1,val_top1")


def test_fit_patch_out_leaves_a_folder_every_loader_takes(backbone, tmp_path):
    """README's quickstart: ``fit_patch(..., out=DIR)`` writes what ``train --out`` writes, so
    ``load_task`` (and eval, predict, verify, serve, which use it) takes DIR."""
    import pytest

    from deltapatch.errors import PatchError
    from deltapatch.methods import load_task

    torch.manual_seed(0)
    model = dp.PatchedModel(backbone)
    model.add_patch("a", 4, stages=1)
    config = TrainConfig(epochs=1, batch_size=8, progress=False)
    fit_patch(model, "a", _tiny_task(4), config, out=tmp_path / "task")
    assert {p.name for p in (tmp_path / "task").iterdir()} >= {"config.json", "run"}
    assert (tmp_path / "task" / "run" / "metrics.csv").is_file()
    x = torch.randn(2, 3, 32, 32)
    fresh = dp.PatchedModel(backbone)
    task = load_task(fresh, tmp_path / "task")
    fresh.eval(), model.eval()
    with torch.no_grad():
        assert torch.equal(task.outcome.patch_forward(x), model(x, patch="a"))
    fit_patch(model, "a", _tiny_task(4), config, run_dir=tmp_path / "state" / "run")
    with pytest.raises(PatchError, match=r"training state only .*out="):
        load_task(dp.PatchedModel(backbone), tmp_path / "state")  # run/ alone, no patch
    with pytest.raises(ValueError, match="not both"):
        fit_patch(model, "a", _tiny_task(4), config, run_dir=tmp_path / "r", out=tmp_path / "o")


def test_best_checkpoint_is_restored(backbone, tmp_path, monkeypatch):
    """The patch ends holding the best validation epoch's weights, not the last epoch's."""
    from deltapatch import train

    scores = iter([0.9, 0.5, 0.1])  # validation gets worse: epoch 1 is the best
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: next(scores))
    state, res = _train(backbone, tmp_path, 3)
    assert res.best_epoch == 1 and res.best_val_top1 == 0.9
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in ckpt["best"]["state"].items())
    assert any(not torch.equal(state[k], v) for k, v in ckpt["owned"].items())  # ≠ epoch 3


def test_warmup_then_cosine():
    lrs = [lr_at(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == 0.1 and lrs[9] == 1.0
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] < 0.01


def test_one_process_and_a_torchrun_rank_offer_fit_the_same_loop():
    """fit runs one loop over train.Local or distributed.Shard: a method or property one side
    gains must exist on the other, with the same parameters."""
    import inspect

    from deltapatch.distributed import Shard
    from deltapatch.train import Local

    used = {n for n in vars(Local) if not n.startswith("_")
            and "__mutmut_" not in n}  # mutation testing adds its variants to the class
    assert used == {"main", "broadcast", "prepare", "epoch", "step", "sum", "evaluate", "finish"}
    assert Local(5).n_train == 5 and "n_train" in Shard.__dataclass_fields__
    for name in used:
        assert hasattr(Shard, name), f"Shard lacks {name}"
        ours, theirs = getattr(Local, name), getattr(Shard, name)
        if callable(ours):
            assert (list(inspect.signature(ours).parameters)
                    == list(inspect.signature(theirs).parameters)), name
