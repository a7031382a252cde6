"""Accuracy effect of the feature cache: the same `deltapatch train` run (real data, seeded)
without the cache, with a float32 cache and with a float16 cache. Prints test top-1 and train
seconds of each; float32 should match no-cache up to float rounding, float16 shows what halving
the cache's memory costs.

    python benchmarks/bench_cache_accuracy.py      # GTSRB, CIFAR-ResNet-56, ~5 min
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

import torch
from _common import header


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="gtsrb")
    p.add_argument("--backbone", default="cifar_resnet56")
    p.add_argument("--weights", default="cifar10")
    p.add_argument("--max-train", type=int, default=3000)
    p.add_argument("--max-test", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)  # the runs below get --threads too; this makes the header true
    header("accuracy with and without the feature cache")
    runs = {"no cache": ["--cache-features", "off"],
            "cache float32": ["--cache-features", "on", "--cache-dtype", "float32"],
            "cache float16": ["--cache-features", "on", "--cache-dtype", "float16"]}
    print(f"{'variant':<14} {'test top1':>10} {'val top1':>9} {'train s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in runs.items():
            cmd = [sys.executable, "-m", "deltapatch", "--threads", str(a.threads), "train",
                   "--backbone", a.backbone, "--weights", a.weights, "--data", a.data,
                   "--max-train", str(a.max_train), "--max-test", str(a.max_test),
                   "--epochs", str(a.epochs), "--seed", str(a.seed), "--no-augment",
                   "--no-progress", "--out", f"{tmp}/{name.replace(' ', '_')}", *extra]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"{name:<14} {r['patch_top1']:>10.4f} {r['val_top1']:>9.4f} "
                  f"{r['train_seconds']:>8.1f}", flush=True)
    print(f"(n_test={r['n_test']}, seed={a.seed}, Δ(1), {a.epochs} epochs, "
          f"{a.max_train} train images before the 10% validation split)")


if __name__ == "__main__":
    main()
