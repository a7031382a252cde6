"""One run: settings in (:class:`RunSpec`), outcome out (the JSON metrics). This is the single
code path of ``deltapatch train`` and of every single-task cell of ``deltapatch bench``, so a bench
number is exactly what ``train`` prints for the same arguments.

A run checks everything before it writes (:func:`resolve_run`), reads its model and data through
:mod:`deltapatch.runinputs`, and claims its folder (:mod:`deltapatch.runfolder`), locked for the
whole run so two trainings cannot write into it at once.

Where a run trains (``device``) is not a setting: the same run on another device resumes in the
same folder, and its record says where it ran (``device``) and in what ``precision``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import devices, distributed, hardware, metrics, store
from .backbones.catalog import family_init
from .baseinit import INITS, LEGACY_INIT
from .batches import evaluate, model_inputs
from .data import check_data_options
from .data.sets import ImageSet, TaskData
from .delta import GATES, resolve_init
from .methods import METHODS, Method, MethodContext, get_method
from .model import PatchedModel
from .options import opt, validate
from .patch import CLASSIFICATION, check_name
from .runfolder import claim_run_folder
from .runinputs import (
    base_task_data,
    build_model,
    data_fingerprint,
    native_size,
    task_data,
    test_split,
)
from .train import TrainConfig


@dataclass
class RunSpec:
    """Everything that determines one run. ``metadata["help"]`` is the option's documentation
    wherever it is exposed (CLI flags, suite keys)."""

    backbone: str = field(metadata=opt("backbone name or a model factory file.py:function"))
    data: str = field(metadata=opt("patch task: image folder, .npz, or a built-in name"))
    weights: str | None = field(default=None, metadata=opt(
        "weights: a .safetensors / torch file, or a named set (imagenet, cifar10); default: "
        "random init"))
    method: str = field(default="delta", metadata=opt("adaptation method"))
    stages: int | list = field(default=1, metadata=opt(
        "Δ(n): the last n stages (an int), or 0-based stage indices / names"))
    norm: str = field(default="output", metadata=opt(
        "where the patch's BatchNorm sits in each Δ-stage", choices=("output", "skip", "none")))
    gate: str = field(default="delta", metadata=opt(
        "where Λ comes from: delta (input-conditioned), learned, fixed, random, existing"))
    init: str | None = field(default=None, metadata=opt(
        "how the patch starts: base (exactly the base network at step 0) or random (the "
        "paper's init); default: the one measured for the backbone (base for "
        "efficientnet_lite0, random elsewhere), docs/INIT.md",
        choices=INITS))
    base_data: str | None = field(default=None, metadata=opt(
        "base task data; its test split is scored with the backbone's own head (default: "
        "none, no base score)"))
    image_size: int | None = field(default=None, metadata=opt(
        "input size in pixels (default: the backbone's)"))
    base_image_size: int | None = field(default=None, metadata=opt(
        "size the base task is scored at (default: the backbone's own, e.g. 224 for an "
        "ImageNet base, whatever --image-size the patch task uses)", min=8, max=4096))
    max_train: int | None = field(default=None, metadata=opt(
        "seeded subset of the train split (default: all of it)"))
    max_test: int | None = field(default=None, metadata=opt(
        "seeded subset of the test split (default: all of it)"))
    max_val: int | None = field(default=None, metadata=opt(
        "cap on the validation split (default: no cap)", min=1))
    val_fraction: float = field(default=0.1, metadata=opt(
        "share of train held out for validation"))
    name: str | None = field(default=None, metadata=opt("patch name (default: the data's)"))
    seed: int = field(default=0, metadata=opt("seed of splits, init and batch order", min=0))
    train: TrainConfig = field(default_factory=TrainConfig)
    options: dict = field(default_factory=dict, metadata=opt("method options"))
    task: str = field(default="classification", metadata=opt(
        "what the patch's head does: classification, or detection / segmentation "
        "(deltapatch.dense, data with boxes and masks such as pennfudan)",
        choices=("classification", "detection", "segmentation")))
    lambda_images: int = field(default=0, metadata=opt(
        "test images to average Λ over (0: do not record Λ)", min=0))

    def __post_init__(self) -> None:
        """The data options are checked by the loaders' own rule (``check_data_options``), the
        others by their field bounds, the gate, stages, name and method options by their own
        registries and rules; all before anything is loaded (what needs the backbone, such as
        stage indices, is checked by :func:`resolve_run`)."""
        check_data_options(size=self.image_size, max_train=self.max_train,
                           max_test=self.max_test, val_fraction=self.val_fraction)
        validate(self)
        GATES.get(self.gate)
        check_stages(self.stages)
        if self.name is not None:
            check_name(self.name)
        method = METHODS.find(self.method)  # not one: bench's "full", or refused by run_one
        if method is not None and self.task == CLASSIFICATION:  # dense: deltapatch.dense.run
            method.check_options(self.options)

    def settings(self) -> dict:
        """Every setting that shapes the run's numbers (not the progress bar)."""
        d = asdict(self)
        d["train"] = self.train.settings()
        d["init"] = resolve_init(self.init, self.gate, family_init(self.backbone))
        if d["init"] == LEGACY_INIT:  # run folders from before `init` existed stay resumable
            del d["init"]
        if d["task"] == "classification":  # likewise for folders from before dense tasks
            del d["task"]
        return d


def check_stages(stages: object) -> None:
    """Δ(n) as an int ≥ 0, or a non-empty list of stage indices / names (which stages exist
    is the backbone's to say: ``PatchedModel.resolve_stages``)."""
    if isinstance(stages, bool) or not isinstance(stages, (int, list)):
        raise ValueError(f"stages must be an int or a list of stages, got {stages!r}")
    if isinstance(stages, int) and stages < 0:
        raise ValueError(f"stages must be ≥ 0 (Δ(n): the last n stages), got {stages}")
    if isinstance(stages, list) and (not stages or not all(
            (isinstance(s, int) and not isinstance(s, bool)) or (isinstance(s, str) and s)
            for s in stages)):
        raise ValueError(f"stages must list 0-based stage indices or names, got {stages!r}")


def input_size(spec: RunSpec) -> int:
    """The run's image size: ``spec.image_size`` or the backbone's own, looked up once per
    backbone in a process (building a model only to read its size would load weights per run)."""
    return spec.image_size or native_size(spec.backbone, spec.weights)


def base_size(spec: RunSpec) -> int:
    """The base task is the backbone's own task: scored at its own size unless told otherwise,
    so patching at a smaller size (a cheaper patch task) does not change how the base scores."""
    return spec.base_image_size or native_size(spec.backbone, spec.weights)


@torch.inference_mode()
def mean_lambdas(model: PatchedModel, patch: str, images: ImageSet, n: int) -> dict[str, list]:
    """Λ averaged over the first ``n`` test images, per patched stage (the paper's Figs 3–6)."""
    if patch not in model.patches or not model.get_patch(patch).config.stages:
        return {}
    model.eval()
    device = devices.placement(model)[0]
    sums: dict[int, torch.Tensor] = {}
    for chunk in images.images[:n].split(256):
        x = model_inputs(chunk, model.preprocess, device)
        for stage, lam in model.lambdas(x, patch=patch).items():
            sums[stage] = sums.get(stage, 0) + lam.float().sum(0)
    count = min(n, len(images))
    return {str(s): [round(float(v) / count, 5) for v in t] for s, t in sums.items()}


def run_device(device: str | torch.device | None) -> torch.device:
    """Where a run trains: ``device`` resolved (``auto`` and None: the best one here; a device
    that is not there is a :class:`~deltapatch.devices.DeviceError`), under torchrun the
    process's own GPU."""
    return distributed.local_device(devices.resolve_device(device))


def placement_facts(device: torch.device, precision: str) -> dict:
    """What a record says about where it ran: the device and precision, and on a GPU its name,
    memory, CUDA, cuDNN and TF32 settings (:func:`deltapatch.hardware.gpu_facts`)."""
    facts = {"device": str(device), "precision": precision}
    return {**facts, **hardware.gpu_facts(device)} if device.type == "cuda" else facts


@dataclass
class Resolved:
    """A run's request, resolved and checked, with everything it reads: what :func:`run_one`
    needs before it writes anything."""

    method: Method
    device: torch.device
    out: Path
    model: PatchedModel
    data: TaskData
    name: str
    base_task: TaskData | None  # the full base task, for methods that choose on it
    base_test: ImageSet | None


def resolve_run(spec: RunSpec, out: Path, *, data: TaskData | None = None,
                device: str | torch.device | None = "cpu") -> Resolved:
    """Every check of a run, and every read it needs, before anything is written: the device,
    ``out``, the backbone, the stages and the method's options on it, the data, the base data
    and the patch name. A refused run leaves the disk as it was (no folder, lock or settings
    file), and none is refused after hours of training for a name it could have checked first."""
    device = run_device(device)
    out = distributed.private_out(Path(out))  # under torchrun only rank 0 writes ``out``
    method = get_method(spec.method)
    store.check_writable(out)
    torch.manual_seed(spec.seed)  # a random-init backbone is the same for every run of a seed
    model = build_model(spec.backbone, spec.weights, spec.image_size, device)
    model.resolve_stages(spec.stages)
    if method.check is not None:
        method.check(model, spec.stages, method.check_options(spec.options))
    if data is None:
        data = task_data(spec.data, model.preprocess.size, seed=spec.seed,
                         max_train=spec.max_train, max_test=spec.max_test,
                         val_fraction=spec.val_fraction, max_val=spec.max_val)
    base_task = base_test = None
    if spec.base_data:
        base_test = test_split(spec.base_data, base_size(spec), seed=spec.seed,
                               max_test=spec.max_test)
        if method.needs_base_data:
            base_task = base_task_data(spec.base_data, base_size(spec), seed=spec.seed,
                                       max_test=spec.max_test, val_fraction=spec.val_fraction)
    name = check_name(spec.name or data.name.replace(".", "_"))
    return Resolved(method, device, out, model, data, name, base_task, base_test)


def run_one(spec: RunSpec, out: Path, *, data: TaskData | None = None,
            extra_tests: dict[str, ImageSet] | None = None,
            device: str | torch.device | None = "cpu") -> dict:
    """Train ``spec.method`` on ``spec.data`` into the folder ``out``, then score the patch task
    and, with ``spec.base_data``, the base task through the method's own forwards. Returns the
    JSON metrics ``deltapatch train`` prints. Everything is checked and read first
    (:func:`resolve_run`); only then is ``out`` locked and claimed.

    Args:
        data: an already built task (joint patching concatenates tasks) instead of ``spec.data``.
        extra_tests: more test sets scored through the patch forward, reported as
            ``top1_by_test`` (joint patching's per-task accuracy, the ZSDA target).
        device: where to train (:func:`run_device`); not a setting of the run.
    """
    t0 = time.perf_counter()
    r = resolve_run(spec, out, data=data, device=device)
    model, data, device, out = r.model, r.data, r.device, r.out
    with store.FolderLock(out):
        store.recover(out)
        claim_run_folder(out, {**spec.settings(), "backbone_fingerprint": model.fingerprint,
                               "data_fingerprint": data_fingerprint(data)})
        torch.manual_seed(spec.seed)
        ctx = MethodContext(model=model, name=r.name, data=data, train=spec.train, out=out,
                            stages=spec.stages, norm=spec.norm, gate=spec.gate, init=spec.init,
                            base_data=r.base_task, options=dict(spec.options))
        outcome = r.method.train(ctx)
        model.eval()
        patch_top1 = evaluate(outcome.patch_forward, data.test, model.preprocess, device=device)
        base_top1 = None
        extra = dict(outcome.extra)
        if r.base_test is not None:
            base_top1 = evaluate(outcome.base_forward, r.base_test, model.preprocess,
                                 device=device)
            extra["n_base_test"] = len(r.base_test)
        if extra_tests:
            extra["top1_by_test"] = {k: round(evaluate(outcome.patch_forward, t,
                                                       model.preprocess, device=device), 6)
                                     for k, t in extra_tests.items()}
            extra["n_by_test"] = {k: len(t) for k, t in extra_tests.items()}
        if spec.lambda_images:
            extra["lambda_mean"] = mean_lambdas(model, r.name, data.test, spec.lambda_images)
        return metrics.report(method=spec.method, data=spec.data, patch_top1=patch_top1,
                              base_top1=base_top1, trainable_params=outcome.trainable_params,
                              patch_bytes=outcome.patch_bytes, n_test=len(data.test),
                              seed=spec.seed, wall_seconds=round(time.perf_counter() - t0, 2),
                              **placement_facts(device, spec.train.precision), **extra)
