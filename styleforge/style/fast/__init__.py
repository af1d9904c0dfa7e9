"""Fast feed-forward style networks: train once per style, then stylize in one forward pass."""

from .apply import apply_to_tensor, stylize_files
from .decoder_train import DecoderTrainConfig, train_decoders
from .model import ARCHS, TransformerNet, available_models, load_model, resolve_model, save_model
from .train import FastProgress, FastTrainConfig, FastTrainResult, train_style
from .universal import AnyStyle, UniversalStyler, build_styler

__all__ = ["ARCHS", "AnyStyle", "DecoderTrainConfig", "FastProgress", "FastTrainConfig", "FastTrainResult",
           "TransformerNet", "UniversalStyler", "apply_to_tensor", "available_models", "build_styler", "load_model",
           "resolve_model", "save_model", "stylize_files", "train_decoders", "train_style"]
