"""``bn-adapt``: per-task BatchNorm statistics and affine parameters (every BN of the network)
and a new head, nothing else (Li et al., AdaBN-style adaptation made trainable). It runs through
the same forward hooks as the residual adapters (:mod:`.taskhooks`), with no adapter."""

from __future__ import annotations

from .adapters import load_hooked, train_hooked
from .base import Method, register_method

register_method(Method("bn-adapt", "per-task BatchNorms (statistics + affine) and a new head",
                       lambda ctx: train_hooked(ctx, "bn-adapt", None), load_hooked))
