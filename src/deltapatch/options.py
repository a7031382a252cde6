"""Settings dataclasses describe their own options: each field's ``metadata`` carries its help
text, bounds and choices. The CLI's flags, the accepted suite keys and validation are all derived
from that one definition (:class:`~deltapatch.train.TrainConfig`, :class:`~deltapatch.run.RunSpec`)."""

from __future__ import annotations

import math
from dataclasses import fields


def opt(help: str, **meta) -> dict:
    """Field metadata: ``help``, and optionally ``min``/``max`` bounds or ``choices``."""
    return {"help": help, **meta}


def validate(obj) -> None:
    """Refuse a field outside its bounds or choices, naming it as the CLI spells it."""
    for f in fields(obj):
        v, flag = getattr(obj, f.name), f.name.replace("_", "-")
        choices = f.metadata.get("choices")
        if choices and v is not None and v not in choices:
            raise ValueError(f"{flag} must be one of {', '.join(choices)}, got {v!r}")
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            bounds = f"≥ {lo}" if hi is None else f"in {lo}..{hi}"
            raise ValueError(f"{flag} must be {bounds}, got {v}")
