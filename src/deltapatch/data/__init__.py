"""Data sets for patch tasks: loading, splitting, augmentation."""

from .augment import random_crop_flip
from .sets import ImageSet, TaskData
from .sources import BUILTINS, builtin, list_builtins, load_data, load_test

__all__ = ["BUILTINS", "ImageSet", "TaskData", "builtin", "list_builtins", "load_data", "load_test",
           "random_crop_flip"]
