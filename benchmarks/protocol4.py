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
"""

from __future__ import annotations

import statistics

from lr_edge_probe import cell_parser, derived_suite, ok_runs, run_bench


def cell(key: str) -> str:
    return key.rsplit("/seed", 1)[0]


def summary(runs: dict[str, dict]) -> dict[str, dict]:
    """Cell -> its seed-0 search and the test harmonic means of its seeds."""
    out: dict[str, dict] = {}
    for key, r in runs.items():
        c = out.setdefault(cell(key), {"label": r["label"], "hm": []})
        c["hm"].append(100 * r["result"]["harmonic_mean"])
        if "val_score" in r["result"].get("lr_search", {}):
            c["search"] = r["result"]["lr_search"]
    return out


def hm_text(values: list[float]) -> str:
    sd = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.2f}{sd} (n={len(values)})"


def compare(p3: dict[str, dict], p4: dict[str, dict]) -> list[str]:
    lines = ["| cell | method | protocol 3: rate | protocol 4: rate (added; interior) | "
             "protocol 3 HM | protocol 4 HM |", "|---|---|---|---|---|---|"]
    for key, new in sorted(p4.items()):
        old = p3.get(key, {})
        s4 = new.get("search", {})
        added = ", ".join(f"{lr:g}" for lr in s4.get("extended", [])) or "none"
        rate4 = (f"{s4['chosen']:g} ({added}; {'yes' if s4.get('interior', True) else 'no'})"
                 if s4 else "pending")
        rate3 = f"{old['search']['chosen']:g}" if "search" in old else "–"
        lines.append(f"| {key} | {new['label']} | {rate3} | {rate4} | "
                     f"{hm_text(old['hm']) if old else '–'} | {hm_text(new['hm'])} |")
    return lines


def main() -> None:
    ap = cell_parser(__doc__)
    ap.add_argument("--extend", type=int, default=3, help="rates at most added past the edge")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--report-only", action="store_true", help="compare what has finished")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    toml = a.out / "protocol4.toml"
    toml.write_text(derived_suite(a.suite, f"{a.suite}-p4", a.backbone, a.tasks, a.variants,
                                  {"lr_extend": str(a.extend)}, a.seeds))
    flags = ["--report-only"] if a.report_only else []
    run_bench(toml, a.out, a.threads, *flags)
    print(f"protocol 4 (lr_extend = {a.extend}) against {a.records}; suite copy {toml}")
    print("\n".join(compare(summary(ok_runs(a.records)), summary(ok_runs(a.out / "results.json")))))


if __name__ == "__main__":
    main()
