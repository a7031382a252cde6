"""Training a patch on cached frozen-prefix activations.

Everything before a patch's first Δ-stage is frozen and runs in eval mode, so without data
augmentation it maps each image to the same tensor in every epoch. Computing that tensor once
(:meth:`PatchedModel.stage_input`) and training from it (:meth:`PatchedModel.forward_from`) is the
same optimisation as :func:`deltapatch.train.fit_patch` with ``augment=False``, at a fraction of
the cost: on EfficientNet-Lite0 the prefix before the last stage is most of the network. This is
what lets the offline demo train on a shared 2-core machine in minutes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .data.sets import ImageSet, TaskData
from .model import PatchedModel
from .preprocess import Preprocess
from .train import FitResult, TrainConfig, fit


class AsIs(Preprocess):
    """The 'preprocessing' of cached activations: they are already normalized and encoded."""

    def normalize(self, x: Tensor) -> Tensor:
        return x


def first_stage(model: PatchedModel, name: str) -> int:
    """Where a patch starts to differ from the base path (``num_stages`` for a head-only one)."""
    return min(model.get_patch(name).config.stages, default=model.num_stages)


@torch.no_grad()
def cache_split(model: PatchedModel, images: ImageSet, stage: int, preprocess: Preprocess,
                batch_size: int = 128, desc: str = "cache", progress: bool = True) -> ImageSet:
    """``stage_input`` of every image (no_grad, not inference_mode: the cached tensors feed
    autograd later, which inference tensors may not)."""
    model.eval()
    n = (len(images) + batch_size - 1) // batch_size
    outs = [model.stage_input(preprocess.normalize(x), stage)
            for x, _ in tqdm(images.batches(batch_size), total=n, desc=desc, leave=False,
                             disable=not progress)]
    return ImageSet(torch.cat(outs), images.labels)


def cache_task(model: PatchedModel, data: TaskData, stage: int, preprocess: Preprocess,
               progress: bool = True) -> TaskData:
    """The task with every split's images replaced by their activations entering ``stage``."""
    splits = {s: cache_split(model, getattr(data, s), stage, preprocess,
                             desc=f"{data.name}: frozen prefix, {s}", progress=progress)
              for s in ("train", "val", "test")}
    return replace(data, **splits)


def fit_patch_cached(model: PatchedModel, name: str, cached: TaskData, stage: int,
                     config: TrainConfig, run_dir: str | Path | None = None) -> FitResult:
    """Train patch ``name`` from activations cached at ``stage`` (≤ its first Δ-stage)."""
    if first_stage(model, name) < stage:
        raise ValueError(f"patch '{name}' has a Δ-stage before the cached stage {stage}")
    patch = model.get_patch(name)
    size = patch.config.preprocess.size
    return fit(lambda h: model.forward_from(h, stage, name), patch, cached, AsIs(size),
               replace(config, augment=False), run_dir, set_mode=model.train)
