"""Shared helpers of the benchmark scripts: machine description, synthetic data, and timing of
compared variants *side by side* (interleaved, order rotated each round, medians reported).

The machine these run on is often shared, so an absolute time means little; a ratio of two
variants timed in the same round, moments apart, means much more. Every script prints the
command line, the machine, torch's version and thread count with its numbers.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from deltapatch.data.sets import ImageSet, TaskData
from deltapatch.hardware import describe


def machine() -> str:
    """The machine line of ``deltapatch.hardware`` plus the load average (it is shared)."""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return f"{describe()} | load avg {load}"


def header(title: str) -> None:
    print(f"# {title}")
    print(f"# command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"# {machine()}")


def synthetic(n_train: int, size: int, classes: int = 10, n_val: int = 32, seed: int = 0
              ) -> TaskData:
    """Random uint8 images: timing does not depend on content, and nothing is downloaded."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> ImageSet:
        return ImageSet(torch.randint(0, 256, (n, 3, size, size), generator=g,
                                      dtype=torch.uint8), torch.arange(n) % classes)

    return TaskData("synthetic", split(n_train), split(n_val), split(n_val),
                    [str(c) for c in range(classes)])


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
                ) -> dict[str, list[float]]:
    """Seconds per call of each variant, ``rounds`` times, variants alternating within a round
    (order rotated every round so no variant always runs first or after the same neighbour)."""
    names = list(variants)
    for _ in range(warmup):
        for n in names:
            variants[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            variants[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of the per-round ratio num/den (both timed in the same round)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


def med(ts: list[float]) -> float:
    return statistics.median(ts)


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


def replace_block(path, name: str, text: str) -> None:
    """Put ``text`` between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in the Markdown
    file ``path``: how a script writes its generated lines into hand-written docs."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    old = Path(path).read_text()
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(old):
        raise SystemExit(f"{path}: no {begin} … {end} markers")
    Path(path).write_text(pattern.sub(lambda _: f"{begin}\n{text}\n{end}", old))


def copy_records(out, dest, under: str = "") -> int:
    """Copy the finished runs' records, ``out/runs/UNDER/**/seed*.json`` (not their patch
    files), to the same places under ``dest/runs``: what a script publishes to commit."""
    records = sorted((Path(out) / "runs" / under).rglob("seed*.json"))
    for rec in records:
        target = Path(dest) / rec.relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(rec, target)
    return len(records)
