"""Did a tuned cell stop at the edge of the learning-rate grid? Train it one step past the edge.

A suite with ``lr_grid`` keeps, per cell, the rate with the best validation score. When that is
the grid's lowest or highest rate (the report's "Learning rate per cell" table marks these), the
search may not have found the method's best rate. This script writes a copy of a shipped suite
restricted to the chosen cells, with ``lr_grid = [RATE]`` and seed 0 only, runs it with
``deltapatch bench`` (resumable like any suite), and prints each cell's validation score per rate
from the published records beside the probe's, and both test harmonic means.

Runs can differ by a point or two from records made by older code, so a probe at the edge rate
itself gives the baseline to compare against.

    PYTHONPATH=src python benchmarks/lr_edge_probe.py --suite cpu --backbone resnet20 \\
        --tasks gtsrb dtd10 --variants linear delta1 delta3 adapter-parallel --rate 0.1 \\
        --records docs/results/cpu/results.json --out runs/lr-probe-0.1
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from deltapatch.bench.suite import resolve


def suite_head(suite: str, name: str, defaults: dict[str, str], seeds: int) -> str:
    """A shipped suite's TOML up to its first scenario, renamed, with ``defaults`` lines
    replaced (key → new right-hand side; an absent key is added under ``[defaults]``) and
    ``seeds`` seeds: what a copy of the suite over chosen cells starts from."""
    text = resolve(suite).read_text()
    head = text[:text.index("[[scenarios]]")]
    for key, value in defaults.items():
        head, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", head)
        if n == 0:
            head = head.replace("[defaults]\n", f"[defaults]\n{key} = {value}\n", 1)
    head = re.sub(r"(?m)^seeds = \d+$", f"seeds = {seeds}", head, count=1)
    return re.sub(r'(?m)^name = ".*"$', f'name = "{name}"', head, count=1)


def scenario_toml(entry: dict) -> str:
    """One ``[[scenarios]]`` table (its values are strings and lists of them, which JSON
    writes as TOML does)."""
    return "\n[[scenarios]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in entry.items())


def derived_suite(suite: str, name: str, backbones: list[str], tasks: list[str],
                  variants: list[str], defaults: dict[str, str], seeds: int,
                  extra: str = "") -> str:
    """The suite's head (``suite_head``), the TOML tables in ``extra`` (more variants) and one
    single-task scenario per backbone over every task × variant."""
    return suite_head(suite, name, defaults, seeds) + extra + "".join(
        scenario_toml({"kind": "single", "table": "single", "backbones": [b], "tasks": tasks,
                       "variants": variants}) for b in backbones)


def probe_suite(suite: str, backbones: list[str], tasks: list[str], variants: list[str],
                rate: float) -> str:
    """The suite's cells at one rate, seed 0 only."""
    return derived_suite(suite, f"{suite}-lr-probe", backbones, tasks, variants,
                         {"lr_grid": f"[{rate!r}]"}, seeds=1)


def ok_runs(path: Path) -> dict[str, dict]:
    runs = json.loads(path.read_text())["runs"]
    return {r["key"]: r for r in runs if r.get("status") == "ok"}


def scores(run: dict) -> str:
    found = run["result"]["lr_search"]["val_score"]
    return ", ".join(f"{lr}: {100 * v:.1f}" for lr, v in found.items())


def compare(records: dict[str, dict], probe: dict[str, dict]) -> None:
    print("| task | method | recorded: val per lr (kept) | test HM | probe: val | test HM |")
    print("|---|---|---|---|---|---|")
    for key, run in probe.items():
        old = records.get(key)
        if old is None:
            print(f"| {run['task']} | {run['label']} | no record | | {scores(run)} | |")
            continue
        kept = old["result"]["lr_search"]["chosen"]
        print(f"| {run['task']} | {run['label']} | {scores(old)} ({kept:g}) | "
              f"{100 * old['result']['harmonic_mean']:.1f} | {scores(run)} | "
              f"{100 * run['result']['harmonic_mean']:.1f} |")


def cell_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every script over chosen cells of a suite takes."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--suite", required=True, help="shipped suite name or TOML path")
    ap.add_argument("--backbone", nargs="+", required=True, help="suite backbone key(s)")
    ap.add_argument("--tasks", nargs="+", required=True)
    ap.add_argument("--variants", nargs="+", required=True)
    ap.add_argument("--records", type=Path, required=True, help="the suite's results.json")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    return ap


def run_bench(toml: Path, out: Path, threads: int, *flags: str) -> None:
    subprocess.run([sys.executable, "-m", "deltapatch", "--threads", str(threads), "bench",
                    "--suite", str(toml), "--out", str(out), "--no-progress", *flags],
                   check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = cell_parser(__doc__)
    ap.add_argument("--rate", type=float, required=True, help="the one rate to train at")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    toml = a.out / "probe.toml"
    toml.write_text(probe_suite(a.suite, a.backbone, a.tasks, a.variants, a.rate))
    run_bench(toml, a.out, a.threads)
    compare(ok_runs(a.records), ok_runs(a.out / "results.json"))


if __name__ == "__main__":
    main()
