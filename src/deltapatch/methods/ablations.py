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

from .patching import patch_method, train_patch

ABLATIONS: dict[str, str] = {  # name → gate
    "skip-learnable": "existing",
    "allskips": "fixed",
    "allskips-learnable": "learned",
    "random": "random",
}

for _name, _gate in ABLATIONS.items():
    for _suffix, _norm in (("", "none"), ("+bn", "output")):
        patch_method(f"{_name}{_suffix}", f"Table 8 ablation: gate '{_gate}', norm '{_norm}'",
                     lambda ctx, m=f"{_name}{_suffix}", g=_gate, n=_norm:
                     train_patch(ctx, m, ctx.stages, g, n))
