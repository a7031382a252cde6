"""Where the Δ-stage's BatchNorm should sit (DESIGN.md leaves it to measurement; paper Table 8).

Trains Δ(n) patches on CIFAR ResNet-20 (real CIFAR-10 weights) for each norm position and seed,
and writes a Markdown table of test top-1 (mean ± std over seeds). Resumable: finished runs are
read back from the JSONL file and not redone.

    python benchmarks/norm_position.py --out docs/norm_runs.jsonl --md docs/NORM.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import deltapatch as dp
from deltapatch.data import load_data
from deltapatch.hardware import describe
from deltapatch.train import TrainConfig, evaluate, fit_patch

NORMS = ("output", "skip", "none")


def run_one(task: str, stages: int, norm: str, seed: int, epochs: int, max_train: int | None) -> dict:
    model = dp.PatchedModel(dp.load_backbone("cifar_resnet20", weights="cifar10"))
    data = load_data(task, 32, seed=seed, max_train=max_train)
    torch.manual_seed(seed)
    model.add_patch("p", data.num_classes, stages=stages, norm=norm)
    t0 = time.perf_counter()
    fit_patch(model, "p", data, TrainConfig(epochs=epochs, lr=1e-2, batch_size=64, seed=seed,
                                            progress=False))
    model.eval()
    return {"task": task, "stages": stages, "norm": norm, "seed": seed, "epochs": epochs,
            "n_train": len(data.train), "n_test": len(data.test),
            "test_top1": evaluate(lambda x: model(x, patch="p"), data.test, model.preprocess),
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="digits,usps")
    ap.add_argument("--stages", default="1,3")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--max-train", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=Path("docs/norm_runs.jsonl"))
    ap.add_argument("--md", type=Path, default=Path("docs/NORM.md"))
    args = ap.parse_args()
    done = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    key = lambda r: (r["task"], r["stages"], r["norm"], r["seed"])  # noqa: E731
    finished = {key(r) for r in done}
    for task in args.tasks.split(","):
        for stages in map(int, args.stages.split(",")):
            for seed in range(args.seeds):
                for norm in NORMS:
                    if (task, stages, norm, seed) in finished:
                        continue
                    row = run_one(task, stages, norm, seed, args.epochs, args.max_train)
                    print(json.dumps(row), flush=True)
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    done.append(row)
                    write_md(done, args)  # the table grows as runs finish
    write_md(done, args)


def write_md(rows: list[dict], args: argparse.Namespace) -> None:
    lines = ["# Where the Δ-stage BatchNorm sits", "",
             f"Command: `python benchmarks/norm_position.py --tasks {args.tasks} --stages "
             f"{args.stages} --seeds {args.seeds} --epochs {args.epochs} --max-train {args.max_train}`",
             f"Backbone: CIFAR ResNet-20, real CIFAR-10 weights; AdamW lr 1e-2, batch 64, crop "
             f"augmentation; seeds 0..{args.seeds - 1}, n = seeds per cell. Hardware: {describe()} "
             "(machine shared with other jobs during most runs).",
             "", "| task | Δ(n) | n_test | " + " | ".join(f"norm={n}" for n in NORMS) + " |",
             "|---|---|---|" + "---|" * len(NORMS)]
    groups = sorted({(r["task"], r["stages"]) for r in rows})
    for task, stages in groups:
        cells = []
        for norm in NORMS:
            accs = [r["test_top1"] for r in rows if (r["task"], r["stages"], r["norm"]) ==
                    (task, stages, norm)]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{statistics.mean(accs):.3f} ± {sd:.3f} (n={len(accs)})" if accs else "–")
        n_test = next(r["n_test"] for r in rows if r["task"] == task)
        lines.append(f"| {task} | {stages} | {n_test} | " + " | ".join(cells) + " |")
    args.md.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
