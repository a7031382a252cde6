"""The CPU path before and after a change, side by side: ``--device cpu`` must stay the old path
(issue 23: every CPU figure within 5 % of before).

Two worker processes stay up for the whole run, one importing the old tree (``git archive REV
src``) and one the working tree, each with one thread and the same seeded models and inputs,
built through the public API both versions share. The parent asks them in turn to time one
operation (the median of ``--reps`` calls), alternating which goes first, for every operation
in every round; only one computes at a time. The ratio new/old is taken per round and the median
printed with the 10th–90th percentile of the per-round ratios, so drift of the shared machine
shows as spread rather than as a difference.

    python benchmarks/cpu_ab.py --rev 1a7db6f             # ~6 min on 2 shared cores
    python benchmarks/cpu_ab.py --rev 1a7db6f --quick     # ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _time(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up
    took = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        took.append(time.perf_counter() - t0)
    return statistics.median(took)


def operations() -> dict[str, tuple[Callable[[], object], int]]:
    """Each operation timed, with its share of ``--reps`` (training epochs count double)."""
    import torch

    from deltapatch import PatchedModel, load_backbone
    from deltapatch.data.sets import ImageSet, TaskData
    from deltapatch.train import TrainConfig, evaluate, fit_patch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ops: dict[str, tuple[Callable[[], object], int]] = {}
    for name, size in (("cifar_resnet20", 32), ("resnet18", 64)):
        model = PatchedModel(load_backbone(name)).eval()
        for i in range(8):
            model.add_patch(f"p{i}", 10, stages=1)
        x = torch.randn(64, 3, size, size, generator=torch.Generator().manual_seed(1))
        names = [f"p{r % 8}" for r in range(64)]

        def infer(model=model, x=x, **kw):  # bound now: the loop rebinds model and x
            with torch.inference_mode():
                return model(x, **kw)

        def fanout(model=model, x=x, names=names):
            with torch.inference_mode():
                return model.fanout(x, ["__base__"] + names[:8])

        ops[f"{name} base"] = ((lambda f=infer: f()), 1)
        ops[f"{name} one patch"] = ((lambda f=infer: f(patch="p0")), 1)
        ops[f"{name} mixed 8"] = ((lambda f=infer, n=names: f(patches=n)), 1)
        ops[f"{name} fanout base+8"] = (fanout, 1)
        g = torch.Generator().manual_seed(2)
        images = torch.randint(0, 256, (256, 3, size, size), generator=g, dtype=torch.uint8)
        split = ImageSet(images, torch.arange(256) % 10)
        data = TaskData("ab", split, ImageSet(images[:64], split.labels[:64]),
                        ImageSet(images[:64], split.labels[:64]), [str(c) for c in range(10)])
        ops[f"{name} evaluate 256"] = (
            lambda m=model, s=split: evaluate(lambda t: m(t, patch="p0"), s, m.preprocess), 1)
        for augment in (True, False):
            config = TrainConfig(epochs=1, batch_size=64, augment=augment, progress=False)
            ops[f"{name} fit 1 epoch{' augmented' if augment else ' cached'}"] = (
                lambda m=model, d=data, c=config: fit_patch(m, "p1", d, c), 2)
    return ops


def serve() -> None:
    """The worker: build the operations, then time the one named on each stdin line."""
    ops = operations()
    print(json.dumps(list(ops)), flush=True)
    for line in sys.stdin:
        op, reps = json.loads(line)
        fn, cost = ops[op]
        print(json.dumps(_time(fn, max(1, reps // cost))), flush=True)


class Worker:
    def __init__(self, src: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker"], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.ops = json.loads(self.proc.stdout.readline())

    def time(self, op: str, reps: int) -> float:
        self.proc.stdin.write(json.dumps([op, reps]) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", default="HEAD", help="the old revision (default HEAD: the last commit)")
    p.add_argument("--rounds", type=int, default=9, help="rounds over every operation")
    p.add_argument("--reps", type=int, default=4, help="calls per timing (median taken)")
    p.add_argument("--quick", action="store_true", help="3 rounds of 2 reps")
    p.add_argument("--only", default="", help="time only the operations whose name has this")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        serve()
        return
    rounds, reps = (3, 2) if args.quick else (args.rounds, args.reps)
    sha = subprocess.check_output(["git", "rev-parse", "--short", args.rev], cwd=ROOT,
                                  text=True).strip()
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "old.tar"
        subprocess.run(["git", "archive", "-o", str(archive), args.rev, "src"], cwd=ROOT,
                       check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        old, new = Worker(Path(tmp) / "src"), Worker(ROOT / "src")
        times: dict[str, dict[str, list[float]]] = {op: {"old": [], "new": []} for op in old.ops}
        try:
            for r in range(rounds):
                for i, op in enumerate(o for o in old.ops if args.only in o):
                    pair = (("old", old), ("new", new))
                    for side, w in (pair if (r + i) % 2 == 0 else pair[::-1]):
                        times[op][side].append(w.time(op, reps))
        finally:
            old.close()
            new.close()
    sys.path.insert(0, str(ROOT / "src"))
    from deltapatch.hardware import describe

    print(f"# CPU path, {sha} (old) vs working tree (new): {rounds} rounds x {reps} reps, "
          "1 thread per worker, one computing at a time")
    print(f"# command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"# {describe()} | load avg {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"{'operation':<36} {'old ms':>8} {'new ms':>8} {'new/old':>8} {'p10-p90':>13}")
    for op, t in times.items():
        if not t["old"]:
            continue
        ratios = [n / o for o, n in zip(t["old"], t["new"], strict=True)]
        print(f"{op:<36} {statistics.median(t['old']) * 1e3:>8.1f} "
              f"{statistics.median(t['new']) * 1e3:>8.1f} {statistics.median(ratios):>8.3f} "
              f"{_pct(ratios, 0.1):>6.3f}-{_pct(ratios, 0.9):.3f}")


if __name__ == "__main__":
    main()
