"""One dense run (``deltapatch train --task detection|segmentation``): settings in
(:class:`~deltapatch.run.RunSpec`), the task folder and JSON metrics out.

Methods: ``delta`` with ``--stages N`` (Δ-stages + heads; ``--stages 0``, or ``linear``, trains
the heads alone on the frozen backbone) and ``finetune`` (heads + a trained copy of the whole
backbone). The run checks that the base task did not move: the backbone's fingerprint and its
logits on a probe batch are the same after training as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import metrics, store
from ..errors import DeltaPatchError
from ..methods.base import MethodOptions
from ..model import PatchedModel
from ..options import option
from ..patch import check_name
from ..run import RunSpec, placement_facts, run_device
from ..runfolder import claim_run_folder
from ..runinputs import build_model
from .data import load_dense_data
from .heads import DETECTION
from .task import (
    FINETUNE,
    DenseTask,
    add_dense_patch,
    dense_config,
    finetuned_task,
    head_bytes,
    save_dense,
)
from .train import evaluate_dense, fit_dense

METHODS = ("delta", "linear", FINETUNE)
DEFAULT_SIZE = {DETECTION: 320, "segmentation": 320}


@dataclass(frozen=True)
class DenseOptions(MethodOptions):
    """The ``--option`` keys of a detection or segmentation run, whatever its method."""

    channels: int = option("int", "width of the dense heads (default 64)", 64, min=1, max=4096)
    levels: list[int] | None = option("ints", "pyramid levels the heads read (default: picked "
                                      "by size)", min=0)


def options_of(spec: RunSpec) -> DenseOptions:
    return DenseOptions.parse(f"--task {spec.task}", spec.options)


def check_spec(spec: RunSpec) -> None:
    options_of(spec)
    if spec.method not in METHODS:
        raise DeltaPatchError(f"--method {spec.method} does not train {spec.task} heads; use "
                              f"{', '.join(METHODS)}")
    if spec.base_data:
        raise DeltaPatchError("--base-data scores a classification base task; a dense run "
                              "checks the base logits itself (base_unchanged)")


def task_name(spec: RunSpec) -> str:
    return check_name(spec.name or f"{spec.data}_{spec.task}")


def build_task(model: PatchedModel, spec: RunSpec, num_classes: int, class_names: list[str]
               ) -> DenseTask:
    size = spec.image_size or DEFAULT_SIZE[spec.task]
    opts = options_of(spec)
    channels, levels = opts.channels, opts.levels
    name = task_name(spec)
    if spec.method == FINETUNE:
        config = dense_config(model, name, spec.task, num_classes, levels=levels,
                              channels=channels, size=size, class_names=class_names)
        return finetuned_task(model, config)
    stages = 0 if spec.method == "linear" else spec.stages
    return add_dense_patch(model, name, spec.task, num_classes, stages, levels=levels,
                           channels=channels, size=size, init=spec.init,
                           class_names=class_names, method=spec.method)


def run_dense(spec: RunSpec, out: Path, device: str | torch.device | None = "cpu") -> dict:
    """Train, save, score; returns the JSON metrics ``train`` prints. Training is the shared
    loop's: ``out/run`` holds the checkpoint and per-epoch metrics, and the same call again
    resumes an interrupted run (refused if its settings differ)."""
    check_spec(spec)
    device = run_device(device)  # a device that is not there: refused before anything is written
    out = Path(out)
    store.check_writable(out)
    t0 = time.perf_counter()
    torch.manual_seed(spec.seed)
    model = build_model(spec.backbone, spec.weights, device=device)
    model.resolve_stages(spec.stages)  # everything is checked and read before out is locked
    task_name(spec)
    data = load_dense_data(spec.data, max_train=spec.max_train, max_test=spec.max_test)
    with store.FolderLock(out):
        store.recover(out)
        claim_run_folder(out, {**spec.settings(), "backbone_fingerprint": model.fingerprint})
        probe = torch.Generator().manual_seed(0)
        x = torch.randn(4, 3, model.preprocess.size, model.preprocess.size,
                        generator=probe).to(device)
        with torch.inference_mode():
            base_before = model(x)
        torch.manual_seed(spec.seed)
        task = build_task(model, spec, data.num_classes, data.class_names)
        cfg = spec.train
        fitted = fit_dense(task, data, cfg, out / "run")
        scores = evaluate_dense(task, data.test)
        save_dense(model, task, out)
        with torch.inference_mode():
            base_same = bool(torch.equal(model(x), base_before))
        trainable = metrics.count_params(task.owned, trainable=True)
        head = head_bytes(task)
        return {"task": spec.task, "method": spec.method, "data": spec.data,
                "backbone": spec.backbone, **scores, "base_unchanged": base_same,
                "trainable_params": trainable, "patch_bytes": metrics.folder_bytes(out),
                "head_bytes": head,
                "backbone_bytes": metrics.tensor_bytes(model.backbone.state_dict().values()),
                "n_train": len(data.train), "seed": spec.seed, "epochs": cfg.epochs,
                "lr": cfg.lr, "size": task.config.options["size"],
                "levels": task.config.options["levels"], "history": fitted.history,
                **placement_facts(device, cfg.precision),
                "wall_seconds": round(time.perf_counter() - t0, 2)}


def evaluate_folder(model: PatchedModel, folder: Path, data: str, *,
                    max_test: int | None = None) -> dict:
    """``deltapatch eval`` of a dense task folder."""
    from .task import load_dense

    task = load_dense(model, folder)
    samples = load_dense_data(data, max_test=max_test).test
    return {"task": task.kind, "method": task.config.method, "data": data,
            **evaluate_dense(task, samples),
            "trainable_params": int(task.config.trainable_params or 0),
            "patch_bytes": metrics.folder_bytes(folder)}
