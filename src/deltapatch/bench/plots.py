"""PNG plots: accuracy vs trainable parameters per method, and mean Λ per stage and data set (the
paper's Figs 3–6: for each Δ-stage the k×k matrix of λ_{i→j}, averaged over test images).

matplotlib is an optional dependency (``pip install deltapatch[plots]``); without it plots are
skipped with a note, tables still get written.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ..skips import skip_index


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display), imported when a
    figure is drawn: matplotlib is an extra."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def accuracy_vs_params(records: list[dict], out: Path, table: str = "single",
                       metric: str = "harmonic_mean") -> list[Path]:
    """One PNG per backbone: each method's mean ``metric`` over tasks and seeds against its
    trainable parameters (log scale), one marker per task, so cost and gain read together."""
    plt = pyplot()
    ok = [r for r in records if r.get("table") == table and r.get("status") == "ok"
          and r["result"].get(metric) is not None]
    files = []
    for bb in dict.fromkeys(r["backbone"] for r in ok):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        mine = [r for r in ok if r["backbone"] == bb]
        markers = "osD^v<>ph*"
        tasks = list(dict.fromkeys(r["task"] for r in mine))
        for i, var in enumerate(dict.fromkeys(r["variant"] for r in mine)):
            color = f"C{i % 10}"
            for j, t in enumerate(tasks):
                cell = [r for r in mine if r["variant"] == var and r["task"] == t]
                if not cell:
                    continue
                x = statistics.fmean(r["result"]["trainable_params"] for r in cell)
                y = statistics.fmean(100 * r["result"][metric] for r in cell)
                ax.scatter([x], [y], color=color, marker=markers[j % len(markers)],
                           label=cell[0]["label"] if j == 0 else None)
        for j, t in enumerate(tasks):
            ax.scatter([], [], color="gray", marker=markers[j % len(markers)], label=t)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
        ax.set_title(f"{bb}: {metric.replace('_', ' ')} vs trainable parameters "
                     f"(mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        file = out / f"acc_vs_params_{_safe(table)}_{_safe(bb)}.png"
        fig.savefig(file, dpi=110)
        plt.close(fig)
        files.append(file)
    return files


def lambda_matrix(values: list[float]) -> list[list[float | None]]:
    """Λ (length k(k+1)/2) as a (k+1)×(k+1) matrix M[i][j] = λ_{i→j} (None below j ≤ i)."""
    n, k = len(values), 0
    while k * (k + 1) // 2 < n:
        k += 1
    return [[values[skip_index(i, j)] if i < j else None for j in range(k + 1)]
            for i in range(k + 1)]


def lambda_plots(records: list[dict], out: Path) -> list[Path]:
    """One PNG per (backbone, task, method) with recorded Λ: a heat map per Δ-stage of mean
    λ_{i→j} over test images and seeds."""
    plt = pyplot()
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        lam = r.get("result", {}).get("lambda_mean") if r.get("status") == "ok" else None
        if lam:
            groups.setdefault((r["table"], r["backbone"], r["task"], r["variant"]), []).append(r)
    files = []
    for (table, bb, task, var), runs in groups.items():
        stages = sorted(runs[0]["result"]["lambda_mean"], key=int)
        fig, axes = plt.subplots(1, len(stages), figsize=(3.2 * len(stages), 3.2), squeeze=False)
        for ax, s in zip(axes[0], stages, strict=True):
            per_seed = [r["result"]["lambda_mean"][s] for r in runs]
            mean = [statistics.fmean(v) for v in zip(*per_seed, strict=True)]
            m = lambda_matrix(mean)
            grid = [[float("nan") if v is None else v for v in row] for row in m]
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
            for i, row in enumerate(m):
                for j, v in enumerate(row):
                    if v is not None:
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                                color="white" if v < 0.5 else "black")
            ax.set_title(f"stage index {s} (0-based)", fontsize=9)
            ax.set_xlabel("to h_j")
            ax.set_ylabel("from h_i")
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
        fig.suptitle(f"mean Λ: {bb} · {task} · {runs[0]['label']} ({len(runs)} seed(s))",
                     fontsize=9)
        file = out / f"lambda_{_safe(table)}_{_safe(bb)}_{_safe(task)}_{_safe(var)}.png"
        fig.savefig(file, dpi=110)
        plt.close(fig)
        files.append(file)
    return files


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
