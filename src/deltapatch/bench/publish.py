"""Running a suite and publishing it: results, tables, plots and a RESULTS.md-shaped report
(what ``deltapatch bench`` calls)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeltaPatchError
from ..hardware import describe
from ..run import placement_facts, run_device
from .claims import claims_section
from .report import UNSTAMPED, not_run_section, table_sections
from .jobs import Job
from .runner import build_jobs, code_version, command_line, run_jobs, write_results
from .schema import MAX_SEEDS, SHAPES
from .suite import Suite, check_sources, load_suite, placed, selected


@dataclass
class BenchRequest:
    """One ``deltapatch bench`` invocation: which runs, where, and what to publish."""

    suite: str
    out: Path
    seeds: int | None = None
    only: set[str] | None = None
    max_runs: int | None = None
    shard: tuple[int, int] | None = None
    report_only: bool = False
    results_md: Path | None = None
    preface: Path | None = None  # hand-written Markdown placed after the results file's header
    note: str | None = None
    progress: bool = True
    ray: str | None = None  # a Ray address ("local": start one here): runs become Ray tasks
    device: str = "cpu"  # where runs train (--device); not a setting of any run
    precision: str = "fp32"  # --precision: a setting (its runs are new runs unless fp32)
    gpu_share: float = 1.0  # a Ray task's share of a GPU when the device is one


def run_suite(req: BenchRequest) -> dict:
    """Run (or resume) a suite's runs, then write results, tables, plots and the report.
    Returns a summary: run counts by status and the files written."""
    suite, jobs = plan(req)
    t0 = time.perf_counter()
    max_jobs = 0 if req.report_only else req.max_runs
    if req.ray is not None and max_jobs != 0:
        from .on_ray import RaySuite, run_jobs_on_ray

        records = run_jobs_on_ray(jobs, req.out, RaySuite(suite_ref(suite, req.suite),
                                                          req.seeds, req.only, suite.device.type,
                                                          req.precision, req.gpu_share),
                                  req.ray, progress=req.progress, max_jobs=max_jobs)
    else:
        records = run_jobs(jobs, req.out, progress=req.progress, max_jobs=max_jobs,
                           shard=req.shard)
    only = ",".join(sorted(req.only)) if req.only else None
    meta = {"suite": suite.name, "suite_file": suite_file(suite),
            "command": command_line(req.suite, req.out, req.seeds, only, req.precision),
            "hardware": describe(suite.device), "code": code_version(), "seeds": req.seeds or suite.seeds,
            "note": req.note, "this_invocation_seconds": round(time.perf_counter() - t0, 1),
            "written": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    write_results(records, req.out, meta)
    preface = req.preface.read_text() if req.preface else ""
    files = write_report(records, meta, suite, req.out, req.results_md, preface)
    status = {r["key"]: r.get("status") for r in records}  # a run shared by tables counts once
    counts = {s: sum(v == s for v in status.values())
              for s in ("ok", "skipped", "failed", "pending")}
    return {"suite": suite.name, "out": str(req.out), "runs": counts,
            **placement_facts(suite.device, req.precision),
            "files": sorted(str(f) for f in files)}


def plan(req: BenchRequest) -> tuple[Suite, list[Job]]:
    """The suite placed on its device and its jobs, with every input checked before anything
    is written: the suite file in full, ``seeds``, ``only``'s kinds, the output paths, and
    (unless only the report is rebuilt) the data, weights and factory files the runs read.
    A refusal is one ``DeltaPatchError`` and leaves the disk as it was."""
    if req.seeds is not None and not 1 <= req.seeds <= MAX_SEEDS:
        raise DeltaPatchError(f"--seeds must be in 1..{MAX_SEEDS}, got {req.seeds}")
    unknown = sorted((req.only or set()) - set(SHAPES.names()))
    if unknown:
        raise DeltaPatchError(f"--only names unknown scenario kind(s) {', '.join(map(repr, unknown))}"
                              f"; choose from {', '.join(SHAPES.names())}")
    check_output("--out", req.out, folder=True)
    if req.results_md is not None:
        check_output("--results-md", req.results_md, folder=False)
    suite = placed(load_suite(req.suite), run_device(req.device), req.precision)
    jobs = build_jobs(suite, req.seeds, req.only)
    if not jobs:
        raise DeltaPatchError(f"suite '{suite.name}' has no runs of kind(s) "
                              f"{', '.join(sorted(req.only or ()))} that are not skipped; "
                              f"its kinds: {', '.join(sorted({sc['kind'] for sc in suite.scenarios}))}")
    if not req.report_only:
        check_sources(suite, selected(suite, req.only))
    return suite, jobs


def check_output(flag: str, path: Path, folder: bool) -> None:
    """Refuse an output the bench could not write once its runs are done: ``path`` must be a
    folder (``folder``) or a file, or not exist yet, under a folder this account can write."""
    if path.is_symlink() and not path.exists():
        raise DeltaPatchError(f"{flag} {path} is a symbolic link to nothing; fix or remove it")
    if path.exists() and path.is_dir() != folder:
        want, got = ("folder", "file") if folder else ("file", "folder")
        raise DeltaPatchError(f"{flag} {path} is a {got}; give a {want} path")
    probe = path.absolute()
    while not probe.exists():
        probe = probe.parent
    if probe != path.absolute() and not probe.is_dir():
        raise DeltaPatchError(f"{flag} {path}: cannot create it, {probe} is a file")
    if not os.access(probe, os.W_OK | (os.X_OK if probe.is_dir() else 0)):
        raise DeltaPatchError(f"{flag} {path}: {probe} is not writable by this account")


def suite_ref(suite: Suite, asked: str) -> str:
    """How another process (a Ray worker) loads the same suite: the shipped name, or the
    file's absolute path (a worker's working directory is not ours)."""
    from .suite import SUITES_DIR
    if suite.path.resolve().parent == SUITES_DIR.resolve():
        return asked
    return str(suite.path.resolve())


def suite_file(suite: Suite) -> str:
    """Where the suite lives, as a reader can find it (shipped suites: in the package)."""
    from .suite import SUITES_DIR
    if suite.path.resolve().parent == SUITES_DIR.resolve():
        return f"src/deltapatch/bench/suites/{suite.path.name} (shipped with deltapatch)"
    return str(suite.path)


def write_report(records: list[dict], meta: dict, suite: Suite, out: Path,
                 results_md: Path | None = None, preface: str = "") -> list[Path]:
    """tables/*.md, plots/*.png and REPORT.md (tables, plots, claims, what did not run);
    ``results_md`` gets the same with ``preface`` (what the numbers mean, their history) after
    the header."""
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
                                     results_md.parent, plot_note, preface))
        files.append(results_md)
    return files


def render(records: list[dict], meta: dict, suite: Suite, sections: dict[str, str],
           plots: list[Path], relative_to: Path, plot_note: str = "", preface: str = "") -> str:
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
            "(see `deltapatch.runinputs.DATA_PROTOCOL`; a rerun redoes runs of another one)\n"
            + (f"- Note: {meta['note']}\n" if meta.get("note") else "") +
            f"- Finished runs: {len(ok)} of {runs}; summed run wall time "
            f"{wall / 60:.1f} min (other jobs shared the machine; times are not benchmarks)\n"
            f"- Written: {meta['written']}. Every number below comes from `results.json` of "
            f"this run folder; rerun the command to reproduce or resume.\n")
    body = "\n".join(sections.values())
    pics = "\n".join(f"![{p.stem}]({_rel(p, relative_to)})" for p in plots)
    return (head + (f"\n{preface.strip()}\n" if preface.strip() else "") +
            "\n## Tables\n\n" + (body or "(no finished runs yet)\n") +
            "\n## Plots\n\n" + (pics or "(none yet)") + "\n" + plot_note + "\n" +
            claims_section(records) + "\n" +
            not_run_section(records, suite.not_implemented,
                            [sc for sc in suite.scenarios if sc.get("skip")]))


def _rel(path: Path, base: Path) -> str:
    import os
    return os.path.relpath(path.resolve(), base.resolve())
