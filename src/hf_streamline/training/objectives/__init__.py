"""Training objectives, one per file, all in one registry (``OBJECTIVES``)."""

from . import lm, mse  # noqa: F401 - registration
from .base import OBJECTIVES, Objective, get_objective, register_objective

__all__ = ["OBJECTIVES", "Objective", "get_objective", "register_objective"]
