"""One learning-rate grid for every method: the tuning seed searches the grid on validation,
later seeds reuse its choice, sequential cells borrow each task's choice, and a search that is
cut off resumes without redoing finished rates."""

from __future__ import annotations

import json

import pytest

from deltapatch.bench.runner import run_jobs
from deltapatch.bench.scenarios import Job
from deltapatch.bench.tuning import Pending, chosen_rate, search_edge, validation_score

GRID = [1e-3, 3e-3, 1e-2, 3e-2]
VAL = {1e-3: 0.2, 3e-3: 0.7, 1e-2: 0.5, 3e-2: 0.1}  # validation peaks at 3e-3


def _job(calls: list, key: str, seed: int, grid=GRID, lr_from=(), test=None) -> Job:
    def run(out, lr=None):
        calls.append((key, lr))
        out.joinpath("trained").write_text("x")
        # test top-1 peaks elsewhere: the choice must follow validation, never test
        return {"val_top1": VAL.get(lr, 0.0) if isinstance(lr, float) else 0.0,
                "patch_top1": test or (1.0 - VAL.get(lr, 0.0) if isinstance(lr, float) else 0.0),
                "wall_seconds": 1.0}
    return Job(key, "single", "single", "bb", "t", "v", "V", seed, run, {"name": "delta"}, "c",
               list(grid), list(lr_from))


def test_tuning_seed_picks_the_best_validation_rate_and_later_seeds_reuse_it(tmp_path):
    calls: list = []
    jobs = [_job(calls, "single/a/seed0", 0), _job(calls, "single/a/seed1", 1)]
    records = run_jobs(jobs, tmp_path, progress=False)
    assert [c for c in calls if c[0].endswith("seed0")] == [("single/a/seed0", lr) for lr in GRID]
    assert ("single/a/seed1", 3e-3) in calls and len(calls) == 5
    first, second = (r["result"] for r in records)
    assert first["lr"] == 3e-3 and first["lr_search"]["chosen"] == 3e-3
    assert first["lr_search"]["val_score"] == {"0.001": 0.2, "0.003": 0.7, "0.01": 0.5,
                                               "0.03": 0.1}
    assert first["patch_top1"] == pytest.approx(0.3)  # the chosen run's test number, not the best
    assert second["lr"] == 3e-3 and second["lr_search"]["from"] == ["single/a/seed0"]


def test_a_search_cut_off_resumes_without_redoing_finished_rates(tmp_path):
    calls: list = []
    job = _job(calls, "single/a/seed0", 0)
    run_jobs([job], tmp_path, progress=False)
    stored = tmp_path / "runs" / "single/a/seed0.json"
    stored.unlink()  # as if killed after the rates finished but before the record was written
    (tmp_path / "runs/single/a/seed0/lr=0.03/result.json").unlink()  # the last rate unfinished
    calls.clear()
    records = run_jobs([_job(calls, "single/a/seed0", 0)], tmp_path, progress=False)
    assert calls == [("single/a/seed0", 3e-2)]
    assert records[0]["result"]["lr"] == 3e-3


def test_a_later_seed_waits_for_the_tuning_run_of_another_shard(tmp_path):
    calls: list = []
    jobs = [_job(calls, "single/a/seed0", 0), _job(calls, "single/a/seed1", 1),
            _job(calls, "single/b/seed0", 0), _job(calls, "single/b/seed1", 1)]
    # shards split by cell: a's seeds both go to shard 0, b's to shard 1
    records = run_jobs(jobs, tmp_path, progress=False, shard=(1, 2))
    assert {c[0] for c in calls} == {"single/b/seed0", "single/b/seed1"}
    assert [r["status"] for r in records] == ["pending", "pending", "ok", "ok"]
    # a job whose tuning run is missing is pending, not failed, and is not stored
    calls.clear()
    waiting = _job(calls, "single/c/seed1", 1)
    records = run_jobs([waiting], tmp_path, progress=False)
    assert records[0]["status"] == "pending" and "single/c/seed0" in records[0]["reason"]
    assert calls == [] and not (tmp_path / "runs/single/c/seed1.json").exists()


def test_sequential_cells_borrow_each_tasks_rate(tmp_path):
    calls: list = []
    run_jobs([_job(calls, "single/x/seed0", 0)], tmp_path, progress=False)
    borrow = _job(calls, "sequential/x-y/seed0", 0, lr_from=["single/x/seed0", "single/y/seed0"])
    records = run_jobs([borrow], tmp_path, progress=False)
    assert records[0]["status"] == "pending"  # y's cell has not chosen yet
    run_jobs([_job(calls, "single/y/seed0", 0)], tmp_path, progress=False)
    calls.clear()
    borrow = _job(calls, "sequential/x-y/seed0", 0, lr_from=["single/x/seed0", "single/y/seed0"])
    records = run_jobs([borrow], tmp_path, progress=False)
    assert calls == [("sequential/x-y/seed0", [3e-3, 3e-3])]
    assert records[0]["result"]["lr_search"]["from"] == ["single/x/seed0", "single/y/seed0"]


def test_a_choice_on_another_grid_is_not_reused():
    record = {"status": "ok", "result": {"lr_search": {"grid": [1e-2], "chosen": 1e-2}}}
    with pytest.raises(Pending, match="another grid"):
        chosen_rate(record, "k", GRID)
    assert chosen_rate(record, "k", [1e-2]) == 1e-2


def test_validation_score_prefers_paints_criterion_and_refuses_none():
    assert validation_score({"alpha_score_val": 0.4, "val_top1": 0.9}) == 0.4
    assert validation_score({"val_top1": 0.9}) == 0.9
    with pytest.raises(ValueError, match="no validation score"):
        validation_score(json.loads('{"patch_top1": 0.5}'))


def _edge_job(calls: list, val: dict, extend: int) -> Job:
    def run(out, lr=None):
        calls.append(lr)
        return {"val_top1": val[lr], "patch_top1": 0.5, "wall_seconds": 1.0}
    return Job("single/e/seed0", "single", "single", "bb", "t", "v", "V", 0, run,
               {"name": "delta"}, "c", list(GRID), lr_extend=extend)


def test_protocol_4_extends_a_top_edge_until_the_choice_is_interior(tmp_path):
    calls: list = []
    val = {1e-3: 0.1, 3e-3: 0.2, 1e-2: 0.3, 3e-2: 0.4, 0.1: 0.5, 0.3: 0.45}
    record = run_jobs([_edge_job(calls, val, 3)], tmp_path, progress=False)[0]
    found = record["result"]["lr_search"]
    assert calls == GRID + [0.1, 0.3]  # 3e-2 → 1e-1 (an edge again) → 3e-1, then interior
    assert found["chosen"] == 0.1 and found["interior"] and found["extended"] == [0.1, 0.3]
    assert found["grid"] == GRID  # later seeds check the base grid


def test_protocol_4_extends_a_bottom_edge_and_stops_at_its_limit(tmp_path):
    calls: list = []
    val = {1e-3: 0.5, 3e-3: 0.4, 1e-2: 0.3, 3e-2: 0.2, 3e-4: 0.6, 1e-4: 0.7}
    found = run_jobs([_edge_job(calls, val, 2)], tmp_path, progress=False)[0]["result"]["lr_search"]
    assert calls == GRID + [3e-4, 1e-4]
    assert found["chosen"] == 1e-4 and found["interior"] is False


def test_protocol_3_records_are_unchanged_without_lr_extend(tmp_path):
    calls: list = []
    val = {1e-3: 0.1, 3e-3: 0.2, 1e-2: 0.3, 3e-2: 0.4}
    found = run_jobs([_edge_job(calls, val, 0)], tmp_path, progress=False)[0]["result"]["lr_search"]
    assert calls == GRID and found["chosen"] == 3e-2 and "extended" not in found


def test_search_edge_reads_every_rate_a_record_tried():
    """A record's edge counts protocol 4's added rates, not only the grid; an untuned record
    has none."""
    grid = {"0.01": 0.4, "0.03": 0.5}
    assert search_edge({"chosen": 0.03, "val_score": grid}) == "highest"
    assert search_edge({"chosen": 0.03, "val_score": {**grid, "0.1": 0.45}}) == ""
    assert search_edge({"chosen": 0.01, "val_score": grid}) == "lowest"
    assert search_edge({}) == ""
