"""``deltapatch bench``: run a benchmark suite (resumable) and publish its results."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..bench.publish import BenchRequest, run_suite
from ..bench.runner import parse_shard
from ..bench.suite import shipped_suites
from ..run import run_device
from .common import command, device_args, print_json


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", required=True,
                   help=f"a shipped suite ({', '.join(shipped_suites())}) or a path to a suite "
                        ".toml")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder; runs/ inside holds one JSON per finished run (a rerun "
                        "of the same command resumes and redoes nothing that finished)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per cell (default: the suite's)")
    p.add_argument("--only", default=None,
                   help="comma-separated scenario kinds to run (single, joint, sequential, "
                        "zsda, scratch, transfer); others are left out (default: all)")
    p.add_argument("--max-runs", type=int, default=None,
                   help="start at most this many new runs, then write the report (the rest "
                        "are 'pending'); for running a long suite in slices (default: no limit)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only every N-th run starting at the I-th (0-based), so that N "
                        "processes share the suite and --out (e.g. 0/2 and 1/2 with --threads 1 "
                        "each on 2 cores); finish with --report-only for the full report "
                        "(default: all runs)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the suite's runs as Ray tasks (one CPU each; retried when a worker "
                        "dies): on a new local Ray instance, or on the cluster at ADDRESS "
                        "(auto, host:6379, ray://host:10001); needs pip install "
                        "'deltapatch[ray]' (docs/BENCH.md; default: off, runs in this process)")
    p.add_argument("--gpu-share", type=float, default=1.0,
                   help="with --ray on a GPU device: the share of a GPU each run asks Ray for "
                        "(0.25: four runs per GPU; default 1)")
    device_args(p, precision=True)
    p.add_argument("--report-only", action="store_true",
                   help="run nothing; rebuild the report from finished runs")
    p.add_argument("--results-md", type=Path, default=None,
                   help="also write the report to this file, e.g. docs/RESULTS.md (default: "
                        "only the report in --out)")
    p.add_argument("--preface", type=Path, default=None,
                   help="a Markdown file placed after the header of --results-md (what the "
                        "numbers mean, the protocol's history; default: none)")
    p.add_argument("--note", default=None,
                   help="a line for the report header, e.g. how the runs were scheduled "
                        "(default: none)")
    p.add_argument("--no-progress", action="store_true",
                   help="quiet: no bar and no line per run, only the JSON summary (bars are "
                        "drawn only on a terminal anyway; logs get one line per run)")


@command("bench", "run a benchmark suite (resumable); writes results, tables and plots",
         arguments)
def run(args: argparse.Namespace) -> int:
    if args.max_runs is not None and args.max_runs < 0:
        raise ValueError(f"--max-runs must be ≥ 0, got {args.max_runs}")
    if args.ray is not None and args.shard:
        raise ValueError("--ray and --shard both split the suite: use one of them")
    if args.preface is not None and not args.preface.is_file():
        raise ValueError(f"--preface {args.preface}: no such file")
    if not 0 < args.gpu_share <= 1:
        raise ValueError(f"--gpu-share must be in (0, 1], got {args.gpu_share}")
    run_device(args.device)  # not there: one line, exit 2, before anything is written
    summary = run_suite(BenchRequest(
        suite=args.suite, out=args.out, seeds=args.seeds,
        only=set(args.only.split(",")) if args.only else None, max_runs=args.max_runs,
        shard=parse_shard(args.shard), report_only=args.report_only,
        results_md=args.results_md, preface=args.preface, note=args.note,
        progress=not args.no_progress, ray=args.ray, device=args.device,
        precision=args.precision, gpu_share=args.gpu_share))
    print_json(summary)
    return 0 if summary["runs"]["failed"] == 0 else 1
