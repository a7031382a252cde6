"""``deltapatch eval``: score a saved task folder of any method on a test split (and the base
task) through the method's own forwards; prints JSON. Detection / segmentation folders are scored
by box mAP / IoU (:mod:`deltapatch.dense`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import metrics
from ..data import describe_builtins, load_test
from ..errors import DataError
from ..methods import load_task
from ..patch import CLASSIFICATION, read_config
from ..run import RunSpec
from ..train import device_of, evaluate
from .common import (
    add_options,
    backbone_args,
    command,
    device_args,
    load_model,
    patch_limit_args,
    print_json,
)


def arguments(p: argparse.ArgumentParser) -> None:
    backbone_args(p)
    patch_limit_args(p)
    p.add_argument("--patch", required=True, type=Path,
                   help="a task folder written by train (any method)")
    add_options(p, RunSpec, ("data", "base_data", "image_size", "base_image_size", "max_test",
                             "seed"), required={"data"},
                more_help={"data": f" (built-in: {describe_builtins()})"})
    device_args(p)


@command("eval", "score a saved task folder (any method) on a task's test split and the base "
                 "task; prints JSON", arguments)
def run(args: argparse.Namespace) -> int:
    RunSpec(backbone=args.backbone, data=args.data, image_size=args.image_size,
            base_image_size=args.base_image_size, max_test=args.max_test,
            seed=args.seed)  # bounds-checks the flags
    model = load_model(args)
    if read_config(args.patch).task != CLASSIFICATION:
        from ..dense.run import evaluate_folder

        print_json(evaluate_folder(model, args.patch, args.data, max_test=args.max_test))
        return 0
    own_size = model.preprocess.size  # the base task's, unless --base-image-size says
    task = load_task(model, args.patch)
    pre = task.config.preprocess.with_size(args.image_size)
    test, names = load_test(args.data, pre.size, max_test=args.max_test, seed=args.seed)
    if len(names) != task.config.num_classes:  # scores of another label space mean nothing
        raise DataError(f"{args.patch} was trained on {task.config.num_classes} classes but "
                        f"{args.data} has {len(names)}; evaluate it on the data it was trained "
                        "for")
    model.eval()
    device = device_of(model)
    patch_top1 = evaluate(task.outcome.patch_forward, test, pre, device=device)
    base_top1 = None
    if args.base_data:
        base, _ = load_test(args.base_data, args.base_image_size or own_size,
                            max_test=args.max_test, seed=args.seed)
        base_top1 = evaluate(task.outcome.base_forward, base, pre, device=device)
    facts = {"alpha": task.config.options["alpha"]} if "alpha" in task.config.options else {}
    print_json(metrics.report(data=args.data, patch_top1=patch_top1, base_top1=base_top1,
                              patch_bytes=metrics.folder_bytes(args.patch),
                              trainable_params=task.outcome.trainable_params,
                              n_test=len(test), method=task.config.method, device=str(device),
                              **facts))
    return 0
