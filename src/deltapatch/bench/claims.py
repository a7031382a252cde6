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

Pred = Callable[[dict], bool]
NOT_MEASURED = "**not yet measured** (no finished runs for it)"


def _ok(records: list[dict], table: str) -> list[dict]:
    return [r for r in records if r.get("table") == table and r.get("status") == "ok"]


Cell = tuple[float, float, int]  # mean, sample std, n seeds


def per_variant(records: list[dict], table: str, pred: Pred,
                value: Callable[[dict], float | None]) -> dict[str, dict[tuple[str, str], Cell]]:
    """{variant label: {(backbone, task): (mean, std, n) over seeds}} for the variants that fit
    ``pred``. Variants stay separate: picking the best one on test numbers would be
    cherry-picking."""
    by: dict[str, dict[tuple, list[float]]] = {}
    for r in _ok(records, table):
        v = value(r["result"])
        if v is not None and pred(r.get("method", {})):
            by.setdefault(r["label"], {}).setdefault((r["backbone"], r["task"]), []).append(v)
    return {label: {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
                    for k, v in cells.items()} for label, cells in by.items()}


def compare(a: dict[tuple[str, str], Cell], b: dict[tuple[str, str], Cell], name_a: str,
            name_b: str, metric: str) -> str | None:
    """'A > B in x of y cells, mean difference d; k cells beyond seed noise' over shared cells.

    A cell's difference counts as beyond noise when it exceeds sqrt(std_a² + std_b²) of the
    seeds; with one seed there is no noise estimate and the text says so. When no difference
    exceeds the noise, the verdict is "inconclusive" whatever the direction."""
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    diffs = [100 * (a[k][0] - b[k][0]) for k in shared]
    noise = [100 * (a[k][1] ** 2 + b[k][1] ** 2) ** 0.5 for k in shared]
    seeds = min(min(a[k][2], b[k][2]) for k in shared)
    wins = sum(d > 0 for d in diffs)
    beyond = sum(abs(d) > n for d, n in zip(diffs, noise, strict=True)) if seeds > 1 else None
    detail = "; ".join(f"{bb}/{t}: {100 * a[(bb, t)][0]:.2f} vs {100 * b[(bb, t)][0]:.2f}"
                       for bb, t in shared)
    verdict = ("supported" if wins == len(shared) else
               "mixed" if wins > 0 else "not supported")
    head = f"**{verdict}**"
    if beyond == 0:  # every difference is within the seeds' spread: the runs cannot tell
        head = f"**inconclusive** (within seed noise; direction: {verdict})"
    noise_text = (f"{beyond}/{len(shared)} differences exceed the seed-to-seed std"
                  if beyond is not None else "one seed only, no noise estimate")
    return (f"{head}: {name_a} > {name_b} on {metric} in {wins}/{len(shared)} "
            f"(backbone, task) cells; mean difference {statistics.fmean(diffs):+.2f} points "
            f"(min {min(diffs):+.2f}, max {max(diffs):+.2f}); n ≥ {seeds} seed(s), "
            f"{noise_text}. Cells (mean over seeds, %): {detail}.")


def compare_all(a: dict[str, dict], b: dict[str, dict], metric: str) -> list[str]:
    """Every variant of ``a`` against every variant of ``b``."""
    out = []
    for la, ca in a.items():
        for lb, cb in b.items():
            got = compare(ca, cb, la, lb, metric)
            if got:
                out.append(got)
    return out


def _lines(parts: list[str], note: str = "") -> str:
    return ("\n  - ".join([""] + parts) + note) if parts else NOT_MEASURED


def method_is(name: str, **kw) -> Pred:
    return lambda m: m.get("name") == name and all(m.get(k) == v for k, v in kw.items())


def _hm(res: dict) -> float | None:
    return res.get("harmonic_mean")


def _top1(res: dict) -> float | None:
    return res.get("patch_top1")


def delta_vs_paint(records: list[dict]) -> str:
    return _lines(compare_all(per_variant(records, "single", method_is("delta", gate="delta"), _hm),
                              per_variant(records, "single", method_is("paint"), _hm),
                              "harmonic mean"))


def delta_vs_fc(records: list[dict]) -> str:
    return _lines(compare_all(per_variant(records, "single", method_is("delta", gate="delta"), _hm),
                              per_variant(records, "single", method_is("linear"), _hm),
                              "harmonic mean"))


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
                                    _hm).items():
        stages = {r["method"]["stages"] for r in _ok(records, "single") if r["label"] == label}
        n = next(iter(stages))
        if isinstance(n, int):
            by_n[n] = {label: cells}
    ns = sorted(by_n)
    pairs = [(ns[0], hi) for hi in ns[1:]]  # every depth against Δ(1), Δ(max) included
    pairs += [(lo, hi) for lo, hi in itertools.pairwise(ns) if lo != ns[0]]
    parts = [p for lo, hi in pairs for p in compare_all(by_n[hi], by_n[lo], "harmonic mean")]
    note = (" (CIFAR ResNets have 3 stages, so Δ(3) is 'all stages', the paper's Δ(4).)"
            if 3 in ns and 4 not in ns else "")
    return _lines(parts, note) if len(ns) > 1 else NOT_MEASURED


def conditioned_vs_static(records: list[dict]) -> str:
    delta = per_variant(records, "ablation", method_is("delta", gate="delta", norm="output"),
                        _top1)
    others = {}
    for gate in ("learned", "fixed", "existing", "random"):
        others.update(per_variant(records, "ablation", method_is("delta", gate=gate), _top1))
    return _lines(compare_all(delta, others, "patch top-1"))


def bn_helps(records: list[dict]) -> str:
    parts = []
    for gate in ("delta", "learned", "fixed", "existing"):
        parts += compare_all(
            per_variant(records, "ablation", method_is("delta", gate=gate, norm="output"), _top1),
            per_variant(records, "ablation", method_is("delta", gate=gate, norm="none"), _top1),
            "patch top-1")
    return _lines(parts)


def delta_vs_adapted(records: list[dict]) -> str:
    delta = per_variant(records, "adapted", method_is("delta", gate="delta"), _hm)
    others = {}
    for m in ("adapter-parallel", "adapter-series", "bn-adapt", "pnc"):
        others.update(per_variant(records, "adapted", method_is(m), _hm))
    return _lines(compare_all(delta, others, "harmonic mean"))


def _target(res: dict) -> float | None:
    return res.get("top1_by_test", {}).get("target")


def _with_delta(m: dict) -> bool:
    return m.get("stages") not in (0, [], None)


def full_training_helps(table: str, value=_top1, metric: str = "test top-1",
                        full_only: bool = False) -> Callable[[list[dict]], str]:
    """The same fully trained network with and without Δ-stages (paper Tables 5, 6, 12-13);
    ``full_only`` leaves out a scenario's frozen-backbone patches."""
    def check(records: list[dict]) -> str:
        full = (lambda m: m.get("name") == "full") if full_only else (lambda m: True)
        with_delta = per_variant(records, table, lambda m: full(m) and _with_delta(m), value)
        plain = per_variant(records, table, lambda m: full(m) and not _with_delta(m), value)
        return _lines(compare_all(with_delta, plain, metric))
    return check


def zsda_patch_vs_fc(records: list[dict]) -> str:
    return _lines(compare_all(
        per_variant(records, "zsda", method_is("delta", gate="delta"), _target),
        per_variant(records, "zsda", method_is("linear"), _target), "target-domain top-1"))


def sequential_vs_paint(records: list[dict]) -> str:
    mean = lambda res: res.get("mean_top1")
    return _lines(compare_all(
        per_variant(records, "sequential", method_is("delta", gate="delta"), mean),
        per_variant(records, "sequential", method_is("paint"), mean), "mean top-1"))


def joint_vs_paint(records: list[dict]) -> str:
    hm = lambda res: res.get("joint_harmonic_mean")
    return _lines(compare_all(
        per_variant(records, "joint", method_is("delta", gate="delta"), hm),
        per_variant(records, "joint", method_is("paint"), hm),
        "harmonic mean over the base and every joint task"))


def no_forgetting(records: list[dict]) -> str:
    drops = [abs(d) for r in _ok(records, "sequential") if r["method"].get("name") == "delta"
             for d in r["result"].get("drop_by_task", {}).values()]
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
     full_training_helps("zsda", _target, "target-domain top-1", full_only=True)),
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
             "The verdicts below count cells and compare each difference with the seeds' "
             "spread; they are not intervals. A paired difference with its 95 % interval per "
             "claim (holds / within noise / reversed) comes from `benchmarks/claim_intervals.py` "
             "(bench/intervals.py); where the two disagree, the interval decides.\n"]
    lines += [f"- *{claim}*: {check(records)}" for claim, check in CLAIMS]
    lines += ["\n### Guarantees (hold by construction; checked here, not evidence)\n",
              "A patch adds modules beside the frozen backbone and never writes to it or to "
              "another patch, so these hold whatever the training does; a failure would be a "
              "bug, not a finding.\n"]
    lines += [f"- *{claim}*: {check(records)}" for claim, check in GUARANTEES]
    return "\n".join(lines) + "\n"
