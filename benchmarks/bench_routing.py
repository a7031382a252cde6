"""Figure 2: one mixed batch routed over N = 1, 2, 4, 8 Δ(1) patches / one base forward of the
same batch, beside serving the same rows with N separate patched forwards (one per patch, on
that patch's rows). Rows are split evenly between the patches; inference under inference_mode.

    python benchmarks/bench_routing.py --threads 1          # ~2 min on 2 shared cores
    python benchmarks/bench_routing.py --threads 1 --quick
"""

from __future__ import annotations

import argparse

import torch
from _common import header, interleaved, med, ratio, set_threads

from deltapatch import PatchedModel, load_backbone

CASES = {"cifar_resnet56": 32, "resnet18": 64}


def run_case(name: str, size: int, batch: int, ns: list[int], rounds: int) -> None:
    torch.manual_seed(0)
    backbone = load_backbone(name)
    model = PatchedModel(backbone).eval()
    for i in range(max(ns)):
        model.add_patch(f"p{i}", 10, stages=1)
    x = torch.randn(batch, 3, size, size)
    variants = {"base": lambda: backbone(x)}
    for n in ns:
        names = [f"p{r % n}" for r in range(batch)]
        rows = {f"p{i}": torch.arange(i, batch, n) for i in range(n)}
        variants[f"routed_N{n}"] = lambda names=names: model(x, patches=names)
        variants[f"separate_N{n}"] = lambda rows=rows: [model(x[r], patch=p)
                                                        for p, r in rows.items()]
    with torch.inference_mode():
        times = interleaved(variants, rounds)
    print(f"\n## {name} @ {size}px, batch {batch}, {rounds} rounds (+1 warm-up)")
    print(f"base forward: median {med(times['base']) * 1e3:.1f} ms")
    print(f"{'N':>3} {'routed/base':>12} {'separate/base':>14} {'routed ms':>10} "
          f"{'separate ms':>12}")
    for n in ns:
        print(f"{n:>3} {ratio(times, f'routed_N{n}', 'base'):>12.3f} "
              f"{ratio(times, f'separate_N{n}', 'base'):>14.3f} "
              f"{med(times[f'routed_N{n}']) * 1e3:>10.1f} "
              f"{med(times[f'separate_N{n}']) * 1e3:>12.1f}")
    print(f"RATIO routed N={max(ns)} / base = {ratio(times, f'routed_N{max(ns)}', 'base'):.3f}"
          "  (goal <= 2.0)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--backbones", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=None, help="default 5 (quick: 2)")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    set_threads(a.threads)
    header("mixed batch over N Δ(1) patches / base forward")
    for name in a.backbones:
        run_case(name, CASES[name], a.batch_size, [1, 2, 4, 8], a.rounds or (2 if a.quick else 5))


if __name__ == "__main__":
    main()
