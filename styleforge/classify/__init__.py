"""CNN classifiers and transfer learning (models registry and summaries)."""

from .models import MODELS, apply_freeze, build_model
from .summary import summarize

__all__ = ["MODELS", "apply_freeze", "build_model", "summarize"]
