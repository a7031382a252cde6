"""``deltapatch info``: what a task folder holds (config, tensors, sizes) as JSON, read with
the same checks as loading it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import metrics
from ..methods.artefact import method_of
from ..patch import TENSORS_FILE, read_patch
from ..store import read_config_json
from .common import command


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("patch", type=Path, help="a task folder written by train (any method)")


@command("info", "show what a task folder holds (config, tensors, sizes) as JSON", arguments)
def run(args: argparse.Namespace) -> int:
    config, tensors = read_patch(args.patch)  # every check loading does
    method_of(config, args.patch)
    out = read_config_json(args.patch)
    out.update({
        "tensors": len(tensors),
        "parameters": metrics.learned_values(tensors),
        "tensor_bytes": (args.patch / TENSORS_FILE).stat().st_size,
        "patch_bytes": metrics.folder_bytes(args.patch),
    })
    print(json.dumps(out, indent=2))
    return 0
