"""Data sets for patch tasks: loading, splitting, augmentation."""

from .augment import random_crop_flip
from .checks import check_data_options
from .sets import ImageSet, TaskData, seeded_subset
from .sources import (
    BUILTINS,
    TASK_DATA,
    builtin,
    describe_builtins,
    list_builtins,
    load_data,
    load_test,
)

__all__ = ["BUILTINS", "TASK_DATA", "ImageSet", "TaskData", "builtin", "check_data_options",
           "describe_builtins", "list_builtins", "load_data", "load_test", "random_crop_flip",
           "seeded_subset"]
