"""The optimizer and the learning-rate schedule of classifier training (:func:`~.train.fit`).

Departures from the textbook loop: weight decay applies to weights only, not to biases
and batch-norm parameters; the schedule is a function of training progress (steps, or
elapsed time when ``max_seconds`` is set), so a time-budgeted run still anneals to zero
and a resumed run continues the same curve.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..runtime.errors import StyleforgeError

if TYPE_CHECKING:
    from .train import TrainConfig

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "step", "constant")
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}


def lr_factor(schedule: str, progress: float, warmup: float = 0.2) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1] of training."""
    p = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "step":  # ×0.1 at half and at three quarters of training
        return 0.1 ** ((p >= 0.5) + (p >= 0.75))
    if warmup > 0 and p < warmup:
        return p / warmup
    q = (p - warmup) / (1 - warmup) if warmup < 1 else 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * q))
    return max(0.0, 1 - q)  # onecycle: linear warm-up, linear decay to zero


def _param_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in net.parameters():
        if p.requires_grad:
            (decay if p.dim() > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(cfg: TrainConfig, net: nn.Module) -> torch.optim.Optimizer:
    # cfg is validated: lr has its default and the recipe filled in the settings left None.
    assert cfg.lr is not None and cfg.weight_decay is not None
    groups = _param_groups(net, cfg.weight_decay)
    if not any(g["params"] for g in groups):
        raise StyleforgeError("nothing to train: the freeze policy froze every parameter")
    if cfg.optimizer == "sgd":
        assert cfg.momentum is not None and cfg.nesterov is not None
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=cfg.lr)


def steps_per_epoch(per_rank: int, batch_size: int) -> int:
    """Batches per epoch from a process's ``per_rank`` images. A final batch of one image is
    skipped: batch norm cannot train on it."""
    return max(1, per_rank // batch_size + (1 if per_rank % batch_size > 1 else 0))
