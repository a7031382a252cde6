"""``deltapatch verify``: prove that base outputs stay bit-identical with task folders (any
method) loaded, used, disabled and removed, and that no backbone tensor changed; exit 1 if not.

Every check runs on ``--device``: the inputs are made on the host (seeded, so the same on every
device) and moved there once. ``--onnx`` compares an exported graph run by onnxruntime on
``--provider`` with the PyTorch model on ``--device``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..backbones import load_backbone
from ..data import check_data_options, load_test
from ..devices import resolve_device, to_device
from ..export import PROVIDERS, absent, session_providers, verify_onnx
from ..methods import load_task
from ..model import PatchedModel
from ..patch import fingerprint
from .common import (
    backbone_args,
    command,
    device_args,
    limit_patches,
    patch_folders_arg,
    patch_limit_args,
    print_json,
)

MAX_INPUT_BYTES = 2 << 30
"""Largest input batch verify allocates: -n 4096 at 4096 px would be 824 GB, and the machine
would kill the process (or swap) instead of saying so."""


def arguments(p: argparse.ArgumentParser) -> None:
    backbone_args(p)
    patch_limit_args(p)
    patch_folders_arg(p, "task folder(s) written by train (any method)")
    p.add_argument("--onnx", type=Path, default=None,
                   help="instead: run this exported graph in onnxruntime and compare every "
                        "output with PyTorch (base logits to 1e-5, patches to 1e-4, relative "
                        "to the logits' scale); --patch gives the graph's patches (default: "
                        "none, the PyTorch checks)")
    p.add_argument("--provider", choices=tuple(PROVIDERS), default=None,
                   help="with --onnx: onnxruntime's execution provider (default cpu; cuda needs "
                        "onnxruntime-gpu); the PyTorch side runs on --device")
    device_args(p)
    p.add_argument("--data", default=None, help="take inputs from this data's test split "
                   "(default: random normal inputs)")
    p.add_argument("-n", type=int, default=16, help="number of inputs (default 16, at most 4096)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size in pixels (default: the backbone's)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random inputs or of the --data subset (default 0)")


def _inputs(args: argparse.Namespace, backbone) -> torch.Tensor:
    if not 1 <= args.n <= 4096:
        raise ValueError(f"-n must be in 1..4096, got {args.n}")
    size = args.image_size or backbone.deltapatch_preprocess.size
    check_data_options(size=size)
    need = args.n * 3 * size * size * 4  # float32 inputs, before any activation
    if need > MAX_INPUT_BYTES:
        raise ValueError(f"verify -n {args.n} at {size} px needs {need / 2**30:.1f} GiB of "
                         f"inputs alone (at most {MAX_INPUT_BYTES >> 30} GiB); lower -n or "
                         "--image-size")
    if args.data:
        x = load_test(args.data, size, max_test=args.n, seed=args.seed)[0].images
        return backbone.deltapatch_preprocess.normalize(x)
    return torch.randn(args.n, 3, size, size, generator=torch.Generator().manual_seed(args.seed))


@command("verify", "prove base outputs are bit-identical with and without task folders loaded "
                   "(or an ONNX export equal to PyTorch); exit 1 if not", arguments)
def run(args: argparse.Namespace) -> int:
    if args.provider is not None and args.onnx is None:
        raise ValueError("--provider chooses where onnxruntime runs --onnx FILE; without --onnx "
                         "leave it out (--device places the PyTorch checks)")
    if args.onnx is None and not args.patch:
        raise ValueError("give --patch DIR... (or --onnx FILE)")
    if args.onnx is not None:
        _onnx_ready(args)
    device = resolve_device(args.device)
    backbone = load_backbone(args.backbone, args.weights, device=device)
    x = to_device(_inputs(args, backbone), device)
    if args.onnx is not None:
        return _verify_onnx(args, backbone, x)
    with torch.inference_mode():
        before, fp_before = backbone(x), fingerprint(backbone)
        model = limit_patches(PatchedModel(backbone).eval(), args)
        tasks = []  # each task with the patch names it attached to `model` (Δ-family only)
        for folder in args.patch:
            known = set(model.patches)
            tasks.append((load_task(model, folder), set(model.patches) - known))
        checks = {"base_with_tasks_loaded": torch.equal(model(x), before)}
        names = [task.config.name for task, _ in tasks]
        for i, (task, attached) in enumerate(tasks):
            label = names[i] if names.count(names[i]) == 1 else f"{names[i]}#{i}"
            task.outcome.patch_forward(x)  # exercise every task, then the base again
            checks[f"base_after_running_{label}"] = torch.equal(model(x), before)
            for name in attached:
                model.set_patch(name)
                with model.disable_patch():
                    checks[f"base_with_{label}_disabled"] = torch.equal(model(x), before)
                model.set_patch(None)
                model.remove_patch(name)
        checks["base_after_removal"] = torch.equal(model(x), before)
        checks["backbone_weights_unchanged"] = fingerprint(backbone) == fp_before
    ok = all(checks.values())
    print_json({"ok": ok, "n_inputs": int(x.shape[0]), "device": str(x.device),
                "tasks": names, "methods": [t.config.method for t, _ in tasks],
                "checks": checks})
    return 0 if ok else 1


def _onnx_ready(args: argparse.Namespace) -> None:
    """The file and the provider, checked before any model is built."""
    if not args.onnx.is_file():
        raise ValueError(f"no ONNX file {args.onnx}")
    session_providers(args.provider or "cpu")


def _verify_onnx(args: argparse.Namespace, backbone, x: torch.Tensor) -> int:
    model = PatchedModel(backbone).eval()
    for folder in args.patch:
        load_task(model, folder)
    provider = args.provider or "cpu"
    checks = verify_onnx(args.onnx, model, x, provider)
    checks += absent(checks, list(model.patches))  # every patch given must be in the graph
    ok = all(c.ok for c in checks)
    print_json({"ok": ok, "onnx": str(args.onnx), "n_inputs": int(x.shape[0]),
                "provider": provider, "device": str(x.device),
                "outputs": {c.name: {"max_abs_diff": c.max_abs_diff, "logit_scale": c.scale,
                                     "tolerance": c.tolerance, "ok": c.ok,
                                     **({"problem": c.problem} if c.problem else {})}
                            for c in checks}})
    problems = [f"'{c.name}' {c.problem}" for c in checks if c.problem]
    if problems:  # a check that ran and failed: exit 1, and say why on stderr
        print(f"deltapatch verify: check failed: {args.onnx}: {'; '.join(problems)}",
              file=sys.stderr)
    return 0 if ok else 1
