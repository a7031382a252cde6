"""Figure 5: peak memory of training a Δ(1) patch for one epoch, without and with the feature
cache (float32, float16, and float32 in a disk memmap). Each variant runs in its own
subprocess, which reports its peak RSS (``resource.getrusage(...).ru_maxrss``) and the RSS
just before training started (backbone, data and patch loaded), so the growth is what training
itself (and the cache) costs.

    python benchmarks/bench_memory.py --threads 1            # ~2 min
    python benchmarks/bench_memory.py --threads 1 --quick
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

VARIANTS = {"no cache": ("off", "float32", None), "cache fp32 (RAM)": ("on", "float32", None),
            "cache fp16 (RAM)": ("on", "float16", None),
            "cache fp32 (memmap)": ("on", "float32", 0)}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return kb / 1024


def child(variant: str, backbone: str, size: int, n: int, batch: int, threads: int | None) -> None:
    import torch
    from _common import synthetic

    import deltapatch.cache as cache
    from deltapatch import PatchedModel, load_backbone
    from deltapatch.train import TrainConfig, fit_patch

    if threads:
        torch.set_num_threads(threads)
    mode, dtype, ram = VARIANTS[variant]
    if ram is not None:  # force the disk memmap for this variant
        cache.default_ram_limit = lambda: ram
    torch.manual_seed(0)
    model = PatchedModel(load_backbone(backbone))
    data = synthetic(n, size)
    model.add_patch("p", 10, stages=1)
    model.get_patch("p").config.preprocess = model.preprocess.with_size(size)
    before = rss_mb()
    cfg = TrainConfig(epochs=1, batch_size=batch, augment=False, progress=False,
                      cache_features=mode, cache_dtype=dtype)
    fit_patch(model, "p", data, cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with torch.no_grad():
        parts = cache.frozen_parts(model, model.preprocess.normalize(data.train.images[:1]),
                                   model.first_patched_stage(["p"]))
    row = sum(h.numel() for h in parts) * (2 if dtype == "float16" else 4)
    cache_mb = (len(data.train) + len(data.val)) * row / 2**20 if mode == "on" else 0
    print(json.dumps({"before_mb": before, "peak_mb": peak, "cache_mb": cache_mb}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--backbone", default="cifar_resnet56")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--n", type=int, default=None, help="training images (default 2048/512)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    n = a.n or (512 if a.quick else 2048)
    if a.child:
        return child(a.child, a.backbone, a.size, n, a.batch_size, a.threads)
    from _common import header, set_threads

    set_threads(a.threads)
    header(f"peak memory of one Δ(1) training epoch: {a.backbone} @ {a.size}px, {n} images, "
           f"batch {a.batch_size}")
    print(f"{'variant':<22} {'RSS before MB':>14} {'peak RSS MB':>12} {'growth MB':>10} {'cache MB':>9}")
    for v in VARIANTS:
        cmd = [sys.executable, __file__, "--child", v, "--backbone", a.backbone, "--size",
               str(a.size), "--n", str(n), "--batch-size", str(a.batch_size)]
        if a.threads:
            cmd += ["--threads", str(a.threads)]
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                        text=True).stdout.strip().splitlines()[-1])
        print(f"{v:<22} {out['before_mb']:>14.0f} {out['peak_mb']:>12.0f} "
              f"{out['peak_mb'] - out['before_mb']:>10.0f} {out['cache_mb']:>9.1f}")


if __name__ == "__main__":
    main()
