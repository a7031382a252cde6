"""One tuning budget for every method. A suite that sets ``lr_grid`` gives every cell (backbone,
task, variant) the same learning-rate grid: at the tuning seed the cell trains once per rate and
keeps the rate whose run scores best on the validation split (the criterion the method itself
selects by: best-epoch validation top-1, or PAINT's validation harmonic mean that chooses α);
the other seeds train once at that rate. Test numbers never choose anything.

A cell that cannot score validation on its own (sequential patching) takes each task's rate from
that task's single-task cell, named in ``Job.lr_from``.

Protocol 4 (suite key ``lr_extend = N``): a rate chosen at either end of the grid may not be the
method's best, so the search goes on one step past that end (the grid's own spacing continued:
3e-2 → 1e-1, 1e-3 → 3e-4), every method alike, until the choice is interior or N steps were
added. The record keeps the base grid (``grid``, which later seeds and sequential cells check),
the added rates (``extended``) and whether the choice ended interior.
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


def _train_at(run: Callable[[Path, float], dict], out: Path, lr: float) -> dict:
    """One rate's run, into its own folder; a finished rate is read back, not redone."""
    folder = rate_dir(out, lr)
    done = folder / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    result = run(folder, lr)
    tmp = done.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, done)
    return result


def edge(tried: list[float], chosen: float) -> str:
    """'highest', 'lowest' or '' (interior) for ``chosen`` among the rates ``tried``."""
    order = sorted(tried)
    if len(order) < 2:
        return ""
    return "highest" if chosen == order[-1] else "lowest" if chosen == order[0] else ""


def search_edge(search: dict) -> str:
    """``edge`` for a record's ``lr_search``: its chosen rate among every rate it tried (the
    grid and any rates protocol 4 added); '' for a record that searched nothing."""
    tried = [float(lr) for lr in search.get("val_score", {})]
    return edge(tried, float(search["chosen"])) if tried else ""


def step_past(tried: list[float], side: str) -> float:
    """The next rate past ``side`` of the rates tried, continuing the grid's own spacing: the
    step before the outermost one (so a 1-3-10 grid goes on 3e-2 → 1e-1 → 3e-1 and
    1e-3 → 3e-4 → 1e-4); a two-rate grid repeats its one ratio."""
    g = sorted(tried)
    if side == "highest":
        ratio = g[-2] / g[-3] if len(g) >= 3 else g[-1] / g[-2]
        return float(f"{g[-1] * ratio:.3g}")
    ratio = g[2] / g[1] if len(g) >= 3 else g[1] / g[0]
    return float(f"{g[0] / ratio:.3g}")


def search(run: Callable[[Path, float], dict], out: Path, grid: list[float],
           extend: int = 0) -> dict:
    """Train at every rate of ``grid`` and return the run of the best validation score, ties
    going to the rate tried first, with the whole search in ``lr_search``. With ``extend`` > 0
    (protocol 4), a best rate at an end of the rates tried adds the next rate past it, up to
    ``extend`` times."""
    tried = list(grid)
    results = {lr: _train_at(run, out, lr) for lr in tried}
    scores = {lr: validation_score(r) for lr, r in results.items()}

    def best() -> float:
        return max(tried, key=lambda lr: (scores[lr], -tried.index(lr)))

    while len(tried) - len(grid) < extend and len(tried) >= 2 and edge(tried, best()):
        lr = step_past(tried, edge(tried, best()))
        tried.append(lr)
        results[lr] = _train_at(run, out, lr)
        scores[lr] = validation_score(results[lr])
    chosen = best()
    found = {"grid": list(grid), "chosen": chosen, "seed": TUNE_SEED,
             "wall_seconds": round(sum(r.get("wall_seconds") or 0.0 for r in results.values()), 2),
             "val_score": {f"{lr:g}": round(scores[lr], 6) for lr in tried}}
    if extend:
        found.update(extended=tried[len(grid):], extend_limit=extend,
                     interior=not edge(tried, chosen))
    return {**results[chosen], "lr": chosen, "lr_search": found}


def chosen_rate(record: dict | None, key: str, grid: list[float]) -> float:
    """The rate a finished tuning run chose; Pending while that run has not finished."""
    if record is None or record.get("status") != "ok":
        raise Pending(f"waits for the learning rate chosen by {key}")
    search_ = record["result"].get("lr_search", {})
    if search_.get("grid") != list(grid):
        raise Pending(f"{key} was tuned on another grid; it reruns first")
    return float(search_["chosen"])
