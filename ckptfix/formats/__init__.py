"""Checkpoint formats: lazy readers and atomic writers."""

from .base import Reader
from .detect import classify, open_checkpoint

__all__ = ["Reader", "classify", "open_checkpoint"]
