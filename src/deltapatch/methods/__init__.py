"""Adaptation methods: one :class:`Method` object each, registered by name in ``METHODS``."""

from . import ablations, adapters, bn_adapt, finetune, lora, paint, patching, pnc  # noqa: F401
from .artefact import LoadedTask, load_task, save_task
from .base import (
    METHODS,
    BaseTask,
    Method,
    MethodContext,
    MethodOptions,
    MethodOutcome,
    get_method,
    register_method,
)

__all__ = ["METHODS", "BaseTask", "LoadedTask", "Method", "MethodContext", "MethodOptions",
           "MethodOutcome",
           "get_method", "load_task", "register_method", "save_task"]
