"""Training and scoring of dense tasks. Scores come from torchmetrics: box mAP (COCO's
definition, pycocotools backend) and per-class IoU; nothing of COCO evaluation is written here."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from ..errors import DeltaPatchError
from ..progress import progress_bar
from .data import DenseData, DenseSample, detection_batch, flipped, segmentation_batch
from .heads import DETECTION, IGNORE
from .task import DenseTask

BACKBONE_LR_SCALE = 0.1


def _need_torchmetrics():
    try:
        import torchmetrics  # noqa: F401
    except ImportError:
        raise DeltaPatchError("dense metrics need torchmetrics and pycocotools: "
                              "pip install 'deltapatch[dense]'") from None


def loss_of(task: DenseTask, samples: list[DenseSample]) -> Tensor:
    if task.kind == DETECTION:
        images, targets = detection_batch(samples)
        return sum(task.head(images, targets).values())
    x, y = segmentation_batch(samples, task.config.options["size"])
    return F.cross_entropy(task.head(task.config.preprocess.normalize(x)), y,
                           ignore_index=IGNORE)


def train_mode(task: DenseTask, on: bool) -> None:
    """The trained modules follow ``on``; a fine-tuned copy's BatchNorms stay in eval mode."""
    task.owned.train(on)
    if task.net is not None:
        task.net.eval()


def fit_dense(task: DenseTask, data: DenseData, *, epochs: int, lr: float, batch_size: int,
              seed: int, weight_decay: float = 1e-4, augment: bool = True,
              progress: bool = True, log: Callable[[str], None] | None = None) -> list[dict]:
    """AdamW on what ``task.owned`` trains, cosine-decayed; one line per epoch to ``log``.
    A fine-tuned copy of the backbone trains at ``lr × BACKBONE_LR_SCALE``: pretrained weights
    want smaller steps than fresh heads (torchvision's detection recipes do the same)."""
    net = {id(p) for p in task.net.parameters()} if task.net is not None else set()
    own = [p for p in task.owned.parameters() if p.requires_grad]
    groups = [{"params": [p for p in own if id(p) not in net], "lr": lr}]
    if net:
        groups.append({"params": [p for p in own if id(p) in net], "lr": lr * BACKBONE_LR_SCALE})
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(data.train) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        train_mode(task, True)
        order = torch.randperm(len(data.train), generator=gen).tolist()
        flips = torch.rand(len(order), generator=gen) < 0.5
        total, t0 = 0.0, time.time()
        batches = range(0, len(order), batch_size)
        for i in progress_bar(batches, desc=f"epoch {epoch + 1}/{epochs}", enabled=progress):
            samples = [flipped(data.train[j]) if augment and flips[k + i] else data.train[j]
                       for k, j in enumerate(order[i:i + batch_size])]
            loss = loss_of(task, samples)
            if not torch.isfinite(loss):
                raise DeltaPatchError(f"loss became {loss.item()} in epoch {epoch + 1}; "
                                      "lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(samples)
        row = {"epoch": epoch + 1, "loss": round(total / len(order), 5),
               "seconds": round(time.time() - t0, 1)}
        history.append(row)
        if log is not None:
            log(" ".join(f"{k}={v}" for k, v in row.items()))
    train_mode(task, False)
    return history


@torch.no_grad()
def evaluate_dense(task: DenseTask, samples: list[DenseSample], batch_size: int = 4) -> dict:
    """Detection: box mAP@0.5 and mAP@[.5:.95]; segmentation: IoU per class and their mean."""
    _need_torchmetrics()
    train_mode(task, False)
    if task.kind == DETECTION:
        from torchmetrics.detection import MeanAveragePrecision

        metric = MeanAveragePrecision(iou_type="bbox")
        for i in range(0, len(samples), batch_size):
            images, targets = detection_batch(samples[i:i + batch_size])
            metric.update(task.head(images), targets)
        r = metric.compute()
        return {"box_map50": round(float(r["map_50"]), 5), "box_map": round(float(r["map"]), 5),
                "n_test": len(samples)}
    from torchmetrics.classification import MulticlassJaccardIndex

    metric = MulticlassJaccardIndex(task.config.num_classes, average="none",
                                    ignore_index=IGNORE)
    size = task.config.options["size"]
    for i in range(0, len(samples), batch_size):
        x, y = segmentation_batch(samples[i:i + batch_size], size)
        metric.update(task.head(task.config.preprocess.normalize(x)).argmax(1), y)
    iou = [round(float(v), 5) for v in metric.compute()]
    return {"miou": round(sum(iou) / len(iou), 5), "iou": iou, "n_test": len(samples)}
