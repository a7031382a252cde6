"""``deltapatch demo``: the offline end-to-end demo (:mod:`deltapatch.demo`)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from .. import demo
from ..devices import resolve_device
from .common import command, device_args


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("deltapatch-demo"),
                   help="report folder (default ./deltapatch-demo)")
    fast, full = demo.PROFILES["fast"], demo.PROFILES["full"]
    p.add_argument("--fast", action="store_true",
                   help=f"quicker profile ({fast.max_train} train / {fast.max_test} test images "
                        f"a task, {fast.epochs} epochs; the full one: {full.max_train} / "
                        f"{full.max_test}, {full.epochs} epochs): for CI")
    p.add_argument("--image-size", type=int, default=None,
                   help=f"input size of the patch tasks (default {full.image_size})")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"training epochs of each patch (default: {full.epochs}; "
                        f"{fast.epochs} with --fast)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default 1: on a shared 2-core machine one thread was "
                        "5x faster than two; raise it on an idle machine)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the data subsets, patch init and batch order (default 0)")
    p.add_argument("--no-progress", action="store_true",
                   help="draw no progress bars (they are drawn only on a terminal anyway)")
    device_args(p)


@command("demo", demo.HELP, arguments)
def run(args: argparse.Namespace) -> int:
    missing = demo.missing_packages()
    if missing:
        print("deltapatch demo needs packages that are not installed: " + ", ".join(missing)
              + f"\n  pip install {' '.join(missing)}\n  (or: pip install 'deltapatch[demo]')",
              file=sys.stderr)
        return 2
    for flag in ("image_size", "epochs", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be ≥ 1, got {value}")
    device = resolve_device(args.device)  # not there: one line, exit 2, nothing written
    cfg = demo.PROFILES["fast" if args.fast else "full"]
    cfg = replace(cfg, seed=args.seed, image_size=args.image_size or cfg.image_size,
                  epochs=args.epochs or cfg.epochs, threads=args.threads or cfg.threads)
    line = "deltapatch demo" + (" --fast" if args.fast else "") + f" --out {args.out}"
    demo.run(args.out, cfg, progress=not args.no_progress, command_line=line, device=device)
    return 0
