"""Fast feed-forward style networks: train once per style, then stylize in one forward pass."""

from .apply import apply_to_tensor, stylize_files
from .model import ARCHS, TransformerNet, available_models, load_model, resolve_model, save_model
from .train import FastProgress, FastTrainConfig, FastTrainResult, train_style

__all__ = ["ARCHS", "FastProgress", "FastTrainConfig", "FastTrainResult", "TransformerNet", "apply_to_tensor",
           "available_models", "load_model", "resolve_model", "save_model", "stylize_files", "train_style"]
