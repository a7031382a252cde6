"""Pictures of dense predictions: boxes or masks drawn on the photo, written as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..train import device_of
from .data import DenseSample, detection_batch, segmentation_batch
from .heads import DETECTION
from .task import DenseTask

MIN_SCORE = 0.5


@torch.no_grad()
def predict_one(task: DenseTask, image: Tensor, min_score: float = MIN_SCORE) -> tuple[dict, Tensor]:
    """One uint8 (3, H, W) photo → (JSON-able prediction, the photo with it drawn). The photo
    runs where the task is; what is drawn comes back to the host."""
    task.owned.eval()
    device = device_of(task.owned)
    if task.kind == DETECTION:
        images, _ = detection_batch([_alone(image)], device)
        out = {k: v.cpu() for k, v in task.head(images)[0].items()}
        keep = out["scores"] >= min_score
        boxes, scores, labels = out["boxes"][keep], out["scores"][keep], out["labels"][keep]
        names = task.config.class_names
        text = [f"{names[int(c)] if names else int(c)} {float(s):.2f}"
                for c, s in zip(labels, scores, strict=True)]
        # nothing found: the photo as it is (torchvision would warn "No box was drawn")
        drawn = draw_bounding_boxes(image, boxes, text, colors="red", width=2) if len(boxes) \
            else image.clone()
        return {"boxes": [[round(float(v), 1) for v in b] for b in boxes],
                "scores": [round(float(s), 4) for s in scores],
                "labels": [int(c) for c in labels]}, drawn
    h, w = image.shape[-2:]
    size = task.config.options["size"]
    x, _ = segmentation_batch([_alone(image)], size, device)
    pred = task.head(task.config.preprocess.normalize(x)).argmax(1)[0]
    scale = size / max(h, w)
    pred = pred[:max(1, round(h * scale)), :max(1, round(w * scale))]
    pred = torch.nn.functional.interpolate(pred[None, None].float(), size=(h, w),
                                           mode="nearest")[0, 0].long().cpu()
    masks = torch.stack([pred == c for c in range(1, task.config.num_classes)])
    drawn = draw_segmentation_masks(image, masks, alpha=0.5, colors="red")
    return {"pixel_share": [round(float(m.float().mean()), 4) for m in masks]}, drawn


def _alone(image: Tensor) -> DenseSample:
    """A photo without targets, as the batch builders take it."""
    h, w = image.shape[-2:]
    return DenseSample(image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                       torch.zeros(h, w, dtype=torch.uint8))


def save_png(image: Tensor, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy())).save(path)
    return path
