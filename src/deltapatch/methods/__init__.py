"""Adaptation methods, one module each, registered by name in ``METHODS``."""

from . import ablations, adapters, delta, finetune, paint, pnc  # noqa: F401  (register methods)
from .base import METHODS, MethodContext, MethodOutcome, get_method, register_method

__all__ = ["METHODS", "MethodContext", "MethodOutcome", "get_method", "register_method"]
