"""How much of the served p99 / p50 is the queue itself? (issue 13's latency goal)

Measures the batch service time of the model ``deltapatch serve`` runs in the load test
(ResNet-18, 224 px, routed forward over Δ(1) patches, one thread): t(n) = c + s·n, fitted by
least squares over batch sizes 1..32. Then simulates the server's batching policy (the first
queued request opens a batch; it leaves at ``--max-batch`` requests or after ``--max-wait-ms``;
one batch runs at a time) under Poisson arrivals at a fraction ρ of the policy's maximum
throughput, and prints p50, p99 and p99 / p50 of the time from arrival to answer.

The simulation has no HTTP, no decoding, no other process and no noise in t(n): if it already
shows p99 / p50 above 3 at ρ = 0.7, the ratio is a property of a single-server queue whose
batches cost about as much per image as single requests (CPU), not a defect of the server.

    PYTHONPATH=src python benchmarks/queue_model.py
    PYTHONPATH=src python benchmarks/queue_model.py --service 0.004,0.055   # c, s in seconds
"""

from __future__ import annotations

import argparse
import collections
import random
import statistics
import time

import torch
from _common import header

from deltapatch import PatchedModel, load_backbone

SIZES = (1, 2, 4, 8, 16, 32)


def measure_service(rounds: int, patches: int) -> tuple[float, float]:
    """c and s of t(n) = c + s·n for one routed forward of n rows over ``patches`` patches."""
    torch.manual_seed(0)
    model = PatchedModel(load_backbone("resnet18")).eval()
    names = [f"p{i}" for i in range(patches)]
    for name in names:
        model.add_patch(name, 10, stages=1)
    times: dict[int, list[float]] = collections.defaultdict(list)
    with torch.no_grad():
        for _ in range(rounds):
            for n in SIZES:
                x = torch.randn(n, 3, 224, 224)
                rows = [names[i % patches] for i in range(n)]
                t0 = time.perf_counter()
                model(x, patches=rows)
                times[n].append(time.perf_counter() - t0)
    med = {n: statistics.median(v[1:] or v) for n, v in times.items()}
    for n in SIZES:
        print(f"  t({n:2d}) = {med[n] * 1e3:7.1f} ms  ({med[n] / n * 1e3:5.1f} ms per image)")
    mean_n = statistics.fmean(SIZES)
    mean_t = statistics.fmean(med.values())
    s = (sum((n - mean_n) * (med[n] - mean_t) for n in SIZES)
         / sum((n - mean_n) ** 2 for n in SIZES))
    return max(mean_t - s * mean_n, 0.0), s


def simulate(rate: float, c: float, s: float, max_batch: int, max_wait: float, n: int,
             seed: int) -> list[float]:
    """Latencies of ``n`` Poisson arrivals through the batcher (one batch at a time)."""
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(rate)
        arrivals.append(t)
    latencies, i, free_at = [], 0, 0.0
    while i < n:
        opened = max(arrivals[i], free_at)  # the loop sees the first request once it is free
        # it waits until max_batch requests are queued or max_wait has passed since it looked
        full_at = arrivals[i + max_batch - 1] if i + max_batch - 1 < n else float("inf")
        leave = max(opened, min(opened + max_wait, full_at))
        j = i
        while j < n and j - i < max_batch and arrivals[j] <= leave:
            j += 1
        done = leave + c + s * (j - i)
        latencies += [done - a for a in arrivals[i:j]]
        i, free_at = j, done
    return latencies


def tail_ratio(latencies: list[float]) -> float:
    """p99 / p50, from one sort."""
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return q[98] / q[49]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--service", help="c,s in seconds instead of measuring them here")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--patches", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--loads", default="0.5,0.6,0.7,0.8,0.9")
    p.add_argument("--requests", type=int, default=200, help="per simulated run, as in the load test")
    p.add_argument("--runs", type=int, default=200, help="simulated runs per load (seeds 0..runs-1)")
    args = p.parse_args()
    torch.set_num_threads(1)
    header("queue model of deltapatch serve's batcher")
    if args.service:
        c, s = (float(v) for v in args.service.split(","))
    else:
        c, s = measure_service(args.rounds, args.patches)
    max_rate = args.max_batch / (c + s * args.max_batch)
    print(f"# t(n) = {c * 1e3:.1f} ms + {s * 1e3:.1f} ms·n; max throughput (full batches) "
          f"{max_rate:.1f} req/s; max-batch {args.max_batch}, max-wait {args.max_wait_ms} ms")
    print(f"# {args.runs} runs of {args.requests} requests per load, and one run of 100,000")
    print("| ρ | p99/p50, median over runs | 10th–90th percentile | p99/p50 at n = 100,000 |")
    print("|---|---|---|---|")
    wait = args.max_wait_ms / 1e3
    for rho in (float(v) for v in args.loads.split(",")):
        ratios = []
        for seed in range(args.runs):
            lat = simulate(rho * max_rate, c, s, args.max_batch, wait, args.requests, seed)
            ratios.append(tail_ratio(lat))
        big = simulate(rho * max_rate, c, s, args.max_batch, wait, 100_000, 10_000)
        dec = statistics.quantiles(ratios, n=10)
        print(f"| {rho:.1f} | {statistics.median(ratios):.2f} | {dec[0]:.2f}–{dec[-1]:.2f} | "
              f"{tail_ratio(big):.2f} |")


if __name__ == "__main__":
    main()
