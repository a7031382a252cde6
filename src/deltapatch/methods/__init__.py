"""Adaptation methods, one module each, registered by name in ``METHODS``."""

from . import delta  # noqa: F401  (registers delta, linear)
from .base import METHODS, MethodContext, MethodOutcome, get_method, register_method

__all__ = ["METHODS", "MethodContext", "MethodOutcome", "get_method", "register_method"]
