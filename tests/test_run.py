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


@pytest.mark.parametrize("base_image_size", [None, 16])
def test_the_base_task_is_scored_at_the_backbones_own_size(tmp_path, base_image_size):
    """A patch task at 16 px does not move the base task off the backbone's 32 px (or off the
    size asked for): the reported base top-1 is the plain backbone's at that size."""
    import torch

    from deltapatch.data import load_test
    from deltapatch.runinputs import build_model
    from deltapatch.train import evaluate
    spec = RunSpec(backbone="cifar_resnet20", data="digits", base_data="digits", image_size=16,
                   base_image_size=base_image_size, max_train=64, max_test=48, stages=0,
                   method="linear", seed=1,
                   train=TrainConfig(epochs=1, batch_size=32, augment=False, seed=1,
                                     progress=False))
    got = run_one(spec, tmp_path / "run")["base_top1"]
    torch.manual_seed(1)  # run_one builds the random-init backbone after this seed
    plain = build_model("cifar_resnet20", None).eval()
    scores = {size: evaluate(plain, load_test("digits", size, max_test=48, seed=1)[0],
                             plain.preprocess) for size in (16, 32)}
    assert scores[16] != scores[32]  # the size matters for this backbone and subset
    assert got == pytest.approx(scores[base_image_size or 32], abs=1e-6)  # report rounds


def test_a_gpu_record_names_the_gpu(monkeypatch):
    """Item 8 of issue 23: on a GPU a record carries its name, memory, CUDA and cuDNN."""
    import torch

    from deltapatch import hardware
    from deltapatch.run import placement_facts

    monkeypatch.setattr(hardware, "gpu_facts", lambda d: {"gpu": "H200", "cuda": "13.0",
                                                          "cudnn": 91000, "gpu_memory_gib": 139.8})
    facts = placement_facts(torch.device("cuda", 0), "bf16")
    assert facts["gpu"] == "H200" and facts["precision"] == "bf16" and facts["device"] == "cuda:0"
    assert placement_facts(torch.device("cpu"), "fp32") == {"device": "cpu", "precision": "fp32"}
