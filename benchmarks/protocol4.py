"""Protocol 4 on chosen cells of a suite: the same grid, extended past its edge until interior.

Writes a copy of a shipped suite restricted to the chosen (backbone, tasks, variants) cells with
``lr_extend = N`` in its defaults (bench/tuning.py: a seed-0 choice at either end of the grid
adds the next rate past it, every method alike, until interior or N rates were added), runs it
with ``deltapatch bench`` (resumable: rerun the same command after an interruption; finished
rates and runs are kept), and prints, per cell, what moved against the suite's published
protocol-3 records: the rate chosen, the rates added, and test harmonic mean over seeds.

    PYTHONPATH=src nice -n 19 python benchmarks/protocol4.py --suite cpu --backbone resnet20 \\
        --tasks gtsrb --variants linear delta1 delta3 --extend 3 \\
        --records docs/results/cpu/results.json --out runs/p4-cpu

Sequential patching has no grid of its own: each task trains at its single-task cell's chosen
rate. ``--sequential FOLDER...`` reruns the suite's sequential scenarios at the rates protocol 4
chose (the published protocol-4 folders named; a cell protocol 4 did not rerun keeps its
protocol-3 rate, which was interior) and compares with the protocol-3 sequential records.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tomllib
from pathlib import Path

from _common import copy_records, replace_block
from grid_edges import tuned_cells
from lr_edge_probe import (cell_parser, derived_suite, ok_runs, run_bench, scenario_toml,
                           suite_head)

from deltapatch.bench.runner import build_jobs
from deltapatch.bench.suite import load_suite, resolve
from deltapatch.bench.tuning import TUNE_SEED, edge
from deltapatch.hardware import describe


def cell(key: str) -> str:
    return key.rsplit("/seed", 1)[0]


def edge_keys(records: Path) -> set[str]:
    """The cells (run keys without the seed) whose published seed-0 choice is at an edge of the
    rates it tried: the only cells protocol 4 can change (an interior one reruns as is)."""
    found = set()
    for key, r in tuned_cells(records).items():
        s = r["result"]["lr_search"]
        if edge([float(x) for x in s["val_score"]], s["chosen"]):
            found.add(key)
    return found


def units(entry: dict) -> list[tuple[str, list[str], dict]]:
    """A shipped scenario's cells per backbone and variant: each one's name in run keys, the
    tasks it reads and the entry fields that select it alone. A sequential scenario has none
    of its own: it borrows each task's single-task rate."""
    if entry["kind"] == "zsda":
        return [(f"{entry['source']}-{entry['target']}", [entry["source"], entry["target"]], {})]
    if "groups" in entry:  # joint
        return [("+".join(g), g, {"groups": [g]}) for g in entry["groups"]]
    return [(t, [t], {"tasks": [t]}) for t in entry.get("tasks", [])]


def shipped_scenarios(suite: str) -> list[dict]:
    return tomllib.loads(resolve(suite).read_text())["scenarios"]


def edge_suite(suite: str, name: str, edges: set[str], backbones: list[str], tasks: list[str],
               variants: list[str], defaults: dict[str, str], seeds: int) -> str:
    """The shipped suite over its edge cells only, every scenario kind with a grid of its own
    (single-task with the Table 8 ablation, joint, ZSDA, transfer): one scenario per backbone
    and cell unit over its edge variants (a scenario is a product, so a subset needs several);
    a cell several tables share, once."""
    blocks, seen = [], set()
    for entry in shipped_scenarios(suite):
        for bb in (b for b in entry["backbones"] if b in backbones):
            for unit, reads, fields in units(entry):
                keys = {v: f"{entry['kind']}/{bb}/{unit}/{v}" for v in entry["variants"]}
                kept = [v for v, k in keys.items() if v in variants and k in edges - seen]
                if kept and set(reads) <= set(tasks):
                    seen.update(keys[v] for v in kept)
                    blocks.append(scenario_toml({**entry, "backbones": [bb], **fields,
                                                 "variants": kept}))
    return suite_head(suite, name, defaults, seeds) + "".join(blocks)


def sequential_suite(suite: str, name: str, backbones: list[str], tasks: list[str],
                     variants: list[str], defaults: dict[str, str], seeds: int) -> str:
    """The shipped suite's sequential scenarios only, over the backbones, variants and orders
    (all of whose tasks are in ``tasks``) asked for."""
    blocks = []
    for entry in shipped_scenarios(suite):
        if entry["kind"] != "sequential":
            continue
        bbs = [b for b in entry["backbones"] if b in backbones]
        vs = [v for v in entry["variants"] if v in variants]
        orders = [o for o in entry["orders"] if set(o) <= set(tasks)]
        if bbs and vs and orders:
            blocks.append(scenario_toml({**entry, "backbones": bbs, "variants": vs,
                                         "orders": orders}))
    return suite_head(suite, name, defaults, seeds) + "".join(blocks)


def borrow(jobs: list, out: Path, sources: list[Path]) -> list[str]:
    """Put into ``out/runs`` the seed-0 single-task record every job borrows its rates from
    (``Job.lr_from``), from the first of ``sources`` (folders holding ``runs/``) that has it.
    Returns the keys no source has: main() refuses to start then, rather than leave those jobs
    pending for good."""
    missing = []
    for key in sorted({k for job in jobs for k in job.lr_from}):
        found = next((f for src in sources if (f := src / "runs" / f"{key}.json").exists()), None)
        if found is None:
            missing.append(key)
            continue
        target = out / "runs" / f"{key}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(found, target)
    return missing


HEADLINE = {  # scenario kind -> (what its comparison shows, from a run's result)
    "single": ("HM", lambda r: r["harmonic_mean"]),
    "joint": ("joint HM", lambda r: r["joint_harmonic_mean"]),
    "zsda": ("target top-1", lambda r: r["top1_by_test"]["target"]),
    "transfer": ("top-1", lambda r: r["patch_top1"]),
    "sequential": ("mean top-1", lambda r: r["mean_top1"]),
}


def summary(runs: dict[str, dict]) -> dict[str, dict]:
    """Cell -> its seed-0 search and its headline score (HEADLINE), %, per seed."""
    out: dict[str, dict] = {}
    for key, r in runs.items():
        if r["scenario"] not in HEADLINE:
            continue
        metric, value = HEADLINE[r["scenario"]]
        c = out.setdefault(cell(key), {"label": r["label"], "metric": metric, "score": {}})
        c["score"][r["seed"]] = 100 * value(r["result"])
        c.setdefault("machine", {})[r["seed"]] = r.get("hardware", "")
        if r["seed"] == TUNE_SEED:  # a later seed's search only names the rate seed 0 chose
            c["search"] = r["result"].get("lr_search", {})
    return out


def score_text(by_seed: dict[int, float]) -> str:
    values = list(by_seed.values())
    sd = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.2f}{sd} (n={len(values)})"


def rates(search_: dict) -> str:
    chosen = search_["chosen"]  # one rate, or one per task where borrowed
    return "/".join(f"{lr:g}" for lr in chosen) if isinstance(chosen, list) else f"{chosen:g}"


def compare(p3: dict[str, dict], p4: dict[str, dict]) -> list[str]:
    lines = ["| cell | method | protocol 3: rate | protocol 4: rate (added; interior) | "
             "test score | protocol 3 | protocol 4 |", "|---|---|---|---|---|---|---|"]
    for key, new in sorted(p4.items()):
        old = p3.get(key, {})
        s4 = new.get("search", {})
        added = ", ".join(f"{lr:g}" for lr in s4.get("extended", [])) or "none"
        rate4 = ("pending" if not s4 else f"{rates(s4)} (borrowed)" if "from" in s4 else
                 f"{rates(s4)} ({added}; {'yes' if s4.get('interior', True) else 'no'})")
        rate3 = rates(old["search"]) if "search" in old else "–"
        lines.append(f"| {key} | {new['label']} | {rate3} | {rate4} | {new['metric']} | "
                     f"{score_text(old['score']) if old else '–'} | {score_text(new['score'])} |")
    return lines


def rerun_noise(p3: dict[str, dict], p4: dict[str, dict]) -> str:
    """How far a rerun alone moves a number: the per-seed score change in the cells whose
    seed-0 search kept protocol 3's rate (same rate, same seed, same data). Reruns on the same
    machine kind (CPU model, threads, torch: the records' ``hardware``) and on another are counted
    apart: the first can be bit-identical (RESULTS.md), so mixing them in would make the
    noise look smaller than it is."""
    moves: dict[bool, list[float]] = {True: [], False: []}
    for key, new in p4.items():
        old = p3.get(key, {})
        if "search" not in new or "search" not in old \
                or new["search"]["chosen"] != old["search"]["chosen"]:
            continue
        for s in sorted(new["score"].keys() & old["score"].keys()):
            same = _machine(new, s) == _machine(old, s) != ""
            moves[same].append(new["score"][s] - old["score"][s])
    if not moves[True] and not moves[False]:
        return "No cell kept its protocol-3 rate yet."
    parts = []
    if diffs := moves[False]:
        near = sum(abs(d) <= 1 for d in diffs)
        parts.append(f"rerun on another machine, the per-seed test score moved by at most 1 point "
                     f"in {near} of {len(diffs)} runs, {min(diffs):+.1f} to {max(diffs):+.1f} "
                     f"in all")
    if diffs := moves[True]:
        same = sum(d == 0 for d in diffs)
        near = sum(abs(d) <= 1 for d in diffs)
        parts.append(f"rerun on the same machine kind, {same} of {len(diffs)} runs gave the same "
                     f"score" + ("" if same == len(diffs) else
                                 f" ({min(diffs):+.1f} to {max(diffs):+.1f}), {near} of "
                                 f"{len(diffs)} within 1 point"))
    return (f"Rerun noise: in the cells that kept protocol 3's rate, {'; '.join(parts)} (the "
            f"records name each run's code version and machine).")


def _machine(cell_summary: dict, seed: int) -> str:
    return cell_summary.get("machine", {}).get(seed, "")


def forgetting(runs: dict[str, dict]) -> str:
    """Sequential patching's check that earlier tasks keep their top-1: per cell, the largest
    drop of a task's top-1 from right after its own training to after the last task."""
    worst: dict[str, tuple[str, float]] = {}
    for key, r in runs.items():
        if r["scenario"] == "sequential":
            drop = 100 * max(r["result"]["drop_by_task"].values(), default=0.0)
            label, old = worst.get(cell(key), (r["label"], 0.0))
            worst[cell(key)] = (label, max(old, drop))
    return "; ".join(f"{label} {drop:.1f}" for _, (label, drop) in sorted(worst.items()))


def main() -> None:
    ap = cell_parser(__doc__)
    ap.add_argument("--extend", type=int, default=3, help="rates at most added past the edge")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--report-only", action="store_true", help="compare what has finished")
    ap.add_argument("--edges-only", action="store_true",
                    help="of the tasks × variants, only the cells --records has on a grid "
                         "edge, in every scenario kind with a grid of its own")
    ap.add_argument("--shard", default=None, metavar="I/N",
                    help="run only shard I of N (deltapatch bench --shard): one process per "
                         "core, same --out")
    ap.add_argument("--write", type=Path, default=None,
                    help="also put the comparison between <!-- protocol4-SUITE:begin/end --> here")
    ap.add_argument("--publish", type=Path, default=None,
                    help="copy the finished run records and the suite copy here (to commit); "
                         "to resume elsewhere, copy its runs/ back into --out first")
    ap.add_argument("--sequential", type=Path, nargs="+", default=None, metavar="FOLDER",
                    help="rerun the sequential scenarios at the rates these published "
                         "protocol-4 folders chose (else --records' own)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    toml = a.out / "protocol4.toml"
    defaults, name = {"lr_extend": str(a.extend)}, f"{a.suite}-p4"
    cells = (a.suite, name, a.backbone, a.tasks, a.variants, defaults, a.seeds)
    toml.write_text(sequential_suite(*cells) if a.sequential else
                    edge_suite(a.suite, name, edge_keys(a.records), *cells[2:]) if a.edges_only
                    else derived_suite(*cells))
    if a.sequential:
        missing = borrow(build_jobs(load_suite(str(toml))), a.out,
                         [*a.sequential, a.records.parent])
        if missing:
            raise SystemExit(f"no single-task record to borrow a rate from: {', '.join(missing)}")
    flags = (["--report-only"] if a.report_only else []) + (
        ["--shard", a.shard] if a.shard else [])
    run_bench(toml, a.out, a.threads, *flags)
    runs = json.loads((a.out / "results.json").read_text())["runs"]
    done = sum(r.get("status") == "ok" for r in runs)
    machines = "; ".join(sorted({r["hardware"] for r in runs if r.get("hardware")})) or describe()
    before, after = summary(ok_runs(a.records)), summary(ok_runs(a.out / "results.json"))
    command = (f"PYTHONPATH=src python benchmarks/protocol4.py --suite {a.suite} --backbone "
               f"{' '.join(a.backbone)} --tasks {' '.join(a.tasks)} --variants "
               f"{' '.join(a.variants)} --extend {a.extend} "
               f"{f'--seeds {a.seeds} ' if a.seeds != 3 else ''}"
               f"{'--edges-only ' if a.edges_only else ''}"
               f"{'--sequential ' + ' '.join(map(str, a.sequential)) + ' ' if a.sequential else ''}"
               f"--records {a.records} --out {a.out}")
    text = "\n".join([
        f"`{command}` (lr_extend = {a.extend}; {done} of {len(runs)} "
        f"runs finished; {machines}, shared with other jobs). Test score, %, mean ± sd over the "
        "seeds finished: HM, the harmonic mean of base and patch top-1; joint HM, over the base "
        "and every joint task; target top-1 for ZSDA (train on the source, test on the target); "
        "top-1 for transfer; mean top-1 over the base and every task, after the last task, for "
        "sequential patching:", "",
        *compare(before, after), "", rerun_noise(before, after)])
    if a.sequential:
        text += ("\n\nLargest drop of an earlier task's top-1 after later patches, points, over "
                 f"the seeds: protocol 3: {forgetting(ok_runs(a.records))}; protocol 4: "
                 f"{forgetting(ok_runs(a.out / 'results.json'))}.")
    print(text)
    if a.write:
        block = f"protocol4-{a.suite}" + ("-sequential" if a.sequential else "")
        replace_block(a.write, block, text)
    if a.publish:
        publish(a.out, a.publish, "sequential" if a.sequential else "")


def publish(out: Path, dest: Path, under: str = "") -> None:
    """The finished runs' records (not their patch files; only those under ``runs/UNDER``: a
    sequential rerun's borrowed single-task records are published elsewhere already) and the
    suite they answer."""
    copy_records(out, dest, under)
    shutil.copy2(out / "protocol4.toml", dest / "protocol4.toml")
    shutil.copy2(out / "results.json", dest / "results.json")  # what claim_intervals.py reads


if __name__ == "__main__":
    main()
