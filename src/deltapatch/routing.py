"""Per-row routing of a mixed batch: rows grouped by task, each group through its own function,
results put back in row order (padded to the widest output). What :class:`~deltapatch.PatchedModel`
uses to serve several tasks in one forward.

A Δ-stage's rows differ only in their Λ, their task norm and their head, so a stage that several
tasks (or the base task) share in one batch runs its frozen blocks ONCE for all rows with a
per-row Λ (:func:`mixed_stage`): each patch's gate on its own rows, the base network's Λ on every
other row. Base rows then get exactly the backbone's outputs (see ``delta.weighted_blocks``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .baseinit import existing_targets
from .delta import DeltaStage, weighted_blocks


def delta_fn(delta: nn.Module, blocks: list, stage: int, record: dict | None,
             first_residual: Tensor | None = None):
    def run(h: Tensor) -> Tensor:
        out, lam = delta(h, blocks, first_residual)
        if record is not None:
            record[stage] = lam
        return out
    return run


def group_rows(names: list[str], empty: str, device: torch.device | None = None
               ) -> dict[str, Tensor]:
    """Row indices per task name, on ``device`` (the batch's). An empty batch is one empty group
    of task ``empty``, so it runs the same path as any batch and gives an empty result of that
    task's width. The names live on the host, so the indices are made there and sent ahead
    without waiting: nothing in routing reads a device value back."""
    rows: dict[str, list[int]] = {}
    for r, n in enumerate(names):
        rows.setdefault(n, []).append(r)
    if not rows:
        rows = {empty: []}
    return {n: _on(torch.tensor(r, dtype=torch.long), device) for n, r in rows.items()}


def _on(t: Tensor, device: torch.device | None) -> Tensor:
    if device is None or t.device == device:
        return t
    return t.to(device, non_blocking=True)  # a copy from host memory: no device sync


def scatter_rows(h: Tensor, groups: dict[str, Tensor], fns: dict, fill: float = 0.0) -> Tensor:
    """Apply ``fns[g]`` to the rows of each group and put results back in row order; outputs of
    different widths are padded with ``fill``. One group covering all rows skips the indexing."""
    n_rows = h.shape[0]
    if len(groups) == 1:
        (g, idx), = groups.items()
        if idx.numel() == n_rows:
            return fns[g](h)
    return place_rows({g: fns[g](h.index_select(0, idx)) for g, idx in groups.items()}, groups,
                      n_rows, fill)


def place_rows(outs: dict[str, Tensor], groups: dict[str, Tensor], n_rows: int,
               fill: float = 0.0) -> Tensor:
    """Each group's output rows put back in row order in one tensor; outputs of different widths
    are padded with ``fill``. One group covering all rows is returned as it is."""
    if len(outs) == 1:
        (g, o), = outs.items()
        if groups[g].numel() == n_rows:
            return o
    first = next(iter(outs.values()))
    width = max(o.shape[1] for o in outs.values())
    out = first.new_full((n_rows, width, *first.shape[2:]), fill)
    for g, o in outs.items():
        if o.shape[1] < width:
            o = torch.cat([o, o.new_full((o.shape[0], width - o.shape[1], *o.shape[2:]), fill)], 1)
        out.index_copy_(0, groups[g], o)  # in place: one output buffer, not one per group
    return out


def mixed_stage(h: Tensor, s: int, blocks: list, deltas: dict[str, DeltaStage],
                groups: dict[str, Tensor], record: dict | None,
                first_residual: Tensor | None = None) -> Tensor:
    """Stage ``s`` for a batch whose rows belong to several tasks, in one pass of its blocks.

    Λ starts as the base network's for every row (1 on the existing shortcuts, 0 on the new
    skips); each patched task's gate fills its own rows. Task norms apply to their own rows
    only, where the task puts them (``norm="skip"`` or ``"output"``)."""
    k = len(blocks)
    lam = _on(existing_targets(k).to(h.dtype), h.device).expand(h.shape[0], -1).clone()
    for n, d in deltas.items():
        rows = d.gate(h.index_select(0, groups[n]))
        lam = lam.index_copy(0, groups[n], rows.to(lam.dtype))
        if record is not None:
            record.setdefault(n, {})[s] = rows
    skip = {n: d.norm for n, d in deltas.items() if d.norm_at == "skip"}
    out = {n: d.norm for n, d in deltas.items() if d.norm_at == "output"}
    h = weighted_blocks(h, blocks, lam, first_residual, on_rows(groups, skip) if skip else None)
    return on_rows(groups, out)(h) if out else h


def on_rows(groups: dict[str, Tensor], fns: dict[str, nn.Module]) -> Callable[[Tensor], Tensor]:
    """``fns[n]`` on group ``n``'s rows, every other row unchanged. The other rows are the
    other groups' (known on the host), not a mask's ``nonzero``, which would wait for the device."""
    parts = {n: groups[n] for n in fns}
    rest = [idx for n, idx in groups.items() if n not in fns]
    if rest and sum(idx.numel() for idx in rest):
        parts[""] = torch.cat(rest) if len(rest) > 1 else rest[0]

    def apply(t: Tensor) -> Tensor:
        return scatter_rows(t, parts, {**fns, "": nn.Identity()})
    return apply
