"""Where the time of one training step goes: torch.profiler table (top ops by self CPU time)
of one Δ(1) step with cached features, one without, and one full fine-tune step.

    python benchmarks/profile_step.py --backbone cifar_resnet56 --size 32 --batch-size 128
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import header, set_threads, synthetic
from bench_train import full_finetune
from torch.profiler import ProfilerActivity, profile

from deltapatch import PatchedModel, load_backbone
from deltapatch.cache import cached_training


def step(forward, params, x, y) -> None:
    loss = F.cross_entropy(forward(x), y)
    for p in params:
        p.grad = None
    loss.backward()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="cifar_resnet56")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rows", type=int, default=12, help="ops per table")
    p.add_argument("--only", nargs="+", default=["cache", "nocache", "finetune"])
    a = p.parse_args()
    set_threads(a.threads)
    header(f"profile of one training step: {a.backbone} @ {a.size}px, batch {a.batch_size}")
    torch.manual_seed(0)
    backbone = load_backbone(a.backbone, "cifar10" if a.backbone.startswith("cifar_") else None)
    model = PatchedModel(backbone)
    data = synthetic(a.batch_size, a.size)
    model.add_patch("p", 10, stages=1)
    pre = model.preprocess.with_size(a.size)
    cached, fwd, cpre = cached_training(model, "p", data, pre)
    ft = full_finetune(backbone, 10).train()
    model.train()
    x, y = pre.normalize(data.train.images), data.train.labels
    runs = {
        "cache": (lambda t: fwd(cpre.normalize(t)), list(model.get_patch("p").parameters()),
                  cached.train.images, y),
        "nocache": (lambda t: model(t, patch="p"), list(model.get_patch("p").parameters()), x, y),
        "finetune": (ft, list(ft.parameters()), x, y),
    }
    for name in a.only:
        f, ps, xx, yy = runs[name]
        step(f, ps, xx, yy)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(f, ps, xx, yy)
        total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3
        print(f"\n## {name}: one step (forward + backward), self CPU total {total:.0f} ms")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))


if __name__ == "__main__":
    main()
