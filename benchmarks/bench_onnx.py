"""onnxruntime (CPU EP) vs PyTorch eager, and one fan-out graph vs one graph per task, side by side.

    python benchmarks/bench_onnx.py [--backbone resnet18] [--size 64] [--patches 8] [--rounds 7]

ResNet-18 with random weights (timing does not depend on the values) and 8 Δ(1) patches. Both
runtimes get 1 thread; every configuration is timed in interleaved rounds (median reported), so
a busy machine slows all of them alike and the ratios stay comparable. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

import deltapatch as dp
from deltapatch.export import export_onnx
from deltapatch.hardware import describe


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _time(fn, repeats: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--patches", type=int, default=8)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = dp.PatchedModel(dp.load_backbone(args.backbone)).eval()
    names = [f"task{i}" for i in range(args.patches)]
    for n in names:
        model.add_patch(n, 10, stages=1)
    tasks = [dp.BASE, *names]
    tmp = Path(tempfile.mkdtemp())
    fan = _session(export_onnx(model, tmp / "fan.onnx", tasks, args.size))
    singles = [_session(export_onnx(model, tmp / f"{n}.onnx", [n], args.size)) for n in tasks]
    base = singles[0]
    cases = {}
    for batch in (1, 32):
        x = torch.randn(batch, 3, args.size, args.size)
        feed = {"image": x.numpy()}
        reps = 20 if batch == 1 else 3
        with torch.inference_mode():
            cases[batch] = {
                "eager_base": lambda x=x: model(x),
                "ort_base": lambda f=feed: base.run(None, f),
                "eager_fanout": lambda x=x: model.fanout(x, tasks),
                "ort_fanout": lambda f=feed: fan.run(None, f),
                "ort_separate_graphs": lambda f=feed: [s.run(None, f) for s in singles],
            }, reps
    times: dict[str, list[float]] = {}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for batch, (fns, reps) in cases.items():
                for key, fn in fns.items():
                    times.setdefault(f"{key}@{batch}", []).append(_time(fn, reps))
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    out = {"machine": describe(), "load_avg_1min": round(os.getloadavg()[0], 2),
           "backbone": args.backbone, "size": args.size, "patches": args.patches,
           "rounds": args.rounds, "threads": 1, "onnxruntime": ort.__version__,
           "torch": torch.__version__, "median_ms": {k: round(v, 3) for k, v in med.items()}}
    for b in (1, 32):
        out[f"ort_over_eager_base@{b}"] = round(med[f"ort_base@{b}"] / med[f"eager_base@{b}"], 3)
        out[f"ort_over_eager_fanout@{b}"] = round(med[f"ort_fanout@{b}"]
                                                  / med[f"eager_fanout@{b}"], 3)
        out[f"fanout_over_separate_graphs@{b}"] = round(med[f"ort_fanout@{b}"]
                                                        / med[f"ort_separate_graphs@{b}"], 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
