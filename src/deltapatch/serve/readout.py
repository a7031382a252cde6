"""Logits → what a request is answered with (top-k scores and indices, logits when asked),
computed where the logits are, and brought to the host in **one** copy per batch.

A GPU answer read row by row would pay one device→host synchronisation per row and per task;
here rows that ask alike (same number of classes, same k) get one softmax and one top-k, every
result of the batch is packed into one ``int32`` tensor on the device (float32 values by their
bits, so nothing is rounded), and a single ``.cpu()`` brings it over. Softmax and top-k act on
each row alone, so a row's answer is the same in any group: on the CPU it equals, bit for bit,
``logits[None].softmax(1)`` and ``topk`` on that row by itself (as ``deltapatch predict`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Ask:
    """What one task's answer to one request needs."""

    num_classes: int
    """The task's classes: a routed batch pads narrower heads with ``-inf``, cut off here."""
    top_k: int
    logits: bool = False
    """Return the logits too (``return_logits``)."""

    @property
    def k(self) -> int:
        return min(self.top_k, self.num_classes)


@dataclass(frozen=True)
class Answer:
    """One task's answer to one request, on the host: the top k, best first."""

    scores: list[float]
    indices: list[int]
    logits: list[float] | None
    lambdas: dict[int, tuple[str, list[list[float]]]] | None = None
    """Λ per Δ-stage when asked (``return_lambdas``): ``{stage: (stage name, [[values]])}``,
    one row (this image), the values in :func:`deltapatch.delta.skip_index` order."""


@dataclass(frozen=True)
class Packed:
    """A batch's answers packed on the device, and where each row's lie in it."""

    data: Tensor
    """One flat ``int32`` tensor on the logits' device."""
    groups: list[tuple[tuple[int, int, bool], list[int]]]
    """``((classes, k, logits), row numbers)`` per block of ``data``, in order."""
    rows: int


def read_out(rows: Sequence[tuple[Tensor, Ask]]) -> list[Answer]:
    """The answer of each ``(logits row, ask)``; all rows on one device, one copy to the host."""
    packed = pack(rows)
    return unpack(packed, packed.data.cpu())


def pack(rows: Sequence[tuple[Tensor, Ask]]) -> Packed:
    """Every answer of ``rows`` in one tensor on their device: one softmax and one top-k per
    group of rows that ask alike."""
    groups: dict[tuple[int, int, bool], list[int]] = {}
    for i, (_, ask) in enumerate(rows):
        groups.setdefault((ask.num_classes, ask.k, ask.logits), []).append(i)
    blocks = [_block(torch.stack([rows[i][0][:classes] for i in members]).float(), k, logits)
              for (classes, k, logits), members in groups.items()]
    data = torch.cat([b.reshape(-1) for b in blocks]) if blocks else \
        torch.empty(0, dtype=torch.int32)
    return Packed(data, list(groups.items()), len(rows))


def unpack(packed: Packed, host: Tensor) -> list[Answer]:
    """The answers, from ``packed.data`` brought to the host (``host``)."""
    answers: list[Answer | None] = [None] * packed.rows
    start = 0
    for (classes, k, logits), members in packed.groups:
        width = 2 * k + (classes if logits else 0)
        block = host[start:start + width * len(members)].view(len(members), width)
        start += width * len(members)
        for i, row in zip(members, block, strict=True):
            answers[i] = _unpack(row, k, classes if logits else 0)
    return answers


def _block(logits: Tensor, k: int, with_logits: bool) -> Tensor:
    """``(n, 2k [+ C])`` int32: top-k scores (float32 bits), their indices, the logits."""
    top = logits.softmax(1).topk(k)
    parts = [top.values.view(torch.int32), top.indices.to(torch.int32)]
    if with_logits:
        parts.append(logits.view(torch.int32))
    return torch.cat(parts, 1)


def _unpack(packed: Tensor, k: int, classes: int) -> Answer:
    scores = packed[:k].view(torch.float32).tolist()
    logits = packed[2 * k:2 * k + classes].view(torch.float32).tolist() if classes else None
    return Answer(scores, packed[k:2 * k].tolist(), logits)
