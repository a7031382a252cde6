"""Table 7 in kind: detection and segmentation heads on a frozen backbone, heads + Δ(all), and
heads + full fine-tuning, on Penn-Fudan pedestrians (../shared/data/pennfudan.npz).

Resumable: each (backbone, task, variant, seed) writes runs/<...>/seed<S>.json once it finishes
and is skipped when that record exists; the report (``--report``) reads only those records.

    python benchmarks/dense_table7.py --out /work/runs/dense --seeds 0          # run (resumes)
    python benchmarks/dense_table7.py --out /work/runs/dense --report docs/results/dense.md
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

from deltapatch.dense.run import run_dense
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


def run_all(out: Path, seeds: list[int]) -> None:
    for seed in seeds:
        for backbone in BACKBONES:
            for task in TASKS:
                for variant in VARIANTS:
                    rec = record_path(out, backbone, task, variant, seed)
                    if rec.exists():
                        continue
                    folder = out / "patches" / backbone / task / variant / f"seed{seed}"
                    print(f"{time.strftime('%H:%M:%S')} {backbone} {task} {variant} seed {seed}",
                          flush=True)
                    result = run_dense(spec(backbone, task, variant, seed), folder)
                    rec.parent.mkdir(parents=True, exist_ok=True)
                    tmp = rec.with_suffix(".tmp")
                    tmp.write_text(json.dumps(result, indent=1) + "\n")
                    os.replace(tmp, rec)


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
    return "\n".join(rows) + "\n"


def _mean_wall(recs: list[dict]) -> str:
    return f"{statistics.mean(r['wall_seconds'] for r in recs):.0f}" if recs else "–"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--report", type=Path, default=None,
                   help="write the Markdown table of the finished runs here; runs nothing")
    args = p.parse_args(argv)
    if args.report is not None:
        args.report.write_text(report(args.out))
        print(args.report.read_text())
        return 0
    torch.set_num_threads(1)
    run_all(args.out, [int(s) for s in args.seeds.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
