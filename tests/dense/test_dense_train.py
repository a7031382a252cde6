"""Dense tasks train through the classification loop (deltapatch.train.fit_objective): resume
after an interruption ends bit-identical, other settings are refused, metrics files per epoch,
any device (meta and fake CUDA here; the ``cuda`` test on a real GPU), any precision."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import fake_on, random_backbone, snapshot
from test_task import SIZE, _model, _sample
from test_train import interrupt_after

import deltapatch as dp
from deltapatch.dense import DenseData, add_dense_patch, evaluate_dense, finetuned_task, fit_dense
from deltapatch.dense.data import detection_batch
from deltapatch.dense.draw import predict_one
from deltapatch.dense.task import dense_config
from deltapatch.dense.train import DENSE_KINDS, DenseKind, DenseObjective, train_mode
from deltapatch.train import TrainConfig, device_of

KINDS = ["detection", "segmentation"]


@pytest.fixture
def data() -> DenseData:
    g = torch.Generator().manual_seed(3)
    return DenseData([_sample(g) for _ in range(4)], [_sample(g) for _ in range(2)],
                     ["background", "square"])


def _task(kind: str, method: str = "delta", device: str = "cpu"):
    torch.manual_seed(0)
    model = _model(random_backbone()).to(device)
    if method == "finetune":
        return model, finetuned_task(model, dense_config(model, "ft", kind, 2, size=SIZE))
    return model, add_dense_patch(model, "d", kind, 2, stages=3, init="random", size=SIZE)


def _config(epochs: int, **kw) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=1e-3, batch_size=2, seed=1, progress=False, **kw)


@pytest.mark.parametrize("kind,method", [("detection", "delta"), ("segmentation", "finetune")])
def test_resume_after_interruption_ends_bit_identical(kind, method, data, tmp_path, monkeypatch):
    _, full = _task(kind, method)
    fit_dense(full, data, _config(3), tmp_path / "full")
    interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        fit_dense(_task(kind, method)[1], data, _config(3), tmp_path / "cut")
    monkeypatch.undo()
    torch.manual_seed(123)  # the resumed process's global generator is wherever it is
    _, resumed = _task(kind, method)
    result = fit_dense(resumed, data, _config(3), tmp_path / "cut")
    assert [r["epoch"] for r in result.history] == [1, 2, 3] and result.best_epoch == 3
    want = full.owned.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in resumed.owned.state_dict().items())
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text()
            .splitlines()]
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in result.history]
    assert set(rows[0]) == {"epoch", "train_loss", "lr", "seconds"}  # no validation split


def test_resume_with_other_settings_is_refused(data, tmp_path):
    fit_dense(_task("segmentation")[1], data, _config(1), tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(dp.DeltaPatchError, match="lr"):
        fit_dense(_task("segmentation")[1], data, TrainConfig(
            epochs=1, lr=1e-2, batch_size=2, seed=1, progress=False), tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_finetune_trains_the_copy_at_a_tenth_of_the_rate(data):
    _, task = _task("segmentation", "finetune")
    objective = DenseObjective(task, data, torch.device("cpu"))
    (heads, one), (net, tenth) = objective.param_groups(task.owned)
    assert (one, tenth) == (1.0, 0.1)
    assert {id(p) for p in net} == {id(p) for p in task.net.parameters()}
    assert len(heads) == len(list(task.head.parameters()))


def test_a_loss_that_stops_being_finite_stops_the_run(data, tmp_path, monkeypatch):
    def nan(step, task, samples, device):
        return step(torch.zeros(len(samples), 3, SIZE, SIZE)).sum() * float("nan")
    monkeypatch.setitem(DENSE_KINDS._items, "segmentation",
                        DenseKind(nan, DENSE_KINDS.get("segmentation").score))
    with pytest.raises(dp.DeltaPatchError, match="lower --lr"):
        fit_dense(_task("segmentation")[1], data, _config(1), tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()  # the broken epoch is not kept


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_trains_on_the_cpu_and_the_base_stays_exact(precision, data, x):
    model, task = _task("segmentation")
    before = snapshot(task.owned)
    with torch.inference_mode():
        base = model(x)
    result = fit_dense(task, data, _config(1, precision=precision))
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)
    assert any(not torch.equal(v, task.owned.state_dict()[k]) for k, v in before.items())
    with torch.inference_mode():
        assert torch.equal(model(x), base)


def _first_batch(task, data) -> tuple[DenseObjective, list]:
    """The loop's objective for ``task`` on its device and the first batch of photos (on the
    host, drawn from a real generator)."""
    objective = DenseObjective(task, data, device_of(task.owned))
    return objective, next(iter(objective.batches(_config(1), torch.Generator().manual_seed(0))))


def _one_step(objective: DenseObjective, batch: list, backward: bool = True) -> torch.Tensor:
    task = objective.task
    train_mode(task, True)
    loss, summed, _, n = objective.step(task.head, batch)
    assert n == 2 and summed.device == loss.device
    if backward:
        loss.backward()
        torch.optim.AdamW([p for p in task.owned.parameters() if p.requires_grad]).step()
    return loss


@pytest.mark.parametrize("method", ["delta", "finetune"])
def test_a_segmentation_step_runs_on_the_meta_device(method, data):
    model, task = _task("segmentation", method, device="meta")
    assert device_of(task.owned).type == "meta" and model.device.type == "meta"
    assert _one_step(*_first_batch(task, data)).device.type == "meta"


def test_detection_photos_and_targets_go_to_the_device(data):
    """torchvision's detector reads its tensors on the host (degenerate-box checks), so it
    cannot run on meta: its inputs are checked here, the run itself by the cuda test."""
    images, targets = detection_batch(data.train[:2], torch.device("meta"))
    assert all(t.device.type == "meta" for t in images)
    assert all(v.device.type == "meta" for t in targets for v in t.values())
    assert images[0].dtype == torch.float32


def test_a_segmentation_step_with_fake_cuda_tensors_makes_nothing_on_the_host(data,
                                                                              monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    from deltapatch import devices

    monkeypatch.setattr(devices, "to_device", lambda t, device: t.to(device))  # no pinning
    model, task = _task("segmentation")
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        fake_on(model, mode, "cuda")
    objective = DenseObjective(task, data, device_of(task.owned))
    assert objective.device.type == "cuda"
    with mode:  # the batch is two host photos, as batches() yields them
        objective.finite = torch.ones((), dtype=torch.bool, device="cuda")
        assert _one_step(objective, data.train[:2], backward=False).device.type == "cuda"


@pytest.mark.cuda
@pytest.mark.parametrize("kind", KINDS)
def test_dense_trains_scores_and_predicts_on_the_gpu(kind, data, x, tmp_path):
    model, task = _task(kind, device="cuda")
    x = x.cuda()
    with torch.inference_mode():
        base = model(x)
    for precision in ("fp32", "bf16"):
        result = fit_dense(task, data, _config(2, precision=precision), tmp_path / precision)
        assert len(result.history) == 2
    assert all(p.device.type == "cuda" for p in task.owned.parameters())
    scores = evaluate_dense(task, data.test)
    assert scores["n_test"] == 2
    answer, drawn = predict_one(task, data.test[0].image)
    assert drawn.device.type == "cpu" and answer
    with torch.inference_mode():
        assert torch.equal(model(x), base)


def test_detection_that_finds_nothing_draws_the_photo_without_a_warning(data):
    """torchvision warns "No box was drawn" when given no box; predict prints no such line."""
    import warnings

    _, task = _task("detection")
    image = data.test[0].image
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        answer, drawn = predict_one(task, image, min_score=2.0)  # no score reaches 2
    assert answer["boxes"] == [] and torch.equal(drawn, image)
