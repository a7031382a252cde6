"""README's trainable-parameter table is what the command it names prints: the counts depend on
shapes only (random-init backbones), so the script's output is deterministic and the table must
hold its lines verbatim."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.docs
def test_readme_param_table_is_what_param_table_py_prints(capsys):
    readme = (ROOT / "README.md").read_text()
    assert "`python benchmarks/param_table.py`" in readme
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runpy.run_path(str(ROOT / "benchmarks" / "param_table.py"), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len(printed) == 6  # header, rule, four backbones
    documented = [line for line in readme.splitlines() if line.startswith("|")]
    missing = [line for line in printed if line not in documented]
    assert missing == [], f"README's table differs from the script's output: {missing}"
