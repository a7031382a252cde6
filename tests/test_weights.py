"""``--weights FILE``: a pickle that wants Python objects, junk bytes, a truncated file or a
mapping that is not names → tensors is one short line, exit 2, and no code from the file runs."""

from __future__ import annotations

import pytest
import torch
from helpers import refused
from safetensors.torch import save_file


class _Evil:
    def __reduce__(self):
        return (eval, ("print('PWNED')",))  # not print: ray rebinds builtins.print


def _files(tmp_path):
    torch.save({"w": _Evil()}, tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_text("not a torch file")
    save_file({"w": torch.zeros(3)}, str(tmp_path / "w.safetensors"))
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "w.safetensors").read_bytes()[:20])
    torch.save({1: torch.zeros(1)}, tmp_path / "intkeys.pt")
    torch.save({"a": 3}, tmp_path / "notensor.pt")


@pytest.mark.parametrize("name, words", [
    ("evil.pt", ["refused weights file", "pickled Python objects (eval)",
                 "never runs a pickle"]),
    ("junk.pt", ["cannot read weights file", "not a torch file of tensors"]),
    ("cut.safetensors", ["cannot read weights file", "SafetensorError"]),
    ("intkeys.pt", ["holds no state dict (a mapping of names to tensors)"]),
    ("notensor.pt", ["holds no state dict (a mapping of names to tensors)"]),
])
def test_bad_weights_file_is_one_short_line(tmp_path, capsys, name, words):
    _files(tmp_path)
    out = tmp_path / "out"
    err = refused(capsys, ["train", "--backbone", "cifar_resnet20", "--weights",
                           tmp_path / name, "--data", "digits", "--out", out], words[0])
    assert all(w in err for w in words), err
    assert "weights_only" not in err and len(err) < 400, err  # not torch's page of advice
    assert "PWNED" not in capsys.readouterr().out and not out.exists()
