"""``deltapatch bench``: run a suite (resumably) and write results, tables, plots and a
RESULTS.md-shaped report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..cli import _arguments, _print_json, command
from .claims import claims_section
from .report import UNSTAMPED, not_run_section, table_sections
from .runner import build_jobs, code_version, command_line, hardware, parse_shard, run_jobs, write_results
from .suite import Suite, load_suite


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", required=True,
                   help="a shipped suite (smoke, cpu, paper) or a path to a suite .toml")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder; runs/ inside holds one JSON per finished run (a rerun "
                        "of the same command resumes and redoes nothing that finished)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per cell (default: the suite's)")
    p.add_argument("--only", default=None,
                   help="comma-separated scenario kinds to run (single, joint, sequential, "
                        "zsda, scratch, transfer); others are left out")
    p.add_argument("--max-runs", type=int, default=None,
                   help="start at most this many new runs, then write the report (the rest "
                        "are 'pending'); for running a long suite in slices")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only every N-th run starting at the I-th (0-based), so that N "
                        "processes share the suite and --out (e.g. 0/2 and 1/2 with --threads 1 "
                        "each on 2 cores); finish with --report-only for the full report")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing; rebuild the report from finished runs")
    p.add_argument("--results-md", type=Path, default=None,
                   help="also write the report to this file (e.g. docs/RESULTS.md)")
    p.add_argument("--note", default=None,
                   help="a line for the report header, e.g. how the runs were scheduled")
    p.add_argument("--no-progress", action="store_true")


@command("bench", "run a benchmark suite (resumable); writes results, tables and plots")
@_arguments(_bench_args)
def bench_cmd(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite)
    only = set(args.only.split(",")) if args.only else None
    jobs = build_jobs(suite, args.seeds, only)
    t0 = time.perf_counter()
    records = run_jobs(jobs, args.out, progress=not args.no_progress,
                       max_jobs=0 if args.report_only else args.max_runs,
                       shard=parse_shard(args.shard))
    meta = {"suite": suite.name, "suite_file": suite_file(suite),
            "command": command_line(args.suite, args.out, args.seeds, args.only),
            "hardware": hardware(), "code": code_version(), "seeds": args.seeds or suite.seeds,
            "note": args.note, "this_invocation_seconds": round(time.perf_counter() - t0, 1),
            "written": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    write_results(records, args.out, meta)
    files = write_report(records, meta, suite, args.out, args.results_md)
    status = {r["key"]: r.get("status") for r in records}  # a run shared by tables counts once
    counts = {s: sum(v == s for v in status.values())
              for s in ("ok", "skipped", "failed", "pending")}
    _print_json({"suite": suite.name, "out": str(args.out), "runs": counts,
                 "files": sorted(str(f) for f in files)})
    return 0 if counts["failed"] == 0 else 1


def suite_file(suite: Suite) -> str:
    """Where the suite lives, as a reader can find it (shipped suites: in the package)."""
    from .suite import SUITES_DIR
    if suite.path.resolve().parent == SUITES_DIR.resolve():
        return f"src/deltapatch/bench/suites/{suite.path.name} (shipped with deltapatch)"
    return str(suite.path)


def write_report(records: list[dict], meta: dict, suite: Suite, out: Path,
                 results_md: Path | None = None) -> list[Path]:
    """tables/*.md, plots/*.png and REPORT.md (tables, plots, claims, what did not run)."""
    tables_dir, plots_dir = out / "tables", out / "plots"
    tables_dir.mkdir(parents=True, exist_ok=True)
    plots_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    sections = table_sections(records, meta)
    for name, text in sections.items():
        (tables_dir / name).write_text(text)
        files.append(tables_dir / name)
    plot_note = ""
    try:
        from .plots import accuracy_vs_params, lambda_plots
        for table in ("single", "adapted", "ablation"):
            files += accuracy_vs_params(records, plots_dir, table)
        files += lambda_plots(records, plots_dir)
    except ImportError:
        plot_note = "\n(Plots skipped: matplotlib is not installed; pip install matplotlib.)\n"
    text = render(records, meta, suite, sections, [f for f in files if f.suffix == ".png"],
                  out, plot_note)
    (out / "REPORT.md").write_text(text)
    files.append(out / "REPORT.md")
    if results_md is not None:
        results_md.parent.mkdir(parents=True, exist_ok=True)
        results_md.write_text(render(records, meta, suite, sections,
                                     [f for f in files if f.suffix == ".png"],
                                     results_md.parent, plot_note))
        files.append(results_md)
    return files


def render(records: list[dict], meta: dict, suite: Suite, sections: dict[str, str],
           plots: list[Path], relative_to: Path, plot_note: str = "") -> str:
    ok = list({r["key"]: r for r in records if r.get("status") == "ok"}.values())  # one per run
    wall = sum(r["result"].get("wall_seconds", 0) or 0 for r in ok)
    runs = len({r["key"] for r in records})
    codes = sorted({r.get("code") or "before code stamping" for r in ok})
    machines = sorted({r.get("hardware") or UNSTAMPED for r in ok})
    protocols = sorted({r.get("data_protocol", 1) for r in ok})
    head = (f"# Results: suite `{suite.name}`\n\n"
            "Generated by `deltapatch bench` from the run records; do not edit by hand.\n\n"
            f"{suite.description.strip()}\n\n"
            f"- Command: `{meta['command']}`\n"
            f"- Suite file: `{meta['suite_file']}`\n"
            f"- Hardware of the runs: {'; '.join(machines) or meta['hardware']}\n"
            f"- Code of this report: {meta.get('code', '?')}; code of the runs: "
            f"{', '.join(codes) or '–'}\n"
            f"- Data protocol of the runs: {', '.join(map(str, protocols)) or '–'} "
            "(see `deltapatch.bench.run.DATA_PROTOCOL`; a rerun redoes runs of another one)\n"
            + (f"- Note: {meta['note']}\n" if meta.get("note") else "") +
            f"- Finished runs: {len(ok)} of {runs}; summed run wall time "
            f"{wall / 60:.1f} min (other jobs shared the machine; times are not benchmarks)\n"
            f"- Written: {meta['written']}. Every number below comes from `results.json` of "
            f"this run folder; rerun the command to reproduce or resume.\n")
    body = "\n".join(sections.values())
    pics = "\n".join(f"![{p.stem}]({_rel(p, relative_to)})" for p in plots)
    return (head + "\n## Tables\n\n" + (body or "(no finished runs yet)\n") +
            "\n## Plots\n\n" + (pics or "(none yet)") + "\n" + plot_note + "\n" +
            claims_section(records) + "\n" + not_run_section(records, suite.not_implemented))


def _rel(path: Path, base: Path) -> str:
    import os
    return os.path.relpath(path.resolve(), base.resolve())
