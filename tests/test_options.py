"""Method options are typed classes (deltapatch.options.OptionSet): the keys a run accepts, their
checks, the methods' defaults, `train --option`'s help and docs/METHODS.md's table all come from
them."""

from __future__ import annotations

import re
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from deltapatch.cli.train import method_keys, own_keys
from deltapatch.dense.run import DenseOptions
from deltapatch.methods import METHODS, MethodOptions
from deltapatch.methods.lora import LoraOptions
from deltapatch.methods.paint import ALPHAS, PaintOptions
from deltapatch.methods.pnc import PncOptions

DOC = Path(__file__).resolve().parents[1] / "docs" / "METHODS.md"


def test_parse_gives_typed_values_and_the_defaults_of_keys_not_given():
    opts = PaintOptions.parse("paint", {"base_val_max": 10})
    assert (opts.base_val_max, list(opts.alphas), opts.reduction) == (10, list(ALPHAS), 4)
    lora = LoraOptions.parse("lora", {"rank": 3, "targets": "layer1.0.conv1"})
    assert (lora.fixed_rank, lora.target_names, lora.lora_alpha) == (3, ("layer1.0.conv1",), None)
    assert LoraOptions.parse("lora", {}).fixed_rank is None  # "auto"
    pnc = PncOptions.parse("pnc", {"pnc_positions": [1, 2]})
    assert (pnc.pnc_positions, pnc.pnc_search_epochs, pnc.pnc_tolerance) == ([1, 2], 1, 0.01)
    with pytest.raises(FrozenInstanceError):
        pnc.pnc_tolerance = 0.5  # a run's options do not change under it


@pytest.mark.parametrize("cls,given,match", [
    (PaintOptions, {"rank": 2}, r"unknown paint option\(s\) rank; paint takes alphas, "
                                r"base_val_max, reduction"),
    (PaintOptions, {"alphas": [0, 2]}, "paint option alphas must be a non-empty list"),
    (MethodOptions, {"reduction": 0}, "paint option reduction must be an integer ≥ 1"),
    (LoraOptions, {"rank": 4, "rank_scale": 2}, "with an explicit rank leave it out"),
    (LoraOptions, {"lora_alpha": 0}, "lora_alpha must be a number > 0"),
    (PncOptions, {"pnc_search_epochs": True}, "pnc_search_epochs must be an integer"),
])
def test_parse_refuses_unknown_keys_and_wrong_values(cls, given, match):
    with pytest.raises(ValueError, match=match):
        cls.parse("paint", given)  # the owner only names who refuses in the message


def test_every_method_declares_a_typed_options_class_with_the_shared_keys():
    for name, method in METHODS.items():
        assert issubclass(method.options, MethodOptions), name
        assert isinstance(method.check_options({}), method.options), name
    assert METHODS.get("lora").options is LoraOptions
    assert "lora: rank, rank_scale, lora_alpha, targets" in method_keys()
    assert "reduction" not in method_keys()


def _doc_table() -> dict[str, str]:
    """option → the methods column of METHODS.md's "Options" table."""
    text = DOC.read_text().split("## Options", 1)[1]
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`"):
            for key in re.findall(r"`(\w+)`", cells[0]):
                rows[key] = cells[1]
    return rows


def test_the_docs_table_lists_exactly_the_declared_keys_and_who_reads_them():
    rows = _doc_table()
    readers: dict[str, set[str]] = {}
    for name, method in METHODS.items():
        for key in own_keys(method.options):
            readers.setdefault(key, set()).add(name)
    for key in own_keys(DenseOptions):
        readers.setdefault(key, set()).add("--task")
    assert set(rows) == set(readers) | set(MethodOptions.declared())
    for key, names in readers.items():
        for name in names:
            assert name in rows[key], (key, name)
