"""Run a suite's jobs, resumably: each finished job's JSON is written to ``OUT/runs/<key>.json``
and never redone; skipped and failed jobs are not stored, so a later invocation tries them again
(e.g. once another method is registered). Then write results.json / results.csv, the Markdown
tables and the plots.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import time
import traceback
from pathlib import Path

from ..errors import DeltaPatchError
from ..hardware import describe
from ..progress import log, progress_bar
from ..runinputs import DATA_PROTOCOL
from . import full, scenarios  # noqa: F401  (register the scenario kinds)
from .jobs import SCENARIOS, Job, Skip
from .suite import Suite, selected
from .tuning import Pending, chosen_rate, search

RUNS = "runs"


def build_jobs(suite: Suite, seeds: int | None = None, only: set[str] | None = None
               ) -> list[Job]:
    """Every job of the suite, in suite order; ``only`` keeps the given scenario kinds."""
    n = seeds or suite.seeds
    jobs = []
    for entry in selected(suite, only):
        jobs += SCENARIOS.get(entry["kind"])(suite, entry, n)
    jobs.sort(key=lambda j: j.seed)  # stable: every cell's seed 0 first, so a partial run
    seen: dict[str, Job] = {}           # of a long suite already covers the whole grid
    for j in jobs:  # one run may serve several tables (Δ(3) on GTSRB: Tables 1, 2 and 8)
        first = seen.setdefault(j.key, j)
        if first is not j and (first.table == j.table or first.config != j.config):
            raise DeltaPatchError(f"suite '{suite.name}' gives the run '{j.key}' twice with "
                             f"{'the same table' if first.table == j.table else 'other settings'}")
    return jobs


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'I/N' -> (I, N): this process runs every N-th cell (every seed of one backbone, task and
    variant) starting at the I-th, so N processes (e.g. one per core, each with one thread)
    share a suite and one output folder, and a cell's learning-rate search comes before its
    later seeds in the same process."""
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise DeltaPatchError(f"--shard wants I/N, e.g. 0/2, not '{text}'") from None
    if not 0 <= i < n:
        raise DeltaPatchError(f"--shard {text}: I must be in 0..N-1")
    return i, n


def code_version() -> str:
    """deltapatch's version and, when run from a git checkout, its commit (and '+dirty')."""
    import subprocess

    from ..version import __version__
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                                check=False, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                               check=False, capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    return f"deltapatch {__version__}" + (f" @ {commit}{'+dirty' if dirty else ''}"
                                          if commit else "")


def stored_run(file: Path, job: Job) -> dict | None:
    """The finished run in ``file`` if it still answers ``job`` (same data protocol, same
    settings), with the job's current context (its table tag) over the stored one. A stale
    one is neither reported nor kept: the job runs again."""
    if not file.exists():
        return None
    old = json.loads(file.read_text())
    current = (old.get("data_protocol", 1) == DATA_PROTOCOL
               and old.get("config") == job.config)
    return {**old, **job.context()} if current else None


def run_jobs(jobs: list[Job], out: Path, progress: bool = True, max_jobs: int | None = None,
             shard: tuple[int, int] | None = None) -> list[dict]:
    """Run (or reload) every job; returns one record per job with ``status`` ok / skipped /
    failed / pending (``max_jobs`` reached, or another ``shard``'s run not finished yet)."""
    records, started, code, hw = [], 0, code_version(), describe()
    order = {c: i for i, c in enumerate(dict.fromkeys(j.cell for j in jobs))}
    for i, job in enumerate(progress_bar(jobs, desc="bench", enabled=progress, unit="run")):
        file = out / RUNS / f"{job.key}.json"
        old = stored_run(file, job)
        if old is not None:
            records.append(old)
            continue
        mine = shard is None or order[job.cell] % shard[1] == shard[0]
        if not mine or (max_jobs is not None and started >= max_jobs):
            records.append({**job.context(), "status": "pending"})
            continue
        record = attempt(job, out, code, hw)
        started += record["status"] != "pending"
        if progress:
            log(f"[{i + 1}/{len(jobs)}] {job.key}: {record['status']}"
                + (f" ({record['result'].get('wall_seconds')} s)" if "result" in record else ""))
        records.append(record)
    return records


def attempt(job: Job, out: Path, code: str, hw: str) -> dict:
    """Run ``job`` once and return its record; an ``ok`` one is also written (atomically) to
    ``out/runs/<key>.json``. Skipped, pending and failed runs are only returned. What the
    sequential loop and each Ray task (``bench/on_ray.py``) do per run."""
    file = out / RUNS / f"{job.key}.json"
    record = {**job.context(), "code": code, "hardware": hw, "data_protocol": DATA_PROTOCOL}
    try:
        result = execute(job, out)
        record.update(status="ok", finished=time.strftime("%Y-%m-%d %H:%M:%S"),
                      result=result)
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, file)
    except Skip as why:
        record.update(status="skipped", reason=str(why))
    except Pending as why:
        record.update(status="pending", reason=str(why))
    except Exception as err:  # noqa: BLE001 — one broken cell must not stop the grid
        record.update(status="failed", reason=f"{type(err).__name__}: {err}")
        log(f"FAILED {job.key}: {record['reason']}\n{traceback.format_exc()}")
    return record


def execute(job: Job, out: Path) -> dict:
    """Run one job: untuned, as the tuning run of its cell (the whole ``lr_grid``), or at the
    rate(s) its ``lr_from`` runs chose (``Pending`` until they have)."""
    if not job.lr_grid:
        return job.run(_fresh_dir(out / RUNS / job.key, job.config), None)
    if job.tunes:
        return search(job.run, _fresh_dir(out / RUNS / job.key, job.config), job.lr_grid,
                      job.lr_extend)
    rates = [chosen_rate(_read(out / RUNS / f"{key}.json"), key, job.lr_grid)
             for key in job.lr_from]
    lr = rates[0] if job.lr_from == [job.tuning_key] else rates  # borrowed: one per task
    result = job.run(_fresh_dir(out / RUNS / job.key, job.config), lr)
    return {**result, "lr": lr, "lr_search": {"grid": job.lr_grid, "chosen": lr,
                                              "from": job.lr_from}}


def _read(file: Path) -> dict | None:
    if not file.exists():
        return None
    record = json.loads(file.read_text())
    return record if record.get("data_protocol", 1) == DATA_PROTOCOL else None


def _fresh_dir(run_dir: Path, config: str = "") -> Path:
    """The run's working folder; a leftover from another data protocol or other settings (or
    from before either was stamped) is wiped, so that training does not resume on other data
    or with other settings."""
    marker = run_dir / "data_protocol.txt"
    stamp = f"{DATA_PROTOCOL} {config}".strip()
    if run_dir.exists() and (not marker.exists() or marker.read_text().strip() != stamp):
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(stamp + "\n")
    return run_dir


CSV_FIELDS = ["key", "scenario", "table", "backbone", "task", "variant", "label", "seed",
              "status", "patch_top1", "base_top1", "harmonic_mean", "mean_top1",
              "joint_harmonic_mean", "target_top1", "trainable_params", "patch_bytes", "n_test",
              "lr", "wall_seconds", "reason"]


def csv_row(record: dict) -> dict:
    """One CSV row: the job's context and its headline numbers."""
    r = record.get("result", {})
    row = {k: record.get(k) for k in CSV_FIELDS}
    for k in ("patch_top1", "base_top1", "harmonic_mean", "mean_top1", "joint_harmonic_mean",
              "trainable_params", "patch_bytes", "lr", "wall_seconds"):
        row[k] = r.get(k)
    n = r.get("n_test")
    row["n_test"] = n if not isinstance(n, dict) else sum(n.values())
    row["target_top1"] = r.get("top1_by_test", {}).get("target")
    return row


def write_results(records: list[dict], out: Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "runs": records}, indent=1)
                                      + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(csv_row(r) for r in records)


def command_line(suite: str, out: Path, seeds: int | None = None, only: str | None = None,
                 precision: str = "fp32") -> str:
    """The command that reproduces the numbers (rebuilt from the arguments, so it is right
    whatever called ``main``). Report-only flags (--report-only, --results-md, --max-runs) are
    left out: they never change a number."""
    parts = ["deltapatch", "bench", "--suite", suite, "--out", str(out)]
    if seeds is not None:
        parts += ["--seeds", str(seeds)]
    if only:
        parts += ["--only", only]
    if precision != "fp32":  # it changes the numbers; the device does not
        parts += ["--precision", precision]
    return " ".join(shlex.quote(p) for p in parts)
