"""Per-row routing of a mixed batch: rows grouped by task, each group through its own function,
results put back in row order (padded to the widest output). What :class:`~deltapatch.PatchedModel`
uses to serve several tasks in one forward."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def delta_fn(delta: nn.Module, blocks: list, stage: int, record: dict | None,
             first_residual: Tensor | None = None):
    def run(h: Tensor) -> Tensor:
        out, lam = delta(h, blocks, first_residual)
        if record is not None:
            record[stage] = lam
        return out
    return run


def group_rows(names: list[str], empty: str) -> dict[str, Tensor]:
    """Row indices per task name. An empty batch is one empty group of task ``empty``, so it
    runs the same path as any batch and gives an empty result of that task's width."""
    rows: dict[str, list[int]] = {}
    for r, n in enumerate(names):
        rows.setdefault(n, []).append(r)
    if not rows:
        return {empty: torch.zeros(0, dtype=torch.long)}
    return {n: torch.tensor(r, dtype=torch.long) for n, r in rows.items()}


def scatter_rows(h: Tensor, groups: dict[str, Tensor], fns: dict, fill: float = 0.0) -> Tensor:
    """Apply ``fns[g]`` to the rows of each group and put results back in row order; outputs of
    different widths are padded with ``fill``. One group covering all rows skips the indexing."""
    n_rows = h.shape[0]
    if len(groups) == 1:
        (g, idx), = groups.items()
        if idx.numel() == n_rows:
            return fns[g](h)
    outs = {g: fns[g](h.index_select(0, idx)) for g, idx in groups.items()}
    first = next(iter(outs.values()))
    width = max(o.shape[1] for o in outs.values())
    out = first.new_full((n_rows, width, *first.shape[2:]), fill)
    for g, o in outs.items():
        if o.shape[1] < width:
            o = torch.cat([o, o.new_full((o.shape[0], width - o.shape[1], *o.shape[2:]), fill)], 1)
        out.index_copy_(0, groups[g], o)  # in place: one output buffer, not one per group
    return out
