"""The paper's claims, each checked only against runs that actually finished. A claim with no
runs to decide it says "not yet measured"; a claim the runs contradict says so, with the numbers.

``CLAIMS`` is a list of (claim, check); ``check(records) -> str``.
"""

from __future__ import annotations

import statistics
from typing import Callable

Pred = Callable[[dict], bool]
NOT_MEASURED = "**not yet measured** (no finished runs for it)"


def _ok(records: list[dict], table: str) -> list[dict]:
    return [r for r in records if r.get("table") == table and r.get("status") == "ok"]


def cells(records: list[dict], table: str, pred: Pred, value: Callable[[dict], float | None]
          ) -> dict[tuple[str, str], float]:
    """Mean of ``value`` over seeds per (backbone, task), over runs whose variant fits ``pred``.
    When several variants fit, the best variant's mean is kept (e.g. "best Δ(n)")."""
    by: dict[tuple, list[float]] = {}
    for r in _ok(records, table):
        v = value(r["result"])
        if v is not None and pred(r.get("method", {})):
            by.setdefault((r["backbone"], r["task"], r["variant"]), []).append(v)
    out: dict[tuple[str, str], float] = {}
    for (bb, task, _), vals in by.items():
        m = statistics.fmean(vals)
        out[(bb, task)] = max(out.get((bb, task), m), m)
    return out


def compare(a: dict, b: dict, name_a: str, name_b: str, metric: str) -> str | None:
    """'A beats B in x of y cells, by mean +d points (range lo..hi)' over shared cells."""
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    diffs = [100 * (a[k] - b[k]) for k in shared]
    wins = sum(d > 0 for d in diffs)
    detail = "; ".join(f"{bb}/{t}: {100 * a[(bb, t)]:.2f} vs {100 * b[(bb, t)]:.2f}"
                       for bb, t in shared)
    verdict = ("supported" if wins == len(shared) else
               "partly supported" if wins > len(shared) / 2 else "not supported")
    return (f"**{verdict}**: {name_a} > {name_b} on {metric} in {wins}/{len(shared)} "
            f"(backbone, task) cells; mean difference {statistics.fmean(diffs):+.2f} points "
            f"(min {min(diffs):+.2f}, max {max(diffs):+.2f}). Cells (mean over seeds, %): "
            f"{detail}.")


def method_is(name: str, **kw) -> Pred:
    return lambda m: m.get("name") == name and all(m.get(k) == v for k, v in kw.items())


def _hm(res: dict) -> float | None:
    return res.get("harmonic_mean")


def _top1(res: dict) -> float | None:
    return res.get("patch_top1")


def delta_vs_paint(records: list[dict]) -> str:
    got = compare(cells(records, "single", method_is("delta", gate="delta"), _hm),
                  cells(records, "single", method_is("paint"), _hm),
                  "best Δ(n)", "PAINT (its α chosen on validation)", "harmonic mean")
    return got or NOT_MEASURED


def zero_base_drop(records: list[dict]) -> str:
    """Base top-1 of every Δ run equals the untouched backbone's on the same test images (the
    FC-only runs serve the base task through the untouched backbone too, as the reference)."""
    ref = {}
    for r in _ok(records, "single"):
        if r["method"].get("name") == "linear":
            ref[(r["backbone"], r["seed"])] = r["result"]["base_top1"]
    diffs = []
    for table in ("single", "ablation", "adapted"):
        for r in _ok(records, table):
            key = (r["backbone"], r["seed"])
            if r["method"].get("name") == "delta" and key in ref and ref[key] is not None:
                diffs.append(100 * (r["result"]["base_top1"] - ref[key]))
    if not diffs:
        return NOT_MEASURED
    worst = max(abs(d) for d in diffs)
    verdict = "supported" if worst == 0 else "not supported"
    return (f"**{verdict}**: over {len(diffs)} Δ runs, the largest base top-1 change against the "
            f"untouched backbone on the same test images is {worst:.4f} points "
            "(bit-identical base outputs are also checked by `deltapatch verify` and the tests).")


def depth_order(records: list[dict]) -> str:
    per_n: dict[int, dict] = {}
    for r in _ok(records, "single"):
        m = r["method"]
        if m.get("name") == "delta" and m.get("gate") == "delta" and isinstance(m.get("stages"),
                                                                                 int):
            per_n.setdefault(m["stages"], {})
    for n in per_n:
        per_n[n] = cells(records, "single", method_is("delta", gate="delta", stages=n), _hm)
    ns = sorted(per_n)
    if len(ns) < 2:
        return NOT_MEASURED
    parts = [compare(per_n[hi], per_n[lo], f"Δ({hi})", f"Δ({lo})", "harmonic mean")
             for lo, hi in zip(ns, ns[1:])]
    parts = [p for p in parts if p]
    note = (" (CIFAR ResNets have 3 stages, so Δ(3) is 'all stages', the paper's Δ(4).)"
            if 3 in ns and 4 not in ns else "")
    return "\n  - ".join([""] + parts) + note if parts else NOT_MEASURED


def conditioned_vs_static(records: list[dict]) -> str:
    delta = cells(records, "ablation", method_is("delta", gate="delta", norm="output"), _top1)
    out = []
    for gate, name in (("learned", "all skips, learnable"), ("fixed", "all skips, fixed 1"),
                       ("existing", "learnable existing skips"), ("random", "random Λ")):
        for norm in ("output", "none"):
            other = cells(records, "ablation", method_is("delta", gate=gate, norm=norm), _top1)
            got = compare(delta, other, "Δ (input-conditioned, BN)",
                          f"{name} ({'BN' if norm != 'none' else 'no BN'})", "patch top-1")
            if got:
                out.append(got)
    return "\n  - ".join([""] + out) if out else NOT_MEASURED


def bn_helps(records: list[dict]) -> str:
    out = []
    for gate in ("delta", "learned", "fixed", "existing"):
        a = cells(records, "ablation", method_is("delta", gate=gate, norm="output"), _top1)
        b = cells(records, "ablation", method_is("delta", gate=gate, norm="none"), _top1)
        got = compare(a, b, f"gate={gate} with BN", "without BN", "patch top-1")
        if got:
            out.append(got)
    return "\n  - ".join([""] + out) if out else NOT_MEASURED


def delta_vs_adapted(records: list[dict]) -> str:
    delta = cells(records, "adapted", method_is("delta", gate="delta"), _hm)
    out = []
    for m in ("adapter-parallel", "adapter-series", "bn-adapt", "pnc", "finetune", "linear"):
        got = compare(delta, cells(records, "adapted", method_is(m), _hm), "best Δ(n)", m,
                      "harmonic mean")
        if got:
            out.append(got)
    return "\n  - ".join([""] + out) if out else NOT_MEASURED


def zsda_helps(records: list[dict]) -> str:
    target = lambda res: res.get("top1_by_test", {}).get("target")  # noqa: E731
    got = compare(cells(records, "zsda", method_is("delta", gate="delta"), target),
                  cells(records, "zsda", method_is("linear"), target),
                  "frozen backbone + Δ(n) + FC", "frozen backbone + FC", "target-domain top-1")
    return got or NOT_MEASURED


def full_training_helps(table: str) -> Callable[[list[dict]], str]:
    def check(records: list[dict]) -> str:
        with_delta = cells(records, table, lambda m: m.get("stages") not in (0, [], None), _top1)
        plain = cells(records, table, lambda m: m.get("stages") in (0, []), _top1)
        got = compare(with_delta, plain, "with Δ-stages", "without", "test top-1")
        return got or NOT_MEASURED
    return check


def sequential_vs_paint(records: list[dict]) -> str:
    mean = lambda res: res.get("mean_top1")  # noqa: E731
    got = compare(cells(records, "sequential", method_is("delta", gate="delta"), mean),
                  cells(records, "sequential", method_is("paint"), mean),
                  "Δ (one patch per task)", "PAINT (carried forward)", "mean top-1")
    return got or NOT_MEASURED


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
    ("Zero drop on the base task (Tables 2, 10)", zero_base_drop),
    ("More Δ-modules help: Δ(4) ≥ Δ(2) ≥ Δ(1) (Table 2)", depth_order),
    ("Input-conditioned skips beat learnable, fixed and random skips (Table 8)",
     conditioned_vs_static),
    ("BatchNorm helps wherever skips are added (Table 8)", bn_helps),
    ("Δ-Networks beat the adapted baselines on most tasks (Table 1)", delta_vs_adapted),
    ("Δ beats PAINT in sequential patching (Table 4)", sequential_vs_paint),
    ("Earlier tasks are unaffected by later patches (sequential, §3.1)", no_forgetting),
    ("Δ helps zero-shot domain adaptation (Table 6)", zsda_helps),
    ("Δ helps training from scratch (Tables 12–13)", full_training_helps("scratch")),
    ("Δ on top of fine-tuning helps transfer learning (Table 5)", full_training_helps("transfer")),
]


def claims_section(records: list[dict]) -> str:
    lines = ["## The paper's claims, checked against these runs only\n"]
    for claim, check in CLAIMS:
        lines.append(f"- *{claim}*: {check(records)}")
    return "\n".join(lines) + "\n"
