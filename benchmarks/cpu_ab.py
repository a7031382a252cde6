"""The CPU path before and after a change, side by side: ``--device cpu`` must stay the old path
(issue 23: every CPU figure within 5 % of before).

Each round runs one worker process on the old tree (``git archive REV src``) and one on the
working tree, in alternating order, each timing the same operations on the same seeded inputs
through the public API both versions share; the ratio new/old is taken per round and its median
printed. Workers run with one thread so the two never compete for the two cores.

    python benchmarks/cpu_ab.py --rev 1a7db6f            # ~4 min on 2 shared cores
    python benchmarks/cpu_ab.py --rev 1a7db6f --quick    # ~1 min
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _time(fn, reps: int) -> float:
    fn()  # warm-up
    best = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best.append(time.perf_counter() - t0)
    return statistics.median(best)


def worker(reps: int) -> dict[str, float]:
    """Median seconds per operation, on the deltapatch that PYTHONPATH selects."""
    import torch

    from deltapatch import PatchedModel, load_backbone
    from deltapatch.data.sets import ImageSet, TaskData
    from deltapatch.train import TrainConfig, evaluate, fit_patch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    out: dict[str, float] = {}
    for name, size in (("cifar_resnet20", 32), ("resnet18", 64)):
        model = PatchedModel(load_backbone(name)).eval()
        for i in range(8):
            model.add_patch(f"p{i}", 10, stages=1)
        x = torch.randn(64, 3, size, size, generator=torch.Generator().manual_seed(1))
        names = [f"p{r % 8}" for r in range(64)]
        with torch.inference_mode():
            out[f"{name} base"] = _time(lambda: model(x), reps)
            out[f"{name} one patch"] = _time(lambda: model(x, patch="p0"), reps)
            out[f"{name} mixed 8"] = _time(lambda: model(x, patches=names), reps)
            out[f"{name} fanout base+8"] = _time(
                lambda: model.fanout(x, ["__base__"] + names[:8]), reps)
        g = torch.Generator().manual_seed(2)
        images = torch.randint(0, 256, (256, 3, size, size), generator=g, dtype=torch.uint8)
        split = ImageSet(images, torch.arange(256) % 10)
        data = TaskData("ab", split, ImageSet(images[:64], split.labels[:64]),
                        ImageSet(images[:64], split.labels[:64]), [str(c) for c in range(10)])
        pre = model.preprocess
        out[f"{name} evaluate 256"] = _time(
            lambda: evaluate(lambda t: model(t, patch="p0"), split, pre), reps)
        for augment in (True, False):
            config = TrainConfig(epochs=1, batch_size=64, augment=augment, progress=False)
            out[f"{name} fit 1 epoch{' augmented' if augment else ' cached'}"] = _time(
                lambda c=config: fit_patch(model, "p1", data, c), max(1, reps // 2))
    return out


def _run(src: Path, reps: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, __file__, "--worker", "--reps", str(reps)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", default="HEAD", help="the old revision (default HEAD: the last commit)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="1 round of 3 reps")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.reps)))
        return
    rounds, reps = (1, 3) if args.quick else (args.rounds, args.reps)
    sha = subprocess.check_output(["git", "rev-parse", "--short", args.rev], cwd=ROOT,
                                  text=True).strip()
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "old.tar"
        subprocess.run(["git", "archive", "-o", str(archive), args.rev, "src"], cwd=ROOT,
                       check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        trees = {"old": Path(tmp) / "src", "new": ROOT / "src"}
        runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
        for r in range(rounds):
            for side in (("old", "new") if r % 2 == 0 else ("new", "old")):
                runs[side].append(_run(trees[side], reps))
    sys.path.insert(0, str(ROOT / "src"))
    from deltapatch.hardware import describe

    print(f"# CPU path, {sha} (old) vs working tree (new): {rounds} rounds x {reps} reps, "
          "1 thread per worker")
    print(f"# command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"# {describe()} | load avg {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"{'operation':<40} {'old ms':>9} {'new ms':>9} {'new/old':>8}")
    for op in runs["old"][0]:
        old = statistics.median(r[op] for r in runs["old"])
        new = statistics.median(r[op] for r in runs["new"])
        per_round = statistics.median(n[op] / o[op] for o, n in zip(runs["old"], runs["new"],
                                                                     strict=True))
        print(f"{op:<40} {old * 1e3:>9.1f} {new * 1e3:>9.1f} {per_round:>8.3f}")


if __name__ == "__main__":
    main()
