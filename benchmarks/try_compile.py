"""What ``torch.compile`` does for a cached Δ(1) training step (forward + backward): compile
time, then eager vs compiled step time, interleaved. Recorded in docs/PERFORMANCE.md; the
library does not compile (see there why).

    python benchmarks/try_compile.py --threads 1 --backbone resnet18 --size 64
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _common import header, interleaved, med, ratio, set_threads, synthetic

from deltapatch import PatchedModel, load_backbone
from deltapatch.cache import cached_training


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    set_threads(a.threads)
    header(f"torch.compile on a cached Δ(1) step: {a.backbone} @ {a.size}px, batch {a.batch_size}")
    torch.manual_seed(0)
    model = PatchedModel(load_backbone(a.backbone))
    model.add_patch("p", 10, stages=1)
    model.train()
    data = synthetic(a.batch_size, a.size)
    cached, fwd, unpack = cached_training(model, "p", data, model.preprocess.with_size(a.size))
    parts, y = unpack.normalize(cached.train.images), cached.train.labels
    compiled = torch.compile(fwd)

    def step(f) -> None:
        F.cross_entropy(f(parts), y).backward()

    t0 = time.perf_counter()
    step(compiled)
    print(f"first compiled step (compile + run): {time.perf_counter() - t0:.1f} s")
    t = interleaved({"eager": lambda: step(fwd), "compiled": lambda: step(compiled)}, a.rounds)
    print(f"eager {med(t['eager']) * 1e3:.0f} ms, compiled {med(t['compiled']) * 1e3:.0f} ms, "
          f"RATIO compiled/eager = {ratio(t, 'compiled', 'eager'):.3f}")


if __name__ == "__main__":
    main()
