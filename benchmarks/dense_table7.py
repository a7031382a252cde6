"""Table 7 in kind: detection and segmentation heads on a frozen backbone, heads + Δ(all), and
heads + full fine-tuning, on Penn-Fudan pedestrians (../shared/data/pennfudan.npz).

Resumable: each (backbone, task, variant, seed) writes runs/<...>/seed<S>.json once it finishes
and is skipped when that record exists; the report (``--report``) reads only those records.

    python benchmarks/dense_table7.py --out /work/runs/dense --seeds 0          # run (resumes)
    python benchmarks/dense_table7.py --out /work/runs/dense --report docs/results/dense.md
    python benchmarks/dense_table7.py --out /work/runs/dense --figure docs/results/dense.png
    python benchmarks/dense_table7.py --out /work/runs/dense --publish docs/results/dense
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import copy_records

from deltapatch.dense.run import run_dense
from deltapatch.hardware import describe
from deltapatch.run import RunSpec
from deltapatch.train import TrainConfig

BACKBONES = {  # name: (weights, input size, stages for Δ(all))
    "efficientnet_lite0": ("imagenet", 320, 5),
    "cifar_resnet20": ("cifar10", 128, 3),
}
VARIANTS = {"heads": ("linear", 0), "delta_all": ("delta", None), "finetune": ("finetune", 0)}
TASKS = ("detection", "segmentation")
EPOCHS, LR, BATCH = 6, 1e-3, 4


def spec(backbone: str, task: str, variant: str, seed: int) -> RunSpec:
    weights, size, all_stages = BACKBONES[backbone]
    method, stages = VARIANTS[variant]
    return RunSpec(backbone=backbone, weights=weights, data="pennfudan", task=task,
                   method=method, stages=all_stages if stages is None else stages,
                   init="base", image_size=size, seed=seed,
                   train=TrainConfig(epochs=EPOCHS, lr=LR, batch_size=BATCH, seed=seed,
                                     progress=False))


def record_path(out: Path, backbone: str, task: str, variant: str, seed: int) -> Path:
    return out / "runs" / backbone / task / variant / f"seed{seed}.json"


def run_all(out: Path, seeds: list[int], backbones: list[str]) -> None:
    for seed in seeds:
        for backbone in backbones:
            for task in TASKS:
                for variant in VARIANTS:
                    rec = record_path(out, backbone, task, variant, seed)
                    if rec.exists():
                        continue
                    folder = out / "patches" / backbone / task / variant / f"seed{seed}"
                    print(f"{time.strftime('%H:%M:%S')} {backbone} {task} {variant} seed {seed}",
                          flush=True)
                    result = run_dense(spec(backbone, task, variant, seed), folder)
                    result.update(finished=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                                  hardware=describe())
                    rec.parent.mkdir(parents=True, exist_ok=True)
                    tmp = rec.with_suffix(".tmp")
                    tmp.write_text(json.dumps(result, indent=1) + "\n")
                    os.replace(tmp, rec)


def publish(out: Path, dest: Path) -> int:
    """Copy the finished records (not the patch folders) to ``dest``, where ``--out dest
    --report`` reads them: what gets committed."""
    return copy_records(out, dest)


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.mean(values)
    sd = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{mean:.3f}{sd} (n={len(values)})"


def report(out: Path) -> str:
    rows = ["| backbone | variant | box mAP@0.5 | box mAP@[.5:.95] | person IoU | mIoU | "
            "trainable params (det / seg) | Δ+head bytes (det) | base unchanged | wall s "
            "(det / seg) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for backbone in BACKBONES:
        for variant in VARIANTS:
            recs = {t: [json.loads(f.read_text()) for f in sorted(
                (out / "runs" / backbone / t / variant).glob("seed*.json"))] for t in TASKS}
            det, seg = recs["detection"], recs["segmentation"]
            same = all(r["base_unchanged"] for r in det + seg) if det + seg else None
            rows.append("| " + " | ".join([
                backbone, variant, _cell([r["box_map50"] for r in det]),
                _cell([r["box_map"] for r in det]), _cell([r["iou"][1] for r in seg]),
                _cell([r["miou"] for r in seg]),
                f"{det[0]['trainable_params'] if det else '–'} / "
                f"{seg[0]['trainable_params'] if seg else '–'}",
                f"{det[0]['patch_bytes'] if det else '–'} (head {det[0]['head_bytes']})"
                if det else "–",
                "–" if same is None else ("yes" if same else "NO"),
                f"{_mean_wall(det)} / {_mean_wall(seg)}"]) + " |")
    return "\n".join(rows) + "\n\n" + run_times(out) + "\n"


def run_times(out: Path) -> str:
    """Run time per backbone and seed from the records alone: what docs quote, re-derivable
    (records written before the ``finished`` stamp give no end time)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for f in sorted((out / "runs").glob("*/*/*/seed*.json")):
        r = json.loads(f.read_text())
        groups.setdefault((f.parts[-4], r["seed"]), []).append(r)
    parts = []
    for (backbone, seed), recs in sorted(groups.items()):
        ends = sorted(r["finished"] for r in recs if "finished" in r)
        last = f", last finished {ends[-1]} UTC" if len(ends) == len(recs) else ""
        parts.append(f"{backbone} seed {seed}: {len(recs)} runs, "
                     f"{sum(r['wall_seconds'] for r in recs) / 60:.0f} min{last}")
    return "Run time (sum of the records' wall_seconds): " + "; ".join(parts) + "."


def _mean_wall(recs: list[dict]) -> str:
    return f"{statistics.mean(r['wall_seconds'] for r in recs):.0f}" if recs else "–"


def figure(out: Path, path: Path, backbone: str = "efficientnet_lite0", seed: int = 0,
           photos: int = 3) -> Path:
    """Test photos with the boxes and masks of the Δ(all) and heads-only patches drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deltapatch.dense import load_dense, load_dense_data
    from deltapatch.dense.draw import predict_one
    from deltapatch.runinputs import build_model
    weights = BACKBONES[backbone][0]
    test = load_dense_data("pennfudan").test[:photos]
    cells = [(t, v) for t in TASKS for v in ("heads", "delta_all")]
    fig, axes = plt.subplots(photos, len(cells), figsize=(3.2 * len(cells), 3 * photos))
    for col, (task, variant) in enumerate(cells):
        model = build_model(backbone, weights)
        folder = out / "patches" / backbone / task / variant / f"seed{seed}"
        dense = load_dense(model, folder)
        for row, sample in enumerate(test):
            _, drawn = predict_one(dense, sample.image)
            ax = axes[row][col]
            ax.imshow(drawn.permute(1, 2, 0).numpy())
            ax.axis("off")
            if row == 0:
                ax.set_title(f"{task}, {variant}", fontsize=9)
    fig.suptitle(f"pennfudan test photos, {backbone} ({weights}), seed {seed}; boxes with "
                 "score ≥ 0.5", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--backbones", default=",".join(BACKBONES),
                   help=f"comma-separated, of {', '.join(BACKBONES)} (default: all)")
    p.add_argument("--report", type=Path, default=None,
                   help="write the Markdown table of the finished runs here; runs nothing")
    p.add_argument("--figure", type=Path, default=None,
                   help="draw Lite0's seed-0 predictions on test photos into this PNG; runs nothing")
    p.add_argument("--publish", type=Path, default=None,
                   help="copy the finished run records here (e.g. docs/results/dense); runs nothing")
    args = p.parse_args(argv)
    if args.publish is not None:
        print(f"{publish(args.out, args.publish)} records copied to {args.publish / 'runs'}")
        return 0
    if args.figure is not None:
        print(figure(args.out, args.figure))
        return 0
    if args.report is not None:
        args.report.write_text(report(args.out))
        print(args.report.read_text())
        return 0
    torch.set_num_threads(1)
    backbones = args.backbones.split(",")
    unknown = set(backbones) - set(BACKBONES)
    if unknown:
        p.error(f"unknown backbone(s) {', '.join(sorted(unknown))}")
    run_all(args.out, [int(s) for s in args.seeds.split(",")], backbones)
    return 0


if __name__ == "__main__":
    sys.exit(main())
