"""What a run folder's checkpoint may be, and what resuming from it refuses, word for word; the
temporary-then-rename write of the run's files; the log line of an epoch; what a torchrun rank
other than the main one loads; the line endings of metrics.csv."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from deltapatch import train
from deltapatch.errors import DeltaPatchError
from deltapatch.train import CHECKPOINT, Optimizing

SETTINGS = {"lr": 0.1, "epochs": 3}


def _owned() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    owned = nn.Linear(3, 2)
    return owned, torch.optim.SGD(owned.parameters(), lr=0.1, momentum=0.9)


def _state(owned: nn.Module, opt: torch.optim.Optimizer, **more) -> dict:
    return {"epoch": 2, "owned": owned.state_dict(), "optimizer": opt.state_dict(),
            "history": [{"epoch": 1}], "best": {"epoch": 1}, "seconds": 1.5, **more}


def test_no_checkpoint_is_no_resume(tmp_path):
    assert train._resume(tmp_path, *_owned(), SETTINGS) is None


def test_a_checkpoint_is_written_into_a_run_folder_made_on_the_way(tmp_path):
    owned, opt = _owned()
    run = tmp_path / "out" / "run"  # neither exists yet
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=8.0)
    train._checkpoint(run, owned, Optimizing(opt, scaler, [1.0]), 2, [], {}, 1.0, SETTINGS)
    state = torch.load(run / CHECKPOINT, weights_only=True)
    assert state["scaler"] == scaler.state_dict() and state["scaler"]["scale"] == 8.0
    assert state["settings"] == SETTINGS and state["epoch"] == 2
    plain = torch.amp.GradScaler("cpu", enabled=False)
    train._checkpoint(run, owned, Optimizing(opt, plain, [1.0]), 3, [], {}, 1.0, SETTINGS)
    assert "scaler" not in torch.load(run / CHECKPOINT, weights_only=True)


def test_a_checkpoint_with_exactly_the_needed_keys_resumes(tmp_path):
    """Checkpoints from before ``settings`` was recorded hold only the six keys."""
    owned, opt = _owned()
    torch.save(_state(owned, opt), tmp_path / CHECKPOINT)
    fresh = nn.Linear(3, 2)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    state = train._resume(tmp_path, fresh, fresh_opt, SETTINGS)
    assert state is not None and state["epoch"] == 2
    assert torch.equal(fresh.weight, owned.weight)


def test_a_resume_asks_for_cpu_tensors_and_plain_weights(tmp_path, monkeypatch):
    """A checkpoint written on a GPU resumes on a machine without one (``map_location``), and
    nothing but tensors and plain containers is unpickled (``weights_only``)."""
    owned, opt = _owned()
    torch.save(_state(owned, opt), tmp_path / CHECKPOINT)
    asked = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: asked.append(kw) or real(*a, **kw))
    train._resume(tmp_path, owned, opt, SETTINGS)
    assert asked == [{"map_location": "cpu", "weights_only": True}]


class _Planted:
    def __reduce__(self):
        return (Path.touch, (Path(_Planted.marker),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_planted_pickle_is_refused_and_never_run(tmp_path):
    _Planted.marker = str(tmp_path / "ran")
    file = tmp_path / CHECKPOINT
    file.write_bytes(pickle.dumps({"epoch": _Planted()}))
    with pytest.raises(DeltaPatchError, match=rf"^{re.escape(str(file))} is unreadable "
                                              r"\(UnpicklingError: .*\); delete it to start "
                                              r"afresh$"):
        train._resume(tmp_path, *_owned(), SETTINGS)
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("content", [["epoch", "owned", "optimizer", "history", "best",
                                      "seconds"], {"epoch": 1, "owned": {}}])
def test_what_is_not_a_training_checkpoint_is_refused_as_such(tmp_path, content):
    file = tmp_path / CHECKPOINT
    torch.save(content, file)
    with pytest.raises(DeltaPatchError, match=rf"^{re.escape(str(file))} is unreadable "
                                              r"\(ValueError: not a deltapatch training "
                                              r"checkpoint\); delete it to start afresh$"):
        train._resume(tmp_path, *_owned(), SETTINGS)


def test_an_unreadable_message_keeps_200_characters_of_the_cause(tmp_path, monkeypatch):
    (tmp_path / CHECKPOINT).write_bytes(b"x")

    def boom(*a, **kw):
        raise OSError("y" * 300)
    monkeypatch.setattr(torch, "load", boom)
    with pytest.raises(DeltaPatchError) as err:
        train._resume(tmp_path, *_owned(), SETTINGS)
    assert f"(OSError: {'y' * 200}); delete it" in str(err.value)


def test_other_settings_are_named_with_both_values(tmp_path):
    owned, opt = _owned()
    file = tmp_path / CHECKPOINT
    torch.save(_state(owned, opt, settings={"lr": 0.1, "epochs": 3, "gone": 1}), file)
    with pytest.raises(DeltaPatchError) as err:
        train._resume(tmp_path, owned, opt, {"lr": 0.2, "epochs": 3, "new": 5})
    assert str(err.value) == (
        f"{file} was trained with other settings (gone, lr, new: [1, 0.1, None] there, "
        "[None, 0.2, 5] now); delete that checkpoint to start afresh, or use another output "
        "folder")


def test_a_checkpoint_of_another_model_does_not_fit(tmp_path):
    owned, opt = _owned()
    file = tmp_path / CHECKPOINT
    torch.save(_state(owned, opt, settings=SETTINGS), file)
    other = nn.Linear(4, 3)  # weight and bias both differ: a cause over 200 characters
    with pytest.raises(DeltaPatchError) as err:
        train._resume(tmp_path, other, torch.optim.SGD(other.parameters(), lr=0.1), SETTINGS)
    message = str(err.value)
    assert message.startswith(f"{file} does not fit this run (Error(s) in loading state_dict")
    assert message.endswith("); delete it to start afresh")
    cause = message[len(f"{file} does not fit this run ("):-len("); delete it to start afresh")]
    assert len(cause) == 200  # the cause, cut at 200 characters


def test_replace_keeps_the_old_file_when_the_write_fails(tmp_path):
    file = tmp_path / "metrics.csv"
    file.write_text("old")

    def half(tmp: Path):
        tmp.write_text("half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        train._replace(file, half)
    assert file.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.csv"]

    def nothing(tmp: Path):
        raise KeyboardInterrupt  # before the temporary exists: the interrupt, not a 2nd error
    with pytest.raises(KeyboardInterrupt):
        train._replace(file, nothing)
    train._replace(file, lambda tmp: tmp.write_text("new"))
    assert file.read_text() == "new"


def test_the_epoch_line_says_loss_scores_and_time():
    row = {"epoch": 2, "train_loss": 0.123456, "train_top1": 0.5, "val_top1": 0.25,
           "seconds": 1.26}
    both = SimpleNamespace(train_score="train_top1", val_score="val_top1")
    assert train._epoch_line(row, both, 5) == ("epoch 2/5  loss 0.1235  train 0.5000  "
                                              "val 0.2500  1.3 s")
    none = SimpleNamespace(train_score=None, val_score=None)
    assert train._epoch_line(row, none, 5) == "epoch 2/5  loss 0.1235  1.3 s"
    val = SimpleNamespace(train_score=None, val_score="val_top1")
    assert train._epoch_line(row, val, 9) == "epoch 2/9  loss 0.1235  val 0.2500  1.3 s"


def test_each_epochs_draws_come_from_the_seed_published_runs_used():
    """Every published run drew epoch e of seed s from ``s * 100_003 + e``: another formula
    would change every record's batch order and augmentation."""
    assert train._epoch_generator(0, 0).initial_seed() == 0
    assert train._epoch_generator(1, 2).initial_seed() == 100_005
    assert train._epoch_generator(7, 1).initial_seed() == 7 * 100_003 + 1


def _images(hflip: bool):
    from deltapatch.data.sets import ImageSet, TaskData

    x = torch.zeros(64, 3, 8, 8, dtype=torch.uint8)
    split = ImageSet(x, torch.zeros(64, dtype=torch.long))
    return TaskData("t", split, split, split, ["a"], hflip=hflip)


@pytest.mark.parametrize("hflip", [False, True])
def test_an_epoch_flips_only_tasks_that_allow_it(hflip):
    """Digits and text must not be mirrored: a task's ``hflip`` reaches the augmentation."""
    config = train.TrainConfig(batch_size=64, augment=True)
    (_, _, crops), = train.Local(64).epoch(_images(hflip), config, torch.Generator()
                                           .manual_seed(0))
    assert bool(crops.flip.any()) is hflip and crops.pad == 1  # 8 px: an eighth is 1 px


def _stepped() -> tuple[nn.Module, torch.optim.Optimizer]:
    """A module and its SGD after one step (the optimizer then holds momentum buffers)."""
    owned, opt = _owned()
    owned(torch.ones(1, 3)).sum().backward()
    opt.step()
    return owned, opt


def test_a_rank_other_than_the_main_one_loads_the_state_it_is_sent():
    """Under torchrun only rank 0 reads the run folder; every other rank loads the module and
    optimizer state that rank 0 broadcasts, and starts afresh when it broadcasts none."""
    owned, opt = _stepped()
    state = _state(owned, opt)
    fresh = nn.Linear(3, 2)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    rank = SimpleNamespace(main=False, broadcast=lambda make: state)
    assert train._resume_shared(rank, None, fresh, fresh_opt, SETTINGS) is state
    assert torch.equal(fresh.weight, owned.weight) and torch.equal(fresh.bias, owned.bias)
    buffers = [s["momentum_buffer"] for s in fresh_opt.state_dict()["state"].values()]
    assert len(buffers) == 2 and all(torch.equal(a, b["momentum_buffer"]) for a, b in zip(
        buffers, opt.state_dict()["state"].values(), strict=True))
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    rank = SimpleNamespace(main=False, broadcast=lambda make: None)
    assert train._resume_shared(rank, None, fresh, fresh_opt, SETTINGS) is None
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in before.items())


def test_the_metrics_csv_has_one_line_ending_per_row_even_where_text_mode_translates(
        tmp_path, monkeypatch):
    """The csv module ends rows with \\r\\n itself and asks for ``newline=""``: where text mode
    turns \\n into \\r\\n (Windows, simulated here) another open would write \\r\\r\\n, a blank
    row after every row in a spreadsheet."""
    import builtins

    def windows_open(file, mode="r", *args, newline=None, **kw):
        return builtins.open(file, mode, *args, newline="\r\n" if newline is None else newline,
                             **kw)
    monkeypatch.setattr(train, "open", windows_open, raising=False)
    train._write_csv(tmp_path / "m.csv", [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}])
    assert (tmp_path / "m.csv").read_bytes() == b"epoch,loss\r\n1,0.5\r\n2,0.25\r\n"
