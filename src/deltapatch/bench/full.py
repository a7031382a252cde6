"""Full training ± Δ (paper Tables 5, 12, 13): every backbone weight trains with a new head,
with or without Δ-stages trained jointly. This is ordinary training, not patching."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from .. import metrics
from ..batches import evaluate
from ..data.sets import ImageSet
from ..run import RunSpec, placement_facts
from ..runinputs import build_model, task_data
from ..train import fit
from .jobs import Job, describe, fingerprint, grid, run_spec, scenario, tuning
from .schema import TASK_KEYS, Shape
from .suite import Suite


def train_full(spec: RunSpec, out: Path, extra_tests: dict[str, ImageSet] | None = None,
               device: torch.device = torch.device("cpu")) -> dict:
    """Train every weight of the backbone (random init: from scratch; pretrained: plain
    fine-tuning) with a new head, and with ``spec.stages`` > 0 Δ-stages trained jointly.
    The backbone's BatchNorms train too: this is ordinary training, not patching.
    ``extra_tests`` are scored too (``top1_by_test``: the ZSDA target domain)."""
    t0 = time.perf_counter()
    torch.manual_seed(spec.seed)
    model = build_model(spec.backbone, spec.weights, spec.image_size, device)
    data = task_data(spec.data, model.preprocess.size, seed=spec.seed,
                     max_train=spec.max_train, max_test=spec.max_test,
                     val_fraction=spec.val_fraction, max_val=spec.max_val)
    torch.manual_seed(spec.seed)
    model.add_patch("task", data.num_classes, stages=spec.stages, gate=spec.gate,
                    norm=spec.norm if spec.stages else "none", init=spec.init, method="full")
    model.backbone.requires_grad_(True)
    owned = nn.ModuleDict({"backbone": model.backbone, "patch": model.get_patch("task")})
    forward = lambda x: model(x, patch="task")
    result = fit(forward, owned, data, model.preprocess, spec.train, run_dir=out / "run",
                 set_mode=owned.train)
    owned.eval()
    top1 = evaluate(forward, data.test, model.preprocess, device=device)
    extra = {}
    if extra_tests:
        extra["top1_by_test"] = {k: round(evaluate(forward, t, model.preprocess, device=device),
                                          6)
                                 for k, t in extra_tests.items()}
        extra["n_by_test"] = {k: len(t) for k, t in extra_tests.items()}
    return metrics.report(method="full", data=spec.data, patch_top1=top1, base_top1=None,
                          trainable_params=metrics.count_params(owned),
                          patch_bytes=metrics.tensor_bytes(owned.state_dict().values()),
                          n_test=len(data.test), seed=spec.seed, best_epoch=result.best_epoch,
                          val_top1=result.best_val_top1, delta_stages=spec.stages,
                          wall_seconds=round(time.perf_counter() - t0, 2),
                          **placement_facts(device, spec.train.precision), **extra)


def _full(kind: str):
    def build(suite: Suite, entry: dict, seeds: int) -> list[Job]:
        jobs = []
        for bb, v, seed in grid(suite, entry, seeds):
            for t in entry["tasks"]:
                task = suite.tasks[t]

                def run(out: Path, lr=None, bb=bb, task=task, v=v, seed=seed) -> dict:
                    spec = run_spec(suite, bb, task, v, seed, lr)
                    if kind == "scratch":
                        spec.weights = None
                    return train_full(spec, out, device=suite.device)

                jobs.append(Job(f"{kind}/{bb}/{t}/{v.key}/seed{seed}", kind, kind, bb, t,
                                v.key, v.label, seed, run, describe(v),
                                fingerprint(suite, bb, [task], v),
                                **tuning(suite, task, v)))
        return jobs
    return build


scenario("scratch", Shape({"tasks": TASK_KEYS}))(_full("scratch"))
scenario("transfer", Shape({"tasks": TASK_KEYS}))(_full("transfer"))
