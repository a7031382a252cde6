"""Detection and segmentation patches: torchvision heads on the feature pyramid of a patched
backbone (docs/DENSE.md). Importing this package registers the ``detection`` and
``segmentation`` head kinds, so their patch folders load like every other."""

from .data import DENSE_DATA, DenseData, DenseSample, load_dense_data
from .heads import (
    DETECTION,
    SEGMENTATION,
    DetectionHead,
    PyramidBody,
    PyramidFPN,
    SegmentationHead,
)
from .task import (
    FINETUNE,
    DenseTask,
    add_dense_patch,
    finetuned_task,
    load_dense,
    patched_task,
    save_dense,
)
from .train import evaluate_dense, fit_dense

__all__ = ["DENSE_DATA", "DETECTION", "FINETUNE", "SEGMENTATION", "DenseData", "DenseSample",
           "DenseTask", "DetectionHead", "PyramidBody", "PyramidFPN", "SegmentationHead", "add_dense_patch",
           "evaluate_dense", "finetuned_task", "fit_dense", "load_dense", "load_dense_data",
           "patched_task", "save_dense"]
