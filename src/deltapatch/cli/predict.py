"""``deltapatch predict``: classify image files with a task folder (any method) or the base
task; one JSON line per image. With ``--server URL`` a running ``deltapatch serve`` answers
instead, and ``--patch`` names a task loaded there."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..data.sets import to_image_tensor
from ..data.sources import decode_image
from ..errors import DataError
from ..methods import load_task
from ..model import BASE
from ..patch import CLASSIFICATION, read_config
from ..train import device_of, model_inputs
from .common import backbone_args, command, device_args, load_model, patch_limit_args, print_json


def arguments(p: argparse.ArgumentParser) -> None:
    backbone_args(p, required=False)
    patch_limit_args(p)
    p.add_argument("--patch", type=Path, default=None,
                   help="a task folder written by train (default: the base task); with --server "
                        "the name of a patch the server has loaded")
    p.add_argument("--server", default=None,
                   help="URL of a running `deltapatch serve` (then --backbone is not needed; "
                        "default: none, predict here)")
    p.add_argument("--top", type=int, default=5, help="how many classes per image (default 5)")
    p.add_argument("--draw", type=Path, default=Path("predictions"),
                   help="folder for the pictures of a detection / segmentation task's "
                        "predictions (boxes or masks drawn; default: ./predictions)")
    device_args(p)
    p.add_argument("images", nargs="+", type=Path, help="image files")


@command("predict", "classify image files with a task folder (or the base task); one JSON "
                    "line each", arguments)
def run(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise ValueError(f"--top must be ≥ 1, got {args.top}")
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise DataError(f"no image file {', '.join(missing[:3])}")
    if args.server is not None:
        return _remote(args)
    if args.backbone is None:
        raise ValueError("--backbone is required (or --server URL)")
    model = load_model(args).eval()
    if args.patch is not None and read_config(args.patch).task != CLASSIFICATION:
        return _dense(model, args)
    name, labels, pre, forward = BASE, model.base_labels, model.preprocess, model
    if args.patch is not None:
        task = load_task(model, args.patch)
        name, labels = task.config.name, task.config.labels
        pre, forward = task.config.preprocess, task.outcome.patch_forward
    device = device_of(model)
    with torch.inference_mode():
        for path in args.images:
            x = to_image_tensor(decode_image(path.read_bytes(), str(path))[None], pre.size)
            probs = forward(model_inputs(x, pre, device)).float().softmax(1)[0]
            top = [t.cpu() for t in probs.topk(min(args.top, probs.numel()))]
            print_json({"image": str(path), "task": name, "top": [
                {"class": int(i), "name": labels[int(i)],
                 "prob": round(float(p), 5)}
                for p, i in zip(*top, strict=True)]})
    return 0


def _remote(args: argparse.Namespace) -> int:
    """The same JSON lines, answered by a server."""
    from ..serve.client import Client

    client = Client(args.server)
    name = str(args.patch) if args.patch is not None else BASE
    for path in args.images:
        answer = client.predict(path.read_bytes(), patch=name, top_k=args.top)
        print_json({"image": str(path), "task": answer["patch"], "top": [
            {"class": t["index"], "name": t["label"], "prob": round(t["score"], 5)}
            for t in answer["top_k"]]})
    return 0


def _dense(model, args: argparse.Namespace) -> int:
    """Boxes or mask shares as JSON, and a picture of each in ``--draw``."""
    from ..dense.draw import predict_one, save_png
    from ..dense.task import load_dense

    task = load_dense(model, args.patch)
    for path in args.images:
        image = torch.from_numpy(decode_image(path.read_bytes(), str(path)).copy())
        answer, drawn = predict_one(task, image.permute(2, 0, 1).contiguous())
        picture = save_png(drawn, args.draw / f"{path.stem}.png")
        print_json({"image": str(path), "task": task.config.name, "kind": task.kind,
                    **answer, "picture": str(picture)})
    return 0
