"""One tuning budget for every method. A suite that sets ``lr_grid`` gives every cell (backbone,
task, variant) the same learning-rate grid: at the tuning seed the cell trains once per rate and
keeps the rate whose run scores best on the validation split (the criterion the method itself
selects by: best-epoch validation top-1, or PAINT's validation harmonic mean that chooses α);
the other seeds train once at that rate. Test numbers never choose anything.

A cell that cannot score validation on its own (sequential patching) takes each task's rate from
that task's single-task cell, named in ``Job.lr_from``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

TUNE_SEED = 0
SCORE_KEYS = ("alpha_score_val", "val_top1")  # first present wins: PAINT's, then everyone's


class Pending(Exception):
    """The job waits for another run (the rate chosen at the tuning seed, maybe on another
    shard); it is not stored, so the next invocation tries it again."""


def validation_score(result: dict) -> float:
    for key in SCORE_KEYS:
        if result.get(key) is not None:
            return float(result[key])
    raise ValueError("the run reports no validation score "
                     f"({' or '.join(SCORE_KEYS)}), so its learning rate cannot be tuned")


def rate_dir(out: Path, lr: float) -> Path:
    return out / f"lr={lr:g}"


def search(run: Callable[[Path, float], dict], out: Path, grid: list[float]) -> dict:
    """Train at every rate of ``grid`` (each into its own folder, resumable: a finished rate is
    read back, not redone) and return the run of the best validation score, ties going to the
    rate listed first, with the whole search in ``lr_search``."""
    results, scores, wall = {}, {}, 0.0
    for lr in grid:
        folder = rate_dir(out, lr)
        done = folder / "result.json"
        if done.exists():
            results[lr] = json.loads(done.read_text())
        else:
            folder.mkdir(parents=True, exist_ok=True)
            results[lr] = run(folder, lr)
            tmp = done.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(results[lr], indent=1) + "\n")
            os.replace(tmp, done)
        scores[lr] = validation_score(results[lr])
        wall += results[lr].get("wall_seconds") or 0.0
    best = max(grid, key=lambda lr: (scores[lr], -grid.index(lr)))
    return {**results[best], "lr": best,
            "lr_search": {"grid": list(grid), "chosen": best, "seed": TUNE_SEED,
                          "wall_seconds": round(wall, 2),
                          "val_score": {f"{lr:g}": round(s, 6) for lr, s in scores.items()}}}


def chosen_rate(record: dict | None, key: str, grid: list[float]) -> float:
    """The rate a finished tuning run chose; Pending while that run has not finished."""
    if record is None or record.get("status") != "ok":
        raise Pending(f"waits for the learning rate chosen by {key}")
    search_ = record["result"].get("lr_search", {})
    if search_.get("grid") != list(grid):
        raise Pending(f"{key} was tuned on another grid; it reruns first")
    return float(search_["chosen"])
