"""CNN classifiers and transfer learning: models, data, training, evaluation, grid search,
comparison and visualization (the library behind ``styleforge classify`` / ``visualize``).

``fit`` / ``TrainConfig`` are here; the other entry points live in their modules:
``classify.evaluate.evaluate``, ``classify.grid.grid``, ``classify.compare.compare``,
``classify.visualize.filters_figure`` / ``activations_figure``.
"""

from .models import MODELS, apply_freeze, build_model, model_options
from .summary import summarize
from .train import FitResult, TrainConfig, TrainEvent, fit

__all__ = ["MODELS", "apply_freeze", "build_model", "model_options", "summarize", "TrainConfig", "TrainEvent",
           "FitResult", "fit"]
