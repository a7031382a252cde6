"""Thread count: one training step (forward + backward) of a full fine-tune and of a cached
Δ(1) patch, with ``torch.set_num_threads(t)`` for each t, interleaved in one process. On a
machine whose cores are busy with other work, OpenMP threads wait on each other at every op.

    python benchmarks/bench_threads.py --threads 1 2
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import header, interleaved, med, synthetic
from bench_train import full_finetune

from deltapatch import PatchedModel, load_backbone
from deltapatch.cache import cached_training


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="cifar_resnet56")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    header(f"threads: one step, {a.backbone} @ {a.size}px, batch {a.batch_size}")
    torch.manual_seed(0)
    backbone = load_backbone(a.backbone)
    model = PatchedModel(backbone)
    model.add_patch("p", 10, stages=1)
    model.train()
    data = synthetic(a.batch_size, a.size)
    pre = model.preprocess.with_size(a.size)
    cached, fwd, unpack = cached_training(model, "p", data, pre)
    parts, y = unpack.normalize(cached.train.images), data.train.labels
    ft, x = full_finetune(backbone, 10).train(), pre.normalize(data.train.images)

    def step(t: int, f, inp) -> None:
        torch.set_num_threads(t)
        F.cross_entropy(f(inp), y).backward()

    variants = {}
    for t in a.threads:
        variants[f"finetune t={t}"] = lambda t=t: step(t, ft, x)
        variants[f"delta1_cache t={t}"] = lambda t=t: step(t, fwd, parts)
    times = interleaved(variants, a.rounds)
    for k, v in times.items():
        print(f"{k:<20} median {med(v) * 1e3:8.0f} ms   rounds: "
              f"{' '.join(f'{s * 1e3:.0f}' for s in v)}")


if __name__ == "__main__":
    main()
