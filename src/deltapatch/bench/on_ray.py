"""``deltapatch bench --ray [ADDRESS]``: a suite's runs as Ray tasks, so a grid spreads over
every CPU of a Ray cluster. No scheduler of our own: Ray places the tasks and retries a task
whose worker died (``max_retries``); each task does exactly what the sequential loop does for
one run (:func:`~deltapatch.bench.runner.attempt`): skip it when its record is already stored,
else run it and write the same ``OUT/runs/<key>.json``.

A run can wait for another (a seed ≥ 1 of a tuned cell waits for the rate its seed 0 chose, a
sequential cell for its tasks' rates): such a task returns ``pending``. Runs therefore go in
rounds: every run not yet done is submitted, and the pending ones are submitted again once the
round that made them wait has finished, until none is pending or a round finishes nothing new
(at most one round per run, so the loop always ends).

Tasks rebuild their job from the suite file (shipped name or absolute path) and the run key
rather than receiving a pickled closure, so on a cluster every node needs deltapatch installed,
and ``--out`` (and the data) on a filesystem all nodes share.

With a GPU device each task asks Ray for ``gpu_share`` of a GPU (0.25: four runs share one) and
trains on the GPU Ray gives it; otherwise for one CPU.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeltaPatchError
from ..hardware import describe
from ..progress import log
from ..run import run_device
from .jobs import Job
from .runner import RUNS, attempt, build_jobs, code_version, stored_run
from .suite import load_suite, placed

RETRIES = 3  # Ray's default for tasks, stated: a run whose worker dies is tried this often more
LOCAL = "local"  # --ray without an address: start a Ray instance on this machine


def _ray():
    try:
        import ray
    except ImportError:
        raise DeltaPatchError("--ray needs Ray: pip install 'deltapatch[ray]' (or "
                              "'ray[serve]>=2.9')") from None
    return ray


@dataclass(frozen=True)
class RaySuite:
    """What a worker needs to rebuild the driver's jobs: the suite, its selection, and where
    and in what precision its runs train (``device``: a type, e.g. ``cuda``; Ray picks the
    GPU and makes it the worker's ``cuda:0``)."""

    ref: str
    seeds: int | None = None
    only: set[str] | frozenset[str] | None = None
    device: str = "cpu"
    precision: str = "fp32"
    gpu_share: float = 1.0

    def resources(self) -> dict:
        """What each task asks Ray for: one CPU, and its share of a GPU on a GPU device."""
        if self.device == "cuda":
            return {"num_cpus": 1, "num_gpus": self.gpu_share}
        return {"num_cpus": 1}

    def key(self) -> tuple:
        return (self.ref, self.seeds, tuple(sorted(self.only)) if self.only else None,
                self.device, self.precision)


@functools.lru_cache(maxsize=4)
def _jobs(ref: str, seeds: int | None, only: tuple[str, ...] | None, device: str,
          precision: str) -> dict[str, Job]:
    """The suite's jobs by key, built once per worker process."""
    suite = placed(load_suite(ref), run_device(device), precision)
    jobs = build_jobs(suite, seeds, set(only) if only else None)
    return {j.key: j for j in jobs}


def run_key(suite_key: tuple, key: str, out: str, code: str) -> dict:
    """One run, in a Ray worker: its stored record if another task or invocation finished it,
    else :func:`attempt`'s record (written when ok)."""
    job = _jobs(*suite_key)[key]
    old = stored_run(Path(out) / RUNS / f"{key}.json", job)
    return old if old is not None else attempt(job, Path(out), code, describe())


def connect(address: str):
    """``ray.init`` for ``address`` (``local``: a new instance here), unless this process is
    already connected (a caller or test that started Ray itself). Returns whether we did."""
    ray = _ray()
    if ray.is_initialized():
        return False
    ray.init(address=None if address == LOCAL else address, include_dashboard=False,
             log_to_driver=True)
    return True


def run_jobs_on_ray(jobs: list[Job], out: Path, suite: RaySuite, address: str = LOCAL,
                    progress: bool = True, max_jobs: int | None = None) -> list[dict]:
    """Every job run (or reloaded) through Ray tasks; one record per job in ``jobs``' order,
    as :func:`~deltapatch.bench.runner.run_jobs` returns them."""
    ray = _ray()
    started_ray = connect(address)
    code = code_version()
    task = ray.remote(max_retries=RETRIES, **suite.resources())(run_key)
    unique = list({j.key: j for j in jobs}.values())  # a run several tables share runs once
    final: dict[str, dict] = {}
    for j in unique:
        old = stored_run(out / RUNS / f"{j.key}.json", j)
        if old is not None:
            final[j.key] = old
    budget = max_jobs
    try:
        for round_ in range(1, len(unique) + 2):
            todo = [j for j in unique if final.get(j.key, {}).get("status") in (None, "pending")]
            if budget is not None:
                todo = todo[:max(0, budget)]
            if not todo:
                break
            t0 = time.perf_counter()
            futures = {task.remote(suite.key(), j.key, str(out), code): j for j in todo}
            results = _gather(ray, futures, progress, round_)
            final.update(results)
            new = sum(r["status"] != "pending" for r in results.values())
            if budget is not None:
                budget -= new
            waiting = len(results) - new
            if progress:
                log(f"ray round {round_}: {len(todo)} runs, {new} done, {waiting} pending "
                    f"({time.perf_counter() - t0:.1f} s)")
            if waiting == 0 or new == 0:  # nothing left, or nothing that could unblock them
                break
    finally:
        if started_ray:
            ray.shutdown()
    return [{**final[j.key], **j.context()} if j.key in final
            else {**j.context(), "status": "pending"} for j in jobs]


def _gather(ray, futures: dict, progress: bool, round_: int) -> dict[str, dict]:
    """Records of the submitted runs as they finish; a run whose worker died more than
    ``RETRIES`` times (or that Ray could not run) is ``failed`` with Ray's reason."""
    results: dict[str, dict] = {}
    left = list(futures)
    while left:
        done, left = ray.wait(left, num_returns=1)
        job = futures[done[0]]
        try:
            record = ray.get(done[0])
        except ray.exceptions.RayError as err:
            record = {**job.context(), "status": "failed",
                      "reason": f"ray: {type(err).__name__}: {str(err)[:300]}"}
        results[job.key] = record
        if progress:
            log(f"[round {round_}, {len(futures) - len(left)}/{len(futures)}] {job.key}: "
                f"{record['status']}")
    return results
