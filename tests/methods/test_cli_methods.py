"""``deltapatch train --method NAME`` end to end on tiny .npz tasks (random-init backbone)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deltapatch.cli import main
from deltapatch.cli.common import parse_options


def _npz(path, classes: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=y, x_test=x[: n // 2], y_test=y[: n // 2])
    return path


def testparse_options():
    assert parse_options(["a=1", "b=[0, 0.5]", "c=text"]) == {"a": 1, "b": [0, 0.5],
                                                                "c": "text"}
    with pytest.raises(ValueError):
        parse_options(["novalue"])


def test_train_paint_cli(tmp_path, capsys):
    task = _npz(tmp_path / "task.npz", 3, 30, 0)
    base = _npz(tmp_path / "base.npz", 10, 40, 1)
    code = main(["train", "--backbone", "cifar_resnet20", "--data", str(task), "--base-data",
                 str(base), "--image-size", "16", "--epochs", "1", "--batch-size", "16",
                 "--no-augment", "--no-progress", "--out", str(tmp_path / "out"),
                 "--method", "paint", "--option", "alphas=[0, 1]"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["method"] == "paint" and result["alpha"] in (0, 1)
    assert [r["alpha"] for r in result["alpha_table"]] == [0, 1]
    assert result["patch_bytes"] > 0 and result["harmonic_mean"] is not None


@pytest.mark.parametrize("method", ["finetune", "paint", "adapter-series", "bn-adapt", "pnc"])
def test_eval_reloads_method_artefact_with_train_numbers(method, tmp_path, capsys):
    """`eval` on a baseline's output folder rebuilds the method from its safetensors and gives
    the very numbers `train` printed (both tasks, through the method's own forwards)."""
    task = _npz(tmp_path / "task.npz", 3, 30, 0)
    base = _npz(tmp_path / "base.npz", 10, 40, 1)
    weights = _weights(tmp_path / "w.safetensors", seed=0)  # the same random init for both
    common = ["--backbone", "cifar_resnet20", "--data", str(task), "--base-data", str(base),
              "--image-size", "16", "--weights", str(weights)]
    out = tmp_path / "out"
    assert main(["train", *common, "--epochs", "1", "--batch-size", "16", "--lr", "0.05",
                 "--no-augment", "--no-progress", "--out", str(out), "--method", method,
                 *(["--option", "alphas=[0, 0.5, 1]"] if method == "paint" else [])]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", *common, "--patch", str(out)]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for k in ("patch_top1", "base_top1", "trainable_params"):
        assert scored[k] == trained[k], k
    assert scored["method"] == method and scored["patch_bytes"] > 0
    if method == "paint":
        assert scored["alpha"] == trained["alpha"]
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == method and info["patch_bytes"] == scored["patch_bytes"]

    # another backbone's weights: refused with a clear message, nothing run
    other = _weights(tmp_path / "other.safetensors", seed=1)
    assert main(["eval", *common, "--patch", str(out), "--weights", str(other)]) != 0
    assert "fingerprint" in capsys.readouterr().err


def _weights(path, seed: int):
    import torch
    from safetensors.torch import save_file

    from deltapatch.backbones import load_backbone
    torch.manual_seed(seed)
    net = load_backbone("cifar_resnet20", None)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_tampered_task_folder_is_refused_before_anything_is_built(tmp_path, capsys):
    """A changed tensor file no longer matches the content hash in its config: eval, info and
    predict refuse it in one line (exit 2), whatever method wrote it."""
    task = _npz(tmp_path / "task.npz", 3, 30, 0)
    out = tmp_path / "out"
    common = ["--backbone", "cifar_resnet20", "--image-size", "16"]
    assert main(["train", *common, "--data", str(task), "--epochs", "1", "--no-augment",
                 "--no-progress", "--out", str(out), "--method", "bn-adapt"]) == 0
    capsys.readouterr()
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(out / "patch.safetensors"))
    tensors["head.weight"] += 1000
    save_file(tensors, str(out / "patch.safetensors"))
    assert main(["eval", *common, "--patch", str(out), "--data", str(task)]) == 2
    assert main(["info", str(out)]) == 2
    err = capsys.readouterr().err
    assert "content hash" in err and "Traceback" not in err
