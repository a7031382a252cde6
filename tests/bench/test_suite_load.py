"""A suite and a bench invocation are checked in full before any run starts (issue 24, item 5):
every key, type and bound of the suite file, its names, ``--only``, ``--seeds``, the output paths
and the data the runs read. A refusal is one line, exit 2, and the disk as it was."""

from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path

import pytest
from helpers import refused
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltapatch.bench import publish
from deltapatch.bench.jobs import run_spec
from deltapatch.bench.runner import build_jobs
from deltapatch.bench.schema import SETTING_KEYS, SHAPES, VARIANT_KEYS
from deltapatch.bench.suite import load_suite, selected
from deltapatch.cli import main
from deltapatch.errors import DeltaPatchError

BASE = {
    "name": "t", "seeds": 1,
    "defaults": {"epochs": 1, "max_train": 32, "image_size": 16},
    "backbones": {"r20": {"name": "cifar_resnet20", "weights": "", "base_data": "digits"}},
    "tasks": {"digits": {"data": "digits"}, "digits_b": {"data": "digits", "max_train": 40}},
    "variants": {"delta1": {"method": "delta", "label": "Δ(1)", "stages": 1},
                 "linear": {"method": "linear", "stages": 0},
                 "full": {"method": "full", "stages": 0}},
    "scenarios": [
        {"kind": "single", "table": "single", "backbones": ["r20"], "tasks": ["digits"],
         "variants": ["delta1", "linear"]},
        {"kind": "joint", "backbones": ["r20"], "groups": [["digits", "digits_b"]],
         "variants": ["delta1"]},
        {"kind": "sequential", "backbones": ["r20"], "orders": [["digits", "digits_b"]],
         "variants": ["linear"]},
        {"kind": "zsda", "backbones": ["r20"], "source": "digits", "target": "digits_b",
         "variants": ["full"]},
        {"kind": "scratch", "backbones": ["r20"], "tasks": ["digits"], "variants": ["full"]},
    ],
    "not_implemented": [{"kind": "adda", "why": "not yet"}],
}


def toml(value: object) -> str:
    """``value`` as TOML (inline tables: any nesting on one line per top-level key)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml, value)) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + "}"


def document(suite: dict) -> str:
    return "".join(f"{json.dumps(k)} = {toml(v)}\n" for k, v in suite.items())


def listing(folder: Path) -> dict[str, tuple]:
    return {str(p.relative_to(folder)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def no_runs(monkeypatch):
    """Fail the test if the bench reaches its run loop (nothing may be trained)."""
    def boom(*a, **k):
        raise AssertionError("a run started")
    monkeypatch.setattr(publish, "run_jobs", boom)


def _with(**changes) -> dict:
    suite = copy.deepcopy(BASE)
    for where, value in changes.items():
        *parents, key = where.split("__")
        node = suite
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[key] = value
    return suite


CASES = {  # the cases and their class: (suite, extra flags, key words of the refusal)
    "epochs a word": (_with(defaults__epochs="ten"), [], "epochs must be an integer"),
    "epochs negative": (_with(defaults__epochs=-1), [], "epochs must be in 1..100000"),
    "defaults not a table": (_with(defaults=3), [], "defaults must be a table"),
    "no scenarios": ({}, [], "defines no [[scenarios]]"),
    "seeds 0": (_with(seeds=0), [], "seeds must be in 1..1000"),
    "--seeds 0": (BASE, ["--seeds", "0"], "--seeds must be in 1..1000"),
    "--only teleport": (BASE, ["--only", "teleport"], "unknown scenario kind(s) 'teleport'"),
    "--only a kind with no runs": (BASE, ["--only", "transfer"], "has no runs of kind(s)"),
    "variant key typo": (_with(variants__delta1__stage=1), [], "unknown key(s) stage; valid:"),
    "scenario key typo": (_with(scenarios__0__task=["digits"]), [], "unknown key(s) task"),
    "lr a string": (_with(tasks__digits__lr="0.1"), [], "lr must be a number"),
    "val_fraction 1.5": (_with(defaults__val_fraction=1.5), [], "val-fraction"),
    "nan warm-up": (_with(defaults__warmup_epochs=float("nan")), [], "warmup-epochs"),
    "unknown gate": (_with(variants__delta1__gate="bogus"), [], "gate = 'bogus'; choose"),
    "negative stages": (_with(variants__delta1__stages=-1), [], "stages must be a count"),
    "unknown backbone": (_with(backbones__r20__name="resnet9000"), [], "unknown backbone"),
    "unknown method": (_with(variants__delta1__method="detla"), [], "unknown method 'detla'"),
    "unknown method option": (_with(variants__delta1__options={"bogus_key": 1}), [],
                              "unknown delta option(s) bogus_key"),
    "method option out of bounds": (_with(variants__delta1__options={"reduction": 0}), [],
                                    "reduction"),
    "empty task list": (_with(scenarios__0__tasks=[]), [], "tasks must be a non-empty list"),
    "task twice": (_with(scenarios__2__orders=[["digits", "digits"]]), [], "distinct keys"),
    "unknown table": (_with(scenarios__0__table="tabel"), [], "table = 'tabel'"),
    "task key escapes": (_with(tasks={**BASE["tasks"], "../evil": {"data": "digits"}}), [],
                         "cannot name a run"),
    "missing data": (_with(tasks__digits__data="nosuch"), [], "data 'nosuch' is neither"),
    "missing weights": (_with(backbones__r20__weights="no.safetensors"), [],
                        "weights 'no.safetensors' is neither"),
    "--out a file": (BASE, ["--out", "{afile}"], "is a file; give a folder"),
    "--results-md a folder": (BASE, ["--results-md", "{adir}"], "is a folder; give a file"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_suite_or_flags_are_refused_before_anything_is_written(case, tmp_path, capsys,
                                                                    no_runs):
    suite, flags, words = CASES[case]
    (tmp_path / "suite.toml").write_text(document(suite))
    (tmp_path / "afile").write_text("keep")
    (tmp_path / "adir").mkdir()
    before = listing(tmp_path)
    flags = [f.format(afile=tmp_path / "afile", adir=tmp_path / "adir") for f in flags]
    refused(capsys, ["bench", "--suite", tmp_path / "suite.toml", "--out", tmp_path / "out",
                     "--device", "cpu", "--no-progress", *flags], words)
    assert listing(tmp_path) == before


def test_the_base_suite_is_accepted_and_reaches_the_runs(tmp_path, monkeypatch):
    """The cases above differ from an accepted suite only in what the test names."""
    (tmp_path / "suite.toml").write_text(document(BASE))
    seen = []
    monkeypatch.setattr(publish, "run_jobs", lambda jobs, *a, **k: seen.extend(jobs) or [])
    publish.plan(publish.BenchRequest(str(tmp_path / "suite.toml"), tmp_path / "out"))
    assert main(["bench", "--suite", str(tmp_path / "suite.toml"), "--out",
                 str(tmp_path / "out"), "--device", "cpu", "--no-progress"]) == 0
    assert {j.scenario for j in seen} == {"single", "joint", "sequential", "zsda", "scratch"}


# ---------------------------------------------------------------- generated suites
VALUES = st.one_of(
    st.integers(-3, 3), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
    st.booleans(), st.builds(dict), st.builds(list),  # fresh ones: one shared {} set into
    # itself made a suite that contains itself
    st.sampled_from(["", "ten", "../evil", "__base__", "a.b", "digits", "digits_b", "delta",
                     "nosuch", "cifar_resnet20", "single", "sgd", "output", "base"]),
    st.lists(st.sampled_from(["digits", "digits_b", "delta1", "linear", "r20", "x", 1]),
             max_size=3),
    st.lists(st.lists(st.sampled_from(["digits", "digits_b", "x"]), max_size=2), max_size=2))
KEYS = sorted(SETTING_KEYS | VARIANT_KEYS | {"kind", "backbones", "tasks", "variants", "groups",
                                             "orders", "source", "target", "table", "skip",
                                             "seeds", "defaults", "scenarios", "data", "weights",
                                             "base_data", "epoch", "bogus"})


def _tables(node: object) -> list[dict]:
    """Every table in a suite document (the top level included)."""
    if isinstance(node, list):
        return [t for item in node for t in _tables(item)]
    if isinstance(node, dict):
        return [node] + [t for v in node.values() for t in _tables(v)]
    return []


@st.composite
def suites(draw) -> dict:
    """The base suite with 0-3 mutations: a key set to any value, removed, or misspelt."""
    suite = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(0, 3))):
        table = draw(st.sampled_from(_tables(suite)))
        key = draw(st.sampled_from(sorted(set(table) | set(KEYS))))
        op = draw(st.sampled_from(["set", "set", "delete", "misspell"]))
        if op == "set":
            table[key] = draw(VALUES)
        elif key in table:
            value = table.pop(key)
            if op == "misspell":
                table[key[:-1] or "x"] = value
    return suite


def _usable(path: Path) -> None:
    """Load the suite; if accepted, every job and every run's settings must build."""
    suite = load_suite(str(path))
    jobs = build_jobs(suite)
    assert jobs
    for sc in selected(suite):
        for bb in sc["backbones"]:
            for v in sc["variants"]:
                for t in SHAPES.get(sc["kind"]).task_keys(sc):
                    run_spec(suite, bb, suite.tasks[t], suite.variants[v], 0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(suites())
def test_generated_suites_are_usable_or_refused_in_one_line(suite):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "suite.toml"
        path.write_text(document(suite))
        try:
            _usable(path)
        except DeltaPatchError as err:
            assert str(err).strip() and "Traceback" not in str(err)


class Planned(Exception):
    """Raised where the first run would start."""


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(suites())
def test_generated_suites_through_the_cli_write_nothing_before_the_runs(suite):
    """Refused: exit 2, one line, the disk unchanged. Accepted: the run loop is reached with
    the disk still unchanged (everything was checked first)."""
    def stop(*a, **k):
        raise Planned

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        root = Path(tmp)
        (root / "suite.toml").write_text(document(suite))
        before = listing(root)
        mp.setattr(publish, "run_jobs", stop)
        argv = ["bench", "--suite", str(root / "suite.toml"), "--out", str(root / "out"),
                "--device", "cpu", "--no-progress"]
        with _stderr() as err:
            try:
                code = main(argv)
            except Planned:
                code = None
        if code is not None:
            assert code == 2 and len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
            assert "Traceback" not in err.getvalue()
        assert listing(root) == before


def _stderr():
    import contextlib
    import io

    class Capture(contextlib.redirect_stderr):
        def __enter__(self):
            super().__enter__()
            return self._new_target

    return Capture(io.StringIO())
