"""Markdown tables shaped like the paper's (rows: backbone × method, columns: tasks), each cell
mean ± std over seeds in percent, each table with its command, seeds, n, hardware and wall time.

A table is a :class:`TableSpec` in ``TABLES``: which runs it takes and which number of a run it
shows; adding a table is one entry, not another branch.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from .tuning import edge

UNSTAMPED = "not recorded in the run record (see the Note in the header)"
Value = Callable[[dict], float | None]


@dataclass(frozen=True)
class TableSpec:
    file: str
    title: str
    table: str  # the job's table tag it takes
    value: Value
    what: str  # the metric in words, printed under the title


def _r(key: str) -> Value:
    return lambda res: res.get(key)


def _target(res: dict) -> float | None:
    return res.get("top1_by_test", {}).get("target")


TABLES: list[TableSpec] = [
    TableSpec("table2_single_hm.md", "Single-task patching (paper Table 2)", "single",
              _r("harmonic_mean"), "harmonic mean of base and patch top-1"),
    TableSpec("table10_single_top1.md", "Single-task patching, patch-task top-1 (paper Table 10)",
              "single", _r("patch_top1"), "patch-task top-1"),
    TableSpec("table10_single_base.md", "Single-task patching, base-task top-1 (paper Table 10)",
              "single", _r("base_top1"), "base-task top-1 after patching"),
    TableSpec("table1_adapted_hm.md", "Adapted baselines (paper Table 1)", "adapted",
              _r("harmonic_mean"), "harmonic mean of base and patch top-1"),
    TableSpec("table1_adapted_locality.md", "Adapted baselines: locality (PNC)", "adapted",
              _r("locality_merged"), "share of base test predictions unchanged when the "
              "method's module is merged into one network (PNC's own locality; methods that "
              "route by task id leave the base untouched, see base top-1)"),
    TableSpec("init_hm.md", "How a patch starts: init=random vs init=base (docs/INIT.md)",
              "init", _r("harmonic_mean"), "harmonic mean of base and patch top-1"),
    TableSpec("table8_ablation_top1.md", "Skip-connection and BN ablation (paper Table 8)",
              "ablation", _r("patch_top1"), "patch-task top-1"),
    TableSpec("table8_ablation_hm.md", "Skip-connection and BN ablation, harmonic mean",
              "ablation", _r("harmonic_mean"), "harmonic mean of base and patch top-1"),
    TableSpec("table3_joint_hm.md", "Joint patching (paper Table 3)", "joint",
              _r("joint_harmonic_mean"),
              "harmonic mean over the base task and every task of the group (joint head)"),
    TableSpec("table4_sequential_mean.md", "Sequential patching (paper Table 4)", "sequential",
              _r("mean_top1"), "mean top-1 over all tasks incl. base, after the last task"),
    TableSpec("table6_zsda_target.md", "Zero-shot domain adaptation (paper Table 6)", "zsda",
              _target, "top-1 on the target domain (never trained on)"),
    TableSpec("table6_zsda_source.md", "Zero-shot domain adaptation, source top-1", "zsda",
              _r("patch_top1"), "top-1 on the source domain's test split"),
    TableSpec("table13_scratch_top1.md", "Training from scratch ± Δ (paper Tables 12–13)",
              "scratch", _r("patch_top1"), "top-1, all weights trained from random init"),
    TableSpec("table5_transfer_top1.md", "Transfer learning: fine-tuning ± Δ (paper Table 5)",
              "transfer", _r("patch_top1"), "top-1, all weights fine-tuned from pretrained"),
]


def mean_std(values: list[float]) -> str:
    """``mean ± std (n)`` in percent; std is the sample std (0 for one seed)."""
    pct = [100 * v for v in values]
    sd = statistics.stdev(pct) if len(pct) > 1 else 0.0
    return f"{statistics.fmean(pct):.2f} ± {sd:.2f} (n={len(pct)})"


def _params(values: list) -> str:
    vals = sorted({v for v in values if v is not None})
    if not vals:
        return "–"
    fmt = lambda v: f"{v / 1e6:.3f}M" if v >= 1e5 else f"{v / 1e3:.1f}k"
    return fmt(vals[0]) if len(vals) == 1 else f"{fmt(vals[0])}–{fmt(vals[-1])}"


def pivot(records: list[dict], spec: TableSpec) -> tuple[list[str], list[list[str]]] | None:
    """Rows backbone × variant (in suite order), columns tasks; None if the table has no run."""
    mine = [r for r in records if r.get("table") == spec.table]
    if not mine:
        return None
    tasks = list(dict.fromkeys(r["task"] for r in mine))
    rows = list(dict.fromkeys((r["backbone"], r["variant"]) for r in mine))
    header = ["backbone", "method", "# trainable"] + tasks
    body = []
    for bb, var in rows:
        cells = [r for r in mine if (r["backbone"], r["variant"]) == (bb, var)]
        label = cells[0]["label"]
        params = _params([r.get("result", {}).get("trainable_params") for r in cells])
        row = [bb, label, params]
        for t in tasks:
            here = [r for r in cells if r["task"] == t]
            vals = [spec.value(r["result"]) for r in here if r.get("status") == "ok"]
            vals = [v for v in vals if v is not None]
            if vals:
                row.append(mean_std(vals))
            else:
                row.append(_status_cell(here))
        body.append(row)
    return header, body


def _status_cell(records: list[dict]) -> str:
    states = sorted({r.get("status", "?") for r in records})
    if "ok" in states:
        return "n/a"  # ran, but this number does not apply to the method
    return "not run (" + ", ".join(states) + ")" if states else "–"


def markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def caption(records: list[dict], spec: TableSpec, meta: dict) -> str:
    mine = [r for r in records if r.get("table") == spec.table and r.get("status") == "ok"]
    seeds = sorted({r["seed"] for r in mine})
    n = sorted({_n(r["result"]) for r in mine})
    wall = sum(r["result"].get("wall_seconds", 0) or 0 for r in mine)
    n_base = sorted({r["result"]["n_base_test"] for r in mine if r["result"].get("n_base_test")})
    machines = sorted({r.get("hardware") or UNSTAMPED for r in mine})
    return (f"Cells: {spec.what}, % mean ± sample std over seeds {seeds} (n = seeds per cell). "
            f"Test images per run: {', '.join(map(str, n)) or '–'}"
            + (f"; base-task test images: {', '.join(map(str, n_base))}" if n_base else "")
            + ".  \n"
            f"Command: `{meta['command']}` (suite `{meta['suite']}`).  \n"
            f"Hardware: {'; '.join(machines) or meta['hardware']}; data protocol "
            f"{', '.join(sorted({str(r.get('data_protocol', 1)) for r in mine})) or '–'}.  \n"
            f"Wall time of these {len(mine)} runs: {wall / 60:.1f} min.")


def _n(result: dict) -> str:
    n = result.get("n_test")
    if isinstance(n, dict):
        return "+".join(f"{k}:{v}" for k, v in n.items())
    extra = result.get("n_by_test")
    if extra:
        return f"{n} (" + ", ".join(f"{k}: {v}" for k, v in extra.items()) + ")"
    return str(n)


def table_sections(records: list[dict], meta: dict) -> dict[str, str]:
    """``{file name: Markdown}`` for every table that has at least one run."""
    out = {}
    for spec in TABLES:
        got = pivot(records, spec)
        if got is None:
            continue
        out[spec.file] = (f"### {spec.title}\n\n{caption(records, spec, meta)}\n\n"
                          f"{markdown(*got)}\n")
    paint = paint_alpha_section(records, meta)
    if paint:
        out["table11_paint_alpha.md"] = paint
    seq = sequential_detail(records)
    if seq:
        out["table4_sequential_detail.md"] = seq
    lr = lr_section(records)
    if lr:
        out["lr_choice.md"] = lr
    return out


def lr_section(records: list[dict]) -> str | None:
    """Every learning-rate search: the grid's validation scores and the rate kept, per cell."""
    rows, seen, edges = [], set(), 0
    for r in records:
        found = r.get("result", {}).get("lr_search", {})
        if r.get("status") != "ok" or "val_score" not in found or r["key"] in seen:
            continue
        seen.add(r["key"])
        scores = " · ".join(f"{lr}: {100 * v:.1f}" for lr, v in found["val_score"].items())
        edge = grid_edge(found["chosen"], [float(lr) for lr in found["val_score"]])
        edges += bool(edge)
        rows.append([r["table"], r["backbone"], r["task"], r["label"],
                     f"{found['chosen']:g}" + (f" ({edge})" if edge else ""), scores])
    if not rows:
        return None
    return ("### Learning rate per cell (one grid for every method)\n\n"
            "Each cell trained once per rate at seed 0 and kept the rate with the best "
            "validation score (best-epoch validation top-1; PAINT: the validation harmonic mean "
            "that also picks α); later seeds, and sequential patching's tasks, use that rate. "
            f"Scores in %. {edges} of {len(rows)} cells kept the lowest or highest rate of the "
            "grid: a rate beyond it was not tried and might score better there.\n\n"
            + markdown(["table", "backbone", "task", "method", "lr chosen",
                        "validation score per lr"], rows) + "\n")


def grid_edge(chosen: float, grid: list[float]) -> str:
    """Which end of the rates tried the chosen rate sits at ('' inside them): a search that
    stops at an edge may not have found the method's best rate, which a reader comparing methods
    must know. Protocol 4's added rates count as tried."""
    where = edge(grid, chosen)
    return f"{where} in grid" if where else ""


def _alpha_table(result: dict) -> dict | None:
    """PAINT's per-α accuracies: the ``alpha_table`` rows its method reports, by α."""
    rows = result.get("alpha_table")
    if not rows:
        return None
    return {str(row["alpha"]): {a: b for a, b in row.items() if a != "alpha"} for row in rows}


def paint_alpha_section(records: list[dict], meta: dict) -> str | None:
    """Table 11: top-1 per interpolation coefficient α, one block per PAINT run (seed 0)."""
    blocks = []
    for r in records:
        if r.get("status") != "ok" or r.get("seed") != 0:
            continue
        table = _alpha_table(r["result"])
        if not table:
            continue
        rows = []
        cols: list[str] = []
        for alpha, accs in table.items():
            cols = cols or list(accs)
            rows.append([str(alpha)] + [f"{100 * accs[c]:.2f}" if isinstance(accs.get(c), float)
                                        else str(accs.get(c)) for c in cols])
        chosen = {"alpha": r["result"].get("alpha")}
        blocks.append(f"#### {r['scenario']} · {r['backbone']} · {r['task']} · {r['label']} "
                      f"(seed 0; {chosen})\n\n" + markdown(["α"] + cols, rows))
    if not blocks:
        return None
    return ("### PAINT: accuracy per interpolation coefficient α (paper Table 11)\n\n"
            f"Command: `{meta['command']}`. Values in %: `*_val` on the validation "
            "splits α is chosen on, `*_test` on the test splits.\n\n" + "\n\n".join(blocks) + "\n")


def sequential_detail(records: list[dict]) -> str | None:
    """Final per-task top-1 and the drop since each task was trained (0 means no forgetting)."""
    rows = []
    for r in records:
        if r.get("scenario") != "sequential" or r.get("status") != "ok":
            continue
        res = r["result"]
        final = ", ".join(f"{k} {100 * v:.2f}" for k, v in res["final_top1"].items())
        drop = ", ".join(f"{k} {100 * v:+.2f}" for k, v in res.get("drop_by_task", {}).items())
        rows.append([r["backbone"], r["task"], r["label"], str(r["seed"]), final, drop or "–"])
    if not rows:
        return None
    return ("### Sequential patching: final top-1 per task and drop since trained\n\n" +
            markdown(["backbone", "order", "method", "seed", "final top-1 (%)",
                      "drop since trained (points)"], rows) + "\n")


def not_run_section(records: list[dict], suite_not_implemented: list[dict],
                    left_out: list[dict] = ()) -> str:
    """Runs not started, skipped or failed; scenarios the suite leaves out (``skip``, with its
    reason) and kinds it does not implement."""
    lines = ["### Not run / not implemented\n"]
    for sc in left_out:
        what = ", ".join(sc.get("tasks", []) + ["→".join(o) for o in sc.get("orders", [])]
                         + ["+".join(g) for g in sc.get("groups", [])])
        lines.append(f"- scenario **{sc.get('table', sc['kind'])}** ({sc['kind']}; "
                     f"{', '.join(sc.get('backbones', []))}; {what}): left out of this run — "
                     f"{sc['skip'] if isinstance(sc['skip'], str) else 'skip = true'}")
    pending: dict[str, int] = {}
    for r in records:
        if r.get("status") == "pending":
            pending[r["table"]] = pending.get(r["table"], 0) + 1
    if pending:
        lines.append(f"- {sum(pending.values())} runs not started yet (rerun the command to "
                     "continue): " + ", ".join(f"{t} {n}" for t, n in pending.items()))
    for r in records:
        if r.get("status") in ("skipped", "failed"):
            lines.append(f"- `{r['key']}`: {r['status']}"
                         + (f" — {r['reason']}" if r.get("reason") else ""))
    for item in suite_not_implemented:
        lines.append(f"- scenario **{item.get('kind', '?')}**: not in this suite — "
                     f"{item.get('why', '')}")
    return "\n".join(lines) + "\n" if len(lines) > 1 else ""
