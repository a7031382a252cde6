"""Wall time of ``deltapatch demo --fast`` and ``deltapatch demo`` on this machine.

Runs each as a fresh process (imports and model loading included, as a user would see it), one
after the other, and prints the times with what the machine is and how busy it was. Usage:

    python benchmarks/demo_time.py [--only fast|full] [--out DIR]

Limits from issue 4: full ≤ 600 s (aim 300 s), --fast < 120 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMITS = {"fast": 120.0, "full": 600.0}
SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))
from deltapatch.hardware import cpu_model  # noqa: E402  (this checkout's, as the timed runs)


def checkout_env() -> dict:
    """The environment with this checkout's ``src`` first on the path: the benchmark times the
    code beside it, not whichever deltapatch happens to be installed."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def time_demo(profile: str, out: Path) -> dict:
    """One timed run; the demo's own summary gives its accuracies for the record."""
    cmd = [sys.executable, "-m", "deltapatch", "demo", "--out", str(out), "--no-progress"]
    if profile == "fast":
        cmd.insert(4, "--fast")
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=checkout_env())
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"demo ({profile}) failed with exit code {proc.returncode}")
    summary = json.loads((out / "summary.json").read_text())
    return {"profile": profile, "command": " ".join(["deltapatch", *cmd[3:]]),
            "wall_seconds": round(seconds, 1), "limit_seconds": LIMITS[profile],
            "within_limit": seconds < LIMITS[profile],
            "load_avg_1min_before": round(load_before, 2),
            "load_avg_1min_after": round(os.getloadavg()[0], 2),
            "top1": {f"{r['task']}/{r['method']}": round(r["top1"], 4) for r in summary["rows"]},
            "bit_identical": summary["facts"]["bit_identical"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=sorted(LIMITS), default=None)
    p.add_argument("--out", type=Path, default=None, help="where the demo reports go (default: "
                   "a temporary folder)")
    args = p.parse_args()
    import torch

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"torch {torch.__version__}; load average {os.getloadavg()[0]:.2f} at start")
    root = args.out or Path(tempfile.mkdtemp(prefix="demo-time-"))
    for profile in ([args.only] if args.only else ["fast", "full"]):
        result = time_demo(profile, root / profile)
        print(f"{result['command']}: {result['wall_seconds']:.1f} s wall "
              f"(limit {result['limit_seconds']:.0f} s, "
              f"{'ok' if result['within_limit'] else 'OVER'}; 1-min load average "
              f"{result['load_avg_1min_before']} before, {result['load_avg_1min_after']} after)")
        print(json.dumps(result))


if __name__ == "__main__":
    main()
