"""Figure 1: a Δ(1) training epoch, with and without cached trunk features, / a full fine-tune
epoch (all backbone weights + a new head, same batch size, on a copy of the backbone).

All three run ``deltapatch.train.fit`` for one epoch on the same synthetic images, no
augmentation, AdamW; the full fine-tune keeps its BatchNorms in train mode, as fine-tuning does.
The cache is built once before timing (its one-off cost is reported next to an epoch); the
variants alternate within each round and ratios are medians of per-round ratios.

    python benchmarks/bench_train.py            # ~3-4 min on 2 shared cores, one thread
    python benchmarks/bench_train.py --quick    # ~1 min
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from _common import header, interleaved, med, ratio, set_threads, synthetic
from torch import nn

from deltapatch import PatchedModel, load_backbone
from deltapatch.cache import cached_training
from deltapatch.train import TrainConfig, fit, fit_patch

CASES = {"cifar_resnet56": 32, "resnet18": 64}


def full_finetune(backbone: nn.Module, classes: int) -> nn.Module:
    """A trainable copy of the backbone with a new head (the baseline a patch competes with)."""
    model = copy.deepcopy(backbone).requires_grad_(True)
    spec_head = PatchedModel(backbone).spec.head
    old = model.get_submodule(spec_head)
    parent, _, leaf = spec_head.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf,
            nn.Linear(old.in_features, classes))
    return model


def run_case(name: str, size: int, n: int, batch: int, rounds: int, cache_dtype: str) -> None:
    torch.manual_seed(0)
    backbone = load_backbone(name, "cifar10" if name.startswith("cifar_") else None)
    data = synthetic(n, size)
    model = PatchedModel(backbone)
    model.preprocess = model.preprocess.with_size(size)
    model.add_patch("p", data.num_classes, stages=1)
    pre = model.get_patch("p").config.preprocess.with_size(size)
    ft = full_finetune(backbone, data.num_classes)
    cfg = TrainConfig(epochs=1, batch_size=batch, augment=False, progress=False,
                      cache_features="off", warmup_epochs=0)
    t0 = time.perf_counter()
    cached, fwd, cpre = cached_training(model, "p", data, pre, cache_dtype)
    build = time.perf_counter() - t0
    variants = {
        "full_finetune": lambda: fit(ft, ft, data, pre, cfg),
        "delta1_nocache": lambda: fit_patch(model, "p", data, cfg),
        "delta1_cache": lambda: fit(fwd, model.get_patch("p"), cached, cpre, cfg,
                                    set_mode=model.train),
    }
    times = interleaved(variants, rounds)
    ft_t = med(times["full_finetune"])
    print(f"\n## {name} @ {size}px: {n} images/epoch, batch {batch}, {rounds} rounds "
          f"(+1 warm-up), cache {cache_dtype}")
    print(f"{'variant':<16} {'median s/epoch':>15} {'all rounds (s)'}")
    for k, ts in times.items():
        print(f"{k:<16} {med(ts):>15.3f} {' '.join(f'{t:.2f}' for t in ts)}")
    print(f"cache build (once, train+val): {build:.3f} s = {build / ft_t:.3f} full-FT epochs")
    r_c, r_n = ratio(times, "delta1_cache", "full_finetune"), ratio(times, "delta1_nocache",
                                                                     "full_finetune")
    print(f"RATIO delta1_cache / full_finetune   = {r_c:.3f}  (goal <= 0.10)")
    print(f"RATIO delta1_nocache / full_finetune = {r_n:.3f}  (goal <= 0.35)")
    for e in (1, 10):
        amort = (e * med(times["delta1_cache"]) + build) / (e * ft_t)
        print(f"  with the cache build amortised over {e} epoch(s): {amort:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer images and rounds (~1 min)")
    p.add_argument("--backbones", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--n", type=int, default=None, help="images per epoch (default 512; quick 256)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=None, help="default 3 (quick: 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    p.add_argument("--cache-dtype", default="float32", choices=["float32", "float16"])
    a = p.parse_args()
    set_threads(a.threads)
    header("Δ(1) training epoch / full fine-tune epoch")
    for name in a.backbones:
        run_case(name, CASES[name], a.n or (256 if a.quick else 512), a.batch_size,
                 a.rounds or (2 if a.quick else 3), a.cache_dtype)


if __name__ == "__main__":
    main()
