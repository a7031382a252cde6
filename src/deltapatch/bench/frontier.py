"""Is Δ on the accuracy–parameter frontier? Each method was first run at one size, so a lead or a
lag could be a matter of size alone. Here every method of a task is a point (trainable
parameters, harmonic mean); a point is on the frontier when no other point has as few or fewer
parameters and as high or higher a score (one of the two strictly). The statement per task says
whether any Δ point is on it and, where none is, which point beats each Δ point.

Scores are test numbers of one seed per point: the frontier describes these runs, it is not a
significance test (the claims' intervals are in bench/intervals.py). matplotlib (the ``plots``
extra) draws the figures; the statements need nothing beyond the records.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from .plots import pyplot


class Point(NamedTuple):
    label: str
    params: int
    score: float  # in [0, 1]
    delta: bool  # a Δ-patch (the method under test)


def dominates(a: Point, b: Point) -> bool:
    return (a.params <= b.params and a.score >= b.score
            and (a.params < b.params or a.score > b.score))


def frontier(points: list[Point]) -> list[Point]:
    """The points no other point dominates, by parameters."""
    return sorted((p for p in points if not any(dominates(q, p) for q in points)),
                  key=lambda p: (p.params, -p.score))


NEAR = 1.1  # a frontier point whose lead rests on < 10 % fewer parameters is flagged


def statement(task: str, points: list[Point]) -> str:
    """One line: whether Δ is on this task's frontier, with the evidence either way, and what
    it was compared with (a frontier of Δ and FC only says little)."""
    front = frontier(points)
    others = ", ".join(p.label for p in sorted(points, key=lambda p: p.params) if not p.delta)
    against = f" (compared with: {others or 'nothing else'})"
    mine = [p for p in front if p.delta]
    if mine:
        return (f"{task}: Δ **on the frontier**: " + "; ".join(_near(p, points) for p in mine)
                + against)
    beaten = []
    for p in (q for q in points if q.delta):
        by = max((q for q in points if dominates(q, p)), key=lambda q: (q.score, -q.params))
        beaten.append(f"{_pt(p)} by {_pt(by)}")
    if not beaten:
        return f"{task}: no Δ point measured"
    return f"{task}: Δ **not on the frontier**: " + "; ".join(beaten) + against


def _near(p: Point, points: list[Point]) -> str:
    """The point, flagged where another method scores higher with under 10 % more parameters:
    a place on the frontier that thin is not a finding. A bigger Δ point scoring higher is
    not flagged: it is Δ's own next step on the frontier, not evidence against it."""
    higher = [q for q in points
              if not q.delta and q.score > p.score and q.params <= NEAR * p.params]
    if not higher:
        return _pt(p)
    best = max(higher, key=lambda q: q.score)
    return f"{_pt(p)}, but {_pt(best)} scores higher with under 10 % more parameters"


def _pt(p: Point) -> str:
    return f"{p.label} ({_k(p.params)}, {100 * p.score:.1f})"


def _k(n: int) -> str:
    return f"{n / 1e6:.3f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def points_from(records: list[dict], task: str, is_delta) -> list[Point]:
    """The task's seed-0 single-task runs as points, one per variant."""
    seen = {}
    for r in records:
        if (r.get("status") == "ok" and r.get("scenario") == "single" and r["task"] == task
                and r["seed"] == 0 and r["result"].get("harmonic_mean") is not None):
            seen[r["variant"]] = Point(r["label"], int(r["result"]["trainable_params"]),
                                       float(r["result"]["harmonic_mean"]),
                                       bool(is_delta(r.get("method", {}))))
    return list(seen.values())


def style(i: int, delta: bool) -> tuple[str, str]:
    """Colour and marker of the i-th point: matplotlib's ten colours repeat, so past the tenth
    point the shape changes and no two legend entries look alike (up to 30 points)."""
    shapes = ("o", "h", "p") if delta else ("s", "D", "^")
    return f"C{i % 10}", shapes[i // 10 % 3]


def figure(task: str, points: list[Point], path: Path, title: str) -> Path:
    """Harmonic mean against trainable parameters (log scale), Δ points filled, the frontier
    drawn as a step line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, p in enumerate(sorted(points, key=lambda p: p.params)):
        colour, shape = style(i, p.delta)
        ax.scatter(p.params, 100 * p.score, marker=shape,
                   facecolors=colour if p.delta else "none", edgecolors=colour,
                   label=p.label, zorder=3)
    front = frontier(points)
    ax.step([p.params for p in front], [100 * p.score for p in front], where="post",
            color="grey", lw=1, zorder=1, label="frontier")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("harmonic mean of base and patch top-1, %")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
