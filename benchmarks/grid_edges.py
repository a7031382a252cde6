"""Which tuned cells kept a learning rate at the edge of their grid, from the records alone.

A cell's rate is chosen on validation at seed 0 from the suite's ``lr_grid``; a rate at the
grid's lowest or highest end means the search may have stopped short of the method's best rate
(protocol 4 extends such grids). This prints every tuned cell of each ``results.json`` given
(one line per cell, a cell shared by several tables counted once), its chosen rate, whether that
rate is on an edge, and the counts per suite, so the docs' edge counts can be re-derived.

    python benchmarks/grid_edges.py docs/results/cpu/results.json \\
        docs/results/imagenet/results.json docs/results/cpu-protocol4/results.json \\
        docs/results/cpu-protocol4-round2/results.json \\
        docs/results/imagenet-protocol4/results.json \\
        docs/results/frontier/*-protocol4*/results.json > docs/results/grid_edges.txt
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from deltapatch.bench.tuning import search_edge


def tuned_cells(path: Path) -> dict[str, dict]:
    """Cell key -> the seed-0 record that searched the grid (one per cell)."""
    runs = json.loads(path.read_text())["runs"]
    return {r["key"].rsplit("/seed", 1)[0]: r for r in runs
            if r.get("status") == "ok" and "val_score" in r["result"].get("lr_search", {})}


def report(path: Path) -> list[str]:
    cells = tuned_cells(path)
    lines = [f"# {path} ({len(cells)} tuned cells)",
             "cell | label | chosen | edge | validation % per rate"]
    counts: Counter = Counter()
    for key, r in sorted(cells.items()):
        s = r["result"]["lr_search"]
        where = search_edge(s)  # protocol 4's added rates too
        counts[(where, s["chosen"])] += 1
        vals = " ".join(f"{lr}:{100 * v:.1f}" for lr, v in s["val_score"].items())
        lines.append(f"{key} | {r['label']} | {s['chosen']:g} | {where or 'interior'} | {vals}")
    on_edge = sum(n for (w, _), n in counts.items() if w)
    lines.append(f"summary: {on_edge} of {len(cells)} cells on a grid edge; "
                 + "; ".join(f"{w} {lr:g}: {n}" for (w, lr), n in sorted(counts.items()) if w))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("records", nargs="+", type=Path, help="a suite's results.json")
    for path in ap.parse_args().records:
        print("\n".join(report(path)) + "\n")


if __name__ == "__main__":
    main()
