"""Issue 24, part A: a command checks the whole request before any side effect, method options
are checked against the method's own, and a run stopped by Ctrl-C or SIGTERM resumes
bit-identical. A refusal is one line, exit 2, and the disk exactly as it was: no folder, no lock
beside it, no settings file, a pre-existing task folder byte for byte the same."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import refused
from safetensors.torch import save_file

import deltapatch
from deltapatch.cli import main


def _npz(path: Path, classes: int, n: int = 24) -> Path:
    rng = np.random.default_rng(classes)
    y = np.arange(n) % classes
    x = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=y, x_test=x[: n // 2], y_test=y[: n // 2])
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Weights (so every process builds the same backbone), 3- and 10-class tasks, and a
    finished 3-class Δ run."""
    root = tmp_path_factory.mktemp("checks")
    weights = root / "w.safetensors"
    torch.manual_seed(0)
    save_file(deltapatch.load_backbone("cifar_resnet20").state_dict(), str(weights))
    three, ten = _npz(root / "three.npz", 3), _npz(root / "ten.npz", 10)
    bb = ["--backbone", "cifar_resnet20", "--weights", str(weights)]
    done = root / "done"
    assert main(["train", *bb, *FAST, "--data", str(three), "--out", str(done)]) == 0
    return {"bb": bb, "three": three, "ten": ten, "done": done}


FAST = ["--image-size", "16", "--epochs", "1", "--batch-size", "16", "--no-augment",
        "--no-progress"]


def _listing(folder: Path) -> dict:
    """Every entry under ``folder`` (hidden ones too: a lock is ``.NAME.lock`` beside the task
    folder) with a file's bytes: "the disk unchanged" is compared on this."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


TRAIN_CASES = [
    (["--base-data", "nosuch"], "nosuch"),
    (["--data", "nosuch"], "nosuch"),
    (["--stages", "99"], "stages"),
    (["--stages", "-1"], "stages"),
    (["--stages", "layer9"], "layer9"),
    (["--stages", ","], "--stages"),
    (["--stages", "1,,2"], "--stages"),
    (["--gate", "bogus"], "unknown gate 'bogus'"),
    (["--name", "../evil"], "invalid patch name"),
    (["--name", "__base__"], "invalid patch name"),
    (["--name", ""], "invalid patch name"),
    (["--reduction", "100000"], "reduction"),
    (["--reduction", "65"], "under one channel"),
    (["--option", "bogus_key=1"], "bogus_key; delta takes reduction"),
    (["--option", "reduction=\"x\""], "reduction must be an integer"),
    (["--method", "linear", "--stages", "7"], "stages"),
    (["--method", "lora", "--option", "rank=x"], "rank must be an integer ≥ 1 or 'auto'"),
    (["--method", "paint", "--option", "alphas=[2]"], "alphas must be"),
    (["--method", "pnc", "--option", "pnc_positions=[7]"], "pnc_positions"),
    (["--method", "finetune", "--option", "rank=4"], "finetune takes reduction"),
    (["--task", "detection", "--option", "bogus=1"], "bogus"),
]


@pytest.mark.parametrize("existing", [False, True], ids=["absent", "existing"])
@pytest.mark.parametrize("extra,match", TRAIN_CASES,
                         ids=[" ".join(c[0]) or "empty" for c in TRAIN_CASES])
def test_train_refuses_before_any_side_effect(extra, match, existing, setup, tmp_path, capsys):
    out = tmp_path / "out"
    if existing:
        shutil.copytree(setup["done"], out)
    before = _listing(tmp_path)
    refused(capsys, ["train", *setup["bb"], *FAST, "--data", setup["three"], "--out", out,
                     *extra], match)
    assert _listing(tmp_path) == before


def test_eval_refuses_a_patch_of_other_class_count(setup, capsys):
    err = refused(capsys, ["eval", *setup["bb"], "--patch", setup["done"], "--data",
                           setup["ten"]], "trained on 3 classes")
    assert "has 10" in err


def test_info_and_eval_refuse_an_unknown_method(setup, tmp_path, capsys):
    folder = tmp_path / "odd"
    shutil.copytree(setup["done"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "method": "teleport"}))
    before = _listing(tmp_path)
    refused(capsys, ["info", folder], "method 'teleport'")
    refused(capsys, ["eval", *setup["bb"], "--patch", folder, "--data", setup["three"]],
            "method 'teleport'")
    assert _listing(tmp_path) == before


# ---------------------------------------------------------------- stopped by a signal
EPOCHS = 6
SLOW = ["--image-size", "16", "--epochs", str(EPOCHS), "--batch-size", "8", "--no-progress"]


def _train_argv(setup, data: Path, out: Path) -> list[str]:
    return ["--threads", "1", "train", *setup["bb"], *SLOW, "--data", str(data),
            "--out", str(out)]


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    """The reference: the same run never stopped (in this process, on one thread as the
    stopped ones run)."""
    root = tmp_path_factory.mktemp("whole")
    data = _npz(root / "task.npz", 3, n=96)
    threads = torch.get_num_threads()
    try:
        assert main(_train_argv(setup, data, root / "out")) == 0
    finally:
        torch.set_num_threads(threads)
    return data, root / "out"


def _history(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_stopped_run_resumes_bit_identical(sig, code, setup, uninterrupted, tmp_path, capsys):
    data, whole = uninterrupted
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(deltapatch.__file__).parents[1])}
    # A runner started in the background (nohup, `cmd &`) passes SIGINT on ignored, and an
    # ignored signal stays ignored across exec: give the child Ctrl-C's default as a terminal does.
    proc = subprocess.Popen([sys.executable, "-m", "deltapatch", *_train_argv(setup, data, out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoint = out / "run" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.1)  # into the second epoch
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "run the same command again to resume" in err
    state = torch.load(checkpoint, weights_only=True)  # the last complete epoch, intact
    assert 1 <= state["epoch"] < EPOCHS
    assert not (out / "config.json").exists()
    assert not list(out.rglob("*.tmp"))
    threads = torch.get_num_threads()
    try:
        assert main(_train_argv(setup, data, out)) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    assert (out / "patch.safetensors").read_bytes() == (whole / "patch.safetensors").read_bytes()
    assert _history(out) == _history(whole)
