"""The skip ablations of the paper's Table 8 as named methods (all are Δ-stages with another gate):

================================  =========  ======  ==========================================
name                              gate       norm    paper row
================================  =========  ======  ==========================================
``skip-learnable``                existing   none    + Learnable Skip connections
``skip-learnable+bn``             existing   output  (same, with the patch's BatchNorm)
``allskips``                      fixed      none    + All Skips
``allskips+bn``                   fixed      output  + All Skips + BN
``allskips-learnable``            learned    none    + All Skips (Learnable)
``allskips-learnable+bn``         learned    output  + All Skips (Learnable) + BN
``random``                        random     none    + Random
``random+bn``                     random     output  (Random with the patch's BatchNorm)
================================  =========  ======  ==========================================

``--stages`` picks the stages as for ``delta``; ``linear`` is the "+ FC" row and ``delta`` the
Δ-Networks row (with ``--norm`` for its own BN placement).
"""

from __future__ import annotations

from .base import MethodContext, MethodOutcome, register_method
from .delta import _train_patch

ABLATIONS: dict[str, str] = {  # name → gate
    "skip-learnable": "existing",
    "allskips": "fixed",
    "allskips-learnable": "learned",
    "random": "random",
}


def _register(name: str, gate: str, norm: str) -> None:
    @register_method(name)
    def run(ctx: MethodContext) -> MethodOutcome:
        return _train_patch(ctx, ctx.stages, gate, norm, name)


for _name, _gate in ABLATIONS.items():
    _register(_name, _gate, "none")
    _register(f"{_name}+bn", _gate, "output")
