"""How a patch should start (issue 11): ``init=base`` (exactly the base network at step 0) vs
``init=random`` (the paper's literal start), and the Δ-module's reduction r = 2 vs r = 4.

Every run is a cell of the shipped ``cpu`` suite (frozen CIFAR-10 ResNet-20 with its real
weights, base task = 1,000 CIFAR-10 test images, ≤ 1,000 training images at 32 px, 10 epochs,
no augmentation, AdamW lr 1e-2) trained through :func:`deltapatch.run.run_one`, so a number here
is what ``deltapatch train`` gives; only ``init`` and ``reduction`` vary. ``init=random`` with
r = 4 is exactly the published cpu-suite run of the same cell (a check of the harness).
Resumable: finished runs are read back from the JSONL file and not redone.

    python benchmarks/init_compare.py --out docs/init_runs.jsonl --md docs/init_table.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from deltapatch.bench.jobs import run_spec
from deltapatch.bench.suite import load_suite
from deltapatch.hardware import describe
from deltapatch.run import run_one

INITS = ("random", "base")


def grid(tasks: list[str], seeds: int) -> list[dict]:
    """Seed by seed, so a partial run covers every cell: Δ(1) and Δ(3) at r = 4 per init, then
    Δ(1) at r = 2 per init."""
    cells = []
    for seed in range(seeds):
        for task in tasks:
            for stages in (1, 3):
                cells += [dict(task=task, stages=stages, init=i, reduction=4, seed=seed)
                          for i in INITS]
            cells += [dict(task=task, stages=1, init=i, reduction=2, seed=seed) for i in INITS]
    return cells


def key(c: dict) -> tuple:
    return c["task"], c["stages"], c["init"], c["reduction"], c["seed"]


def train_cell(cell: dict, work: Path) -> dict:
    suite = load_suite("cpu")
    variant = suite.variants[f"delta{cell['stages']}"]
    spec = run_spec(suite, "resnet20", suite.tasks[cell["task"]], variant, cell["seed"])
    spec = dataclasses.replace(spec, init=cell["init"],
                               options={**spec.options, "reduction": cell["reduction"]})
    name = "_".join(str(v) for v in key(cell))
    out = run_one(spec, work / name)
    return {**cell, **{k: out.get(k) for k in ("patch_top1", "base_top1", "harmonic_mean",
                                               "trainable_params", "n_test", "n_base_test",
                                               "wall_seconds", "best_epoch", "lambda_mean")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="gtsrb,dtd10")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("docs/init_runs.jsonl"))
    ap.add_argument("--md", type=Path, default=Path("docs/init_table.md"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/deltapatch-init-runs"))
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] \
        if args.out.exists() else []
    finished = {key(r) for r in rows}
    t0 = time.perf_counter()
    for cell in ([] if args.table_only else grid(args.tasks.split(","), args.seeds)):
        if key(cell) in finished:
            continue
        row = train_cell(cell, args.work)
        print(json.dumps({k: v for k, v in row.items() if k != "lambda_mean"}), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
        write_md(rows, args, time.perf_counter() - t0)  # the table grows as runs finish
    write_md(rows, args, time.perf_counter() - t0)


def cell_text(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f} (n={len(values)})"


def write_md(rows: list[dict], args: argparse.Namespace, seconds: float) -> None:
    """Harmonic mean of patch and base top-1 (and the patch top-1) per cell, mean ± std over
    seeds; the base task's top-1 is the backbone's own and the same for every init."""
    wall = sum(r["wall_seconds"] for r in rows)
    lines = ["| task | Δ(n) | r | params | init=random: HM | init=base: HM | "
             "init=random: patch top-1 | init=base: patch top-1 |", "|---" * 8 + "|"]
    for task, stages, red in sorted({(r["task"], r["stages"], r["reduction"]) for r in rows}):
        sel = {i: [r for r in rows if (r["task"], r["stages"], r["reduction"], r["init"])
                   == (task, stages, red, i)] for i in INITS}
        params = sorted({r["trainable_params"] for v in sel.values() for r in v})
        hm = [cell_text([r["harmonic_mean"] for r in sel[i]]) for i in INITS]
        top = [cell_text([r["patch_top1"] for r in sel[i]]) for i in INITS]
        lines.append(f"| {task} | {stages} | {red} | {'/'.join(map(str, params))} | "
                     + " | ".join(hm + top) + " |")
    command = " ".join(a for a in ["python"] + sys.argv if a != "--table-only")
    lines += ["", f"Command: `{command}`; {len(rows)} runs, "
              f"{wall:.0f} s of run wall time in all. Hardware: {describe()}."]
    args.md.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
