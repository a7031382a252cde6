"""The training loop: deterministic, resumable to the same result, logs per-epoch metrics; the
learning-rate schedule at exact steps; fit_patch's refusal and its torchrun wiring."""

from __future__ import annotations

import json

import pytest
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


def test_the_rate_at_exact_steps_of_warmup_and_cosine():
    """Warm-up reaches the base rate at its last step; the cosine starts there (step = warmup)
    at the base rate, is at half of it midway, and at 0 at ``total`` and after it."""
    assert lr_at(9, 110, 10, 2.0) == 2.0 and lr_at(10, 110, 10, 2.0) == 2.0
    assert lr_at(60, 110, 10, 2.0) == pytest.approx(1.0, abs=1e-12)  # cos(π/2)
    assert lr_at(35, 110, 10, 2.0) == pytest.approx(1.0 + 2 ** -0.5, abs=1e-12)  # cos(π/4)
    assert lr_at(110, 110, 10, 2.0) == 0.0
    assert lr_at(210, 110, 10, 2.0) == 0.0 and lr_at(310, 110, 10, 2.0) == 0.0


def test_a_one_step_cosine_decays_to_zero_at_its_end():
    """One step after warm-up (total - warmup = 1): the base rate at that step, 0 at total."""
    assert lr_at(0, 1, 0, 1.0) == 1.0 and lr_at(1, 1, 0, 1.0) == 0.0
    assert lr_at(3, 4, 3, 1.0) == 1.0 and lr_at(4, 4, 3, 1.0) == 0.0


def test_fit_patch_refuses_out_and_run_dir_together_in_words():
    with pytest.raises(ValueError) as err:
        fit_patch(None, "a", None, TrainConfig(), run_dir="r", out="o")
    assert str(err.value) == ("give fit_patch out= (a task folder, run/ inside) or run_dir= "
                              "(the training state alone), not both")


def test_a_torchrun_rank_caches_only_its_images_and_trains_with_its_shard(backbone,
                                                                          monkeypatch):
    """fit_patch under torchrun (the shard found for the data, on the patch's device): with the
    feature cache each rank caches only the images it owns (``shard.take``), marks its shard
    local (its sets then hold its rows only), and trains with that shard through
    ``PatchedModel.train``."""
    import deltapatch.cache
    from deltapatch import train

    model = dp.PatchedModel(backbone)
    model.add_patch("a", 4, stages=1)
    model.to("meta")
    data, taken, calls = _tiny_task(4), _tiny_task(4), {}

    class Shard:
        local = False

        def take(self, d):
            calls["take"] = d
            return taken
    shard = Shard()

    def shard_for(*a, **kw):
        calls["shard_for"] = (a, kw)
        return shard

    def cached_training(model, name, d, pre, dtype):
        calls["cached"] = d
        return d, "forward", pre

    def fit(*a, **kw):
        calls["fit"] = (a, kw)
        return "result"
    monkeypatch.setattr(train.distributed, "shard_for", shard_for)
    monkeypatch.setattr(deltapatch.cache, "cached_training", cached_training)
    monkeypatch.setattr(train, "fit", fit)
    config = TrainConfig(augment=False, cache_features="on", progress=False)
    assert fit_patch(model, "a", data, config) == "result"
    assert calls["shard_for"] == ((data,), {"device": torch.device("meta")})
    assert calls["take"] is data and calls["cached"] is taken and shard.local is True
    args, kw = calls["fit"]
    assert args[:3] == ("forward", model.get_patch("a"), taken)
    assert kw == {"set_mode": model.train, "shard": shard}
