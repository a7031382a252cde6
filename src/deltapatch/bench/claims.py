"""The paper's claims, each checked only against runs that actually finished. A claim with no
runs to decide it says "not yet measured"; a claim the runs contradict says so, with the numbers.

``CLAIMS`` is a list of (claim, check); ``check(records) -> str``. ``GUARANTEES`` are properties
that hold by construction (a patch never touches the backbone, nor another patch): the runs
check them, but they are not evidence for the method and are reported apart.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable

from .intervals import Interval, paired, record_score

Pred = Callable[[dict], bool]
NOT_MEASURED = "**not yet measured** (no finished runs for it)"


def _ok(records: list[dict], table: str) -> list[dict]:
    return [r for r in records if r.get("table") == table and r.get("status") == "ok"]


Seeds = dict[int, dict]  # seed -> that run's result
Cells = dict[tuple[str, str], Seeds]  # (backbone, task) -> its seeds

VALUE: dict[str, Callable[[dict], float | None]] = {  # each metric's recorded number
    "hm": lambda res: res.get("harmonic_mean"),
    "top1": lambda res: res.get("patch_top1"),
    "target": lambda res: res.get("top1_by_test", {}).get("target"),
    "sequential": lambda res: res.get("mean_top1"),
    "joint": lambda res: res.get("joint_harmonic_mean"),
}
METRIC_TEXT = {"hm": "harmonic mean", "top1": "patch top-1", "target": "target-domain top-1",
               "sequential": "mean top-1",
               "joint": "harmonic mean over the base and every joint task"}


def base_sizes(records: list[dict]) -> dict[str, int]:
    """Base test images per backbone, from any run that records them (sequential runs do
    not, and their mean top-1 includes the base task)."""
    return {r["backbone"]: r["result"]["n_base_test"] for r in records
            if r.get("status") == "ok" and r.get("result", {}).get("n_base_test")}


def per_variant(records: list[dict], table: str, pred: Pred, metric: str) -> dict[str, Cells]:
    """{variant label: {(backbone, task): {seed: result}}} for the variants that fit ``pred``
    and record ``metric``. Variants stay separate: picking the best one on test numbers would
    be cherry-picking. A run shared by several tables counts once."""
    base = base_sizes(records)
    by: dict[str, Cells] = {}
    for r in _ok(records, table):
        if VALUE[metric](r["result"]) is not None and pred(r.get("method", {})):
            res = {**r["result"], "n_base_test": r["result"].get("n_base_test")
                   or base.get(r["backbone"])}
            by.setdefault(r["label"], {}).setdefault((r["backbone"], r["task"]), {})[
                r["seed"]] = res
    return by


def _cell(seeds: Seeds, metric: str) -> tuple[float, float, int]:
    """Mean, sample std and n over the seeds, in percent as the tables compute them (so a
    mean rounds the same way in both)."""
    v = [100 * VALUE[metric](res) for res in seeds.values()]
    return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)


def _interval(a: Cells, b: Cells, shared: list, metric: str) -> Interval | None:
    """A − B pooled over the shared cells, paired seed by seed (bench/intervals.py); None
    where no seed ran in both or the records lack the image counts the bootstrap redraws."""
    try:
        cells = [[(record_score(a[k][s], metric), record_score(b[k][s], metric))
                  for s in sorted(set(a[k]) & set(b[k]))] for k in shared]
        cells = [c for c in cells if c]
        return paired(cells) if cells else None
    except (KeyError, ValueError):
        return None


def compare(a: Cells, b: Cells, name_a: str, name_b: str, metric: str,
            text: str | None = None) -> str | None:
    """The verdict of "A > B" over the shared cells, then how the cells split.

    The verdict is the paired difference's 95 % interval, pooled over the cells (holds /
    within noise / reversed), the same rule as the claim lines of
    ``benchmarks/claim_intervals.py``: counting cells that go one way would call five small
    wins "supported" however noisy each is. Beside it: in how many cells A's mean is higher,
    and how many differences exceed sqrt(std_a² + std_b²) of the seeds."""
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    ca, cb = {k: _cell(a[k], metric) for k in shared}, {k: _cell(b[k], metric) for k in shared}
    diffs = [ca[k][0] - cb[k][0] for k in shared]
    noise = [(ca[k][1] ** 2 + cb[k][1] ** 2) ** 0.5 for k in shared]
    seeds = min(min(ca[k][2], cb[k][2]) for k in shared)
    wins = sum(d > 0 for d in diffs)
    beyond = sum(abs(d) > n for d, n in zip(diffs, noise, strict=True)) if seeds > 1 else None
    iv = _interval(a, b, shared, metric)
    head = (f"**{iv.verdict}** ({name_a} − {name_b} {iv.span()} points, "
            f"95 % interval over {iv.cells} cell(s) and their paired seeds)"
            if iv else "**no interval** (no paired seeds, or the records lack image counts)")
    detail = "; ".join(f"{bb}/{t}: {ca[(bb, t)][0]:.2f} vs {cb[(bb, t)][0]:.2f}"
                       for bb, t in shared)
    noise_text = (f"{beyond}/{len(shared)} differences exceed the seed-to-seed std"
                  if beyond is not None else "one seed only, no seed noise in the interval")
    return (f"{head}: {name_a} > {name_b} on {text or METRIC_TEXT[metric]} in {wins}/{len(shared)} "
            f"(backbone, task) cells; mean difference {statistics.fmean(diffs):+.2f} points "
            f"(min {min(diffs):+.2f}, max {max(diffs):+.2f}); n ≥ {seeds} seed(s), "
            f"{noise_text}. Cells (mean over seeds, %): {detail}.")


def compare_all(a: dict[str, Cells], b: dict[str, Cells], metric: str,
                text: str | None = None) -> list[str]:
    """Every variant of ``a`` against every variant of ``b``."""
    out = []
    for la, ca in a.items():
        for lb, cb in b.items():
            got = compare(ca, cb, la, lb, metric, text)
            if got:
                out.append(got)
    return out


def _lines(parts: list[str], note: str = "") -> str:
    return ("\n  - ".join([""] + parts) + note) if parts else NOT_MEASURED


def method_is(name: str, **kw) -> Pred:
    return lambda m: m.get("name") == name and all(m.get(k) == v for k, v in kw.items())


def delta_vs_paint(records: list[dict]) -> str:
    return _lines(compare_all(per_variant(records, "single", method_is("delta", gate="delta"), "hm"),
                              per_variant(records, "single", method_is("paint"), "hm"),
                              "hm"))


def delta_vs_fc(records: list[dict]) -> str:
    return _lines(compare_all(per_variant(records, "single", method_is("delta", gate="delta"), "hm"),
                              per_variant(records, "single", method_is("linear"), "hm"),
                              "hm"))


def zero_base_drop(records: list[dict]) -> str:
    """Base top-1 of every Δ run equals the untouched backbone's on the same test images (the
    FC-only runs serve the base task through the untouched backbone too, as the reference)."""
    ref = {}
    for r in _ok(records, "single"):
        if r["method"].get("name") == "linear":
            ref[(r["backbone"], r["seed"])] = r["result"]["base_top1"]
    diffs = {}  # by run key: a run shared by several tables counts once
    for table in ("single", "ablation", "adapted"):
        for r in _ok(records, table):
            key = (r["backbone"], r["seed"])
            if r["method"].get("name") == "delta" and key in ref and ref[key] is not None:
                diffs[r["key"]] = 100 * (r["result"]["base_top1"] - ref[key])
    diffs = list(diffs.values())
    if not diffs:
        return NOT_MEASURED
    worst = max(abs(d) for d in diffs)
    verdict = "supported" if worst == 0 else "not supported"
    return (f"**{verdict}**: over {len(diffs)} Δ runs, the largest base top-1 change against the "
            f"untouched backbone on the same test images is {worst:.4f} points "
            "(bit-identical base outputs are also checked by `deltapatch verify` and the tests).")


def depth_order(records: list[dict]) -> str:
    by_n: dict[int, dict] = {}
    for label, cells in per_variant(records, "single", method_is("delta", gate="delta"),
                                    "hm").items():
        stages = {r["method"]["stages"] for r in _ok(records, "single") if r["label"] == label}
        n = next(iter(stages))
        if isinstance(n, int):
            by_n[n] = {label: cells}
    ns = sorted(by_n)
    pairs = [(ns[0], hi) for hi in ns[1:]]  # every depth against Δ(1), Δ(max) included
    pairs += [(lo, hi) for lo, hi in itertools.pairwise(ns) if lo != ns[0]]
    parts = [p for lo, hi in pairs for p in compare_all(by_n[hi], by_n[lo], "hm")]
    note = (" (CIFAR ResNets have 3 stages, so Δ(3) is 'all stages', the paper's Δ(4).)"
            if 3 in ns and 4 not in ns else "")
    return _lines(parts, note) if len(ns) > 1 else NOT_MEASURED


def conditioned_vs_static(records: list[dict]) -> str:
    delta = per_variant(records, "ablation", method_is("delta", gate="delta", norm="output"),
                        "top1")
    others = {}
    for gate in ("learned", "fixed", "existing", "random"):
        others.update(per_variant(records, "ablation", method_is("delta", gate=gate), "top1"))
    return _lines(compare_all(delta, others, "top1"))


def bn_helps(records: list[dict]) -> str:
    parts = []
    for gate in ("delta", "learned", "fixed", "existing"):
        parts += compare_all(
            per_variant(records, "ablation", method_is("delta", gate=gate, norm="output"), "top1"),
            per_variant(records, "ablation", method_is("delta", gate=gate, norm="none"), "top1"),
            "top1")
    return _lines(parts)


def delta_vs_adapted(records: list[dict]) -> str:
    delta = per_variant(records, "adapted", method_is("delta", gate="delta"), "hm")
    others = {}
    for m in ("adapter-parallel", "adapter-series", "bn-adapt", "pnc"):
        others.update(per_variant(records, "adapted", method_is(m), "hm"))
    return _lines(compare_all(delta, others, "hm"))


def _with_delta(m: dict) -> bool:
    return m.get("stages") not in (0, [], None)


def full_training_helps(table: str, metric: str = "top1", text: str = "test top-1",
                        full_only: bool = False) -> Callable[[list[dict]], str]:
    """The same fully trained network with and without Δ-stages (paper Tables 5, 6, 12-13);
    ``full_only`` leaves out a scenario's frozen-backbone patches."""
    def check(records: list[dict]) -> str:
        full = (lambda m: m.get("name") == "full") if full_only else (lambda m: True)
        with_delta = per_variant(records, table, lambda m: full(m) and _with_delta(m), metric)
        plain = per_variant(records, table, lambda m: full(m) and not _with_delta(m), metric)
        return _lines(compare_all(with_delta, plain, metric, text))
    return check


def zsda_patch_vs_fc(records: list[dict]) -> str:
    return _lines(compare_all(
        per_variant(records, "zsda", method_is("delta", gate="delta"), "target"),
        per_variant(records, "zsda", method_is("linear"), "target"), "target"))


def sequential_vs_paint(records: list[dict]) -> str:
    return _lines(compare_all(
        per_variant(records, "sequential", method_is("delta", gate="delta"), "sequential"),
        per_variant(records, "sequential", method_is("paint"), "sequential"), "sequential"))


def joint_vs_paint(records: list[dict]) -> str:
    return _lines(compare_all(
        per_variant(records, "joint", method_is("delta", gate="delta"), "joint"),
        per_variant(records, "joint", method_is("paint"), "joint"), "joint"))


def no_forgetting(records: list[dict]) -> str:
    """Only tasks patched before another one count: the last task's "drop" is 0 by
    construction (nothing came after it) and would pad the evidence."""
    drops = [abs(drop[t]) for r in _ok(records, "sequential") if r["method"].get("name") == "delta"
             for drop in [r["result"].get("drop_by_task", {})]
             for t in list(r["result"].get("order") or drop)[:-1] if t in drop]
    if not drops:
        return NOT_MEASURED
    verdict = "supported" if max(drops) == 0 else "not supported"
    return (f"**{verdict}**: over {len(drops)} (task, run) pairs, the largest change of an "
            f"earlier task's top-1 after later patches is {100 * max(drops):.4f} points.")


CLAIMS: list[tuple[str, Callable[[list[dict]], str]]] = [
    ("Δ-Networks beat PAINT on the single-task harmonic mean (Table 2)", delta_vs_paint),
    ("Δ-modules beat the FC-only patch (Table 8, '+ FC' row)", delta_vs_fc),
    ("More Δ-modules help: Δ(all) ≥ Δ(1), and each depth ≥ the one below (Table 2)",
     depth_order),
    ("Input-conditioned skips beat learnable, fixed and random skips (Table 8)",
     conditioned_vs_static),
    ("BatchNorm helps wherever skips are added (Table 8)", bn_helps),
    ("Δ-Networks beat the adapted baselines on most tasks (Table 1)", delta_vs_adapted),
    ("Δ beats PAINT in joint patching (Table 3)", joint_vs_paint),
    ("Δ beats PAINT in sequential patching (Table 4)", sequential_vs_paint),
    ("Δ helps zero-shot domain adaptation: the fine-tuned network + Δ beats it alone on the "
     "unseen target domain (Table 6)",
     full_training_helps("zsda", "target", "target-domain top-1", full_only=True)),
    ("(beside Table 6) a frozen-backbone Δ patch beats the FC-only patch on the target domain",
     zsda_patch_vs_fc),
    ("Δ helps training from scratch (Tables 12–13)", full_training_helps("scratch")),
    ("Δ on top of fine-tuning helps transfer learning (Table 5)", full_training_helps("transfer")),
]

GUARANTEES: list[tuple[str, Callable[[list[dict]], str]]] = [
    ("The base task is untouched by a patch (Tables 2, 10)", zero_base_drop),
    ("Earlier tasks are unaffected by later patches (sequential, §3.1)", no_forgetting),
]


def claims_section(records: list[dict]) -> str:
    lines = ["## The paper's claims, checked against these runs only\n",
             "Each verdict is the paired difference A − B with its 95 % interval, pooled over "
             "the cells both ran and their paired seeds (bench/intervals.py: holds / within "
             "noise / reversed, the rule of `benchmarks/claim_intervals.py`); after it, how "
             "the cells split and how many differences exceed the seeds' spread. Variants are "
             "pooled over every backbone they ran on.\n"]
    lines += [f"- *{claim}*: {check(records)}" for claim, check in CLAIMS]
    lines += ["\n### Guarantees (hold by construction; checked here, not evidence)\n",
              "A patch adds modules beside the frozen backbone and never writes to it or to "
              "another patch, so these hold whatever the training does; a failure would be a "
              "bug, not a finding.\n"]
    lines += [f"- *{claim}*: {check(records)}" for claim, check in GUARANTEES]
    return "\n".join(lines) + "\n"
