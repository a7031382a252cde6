"""``deltapatch train``: one run (:func:`deltapatch.run.run_one`, or for ``--task detection|
segmentation`` :func:`deltapatch.dense.run.run_dense`) from flags; prints its JSON."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .. import distributed
from ..data import describe_builtins
from ..dense.run import DenseOptions
from ..errors import DeltaPatchError
from ..methods import METHODS, MethodOptions, get_method
from ..patch import CLASSIFICATION
from ..run import RunSpec, run_device, run_one
from ..train import TrainConfig
from .common import (
    add_options,
    backbone_args,
    command,
    device_args,
    parse_options,
    parse_stages,
    print_json,
    sigterm_unwinds,
)

RUN_FLAGS = ("data", "base_data", "image_size", "base_image_size", "max_train", "max_test", "max_val",
             "val_fraction", "method", "norm", "gate", "init", "name", "seed", "task")
DENSE_BATCH, DENSE_LR = 4, 1e-3  # dense heads: a few photos a step, AdamW
TRAIN_FLAGS = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "momentum",
               "warmup_epochs", "augment", "eval_batch_size", "cache_features", "cache_dtype",
               "progress")


def arguments(p: argparse.ArgumentParser) -> None:
    backbone_args(p)
    add_options(p, RunSpec, RUN_FLAGS, required={"data"},
                more_help={"data": f" (built-in: {describe_builtins()})",
                           "method": f": {', '.join(METHODS.names())}"})
    add_options(p, TrainConfig, TRAIN_FLAGS, defaults={"lr": None, "batch_size": None})
    device_args(p, precision=True)
    p.add_argument("--out", required=True, type=Path,
                   help="task folder to write (run/ inside holds the checkpoint and per-epoch "
                        "metrics; the same command again resumes an interrupted run)")
    p.add_argument("--stages", default="1",
                   help="Δ(n): the last n stages (an int), or comma-separated 0-based stage "
                        "indices / names; 0 is a head-only patch")
    p.add_argument("--reduction", type=int, default=4,
                   help="Δ-module second conv width C/r, 1..1024 and at most the patched stages' "
                        "channels (default 4: DESIGN.md; 2: the paper's counts)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option (repeatable; VALUE parsed as JSON when it can be), "
                        f"e.g. --option base_val_max=1000; keys by method: {method_keys()}; "
                        f"--task detection|segmentation: {', '.join(own_keys(DenseOptions))} "
                        "(docs/METHODS.md says what each does; default: none)")


def own_keys(options: type[MethodOptions]) -> list[str]:
    """The ``--option`` keys of an options class besides ``reduction``, which every method
    takes and which has a flag of its own."""
    return [k for k in options.declared() if k not in MethodOptions.declared()]


def method_keys() -> str:
    """Each method's own ``--option`` keys, read off its options class."""
    own = {name: own_keys(m.options) for name, m in sorted(METHODS.items())}
    return "; ".join(f"{name}: {', '.join(keys)}" for name, keys in own.items() if keys)


def spec_from(args: argparse.Namespace) -> RunSpec:
    """The run the flags describe; every value is checked here, before anything is loaded."""
    dense = args.task != CLASSIFICATION
    default_lr = DENSE_LR if dense else get_method(args.method).default_lr
    train = {k: getattr(args, k) for k in TRAIN_FLAGS}
    train["lr"] = default_lr if train["lr"] is None else train["lr"]
    if train["batch_size"] is None:  # detection batches are a few photos, not 128 thumbnails
        train["batch_size"] = DENSE_BATCH if dense else TrainConfig().batch_size
    config = TrainConfig(seed=args.seed, precision=args.precision, **train)
    return RunSpec(backbone=args.backbone, weights=args.weights, stages=parse_stages(args.stages),
                   train=config, options={"reduction": args.reduction,
                                          **parse_options(args.option)},
                   **{k: getattr(args, k) for k in RUN_FLAGS})


@command("train", "train a patch (or a baseline method) on a new task; prints JSON metrics",
         arguments)
def run(args: argparse.Namespace) -> int:
    with sigterm_unwinds():  # SIGTERM, like Ctrl-C, leaves a run that the same command resumes
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    spec = spec_from(args)
    device = run_device(args.device)  # not there: one line, exit 2, nothing written
    if spec.task == CLASSIFICATION:
        result = run_one(spec, args.out, device=device)
    else:
        if distributed.env_world() is not None:
            raise DeltaPatchError("torchrun trains classification patches only; run "
                                  f"--task {spec.task} as one process")
        from ..dense.run import run_dense

        result = run_dense(spec, args.out, device=device)
    if not distributed.is_main():  # torchrun: rank 0 alone writes and prints the result
        return 0
    tmp = args.out / "metrics.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out / "metrics.json")
    print_json(result)
    return 0
