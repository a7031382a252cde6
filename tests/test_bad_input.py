"""Bad input through the CLI, by class: each gets one line on stderr naming the fix, exit code 2,
no traceback, and nothing on disk changes (docs/RELIABILITY.md lists the guarantees)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import refused

from deltapatch.cli import main

FAST = ["--backbone", "cifar_resnet20", "--image-size", "16", "--epochs", "1",
        "--batch-size", "16", "--no-augment", "--no-progress"]


def _npz(path, seed: int, n: int = 24):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=y, x_test=x[:12], y_test=y[:12])
    return path


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    return root, _npz(root / "a.npz", 0), _npz(root / "b.npz", 1)


@pytest.fixture(scope="module")
def finished(tasks):
    """A finished Δ run on task a."""
    root, a, _ = tasks
    out = root / "done"
    assert main(["train", *FAST, "--data", str(a), "--out", str(out)]) == 0
    return out


def _tree(folder) -> dict:
    """Every file under ``folder`` with its bytes: 'nothing changed' is compared on this."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("flag,value,match", [
    ("--epochs", "0", "epochs must be"), ("--epochs", "-3", "epochs must be"),
    ("--batch-size", "0", "batch-size must be"), ("--image-size", "0", "image-size must be"),
    ("--max-train", "-5", "max-train must be"), ("--max-test", "0", "max-test must be"),
    ("--val-fraction", "1.5", "val-fraction must"), ("--lr", "nan", "lr must be"),
    ("--method", "deltaa", "unknown method 'deltaa'"), ("--reduction", "0", "reduction"),
])
def test_nonsense_options_are_refused_before_anything_runs(flag, value, match, tasks, capsys):
    root, a, _ = tasks
    out = root / f"never-{flag.strip('-')}-{value}"
    refused(capsys, ["train", *FAST, "--data", a, "--out", out, flag, value], match)
    assert not out.exists()


def test_threads_and_verify_bounds(tasks, finished, capsys):
    refused(capsys, ["--threads", "-1", "info", finished], "threads must be")
    for n in ("0", "-5"):
        refused(capsys, ["verify", "--backbone", "cifar_resnet20", "--patch", finished,
                          "-n", n], "-n must be")


def test_out_holding_another_run_is_refused_naming_the_difference(tasks, finished, capsys):
    """The MNIST-into-USPS case: a copy of a finished run used as --out for other data."""
    _, _, b = tasks
    before = _tree(finished)
    err = refused(capsys, ["train", *FAST, "--data", b, "--out", finished], "another run")
    assert "data" in err
    err = refused(capsys, ["train", *FAST, "--data", tasks[1], "--out", finished,
                            "--method", "linear"], "another run")
    assert "method" in err
    assert _tree(finished) == before


def test_same_command_again_finishes_without_change(tasks, finished, capsys):
    """Re-running a finished run's command resumes at its last epoch: same patch, exit 0."""
    _, a, _ = tasks
    tensors = (finished / "patch.safetensors").read_bytes()
    assert main(["train", *FAST, "--data", str(a), "--out", str(finished)]) == 0
    capsys.readouterr()
    assert (finished / "patch.safetensors").read_bytes() == tensors


def test_folder_of_unknown_run_isrefused(tasks, finished, tmp_path, capsys):
    """A patch folder without its run record (copied by hand) is not trained over."""
    _, a, _ = tasks
    out = tmp_path / "copy"
    out.mkdir()
    for f in ("config.json", "patch.safetensors"):
        (out / f).write_bytes((finished / f).read_bytes())
    before = _tree(out)
    refused(capsys, ["train", *FAST, "--data", a, "--out", out], "unknown settings")
    assert _tree(out) == before


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04truncated"])
def test_planted_or_truncated_checkpoint_is_a_clear_error(content, tasks, finished, tmp_path,
                                                          capsys):
    _, a, _ = tasks
    out = tmp_path / "run"
    os.system(f"cp -r {finished} {out}")
    (out / "run" / "checkpoint.pt").write_bytes(content)
    refused(capsys, ["train", *FAST, "--data", a, "--out", out], "checkpoint.pt is unreadable")


def test_out_that_is_a_file_or_the_working_directory(tasks, tmp_path, capsys, monkeypatch):
    _, a, _ = tasks
    file = tmp_path / "file"
    file.write_text("keep me")
    refused(capsys, ["train", *FAST, "--data", a, "--out", file], "is a file, not a folder")
    assert file.read_text() == "keep me"
    monkeypatch.chdir(tmp_path)
    refused(capsys, ["train", *FAST, "--data", a, "--out", "."], "current folder")


def test_second_training_into_a_locked_folder_isrefused(tasks, tmp_path, capsys):
    from deltapatch.store import FolderLock

    _, a, _ = tasks
    out = tmp_path / "busy"
    with FolderLock(out):  # another process training into it
        refused(capsys, ["train", *FAST, "--data", a, "--out", out], "another process")
    assert not list(tmp_path.glob(".*lock"))  # neither the refused run nor the holder left one


@pytest.mark.parametrize("edit,match", [
    (lambda c: [c], "not an object"),
    (lambda c: None, "not an object"),
    (lambda c: "text", "not an object"),
    (lambda c: {**c, "num_classes": -1}, "num_classes"),
    (lambda c: {**c, "num_classes": 20_000_000}, "num_classes"),
    (lambda c: {**c, "num_classes": 1e999}, "Infinity is not allowed"),
    (lambda c: {**c, "reduction": 0}, "reduction"),
    (lambda c: {**c, "class_names": [1, 2, 3]}, "class_names"),
    (lambda c: {**c, "preprocess": {**c["preprocess"], "size": 10**9}}, "size"),
    (lambda c: {**c, "preprocess": {**c["preprocess"], "std": [0, 1, 1]}}, "std"),
    (lambda c: {**c, "stages": ["x"]}, "stages"),
    (lambda c: {**c, "name": "../../etc"}, "name"),
])
def test_malformed_configs_are_refused_by_every_reader(edit, match, tasks, finished, tmp_path,
                                                      capsys):
    _, a, _ = tasks
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "patch.safetensors").write_bytes((finished / "patch.safetensors").read_bytes())
    config = json.loads((finished / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(edit(config)))
    for argv in (["info", bad],
                 ["eval", "--backbone", "cifar_resnet20", "--patch", bad, "--data", a],
                 ["predict", "--backbone", "cifar_resnet20", "--patch", bad, a]):
        refused(capsys, argv, match)


def test_num_classes_is_checked_against_the_tensors_before_allocating(tasks, finished, tmp_path,
                                                                      capsys):
    """A config claiming more classes than its head holds is refused before the head is built."""
    _, a, _ = tasks
    bad = tmp_path / "bad"
    os.system(f"cp -r {finished} {bad}")
    config = json.loads((bad / "config.json").read_text())
    config.update(num_classes=90_000, class_names=None)
    (bad / "config.json").write_text(json.dumps(config))
    refused(capsys, ["eval", "--backbone", "cifar_resnet20", "--patch", bad, "--data", a],
             "head.weight")


def test_non_finite_patch_isrefused(tasks, finished, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from deltapatch.store import content_hash

    bad = tmp_path / "nan"
    os.system(f"cp -r {finished} {bad}")
    tensors = load_file(str(bad / "patch.safetensors"))
    tensors["head.bias"][0] = float("nan")
    save_file(tensors, str(bad / "patch.safetensors"))
    config = json.loads((bad / "config.json").read_text())
    config["content_hash"] = content_hash(bad / "patch.safetensors")  # a consistent forgery
    (bad / "config.json").write_text(json.dumps(config))
    on_disk = {f: f.read_bytes() for f in bad.rglob("*") if f.is_file()}
    err = refused(capsys, ["verify", "--backbone", "cifar_resnet20", "--patch", bad],
                  "head.bias")
    assert "NaN or Inf" in err  # refused for the NaN, not for a hash or shape
    assert {f: f.read_bytes() for f in bad.rglob("*") if f.is_file()} == on_disk  # unchanged
