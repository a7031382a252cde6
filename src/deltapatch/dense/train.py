"""Training and scoring of dense tasks. Training is :func:`deltapatch.train.fit_objective`, the
loop classification patches train with (device, precision, resume, metrics files, progress come
from there); this module brings the dense :class:`DenseObjective`: batches of photos, the head's
loss, and no validation split. What differs between detection and segmentation (the loss of a
batch and the scores) is a :class:`DenseKind`, registered per head kind.

Scores come from torchmetrics: box mAP (COCO's definition, pycocotools backend) and per-class
IoU; nothing of COCO evaluation is written here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .. import distributed
from ..batches import device_of, sum_dtype
from ..errors import DeltaPatchError
from ..registry import Registry
from ..train import (
    FitResult,
    Local,
    ParamGroup,
    StepSums,
    TrainConfig,
    fit_objective,
    trainable,
)
from .data import DenseData, DenseSample, detection_batch, flipped, segmentation_batch
from .heads import DETECTION, IGNORE, SEGMENTATION
from .task import DenseTask

BACKBONE_LR_SCALE = 0.1
"""A fine-tuned copy of the backbone trains at ``lr × BACKBONE_LR_SCALE``: pretrained weights
want smaller steps than fresh heads (torchvision's detection recipes do the same)."""


@dataclass(frozen=True)
class DenseKind:
    """How one kind of dense head trains and is scored.

    ``loss(head, task, samples, device)``: the mean loss of a batch through ``head`` (the
    prepared step), its inputs and targets made on ``device``. ``score(task, samples,
    batch_size, device)``: the JSON scores of ``samples``."""

    loss: Callable[[Callable, DenseTask, list[DenseSample], torch.device], Tensor]
    score: Callable[[DenseTask, list[DenseSample], int, torch.device], dict]


DENSE_KINDS: Registry[str, DenseKind] = Registry("dense task kind")


def _need_torchmetrics():
    try:
        import torchmetrics  # noqa: F401
    except ImportError:
        raise DeltaPatchError("dense metrics need torchmetrics and pycocotools: "
                              "pip install 'deltapatch[dense]'") from None


def _chunks(samples: list[DenseSample], size: int) -> Iterator[list[DenseSample]]:
    return (samples[i:i + size] for i in range(0, len(samples), size))


def _detection_loss(head: Callable, task: DenseTask, samples: list[DenseSample],
                    device: torch.device) -> Tensor:
    images, targets = detection_batch(samples, device)
    return sum(head(images, targets).values())


def _detection_score(task: DenseTask, samples: list[DenseSample], batch_size: int,
                     device: torch.device) -> dict:
    """Box mAP@0.5 and mAP@[.5:.95]; detections come to the host once per batch (the COCO
    protocol runs there)."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type="bbox")
    for chunk in _chunks(samples, batch_size):
        images, _ = detection_batch(chunk, device)
        found = [{k: v.cpu() for k, v in d.items()} for d in task.head(images)]
        metric.update(found, detection_batch(chunk)[1])
    r = metric.compute()
    return {"box_map50": round(float(r["map_50"]), 5), "box_map": round(float(r["map"]), 5),
            "n_test": len(samples)}


def _segmentation_loss(head: Callable, task: DenseTask, samples: list[DenseSample],
                       device: torch.device) -> Tensor:
    x, y = segmentation_batch(samples, task.config.options["size"], device)
    return F.cross_entropy(head(task.config.preprocess.normalize(x)), y, ignore_index=IGNORE)


def _segmentation_score(task: DenseTask, samples: list[DenseSample], batch_size: int,
                        device: torch.device) -> dict:
    """IoU per class and their mean, accumulated on ``device``."""
    from torchmetrics.classification import MulticlassJaccardIndex

    metric = MulticlassJaccardIndex(task.config.num_classes, average="none",
                                    ignore_index=IGNORE).to(device)
    size = task.config.options["size"]
    for chunk in _chunks(samples, batch_size):
        x, y = segmentation_batch(chunk, size, device)
        metric.update(task.head(task.config.preprocess.normalize(x)).argmax(1), y)
    iou = [round(float(v), 5) for v in metric.compute().cpu()]
    return {"miou": round(sum(iou) / len(iou), 5), "iou": iou, "n_test": len(samples)}


DENSE_KINDS.register(DETECTION, DenseKind(_detection_loss, _detection_score))
DENSE_KINDS.register(SEGMENTATION, DenseKind(_segmentation_loss, _segmentation_score))


def train_mode(task: DenseTask, on: bool) -> None:
    """The trained modules follow ``on``; a fine-tuned copy's BatchNorms stay in eval mode."""
    task.owned.train(on)
    if task.net is not None:
        task.net.eval()


@dataclass
class DenseObjective:
    """A dense task as the training loop's objective: the training photos in the epoch's order,
    each flipped by the epoch's draw (with ``augment``), the head's loss on the trained
    module's device. Dense data have no validation split, so the last epoch is kept; in its
    place :meth:`validate` stops a run whose loss stopped being finite (nothing else would:
    without validation the last, broken epoch would be saved)."""

    task: DenseTask
    data: DenseData
    device: torch.device
    train_score: str | None = None
    val_score: str | None = None
    finite: Tensor | None = None  # whether every loss of this epoch was finite, on the device

    def param_groups(self, owned: nn.Module) -> list[ParamGroup]:
        """Heads (and Δ-stages) at the configured rate, a fine-tuned copy at
        :data:`BACKBONE_LR_SCALE` of it."""
        net = {id(p) for p in self.task.net.parameters()} if self.task.net is not None else set()
        own = trainable(owned)
        return [([p for p in own if id(p) not in net], 1.0),
                ([p for p in own if id(p) in net], BACKBONE_LR_SCALE)]

    def batches(self, config: TrainConfig, g: torch.Generator) -> Iterator[list[DenseSample]]:
        """The detector samples its proposals from torch's global generator (it takes none of
        its own), so that is seeded from ``g`` too: an epoch resumed from its checkpoint draws
        what it drew the first time."""
        torch.manual_seed(int(torch.randint(1 << 62, (1,), generator=g)))
        self.finite = torch.ones((), dtype=torch.bool, device=self.device)
        train = self.data.train
        order = torch.randperm(len(train), generator=g).tolist()
        flips = (torch.rand(len(order), generator=g) < 0.5).tolist()
        for i in range(0, len(order), config.batch_size):
            yield [flipped(train[j]) if config.augment and flips[i + k] else train[j]
                   for k, j in enumerate(order[i:i + config.batch_size])]

    def step(self, step: Callable, batch: list[DenseSample]) -> StepSums:
        loss = DENSE_KINDS.get(self.task.kind).loss(step, self.task, batch, self.device)
        self.finite &= torch.isfinite(loss.detach())  # read once, at the end of the epoch
        return loss, loss.detach().to(sum_dtype(self.device)) * len(batch), None, len(batch)

    def validate(self, forward: Callable, config: TrainConfig) -> None:
        if self.finite is not None and not bool(self.finite):
            raise DeltaPatchError(f"the {self.task.kind} loss stopped being finite; lower --lr")


def fit_dense(task: DenseTask, data: DenseData, config: TrainConfig,
              run_dir: str | Path | None = None) -> FitResult:
    """Train what ``task.owned`` trains on ``data`` with the shared loop: ``config``'s optimizer,
    warm-up + cosine schedule, precision and seed, on the device ``task`` is on; with
    ``run_dir`` the checkpoint and per-epoch metrics go there and an interrupted run resumes.
    One process: torchrun's shards split classification batches only."""
    if distributed.env_world() is not None:
        raise DeltaPatchError(f"torchrun trains classification patches only; train the "
                              f"{task.kind} task as one process")
    objective = DenseObjective(task, data, device_of(task.owned))
    return fit_objective(objective, Local(len(data.train)), task.head, task.owned, config,
                         run_dir, set_mode=lambda on: train_mode(task, on))


@torch.no_grad()
def evaluate_dense(task: DenseTask, samples: list[DenseSample], batch_size: int = 4) -> dict:
    """Detection: box mAP@0.5 and mAP@[.5:.95]; segmentation: IoU per class and their mean.
    Batches run where the task is."""
    _need_torchmetrics()
    train_mode(task, False)
    return DENSE_KINDS.get(task.kind).score(task, samples, batch_size, device_of(task.owned))
