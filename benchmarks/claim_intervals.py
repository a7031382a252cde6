"""Every claim of docs/RESULTS.md and the README with its paired difference, 95 % interval and
verdict, computed from the committed run records (never typed by hand).

For each claim "A > B" it pairs A's and B's runs cell by cell (backbone, task) and seed by seed,
and reports A − B in points with the interval of ``deltapatch.bench.intervals`` (parametric
binomial bootstrap over test images and seeds; the records hold accuracies and image counts, not
per-image correctness) and the verdict: holds / within noise / reversed. With ``--write`` it
replaces the text between ``<!-- claim-intervals:begin -->`` and ``<!-- claim-intervals:end -->``
in each file named (the full block with one interval per cell in the RESULTS preface, the
pooled lines in the README).

    python benchmarks/claim_intervals.py                      # print the block
    python benchmarks/claim_intervals.py --write docs/results/preface-cpu.md --short README.md
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from _common import replace_block

from deltapatch.bench.intervals import DRAWS, METHOD, Score, paired, record_score

DOCS = Path(__file__).resolve().parents[1] / "docs" / "results"
SEED = 0  # the bootstrap's seed: the block is the same on every run


class Claim(NamedTuple):
    suite: str  # docs/results/<suite>/results.json
    scenario: str
    a: str  # variant keys of the suite file
    b: str
    metric: str  # hm | top1 | target | sequential | joint
    backbone: str | None = None  # only this backbone's cells (None: all the suite has)


def _base_n(suite: str) -> int:
    """Base test size; a protocol folder (cpu-protocol4) has its suite's."""
    return {"cpu": 1000, "imagenet": 500}[re.split(r"[-+]", suite)[0]]


def score(record: dict, metric: str, base_n: int) -> Score:
    return record_score(record["result"], metric, base_n)


def runs(suite: str) -> dict[tuple[str, str], dict[tuple[str, str], dict[int, dict]]]:
    """(scenario, variant) -> (backbone, task) -> seed -> record; a run shared by several
    tables once. ``A+B`` is folder A with every cell that folder B reran taken from B (a suite
    with its protocol-4 reruns: each cell at the best rate found so far)."""
    if "+" in suite:
        first, later = suite.split("+")
        out = runs(first)
        for key, cells_ in runs(later).items():
            out[key].update(cells_)
        return out
    out: dict = defaultdict(lambda: defaultdict(dict))
    for r in json.loads((DOCS / suite / "results.json").read_text())["runs"]:
        if r.get("status") == "ok":
            out[(r["scenario"], r["variant"])][(r["backbone"], r["task"])][r["seed"]] = r
    return out


def cells(claim: Claim, records: dict) -> dict[tuple[str, str], list[tuple[Score, Score]]]:
    a = records.get((claim.scenario, claim.a), {})  # .get: a lookup must not add an empty
    b = records.get((claim.scenario, claim.b), {})  # variant that title() would then read
    base_n = _base_n(claim.suite)
    return {cell: [(score(a[cell][s], claim.metric, base_n), score(b[cell][s], claim.metric, base_n))
                   for s in sorted(set(a[cell]) & set(b[cell]))]
            for cell in sorted(set(a) & set(b)) if set(a[cell]) & set(b[cell])
            and claim.backbone in (None, cell[0])}


def title(claim: Claim, records: dict) -> str:
    label = {v: next(iter(next(iter(cells_.values())).values()))["label"]
             for (s, v), cells_ in records.items() if s == claim.scenario}
    where = SUITE_TEXT[claim.suite] + (f" {BACKBONE_TEXT[claim.backbone]}"
                                       if claim.backbone in BACKBONE_TEXT else "")
    return (f"{where} · {claim.scenario} · {label.get(claim.a, claim.a)} − "
            f"{label.get(claim.b, claim.b)}, {METRIC_TEXT[claim.metric]}")


def line(claim: Claim, records: dict, per_cell: bool) -> str:
    found = cells(claim, records)
    text = title(claim, records)
    if not found:
        return f"- {text}: no paired runs yet"
    pooled = paired(list(found.values()), seed=SEED)
    each = {c: paired([v], seed=SEED) for c, v in found.items()}
    holds = sum(i.verdict == "holds" for i in each.values())
    seeds = sorted({len(v) for v in found.values()})
    head = (f"- {text}: **{pooled.text()}** (mean over {pooled.cells} cell(s), "
            f"n = {'–'.join(map(str, seeds))} seed(s) per cell; cells that hold alone: "
            f"{holds}/{len(each)})")
    if not per_cell or len(each) == 1:
        return head
    return head + "; per cell: " + "; ".join(f"{t} {i.text()}" for (_, t), i in each.items())


METRIC_TEXT = {"hm": "harmonic mean", "joint": "harmonic mean over the base and every joint task",
               "top1": "top-1", "target": "USPS (target) top-1",
               "sequential": "mean top-1 after the last task"}
BACKBONE_TEXT = {"resnet56": "ResNet-56"}  # named in a line's title; the cpu default, ResNet-20, is not
SUITE_TEXT = {"cpu": "cpu", "cpu-protocol4": "cpu, protocol 4",
              "cpu-protocol4-sequential": "cpu, protocol 4", "imagenet": "Lite0",
              "imagenet-protocol4": "Lite0, protocol 4",
              "imagenet+imagenet-protocol4": "Lite0, protocol 4 where rerun"}


def claims(suite: str, scenario: str, metric: str, pairs: str,
           backbone: str | None = None) -> list[Claim]:
    """One claim per ``A>B`` in the space-separated ``pairs`` (variant keys of the suite)."""
    return [Claim(suite, scenario, *p.split(">"), metric, backbone) for p in pairs.split()]


CLAIMS = [
    *claims("cpu", "single", "hm", "delta1>linear delta2>linear delta3>linear delta1>paint "
            "delta2>paint delta3>paint linear>paint delta2>delta1 delta3>delta1 delta3>delta2 "
            "delta3>adapter-parallel delta3>adapter-series delta3>bn-adapt delta3>pnc "
            "delta1-base>delta1 delta3-base>delta3", backbone="resnet20"),
    *claims("cpu", "single", "hm", "delta1>linear delta3>linear delta1>paint delta3>paint "
            "delta3>delta1", backbone="resnet56"),
    *claims("cpu", "single", "top1", "delta3>existing delta3>learned delta3>learned-bn "
            "delta3>fixed delta3>fixed-bn delta3>random delta3>delta3-nobn learned-bn>learned "
            "fixed-bn>fixed"),
    *claims("cpu", "joint", "joint", "delta1>paint delta3>paint linear>paint delta1>linear "
            "delta3>delta1"),
    *claims("cpu", "sequential", "sequential", "delta1>paint delta3>paint linear>paint "
            "delta1>linear"),
    *claims("cpu", "zsda", "target", "delta1>linear delta3>linear ft-delta3>ft-plain"),
    *claims("cpu", "transfer", "top1", "ft-delta3>ft-plain"),
    *claims("cpu", "scratch", "top1", "full-delta3>plain"),
    *claims("cpu-protocol4", "single", "hm", "delta3>delta1 delta1>linear delta3>linear "
            "delta2>delta1 delta3>adapter-parallel delta3>adapter-series delta3>bn-adapt "
            "delta1-base>delta1 delta3-base>delta3", backbone="resnet20"),
    *claims("cpu-protocol4", "single", "hm", "delta1>linear delta3>linear delta1>paint "
            "delta3>paint delta3>delta1", backbone="resnet56"),
    *claims("cpu-protocol4", "single", "top1", "delta3>existing delta3>learned-bn delta3>fixed "
            "delta3>fixed-bn delta3>random delta3>delta3-nobn fixed-bn>fixed"),
    *claims("cpu-protocol4", "joint", "joint", "delta1>linear delta3>delta1"),
    *claims("cpu-protocol4", "zsda", "target", "delta1>linear delta3>linear"),
    *claims("cpu-protocol4-sequential", "sequential", "sequential", "delta1>paint delta3>paint "
            "linear>paint delta1>linear"),
    *claims("imagenet", "single", "hm", "delta1-base>paint delta5-base>paint linear>paint "
            "delta1-base>linear delta5-base>linear delta1-base>lora delta5-base>lora "
            "delta5-base>lora2 delta1-base>delta1 delta5-base>delta5"),
    *claims("imagenet-protocol4", "single", "hm", "delta5>delta1 delta2>delta1 delta5>delta2"),
    *claims("imagenet+imagenet-protocol4", "single", "hm", "delta1-base>delta1 "
            "delta2-base>delta2 delta5-base>delta5"),
    *claims("imagenet", "sequential", "sequential", "delta5-base>paint delta1-base>paint "
            "linear>paint delta5-base>linear"),
    *claims("imagenet", "zsda", "target", "ft-delta5>ft-plain delta5-base>linear"),
]


DENSE_TEXT = {"heads": "heads only", "delta_all": "heads + Δ(all)", "finetune": "heads + fine-tuning"}


def dense_line(folder: Path = DOCS / "dense" / "runs", a: str = "delta_all",
               b: str = "heads") -> str:
    """Box mAP@[.5:.95] of two Lite0 variants, paired by seed, from the committed dense
    records: a t-interval over seeds (mAP is not a per-image rate, so the binomial bootstrap of
    the other lines does not apply)."""
    from scipy import stats  # only here: the one claim without per-image counts

    def by_seed(variant: str) -> dict[int, float]:
        return {(r := json.loads(f.read_text()))["seed"]: r["box_map"] for f in
                sorted((folder / "efficientnet_lite0" / "detection" / variant).glob("seed*.json"))}

    first, second = by_seed(a), by_seed(b)
    seeds = sorted(set(first) & set(second))
    text = f"- dense · Lite0 box mAP@[.5:.95] {DENSE_TEXT[a]} − {DENSE_TEXT[b]}"
    if len(seeds) < 2:
        return f"{text}: fewer than two paired seeds in docs/results/dense/runs yet"
    diff = [100 * (first[s] - second[s]) for s in seeds]
    mean, n = sum(diff) / len(diff), len(diff)
    half = stats.t.ppf(0.975, n - 1) * stats.tstd(diff) / n ** 0.5
    lo, hi = mean - half, mean + half
    verdict = "holds" if lo > 0 else "reversed" if hi < 0 else "within noise"
    return (f"{text}: **{mean:+.1f} [{lo:+.1f}, {hi:+.1f}] points, {verdict}** (paired by seed, "
            f"n = {n} seeds, t-interval over seeds; from docs/results/dense/runs)")


def block(per_cell: bool) -> str:
    by_suite = {s: runs(s) for s in {c.suite for c in CLAIMS}}
    lines = [line(c, by_suite[c.suite], per_cell) for c in CLAIMS]
    return "\n".join([
        f"Generated by `python benchmarks/claim_intervals.py` from docs/results/*/results.json; "
        f"do not edit by hand. Each line: A − B in points, mean over the cells of the paired "
        f"per-seed difference, with its 95 % interval ({METHOD}; {DRAWS} draws, bootstrap seed "
        f"{SEED}), and the verdict: **holds** only where the interval excludes zero, **reversed** "
        f"where it excludes zero on the other side, else **within noise**. cpu: protocol 3 "
        f"(the Table 8 ablation, on patch top-1 as the paper's table, joint patching, ResNet-56 "
        f"and from scratch since 2026-12-06), 3 seeds per cell; cpu, protocol 4: the seeds "
        f"each line states; Lite0: protocol 3, 3 seeds per cell; Lite0, protocol 4: the edge "
        f"cells rerun from 2026-12-06 (these lines: random-start Δ), with the seeds each line "
        f"states; Lite0, "
        f"protocol 4 where rerun: each cell from protocol 4's records where it reran the cell, "
        f"else from protocol 3's.", "", *lines, dense_line(),
        dense_line(a="finetune", b="delta_all")])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", type=Path, nargs="*", default=[],
                    help="files whose marked block gets the full text (one interval per cell)")
    ap.add_argument("--short", type=Path, nargs="*", default=[],
                    help="files whose marked block gets the pooled lines only")
    a = ap.parse_args()
    if not a.write and not a.short:
        print(block(per_cell=True))
    for path in a.write:
        replace_block(path, "claim-intervals", block(per_cell=True))
    for path in a.short:
        replace_block(path, "claim-intervals", block(per_cell=False))


if __name__ == "__main__":
    main()
