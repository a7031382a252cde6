"""``deltapatch train --method NAME`` end to end on tiny .npz tasks (random-init backbone)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deltapatch.cli import _parse_options, main


def _npz(path, classes: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=y, x_test=x[: n // 2], y_test=y[: n // 2])
    return path


def test_parse_options():
    assert _parse_options(["a=1", "b=[0, 0.5]", "c=text"]) == {"a": 1, "b": [0, 0.5],
                                                                "c": "text"}
    with pytest.raises(ValueError):
        _parse_options(["novalue"])


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
