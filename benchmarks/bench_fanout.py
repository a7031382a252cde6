"""Fan-out: base + 8 Δ(1) patches on every row of one batch with ``model.fanout`` / the same
nine results from nine separate forwards (``backbone(x)`` and ``model(x, patch=p)`` per patch).
ResNet-18, random init, 64 px, batch 32, inference_mode; goal: ratio ≤ 0.45.

    python benchmarks/bench_fanout.py --threads 1            # ~1 min on 2 shared cores
"""

from __future__ import annotations

import argparse

import torch
from _common import header, interleaved, med, ratio, set_threads

from deltapatch import BASE, PatchedModel, load_backbone


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--patches", type=int, default=8)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    set_threads(a.threads)
    header(f"fan-out: base + {a.patches} Δ(1) patches / {a.patches + 1} separate forwards")
    torch.manual_seed(0)
    backbone = load_backbone(a.backbone)
    model = PatchedModel(backbone).eval()
    names = [f"p{i}" for i in range(a.patches)]
    for n in names:
        model.add_patch(n, 10, stages=1)
    x = torch.randn(a.batch_size, 3, a.size, a.size, generator=torch.Generator().manual_seed(1))
    variants = {
        "fanout": lambda: model.fanout(x, patches=[BASE, *names]),
        "separate": lambda: [backbone(x), *(model(x, patch=n) for n in names)],
    }
    with torch.inference_mode():
        fan = model.fanout(x, patches=[BASE, *names])
        same = torch.equal(fan[BASE], backbone(x)) and all(
            torch.equal(fan[n], model(x, patch=n)) for n in names)
        times = interleaved(variants, a.rounds)
    print(f"{a.backbone} @ {a.size}px, batch {a.batch_size}, {a.rounds} rounds (+1 warm-up), "
          f"seed 0; results bit-identical to separate forwards: {same}")
    print(f"fanout   median {med(times['fanout']) * 1e3:.1f} ms")
    print(f"separate median {med(times['separate']) * 1e3:.1f} ms")
    print(f"RATIO fanout / separate = {ratio(times, 'fanout', 'separate'):.3f}  (goal <= 0.45)")


if __name__ == "__main__":
    main()
