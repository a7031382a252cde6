"""deltapatch train / eval / predict with --task detection|segmentation on pennfudan."""

from __future__ import annotations

import json

import pytest
from helpers import needs_shared, refused

from deltapatch.cli import main

MODEL = ["--backbone", "cifar_resnet20", "--weights", "cifar10"]
TINY = [*MODEL, "--data", "pennfudan", "--image-size", "64",
        "--max-train", "4", "--max-test", "2", "--epochs", "1", "--no-progress"]


@needs_shared
@pytest.mark.parametrize("kind", ["detection", "segmentation"])
def test_train_eval_predict(kind, tmp_path, capsys):
    out = tmp_path / kind
    assert main(["train", "--task", kind, "--stages", "3", *TINY, "--out", str(out)]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["base_unchanged"] is True and trained["task"] == kind
    assert trained["device"] == "cpu" and trained["precision"] == "fp32"
    key = "box_map50" if kind == "detection" else "miou"
    assert 0 <= trained[key] <= 1
    # the classification loop's run folder: checkpoint and per-epoch metrics in run/
    assert (out / "run" / "checkpoint.pt").is_file()
    assert len((out / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    # the same command again resumes the finished run: nothing retrained, the same scores
    assert main(["train", "--task", kind, "--stages", "3", *TINY, "--out", str(out)]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again[key] == trained[key] and again["history"] == trained["history"]
    assert main(["eval", *MODEL, "--patch", str(out), "--data",
                 "pennfudan", "--max-test", "2"]) == 0
    assert json.loads(capsys.readouterr().out)[key] == trained[key]
    image = tmp_path / "p.png"
    from PIL import Image
    Image.new("RGB", (80, 60), "gray").save(image)
    assert main(["predict", *MODEL, "--patch", str(out), "--draw",
                 str(tmp_path / "pics"), str(image)]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["kind"] == kind and (tmp_path / "pics" / "p.png").is_file()
    # one task-folder layout for every task kind (README): what classification runs hold
    assert {p.name for p in (out / "run").iterdir()} >= {
        "settings.json", "checkpoint.pt", "metrics.csv", "metrics.jsonl"}
    assert (out / "metrics.json").is_file()


def test_dense_train_refuses_a_classification_method(tmp_path, capsys):
    refused(capsys, ["train", "--task", "detection", "--method", "paint", *TINY, "--out",
                     str(tmp_path / "x")], "does not train detection heads")
    assert not (tmp_path / "x").exists()
