"""run_jobs: a run shared by several tables runs once, a run whose settings changed is redone,
and --shard splits the distinct runs between processes without overlap or gaps."""

from __future__ import annotations

import pytest

from deltapatch.bench.runner import build_jobs, parse_shard, run_jobs
from deltapatch.bench.scenarios import Job
from deltapatch.bench.suite import load_suite
from deltapatch.errors import DeltaPatchError


def _jobs(calls: list[str], config: str = "c1") -> list[Job]:
    def job(key: str, table: str) -> Job:
        def run(out, lr=None, key=key):
            calls.append(key)
            return {"patch_top1": 0.5, "wall_seconds": 1.0}
        return Job(key, "single", table, "bb", "t", "v", "V", 0, run, {"name": "delta"}, config)
    return [job("single/a", "single"), job("single/a", "ablation"), job("single/b", "single"),
            job("single/c", "adapted")]


def test_shared_run_runs_once_and_serves_every_table(tmp_path):
    calls: list[str] = []
    records = run_jobs(_jobs(calls), tmp_path, progress=False)
    assert calls == ["single/a", "single/b", "single/c"]
    assert [r["table"] for r in records] == ["single", "ablation", "single", "adapted"]
    assert all(r["status"] == "ok" for r in records)


def test_changed_settings_redo_the_run(tmp_path):
    calls: list[str] = []
    run_jobs(_jobs(calls), tmp_path, progress=False)
    calls.clear()
    run_jobs(_jobs(calls), tmp_path, progress=False)
    assert calls == []  # same settings: resumed, nothing redone
    run_jobs(_jobs(calls, config="c2"), tmp_path, progress=False)
    assert calls == ["single/a", "single/b", "single/c"]
    # --report-only runs nothing and does not report stale runs as results
    calls.clear()
    records = run_jobs(_jobs(calls, config="c3"), tmp_path, progress=False, max_jobs=0)
    assert calls == [] and all(r["status"] == "pending" for r in records)


def test_shards_partition_the_distinct_runs(tmp_path):
    runs = []
    for i in range(3):
        calls: list[str] = []
        records = run_jobs(_jobs(calls), tmp_path / "s", progress=False, shard=(i, 3))
        runs += calls
        assert {r["status"] for r in records} <= {"ok", "pending"}
    assert sorted(runs) == ["single/a", "single/b", "single/c"]


def test_parse_shard():
    assert parse_shard("1/2") == (1, 2) and parse_shard(None) is None
    for bad in ("2/2", "x", "1/0"):
        with pytest.raises(DeltaPatchError, match="shard"):
            parse_shard(bad)


def test_cpu_suite_shares_runs_across_tables():
    jobs = build_jobs(load_suite("cpu"))
    keys = [j.key for j in jobs]
    assert len(set(keys)) < len(keys)  # Δ(3) on GTSRB serves Tables 1, 2 and 8
    by_key: dict[str, set] = {}
    for j in jobs:
        by_key.setdefault(j.key, set()).add(j.config)
    assert all(len(c) == 1 for c in by_key.values())
