"""Images/second of patch training on 1 process vs 2 processes (torch.distributed, gloo, one
thread each), the same global batch, and their ratio (the issue's goal: ≥ 1.6× where 2 free
cores exist).

Each variant is a fresh set of spawned processes (1: the plain path, no torchrun environment;
2: ranks of a gloo group on 127.0.0.1) running ``fit_patch`` on the same synthetic images; the
clock runs from a barrier after model and data are built to the end of training on every rank,
so process start-up and imports are not counted (the cache build, when cached, is). Variants
alternate for ``--rounds`` rounds; medians are reported.

    python benchmarks/bench_ddp.py                 # augmented (no cache), cifar_resnet20
    python benchmarks/bench_ddp.py --cache         # frozen-feature cache, each rank its shard
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.multiprocessing as mp
from _common import header, synthetic


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out) -> None:
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                          WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from deltapatch import PatchedModel, distributed, load_backbone
    from deltapatch.train import TrainConfig, fit_patch

    torch.manual_seed(0)
    model = PatchedModel(load_backbone(args.backbone))
    data = synthetic(args.n, 32)
    model.add_patch("p", data.num_classes, stages=args.stages)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, augment=not args.cache,
                      cache_features="on" if args.cache else "off", progress=False)
    if world > 1:  # start the group now: every rank's clock starts together
        distributed.session()
        torch.distributed.barrier()
    t0 = time.perf_counter()
    fit_patch(model, "p", data, cfg)
    seconds = time.perf_counter() - t0
    if world > 1:
        t = torch.tensor([seconds])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        seconds = float(t)
    if rank == 0:
        out.put(seconds)


def run(world: int, args: argparse.Namespace) -> float:
    """Seconds of training (slowest rank) of one fresh ``world``-process run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    q = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(worker, args=(world, port, args, q), nprocs=world, start_method="spawn")
    return q.get()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="cifar_resnet20")
    p.add_argument("--stages", type=int, default=1)
    p.add_argument("--n", type=int, default=2048, help="training images")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cache", action="store_true", help="train on cached frozen features")
    args = p.parse_args()
    torch.set_num_threads(1)
    header(f"patch training, 1 vs 2 processes (gloo, 1 thread each), {args.backbone} "
           f"Δ({args.stages}), {args.n} images × {args.epochs} epochs, global batch "
           f"{args.batch}, {'cached features' if args.cache else 'augmented, no cache'}")
    times: dict[int, list[float]] = {1: [], 2: []}
    for r in range(args.rounds):
        for world in ((1, 2) if r % 2 == 0 else (2, 1)):
            times[world].append(run(world, args))
            print(f"round {r + 1}  {world} process(es)  {times[world][-1]:.2f} s", flush=True)
    ips = {w: args.n * args.epochs / statistics.median(ts) for w, ts in times.items()}
    for w in (1, 2):
        print(f"{w} process(es): {ips[w]:8.1f} images/s  (median of {args.rounds})")
    print(f"ratio 2/1: {ips[2] / ips[1]:.2f}x")


if __name__ == "__main__":
    main()
