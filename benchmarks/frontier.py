"""Accuracy against trainable parameters, per task: is Δ on the frontier?

Runs a copy of a shipped suite (same defaults, data and learning-rate grid, so the protocol is
the suite's) over the sizes of each method, seed 0 only: Δ(1) and Δ(all) at Δ-module reduction
r ∈ {2, 4, 8}, PEFT LoRA at rank ×1, ×2, ×4 of the Δ(1)-matched rank, the adapters, BN
adaptation and FC only. Cells the suite has already published (same settings, so the same
fingerprint) are copied in from its records and not rerun. Then, per task, one PNG (harmonic
mean against parameters) and one statement, computed from the points (bench/frontier.py).
Resumable: rerun the same command; ``--report-only`` draws what has finished. ``--shard I/N``
splits the cells between N processes (one per core), as ``deltapatch bench`` does.
``--protocol4 RESULTS...`` draws each cell from protocol 4's rerun where there is one (its rate
was on the grid's edge) and says whether protocol 3 alone gave the same verdicts.

    PYTHONPATH=src nice -n 19 python benchmarks/frontier.py --suite cpu --tasks dtd10 \\
        --out runs/frontier-cpu --report docs/results/frontier/cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from _common import replace_block
from lr_edge_probe import derived_suite, run_bench

from deltapatch.bench.frontier import figure, frontier, points_from, statement
from deltapatch.bench.tuning import search_edge
from deltapatch.hardware import describe

ROOT = Path(__file__).resolve().parents[1]


def _delta(key: str, label: str, stages: int, r: int, init: str | None) -> str:
    start = f'init = "{init}"\n' if init else ""
    return (f'[variants.{key}]\nmethod = "delta"\nlabel = "{label}, r={r}"\nstages = {stages}\n'
            f"options = {{ reduction = {r} }}\n{start}")


def _lora(key: str, scale: int, init: str | None) -> str:
    start = f'init = "{init}"\n' if init else ""
    label = "rank matched to Δ(1)" if scale == 1 else f"{scale}× rank"
    scaled = f"options = {{ rank_scale = {scale} }}\n" if scale > 1 else ""
    return (f'[variants.{key}]\nmethod = "lora"\nlabel = "LoRA ({label})"\nstages = 1\n'
            f"{scaled}{start}")


# per suite: backbone, Δ(1) and Δ(all) variant keys (r = 4, published) with their stages and
# start, the LoRA variants it has published, and the other published points (no cost)
SUITES = {
    "cpu": {"backbone": "resnet20", "all": 3, "init": None, "d1": "delta1", "dall": "delta3",
            "lora": "", "others": ["delta2", "adapter-series", "adapter-parallel", "bn-adapt"]},
    "imagenet": {"backbone": "lite0", "all": 5, "init": "base", "d1": "delta1-base",
                 "dall": "delta5-base", "lora": "lora lora2",
                 "others": ["delta2-base", "adapter-parallel", "bn-adapt"]},
}


def plan(suite: str) -> tuple[str, list[str]]:
    """(TOML of the added variants, every variant of the figure). Published cells come first
    (they cost nothing), then the new ones, cheapest first: seed-major runs then answer the
    cheap sizes before the expensive ones."""
    s = SUITES[suite]
    init = "random" if s["init"] else None
    published = s["lora"].split()
    extra, new = "", []
    for key, stages, name in ((s["d1"], 1, "Δ(1)"), (s["dall"], s["all"], f"Δ({s['all']}), all")):
        for r in (8, 2):
            extra += _delta(f"{key}-r{r}", name, stages, r, s["init"])
            new.append(f"{key}-r{r}")
    for scale, key in ((1, "lora"), (2, "lora2"), (4, "lora4")):
        if key not in published:
            extra += _lora(key, scale, init)
            new.append(key)
    order = {v: i for i, v in enumerate([f"{s['d1']}-r8", f"{s['d1']}-r2", "lora", "lora2",
                                          f"{s['dall']}-r8", f"{s['dall']}-r2", "lora4"])}
    first = ["linear", s["d1"], s["dall"], *published, *s["others"]]
    return extra, first + sorted(new, key=order.__getitem__)


def seed_records(sources: list[Path], out: Path, backbone: str, tasks: list[str],
                 variants: list[str]) -> int:
    """Copy the seed-0 records of these cells from ``sources`` (the suite's published folder,
    then this script's own committed report folder, so a run resumes from committed records)
    into ``out``; bench reuses a record only if its settings fingerprint still matches."""
    n = 0
    for t in tasks:
        for v in variants:
            rel = Path("runs") / "single" / backbone / t / v / "seed0.json"
            src = next((s / rel for s in sources if (s / rel).exists()), None)
            if src is not None and not (out / rel).exists():
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, out / rel)
                n += 1
    return n


def is_delta(method: dict) -> bool:
    return method.get("name") == "delta"


def report(suite: str, out: Path, dest: Path, tasks: list[str], command: str,
           later: Sequence[Path] = ()) -> tuple[list[tuple[str, Path | None]], list[str]]:
    """((statement, figure) per task, the protocol-4 note), drawn from each cell's latest
    protocol (``later``'s seed-0 records, protocol 4's reruns, in place of the same cells'
    here); also writes the figures, the new protocol-3 records and FRONTIER.md."""
    runs = json.loads((out / "results.json").read_text())["runs"]
    first = [r for r in runs if r.get("status") == "ok"]
    latest = swap(first, later)
    dest.mkdir(parents=True, exist_ok=True)
    lines = []
    for t in tasks:
        pts = points_from(latest, t, is_delta)
        if not pts:
            lines.append((f"{t}: no finished runs yet", None))
            continue
        png = figure(t, pts, dest / f"frontier_{t}.png",
                     f"{suite} suite, {t}: harmonic mean vs trainable parameters (seed 0"
                     + ("; protocol 4 where rerun)" if later else ")"))
        lines.append((f"{statement(t, pts)} ({len(pts)} points", png))
    published = ROOT / "docs" / "results" / suite / "runs"
    for r in first:  # the new records behind the figures (the suite's own are published already)
        if (r["seed"] == 0 and r["task"] in tasks
                and not (published / f"{r['key']}.json").exists()):
            f = dest / "runs" / f"{r['key']}.json"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(r, indent=1) + "\n")
    machines = "; ".join(sorted({r["hardware"] for r in latest if r.get("hardware")}))
    shutil.copy2(out / "frontier.toml", dest / "frontier.toml")
    head = [f"# Accuracy against trainable parameters: {suite} suite", "",
            f"Command: `{command}`. Seed 0 only (one run per point; not a significance test).",
            f"Hardware of the runs: {machines or describe()}, shared with other jobs. Finished "
            f"points: {len(first)} of {len(runs)} (the suite's published seed-0 cells "
            f"are reused, from docs/results/{suite}/runs; new records in runs/ here; the suite "
            "copy they answer: frontier.toml). A point is on the frontier when no other has as "
            "few or fewer trainable parameters and as high or higher a score; the scores are "
            "one seed's test harmonic means, so gaps of a few points are within noise "
            "(RESULTS.md, claim intervals).", ""]
    note = protocol_note(first, later, tasks)
    (dest / "FRONTIER.md").write_text("\n".join(head + note + as_lines(lines, dest)) + "\n")
    return lines, note


def protocol_note(runs: list[dict], later: list[Path], tasks: list[str]) -> list[str]:
    """The paragraph (and blank line) that says which points protocol 4 supplied; none
    without ``later``."""
    if not later:
        return []
    drawn = [r for r in swap(runs, later) if r["task"] in tasks and r["seed"] == 0]
    left = [r["key"].rsplit("/", 1)[0] for r in drawn
            if search_edge(r["result"].get("lr_search") or {})]
    return ["Protocol 4: a cell whose protocol-3 rate sat on the grid's edge was rerun with the "
            "grid extended until the choice was interior; its seed-0 record replaces the "
            "protocol-3 one in the statements and figures. "
            + "; ".join(recheck(runs, later, tasks))
            + f". Points whose rate is still the highest or lowest of the rates tried: "
              f"{len(left)} of {len(drawn)}" + (f" ({', '.join(left)})" if left else "") + ".",
            ""]


def swap(runs: list[dict], later: list[Path]) -> list[dict]:
    """``runs`` with each cell's seed-0 record from ``later`` (a rerun under a later protocol)
    in place of its own, where ``later`` has the cell."""
    newer = {r["key"]: r for f in later for r in json.loads(Path(f).read_text())["runs"]
             if r.get("status") == "ok" and r["seed"] == 0}
    return [newer.get(r["key"], r) for r in runs]


def recheck(runs: list[dict], later: list[Path], tasks: list[str]) -> list[str]:
    """How many points ``later`` replaces and how far they moved, then per task whether the
    earlier protocol alone gave the same verdict (and its statement where it did not): the
    figures plot the latest protocol, this keeps the history honest."""
    swapped = swap(runs, later)
    moves = sorted(100 * (b["result"]["harmonic_mean"] - a["result"]["harmonic_mean"])
                   for a, b in zip(runs, swapped) if a is not b and a["task"] in tasks)
    lines = [f"{len(moves)} points from {', '.join(map(str, later))}"
             + (f" (HM moves {moves[0]:+.1f} to {moves[-1]:+.1f})" if moves else "")]
    for t in tasks:
        before, after = (points_from(rs, t, is_delta) for rs in (runs, swapped))
        lines.append(f"{t}: protocol 3 alone gives the same verdict"
                     if on_frontier(before) == on_frontier(after) else
                     f"{t}: VERDICT CHANGED, protocol 3 alone said: {statement(t, before)}")
    return lines


def on_frontier(points: list) -> bool:
    """The verdict a statement words: is any Δ point on the frontier?"""
    return any(p.delta for p in frontier(points))


def as_lines(found: list[tuple[str, Path | None]], base: Path) -> list[str]:
    """Markdown bullets with each figure linked relative to ``base``, the folder of the file
    they go into."""
    return [f"- {text}" + (f"; [figure]({os.path.relpath(png, base)}))" if png else "")
            for text, png in found]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", choices=sorted(SUITES), required=True)
    ap.add_argument("--tasks", nargs="+", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--report", type=Path, required=True, help="where the figures and records go")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--shard", metavar="I/N", help="run only this share of the cells (bench "
                    "--shard); run every share, then once more with --report-only")
    ap.add_argument("--write", type=Path, nargs="*", default=[],
                    help="Markdown files whose <!-- frontier-SUITE:begin/end --> block gets the "
                         "statements")
    ap.add_argument("--protocol4", type=Path, nargs="*", default=[], metavar="RESULTS",
                    help="results.json of protocol-4 reruns: their seed-0 records replace the "
                         "same cells' in the figures and statements; FRONTIER.md says whether "
                         "protocol 3 alone gave each verdict")
    a = ap.parse_args()
    s = SUITES[a.suite]
    extra, variants = plan(a.suite)
    a.out.mkdir(parents=True, exist_ok=True)
    toml = a.out / "frontier.toml"
    toml.write_text(derived_suite(a.suite, f"{a.suite}-frontier", [s["backbone"]], a.tasks,
                                  variants, {}, seeds=1, extra=extra))
    copied = seed_records([ROOT / "docs" / "results" / a.suite, a.report], a.out, s["backbone"],
                          a.tasks, variants)
    print(f"{copied} published records copied in; suite copy {toml}")
    flags = (["--report-only"] if a.report_only else []) + (["--shard", a.shard] if a.shard else [])
    run_bench(toml, a.out, a.threads, *flags)
    command = (f"python benchmarks/frontier.py --suite {a.suite} --tasks {' '.join(a.tasks)} "
               f"--out {a.out} --report {a.report}"
               + (" --protocol4 " + " ".join(map(str, a.protocol4)) if a.protocol4 else ""))
    found, note = report(a.suite, a.out, a.report, a.tasks, command, a.protocol4)
    print("\n".join(note + as_lines(found, a.report)))
    for path in a.write:
        # a preface (docs/results/preface-*.md) is placed into docs/RESULTS.md: links from there
        base = path.parent.parent if path.name.startswith("preface-") else path.parent
        text = "\n".join([f"`{command}` ([FRONTIER.md]"
                           f"({os.path.relpath(a.report / 'FRONTIER.md', base)})):", "",
                           *note, *as_lines(found, base)])
        replace_block(path, f"frontier-{a.suite}", text)


if __name__ == "__main__":
    main()
