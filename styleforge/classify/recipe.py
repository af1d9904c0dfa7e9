"""Training recipes and loss functions: what ``--recipe`` and ``--loss`` mean.

``default`` is tuned for good results in few epochs: SGD with Nesterov momentum 0.9,
weight decay 5e-4 on weights, a one-cycle schedule (20 % warm-up, linear decay to zero).
``plain`` is the textbook optimizer a course means by "SGD, lr 0.1" or "Adam": no
momentum, no weight decay, a constant learning rate, no label smoothing. Any of these
settings given explicitly wins over the recipe.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from ..runtime import guard

RECIPES: dict[str, dict[str, Any]] = {
    "default": {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "schedule": "onecycle", "warmup": 0.2,
                "label_smoothing": 0.0},
    "plain": {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0, "schedule": "constant", "warmup": 0.0,
              "label_smoothing": 0.0},
}
LOSSES = ("cross-entropy", "mse", "nll")


def resolve_recipe(cfg):
    """``cfg`` with every recipe setting left as None filled in from ``cfg.recipe``."""
    guard.check_choice(cfg.recipe, "--recipe", RECIPES)
    guard.check_choice(cfg.loss, "--loss", LOSSES)
    return replace(cfg, **{k: v for k, v in RECIPES[cfg.recipe].items() if getattr(cfg, k) is None})


def describe_recipe(cfg, world_size: int = 1) -> str:
    """The fully resolved recipe in one line (printed at the start, kept in the report)."""
    if cfg.optimizer == "sgd":
        mom = (f"momentum {cfg.momentum:g}" + (" (Nesterov)" if cfg.nesterov and cfg.momentum > 0 else "")
               if cfg.momentum else "no momentum")
        opt = f"SGD, {mom}"
    else:
        opt = {"adam": "Adam", "adamw": "AdamW"}[cfg.optimizer] + " (betas 0.9, 0.999)"
    decay = (f"weight decay {cfg.weight_decay:g} on weights (not biases/norms)" if cfg.weight_decay
             else "no weight decay")
    sched = {"onecycle": f"one-cycle ({cfg.warmup:.0%} warm-up, linear decay to 0)",
             "cosine": f"cosine ({cfg.warmup:.0%} warm-up)", "step": "step (x0.1 at 50% and 75%)",
             "constant": "constant"}[cfg.schedule]
    smooth = f", label smoothing {cfg.label_smoothing:g}" if cfg.label_smoothing else ""
    batch = f"{cfg.batch_size}" + (f" x {world_size} processes" if world_size > 1 else "")
    return (f"recipe {cfg.recipe}: {opt}, lr {cfg.lr:g} ({sched} schedule), {decay}, loss {cfg.loss}{smooth}, "
            f"batch {batch}, {cfg.epochs} epoch(s), augment {', '.join(cfg.augment) or 'none'}")


def classification_loss(name: str, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean",
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """``cross-entropy`` on the logits; ``nll``: negative log-likelihood of log-softmax
    outputs (PyTorch's NLLLoss after LogSoftmax, the same value as cross-entropy: the
    softmax is written out instead of fused); ``mse``: mean squared error between the
    softmax probabilities and the one-hot target, summed over classes."""
    if name == "cross-entropy":
        return F.cross_entropy(out, y, reduction=reduction, label_smoothing=label_smoothing)
    if name == "nll":
        return F.nll_loss(torch.log_softmax(out, 1), y, reduction=reduction)
    target = F.one_hot(y, out.shape[1]).to(out.dtype)
    if label_smoothing:
        target = target * (1 - label_smoothing) + label_smoothing / out.shape[1]
    per_image = (torch.softmax(out, 1) - target).pow(2).sum(1)
    return per_image.sum() if reduction == "sum" else per_image.mean()
