"""CNN classifiers and transfer learning: models, data, training, evaluation, prediction,
grid search, comparison and visualization (the library behind ``styleforge classify`` /
``summary`` / ``visualize``).

The coursework loop, in a script or a notebook::

    import styleforge.classify as sc

    data = sc.DataSpec("mnist", per_class=50)                             # what to load, how to split it
    sc.preview(data, augment=["crop"])                                     # a Figure
    print(sc.summary("conv(32,k5,p2)-relu-maxpool(2)-flatten-fc", (1, 28, 28)))
    result = sc.fit(sc.TrainConfig(data, output="runs/a", model="simple-cnn"))
    pandas.DataFrame(result.history)                                        # one row per epoch
    sc.curves_figure(result.history, steps=result.steps, best_epoch=result.summary["best_epoch"])
    sc.evaluate(sc.EvalConfig("runs/a")).acc
    sc.predict("runs/a", ["digit.png"])

Nothing here changes global state: figures are built on their own canvas (pyplot and its
backend are never touched) and returned; progress shows by itself in a notebook.
"""

from .compare import compare, compare_figure
from .data import DataSpec, load_splits
from .evaluate import EvalConfig, EvalResult, evaluate
from .gallery import image_grid, predictions_figure
from .grid import grid
from .models import MODELS, apply_freeze, as_classifier, build_model, model_options
from .predict import Prediction, load_classifier, predict
from .preview import preview
from .report import confusion_figure, curves_figure
from .summary import Summary, summarize, summary
from .train import FitResult, TrainConfig, TrainEvent, fit
from .visualize import activations_figure, filters_figure, load_model

__all__ = [
    # training and evaluation
    "TrainConfig", "TrainEvent", "FitResult", "fit", "EvalConfig", "EvalResult", "evaluate", "grid", "compare",
    # models
    "MODELS", "build_model", "as_classifier", "apply_freeze", "model_options", "summary", "summarize", "Summary",
    # data and prediction
    "DataSpec", "load_splits", "preview", "predict", "Prediction", "load_classifier", "load_model",
    # figures (each returns a matplotlib Figure)
    "curves_figure", "confusion_figure", "predictions_figure", "image_grid", "compare_figure", "filters_figure",
    "activations_figure",
]
