"""How long a suite's runs took, and how long what is left will take, from its records alone.

Reads a suite's ``results.json`` (e.g. the published docs/results/imagenet/results.json) and
prints, per single-task method, the median seconds of one training run (a tuned cell's searched
wall time divided by its grid's rates), the process-hours of all finished runs, and an estimate
for the pending ones: each costs one run at its cell's seed-0 time per run (later seeds train
once, at the chosen rate). Times are as measured, with other runs sharing the cores.

    python benchmarks/suite_times.py docs/results/imagenet/results.json

It also prices protocol 4 (a grid extended past its edge until the choice is interior) on the
records: each cell whose seed-0 choice sits at an edge needs at least one more seed-0 run at
the next rate (if the choice stays, the cell is done), and at most ``--extend`` more plus
its other seeds again at the new rate (if it moves every time).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from deltapatch.bench.tuning import search_edge


def per_run_seconds(result: dict) -> tuple[float, int]:
    """(seconds per training run, runs made) of one record: a tuned cell ran once per rate."""
    search = result.get("lr_search", {})
    if "val_score" in search:
        return search["wall_seconds"] / len(search["val_score"]), len(search["val_score"])
    return result.get("wall_seconds") or 0.0, 1


def cell(key: str) -> str:
    return key.rsplit("/seed", 1)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a suite's results.json")
    ap.add_argument("--extend", type=int, default=3, help="protocol 4's limit of added rates")
    a = ap.parse_args()
    records = {r["key"]: r for r in json.loads(a.results.read_text())["runs"]}  # one per run
    done = {k: r for k, r in records.items() if r["status"] == "ok"}
    by_method: dict[str, list[float]] = defaultdict(list)
    seed0: dict[str, float] = {}
    total = runs = 0
    for key, r in done.items():
        each, made = per_run_seconds(r["result"])
        total, runs = total + each * made, runs + made
        if r["seed"] == 0:
            seed0[cell(key)] = each
            if r["scenario"] == "single":
                by_method[r["label"]].append(each)
    print("| method (single-task) | cells | median s per run |\n|---|---|---|")
    for label, times in by_method.items():
        print(f"| {label} | {len(times)} | {statistics.median(times):.0f} |")
    pending = [k for k, r in records.items() if r["status"] == "pending"]
    left = sum(seed0.get(cell(k), 0.0) for k in pending)
    unknown = sum(cell(k) not in seed0 for k in pending)
    print(f"\nfinished: {len(done)} records, {runs} training runs, {total / 3600:.1f} "
          "process-hours")
    print(f"pending: {len(pending)} records, about {left / 3600:.1f} process-hours "
          f"({unknown} of them without a seed-0 time, not counted)")
    low, high, cells = protocol4_cost(done, a.extend)
    print(f"protocol 4 (lr_extend = {a.extend}): {cells} cells on an edge; about "
          f"{low / 3600:.1f} process-hours if every choice stays, {high / 3600:.1f} if every "
          "choice moves each time (other seeds rerun)")


def protocol4_cost(done: dict[str, dict], extend: int) -> tuple[float, float, int]:
    """(seconds if no edge choice moves, seconds if every one moves ``extend`` times, cells)."""
    seeds: dict[str, int] = defaultdict(int)
    for key in done:
        seeds[cell(key)] += 1
    low = high = 0.0
    cells = 0
    for key, r in done.items():
        search = r["result"].get("lr_search", {})
        if r["seed"] != 0 or not search_edge(search):
            continue
        each, _ = per_run_seconds(r["result"])
        cells += 1
        low += each
        high += each * (extend + seeds[cell(key)] - 1)
    return low, high, cells


if __name__ == "__main__":
    main()
