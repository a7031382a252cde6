"""Run one method on one task and score it: the single code path of ``deltapatch train`` and of
every single-task cell of ``deltapatch bench``, so a bench number is exactly what ``train``
would print for the same arguments.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import metrics
from ..backbones import load_backbone
from ..data import load_data, load_test
from ..data.sets import ImageSet, TaskData
from ..methods.common import cap
from ..model import PatchedModel
from ..train import TrainConfig, evaluate


def needs_base_data(method) -> bool:
    """Methods registered with ``needs_base_data=True`` (PAINT picks α, PNC its insertion point
    on the base task's validation split) get ``ctx.base_data``; loading a base train split costs
    time, so other methods do not."""
    return bool(getattr(method, "needs_base_data", False))


def base_task_data(spec: str, size: int, *, seed: int, max_test: int | None,
                   val_fraction: float = 0.1) -> TaskData:
    """The full base task as ``deltapatch train`` gives it to such methods (train not capped;
    its test split is the same seeded subset that ``load_test`` gives)."""
    return task_data(spec, size, seed=seed, max_train=None, max_test=max_test,
                     val_fraction=val_fraction)


@dataclass
class RunSpec:
    """Everything that determines one run (its bench key is derived from these fields)."""

    backbone: str
    data: str
    weights: str | None = None
    method: str = "delta"
    stages: int | list = 1
    norm: str = "output"
    gate: str = "delta"
    base_data: str | None = None
    image_size: int | None = None
    max_train: int | None = None
    max_test: int | None = None
    max_val: int | None = None
    val_fraction: float = 0.1
    name: str | None = None
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    options: dict = field(default_factory=dict)
    lambda_images: int = 0
    """How many test images to average Λ over (0: do not record Λ)."""


DATA_PROTOCOL = 2
"""Version of how bench data are drawn; a stored run of another version is redone, not mixed
into the same table. 1: seeded subsets drawn after resizing, validation held out of the whole
train split (then capped at ``max_val``). 2 (main from 8733333 on): subsets drawn before
resizing, validation held out of the ``max_train`` images."""

_CACHE: dict[tuple, object] = {}


def cached(key: tuple, make):
    """Data sets are re-used across the runs of one process (decoding CIFAR-10 once, not per
    run); everything cached is read-only to callers."""
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def task_data(spec: str, size: int, *, seed: int, max_train: int | None,
              max_test: int | None, val_fraction: float = 0.1, max_val: int | None = None
              ) -> TaskData:
    """A task, cached; ``max_val`` caps the validation split (10% of MNIST's train is 6,000
    images scored every epoch, which would dominate a small CPU run)."""
    def make() -> TaskData:
        data = load_data(spec, size, val_fraction=val_fraction, seed=seed,
                         max_train=max_train, max_test=max_test)
        data.val = cap(data.val, max_val, seed)
        return data
    return cached(("data", spec, size, seed, max_train, max_test, val_fraction, max_val), make)


def test_split(spec: str, size: int, *, seed: int, max_test: int | None) -> ImageSet:
    return cached(("test", spec, size, seed, max_test),
                  lambda: load_test(spec, size, max_test=max_test, seed=seed)[0])


def build_model(backbone: str, weights: str | None, image_size: int | None = None
                ) -> PatchedModel:
    model = PatchedModel(load_backbone(backbone, weights or None))
    model.preprocess = model.preprocess.with_size(image_size or model.preprocess.size)
    return model


def input_size(spec: RunSpec) -> int:
    """The run's image size: ``spec.image_size`` or the backbone's own, looked up once per
    backbone in a process (building a model only to read its size would load weights per run)."""
    if spec.image_size:
        return spec.image_size
    return cached(("size", spec.backbone, spec.weights),
                  lambda: build_model(spec.backbone, spec.weights).preprocess.size)


@torch.inference_mode()
def mean_lambdas(model: PatchedModel, patch: str, images: ImageSet, n: int) -> dict[str, list]:
    """Λ averaged over the first ``n`` test images, per patched stage (the paper's Figs 3–6)."""
    if patch not in model.patches or not model.get_patch(patch).config.stages:
        return {}
    model.eval()
    x = model.preprocess.normalize(images.images[:n])
    sums: dict[int, torch.Tensor] = {}
    for chunk in x.split(256):
        for stage, lam in model.lambdas(chunk, patch=patch).items():
            sums[stage] = sums.get(stage, 0) + lam.float().sum(0)
    count = min(n, len(images))
    return {str(s): [round(float(v) / count, 5) for v in t] for s, t in sums.items()}


def run_one(spec: RunSpec, out: Path, *, data: TaskData | None = None,
            extra_tests: dict[str, ImageSet] | None = None) -> dict:
    """Train ``spec.method`` on ``spec.data`` (writing its patch/run files under ``out``), then
    score the patch task and, with ``spec.base_data``, the base task through the method's own
    forwards. Returns the JSON metrics ``deltapatch train`` prints.

    Args:
        data: an already built task (joint patching concatenates tasks) instead of ``spec.data``.
        extra_tests: more test sets scored through the patch forward, reported as
            ``top1_by_test`` (joint patching's per-task accuracy, the ZSDA target).
    """
    from ..methods import MethodContext, get_method

    t0 = time.perf_counter()
    method = get_method(spec.method)
    torch.manual_seed(spec.seed)  # a random-init backbone is the same for every run of a seed
    model = build_model(spec.backbone, spec.weights, spec.image_size)
    size = model.preprocess.size
    if data is None:
        data = task_data(spec.data, size, seed=spec.seed, max_train=spec.max_train,
                         max_test=spec.max_test, val_fraction=spec.val_fraction,
                         max_val=spec.max_val)
    base_task = None
    if spec.base_data and needs_base_data(method):
        base_task = base_task_data(spec.base_data, size, seed=spec.seed, max_test=spec.max_test,
                                   val_fraction=spec.val_fraction)
    torch.manual_seed(spec.seed)
    name = spec.name or data.name.replace(".", "_")
    ctx = MethodContext(model=model, name=name, data=data, train=spec.train, out=Path(out),
                        stages=spec.stages, norm=spec.norm, gate=spec.gate,
                        base_data=base_task, options=dict(spec.options))
    outcome = method(ctx)
    model.eval()
    patch_top1 = evaluate(outcome.patch_forward, data.test, model.preprocess)
    base_top1 = None
    extra = dict(outcome.extra)
    if spec.base_data:
        base = test_split(spec.base_data, size, seed=spec.seed, max_test=spec.max_test)
        base_top1 = evaluate(outcome.base_forward, base, model.preprocess)
        extra["n_base_test"] = len(base)
    if extra_tests:
        extra["top1_by_test"] = {k: round(evaluate(outcome.patch_forward, t, model.preprocess), 6)
                                 for k, t in extra_tests.items()}
        extra["n_by_test"] = {k: len(t) for k, t in extra_tests.items()}
    if spec.lambda_images:
        extra["lambda_mean"] = mean_lambdas(model, name, data.test, spec.lambda_images)
    return metrics.report(method=spec.method, data=spec.data, patch_top1=patch_top1,
                          base_top1=base_top1, trainable_params=outcome.trainable_params,
                          patch_bytes=outcome.patch_bytes, n_test=len(data.test),
                          seed=spec.seed, wall_seconds=round(time.perf_counter() - t0, 2),
                          **extra)
