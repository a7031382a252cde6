"""Every script in benchmarks/ still imports against the package (a moved module must not
silently break a measurement script that no test runs)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_script_imports(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # scripts import their shared _common
    spec = importlib.util.spec_from_file_location(f"bench_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)  # defines functions; main() runs only as __main__
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in {"deltapatch", "_common"}:
            raise
        pytest.skip(f"{script.name} needs the optional package {err.name}")
    finally:
        sys.modules.pop(spec.name, None)
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"
