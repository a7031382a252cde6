"""How sure is "A beats B"? A paired difference with a 95 % bootstrap interval.

Claims compare two methods on the same cells (backbone, task) and the same seeds, and each seed
of both methods sees the same test images. The difference A − B is therefore taken per seed and
averaged; its uncertainty has two sources, which the bootstrap resamples together:

- **seeds**: the mean over k paired seeds gets a parametric draw of its error, the sample sd of
  the per-seed differences / √k times a Student-t variate with k − 1 degrees of freedom.
  Resampling 3 seeds with replacement (27 distinct resamples) understates seed noise badly: on
  the cpu suite's GTSRB transfer cell (per-seed differences +4.2, +9.9, +18.5) it gave
  [+4.5, +18.0] where the t interval is [−7.0, +28.8]. With one seed there is no seed term
  (the interval covers test images only, and the claim lines say n = 1);
- **test images**: the run records hold each accuracy and its image count ``n``, not per-image
  correctness, so every accuracy is redrawn as Binomial(n, acc) / n (a *parametric* bootstrap).
  Two arms draw independently except where both report the same base accuracy on the same
  images (both leave the base network untouched: its predictions are bit-identical, so one draw
  serves both). Independent draws ignore the positive correlation of two methods scored on one
  image set, and the seeds' spread already holds some test-image noise (seeds draw other test
subsets), so the interval is, if anything, too wide: "holds" is the cautious verdict.

A claim over several cells averages the cells' differences (each cell resampled as above). The
verdict says "holds" only where the interval excludes zero on the claimed side, "reversed" where
it excludes zero on the other, and "within noise" otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

METHOD = ("parametric bootstrap: binomial redraws of every accuracy over its test images (records "
          "hold accuracy and n, not per-image correctness), plus a Student-t draw of the "
          "seed mean's error from the paired seeds' spread")
DRAWS = 4000


@dataclass(frozen=True)
class Score:
    """One run's measured parts: name -> (accuracy in [0, 1], images it was measured on), and
    how they combine into the compared number (harmonic mean of base and patch top-1, or one
    accuracy as it is)."""
    parts: dict[str, tuple[float, int]]
    combine: Callable[[dict[str, np.ndarray]], np.ndarray]

    def draw(self, rng: np.random.Generator, size: int,
             shared: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        out = {}
        for name, (acc, n) in self.parts.items():
            if shared is not None and name in shared:
                out[name] = shared[name]
            else:
                out[name] = rng.binomial(n, min(max(acc, 0.0), 1.0), size) / n
        return out

    def value(self) -> float:
        return float(self.combine({k: np.asarray(a) for k, (a, _) in self.parts.items()}))


def harmonic(parts: dict[str, np.ndarray]) -> np.ndarray:
    p, b = parts["patch"], parts["base"]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(p + b > 0, 2 * p * b / np.where(p + b > 0, p + b, 1), 0.0)


def harmonic_all(parts: dict[str, np.ndarray]) -> np.ndarray:
    """The harmonic mean of every part (joint patching: the base task and each joint task); 0
    where any part is 0, as for two."""
    acc = np.stack(list(parts.values()))
    with np.errstate(divide="ignore"):
        inverse = np.sum(1.0 / np.where(acc > 0, acc, 1.0), axis=0)
    return np.where((acc > 0).all(axis=0), len(acc) / inverse, 0.0)


def single(parts: dict[str, np.ndarray]) -> np.ndarray:
    return parts["value"]


def mean(parts: dict[str, np.ndarray]) -> np.ndarray:
    return np.mean(np.stack(list(parts.values())), axis=0)


def hm_score(patch: float, n_patch: int, base: float, n_base: int) -> Score:
    return Score({"patch": (patch, n_patch), "base": (base, n_base)}, harmonic)


def joint_hm_score(parts: dict[str, tuple[float, int]]) -> Score:
    """Joint patching's number: the harmonic mean over the base task ("base") and every task of
    the group, each measured on its own test images."""
    return Score(dict(parts), harmonic_all)


def top1_score(acc: float, n: int) -> Score:
    return Score({"value": (acc, n)}, single)


def mean_score(parts: dict[str, tuple[float, int]]) -> Score:
    """The unweighted mean of several accuracies (sequential patching's mean top-1 over the base
    task and every patched task)."""
    return Score(dict(parts), mean)


def record_score(result: dict, metric: str, base_n: int | None = None) -> Score:
    """One run's compared number with the image counts its bootstrap redraws, from the run's
    ``result``: ``hm`` (base and patch top-1), ``joint``, ``top1``, ``target`` (the ZSDA
    target's top-1) or ``sequential`` (mean top-1 after the last task, base included).
    ``base_n`` stands in for the base test size where a record does not carry it (sequential
    records never do)."""
    n_base = result.get("n_base_test") or base_n
    base = (result["base_top1"], n_base) if "base_top1" in result else None
    if metric == "hm":
        return hm_score(result["patch_top1"], result["n_test"], *_sized(base))
    if metric == "joint":
        return joint_hm_score({"base": _sized(base),
                               **{t: (acc, result["n_by_test"][t])
                                  for t, acc in result["top1_by_test"].items()}})
    if metric == "top1":
        return top1_score(result["patch_top1"], result["n_test"])
    if metric == "target":
        return top1_score(result["top1_by_test"]["target"], result["n_by_test"]["target"])
    if metric == "sequential":
        return mean_score({t: (acc, result["n_test"].get(t) or _sized((acc, n_base))[1])
                           for t, acc in result["final_top1"].items()})
    raise ValueError(f"unknown metric {metric}")


def _sized(part: tuple[float, int | None] | None) -> tuple[float, int]:
    if part is None or not part[1]:
        raise ValueError("the record does not say how many base test images it was scored on")
    return part[0], int(part[1])


@dataclass(frozen=True)
class Interval:
    diff: float  # A − B, mean over cells of the mean over seeds, in accuracy units
    low: float
    high: float
    cells: int
    seeds: int  # fewest paired seeds in a cell

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "holds"
        if self.high < 0:
            return "reversed"
        return "within noise"

    def span(self, scale: float = 100.0) -> str:
        return f"{scale * self.diff:+.1f} [{scale * self.low:+.1f}, {scale * self.high:+.1f}]"

    def text(self, scale: float = 100.0) -> str:
        return f"{self.span(scale)} → {self.verdict}"


Cell = Sequence[tuple[Score, Score]]  # the paired seeds of one cell: (A's run, B's run)


def _shared(a: Score, b: Score) -> set[str]:
    return {k for k in a.parts if k in b.parts and k == "base" and a.parts[k] == b.parts[k]}


def _cell_draws(cell: Cell, rng: np.random.Generator, draws: int) -> np.ndarray:
    """``draws`` bootstrap replicates of the cell's mean paired difference: test images
    redrawn per seed, and the seed mean's error drawn from the seeds' spread."""
    k = len(cell)
    diffs = np.empty((k, draws))
    for i, (a, b) in enumerate(cell):
        da = a.draw(rng, draws)
        db = b.draw(rng, draws, {name: da[name] for name in _shared(a, b)})
        diffs[i] = a.combine(da) - b.combine(db)
    images = diffs.mean(axis=0)
    if k < 2:
        return images
    spread = float(np.std([a.value() - b.value() for a, b in cell], ddof=1))
    return images + spread / np.sqrt(k) * rng.standard_t(k - 1, size=draws)


def paired(cells: Sequence[Cell], seed: int = 0, draws: int = DRAWS) -> Interval:
    """A − B averaged over ``cells`` with its 95 % percentile interval; deterministic for a
    given ``seed``."""
    if not cells or any(len(c) == 0 for c in cells):
        raise ValueError("every cell needs at least one paired seed")
    rng = np.random.default_rng(seed)
    boot = np.mean([_cell_draws(c, rng, draws) for c in cells], axis=0)
    point = float(np.mean([np.mean([a.value() - b.value() for a, b in c]) for c in cells]))
    low, high = np.percentile(boot, [2.5, 97.5])
    return Interval(point, float(low), float(high), len(cells), min(len(c) for c in cells))
