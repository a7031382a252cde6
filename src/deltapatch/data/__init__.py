"""Data sets for patch tasks: loading, splitting, augmentation."""

from .augment import random_crop_flip
from .checks import check_data_options
from .sets import ImageSet, TaskData, seeded_subset
from .sources import BUILTINS, builtin, list_builtins, load_data, load_test

__all__ = ["BUILTINS", "ImageSet", "TaskData", "builtin", "check_data_options", "list_builtins",
           "load_data", "load_test", "random_crop_flip", "seeded_subset"]
