"""``deltapatch export``: the base model and task folders as one ONNX graph (fan-out).

``--device`` is where the graph is traced; the graph names no device, so it runs on any of
onnxruntime's providers whatever device traced it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data import check_data_options
from ..export import MAX_OPSET, MIN_OPSET, OPSET, check_opset, export_onnx, task_names
from ..methods import load_task
from .common import (
    backbone_args,
    command,
    device_args,
    load_model,
    patch_folders_arg,
    patch_limit_args,
    print_json,
)


def arguments(p: argparse.ArgumentParser) -> None:
    backbone_args(p)
    patch_limit_args(p)
    patch_folders_arg(p, "Δ-patch folder(s); none exports the base model alone")
    p.add_argument("--only", action="store_true",
                   help="leave the base task's output out (the patches alone)")
    p.add_argument("--out", required=True, type=Path, help="the .onnx file to write")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size of the example batch (default: the backbone's; the batch "
                        "size stays dynamic)")
    p.add_argument("--opset", type=int, default=OPSET,
                   help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default {OPSET})")
    device_args(p)


@command("export", "export the base model and patches as one ONNX graph (outputs '__base__' "
                   "and each patch's name; dynamic batch)", arguments)
def run(args: argparse.Namespace) -> int:
    check_data_options(size=args.image_size)
    check_opset(args.opset)
    if args.out.exists() and args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give a file name such as model.onnx")
    model = load_model(args)
    for folder in args.patch:
        task = load_task(model, folder)
        if task.config.name not in model.patches:
            raise ValueError(f"{folder} holds a '{task.config.method}' task; only Δ-patches "
                             "(delta, linear, the skip ablations) export into the fan-out graph")
    names = task_names(model, args.only)
    out = export_onnx(model, args.out, names, args.image_size, args.opset)
    print_json({"onnx": str(out), "outputs": names, "opset": args.opset,
                "bytes": out.stat().st_size})
    return 0
