"""``deltapatch train`` and the bench share one code path: the same arguments give the same
numbers through the CLI and through ``run_one``."""

from __future__ import annotations

import json

import pytest

from deltapatch.cli import main
from deltapatch.run import RunSpec, run_one
from deltapatch.train import TrainConfig

pytest.importorskip("sklearn", reason="uses scikit-learn's digits")


def test_train_cli_equals_run_one(tmp_path, capsys):
    args = ["train", "--backbone", "cifar_resnet20", "--data", "digits", "--base-data", "digits",
            "--image-size", "16", "--max-train", "64", "--max-test", "32", "--epochs", "1",
            "--batch-size", "32", "--no-augment", "--no-progress", "--stages", "1",
            "--seed", "3", "--out", str(tmp_path / "cli")]
    assert main(args) == 0
    cli = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    spec = RunSpec(backbone="cifar_resnet20", data="digits", base_data="digits", image_size=16,
                   max_train=64, max_test=32, stages=1, seed=3,
                   train=TrainConfig(epochs=1, batch_size=32, lr=1e-2, augment=False, seed=3,
                                     progress=False))
    lib = run_one(spec, tmp_path / "lib")
    for key in ("patch_top1", "base_top1", "harmonic_mean", "trainable_params", "n_test"):
        assert cli[key] == lib[key], key
    assert (tmp_path / "cli" / "metrics.json").exists()
