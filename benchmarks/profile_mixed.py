"""Where a many-patch mixed batch spends its time over the plain forward: a torch.profiler table
of one routed batch (ResNet-18 @ 64 px, batch 64, N Δ(1) patches, row r → patch r mod N), and
the cost of one gate conv on one row vs the same conv on 64 rows (what bounds the N = 64 case:
each patch's gate weights are read for its one row).

    PYTHONPATH=src python benchmarks/profile_mixed.py --patches 64 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
import torchvision
from _common import header, set_threads
from torch.profiler import profile

from deltapatch import PatchedModel


def per_call_ms(f, n: int = 30) -> float:
    for _ in range(3):
        f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e3


def one_row(h: torch.Tensor, w: torch.Tensor) -> float:
    return per_call_ms(lambda: F.conv2d(h[:1], w, padding=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patches", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    set_threads(args.threads)
    header(f"mixed batch profile: ResNet-18 @ {args.size} px, batch {args.batch}, "
           f"{args.patches} Δ(1) patches")
    torch.manual_seed(0)
    model = PatchedModel(torchvision.models.resnet18())
    for i in range(args.patches):
        model.add_patch(f"p{i}", 10, stages=1)
    model.eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    names = [f"p{r % args.patches}" for r in range(args.batch)]
    with torch.inference_mode():
        base = per_call_ms(lambda: model(x), 5)
        mixed = per_call_ms(lambda: model(x, patches=names), 5)
        print(f"plain forward {base:.1f} ms, mixed batch {mixed:.1f} ms, ratio {mixed / base:.3f}")
        with profile() as prof:
            model(x, patches=names)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        gate = model.get_patch("p0").delta(3).gate.features[0]  # layer4's gate, first conv
        h = model.stage_input(x, 3)
        w = gate.weight
        one = one_row(h, w)
        many = per_call_ms(lambda: F.conv2d(h, w, padding=1))
        ws = [model.get_patch(n).delta(3).gate.features[0].weight for n in names]
        stacked = per_call_ms(lambda: F.conv2d(h.reshape(1, -1, *h.shape[2:]), torch.cat(ws),
                                               padding=1, groups=len(ws)), 5)
        print(f"one grouped conv over the {len(ws)} rows, each with its own patch's weights "
              f"(stacked each call): {stacked:.1f} ms vs {len(ws)} one-row convs "
              f"{len(ws) * one_row(h, w):.1f} ms")
        if hasattr(torch, "_grouped_mm"):  # weights stacked once, as if stored that way
            b = torch.stack([v.flatten(1).t() for v in ws[:args.patches]])  # (G, K, N)
            a = F.unfold(h, 3, padding=1).transpose(1, 2)  # (rows, L, K); row r → patch r mod G
            order = torch.argsort(torch.arange(args.batch) % args.patches, stable=True)
            a = a[order].reshape(-1, a.shape[-1]).contiguous()
            rows = torch.bincount(torch.arange(args.batch) % args.patches)
            offs = (torch.cumsum(rows, 0) * h.shape[2] * h.shape[3]).to(torch.int32)
            gmm = per_call_ms(lambda: torch._grouped_mm(a, b, offs=offs), 3)
            print(f"torch._grouped_mm over the unfolded rows and the {args.patches} patches' "
                  f"pre-stacked weights: {gmm:.1f} ms vs {len(ws)} one-row convs "
                  f"{len(ws) * one:.1f} ms")
        print(f"gate conv {tuple(w.shape)} on layer4's input {tuple(h.shape[1:])}: 1 row "
              f"{one:.3f} ms, {args.batch} rows {many:.3f} ms ({many / args.batch:.3f} ms a row); "
              f"weights {w.numel() * 4 / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
