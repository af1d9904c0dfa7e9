"""One training epoch of :func:`~.train.fit` (:func:`train_one_epoch`), and its progress events.

Each process takes a :class:`~torch.utils.data.DistributedSampler` shard of every epoch
(reshuffled per epoch; one process is world size 1); the augmentation and dropout streams
are derived from (seed, epoch, rank), so a resumed epoch draws what an uninterrupted one
does. Frozen batch-norm layers stay in eval mode (their running statistics do not drift).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn
from torch.utils.data import DistributedSampler

from ..runtime import distributed
from ..runtime.device import STREAM_GAP, Runtime, backward_step, derived_seed, set_lr
from .batches import Source
from .recipe import classification_loss

if TYPE_CHECKING:
    from .train import TrainConfig


@dataclass
class TrainEvent:
    """Progress for callbacks (rank 0 only). ``kind``: phase, epoch_start, step, epoch_end, done."""

    kind: str
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""


Callback = Callable[[TrainEvent], None]


@dataclass
class Clock:
    """Training seconds: those of the run before a resume, plus those since ``start``."""

    before: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        return self.before + (time.perf_counter() - self.start)


@dataclass
class Loop:
    """What every epoch uses, fixed for the whole run."""

    cfg: TrainConfig
    ctx: distributed.Dist
    rt: Runtime
    sources: dict[str, Source]
    net: nn.Module                  # what trains: the model, or only its head on cached features
    train_net: nn.Module            # ``net``, wrapped for DDP when distributed
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    sampler: DistributedSampler
    steps: int                      # per epoch
    num_classes: int
    cached: bool                    # ``net`` is the head (no frozen batch norm to keep in eval mode)
    emit: Callback
    clock: Clock = field(default_factory=Clock)


@dataclass
class EpochStats:
    """One epoch on this process: sums over its batches, and why it ended early (if it did)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    lr: float = 0.0
    batch_losses: list[torch.Tensor] = field(default_factory=list)
    stopped: str = "completed"      # or time-limit, nan
    message: str = ""

    def step_rows(self, epoch: int, steps: int) -> list[dict[str, Any]]:
        """steps.csv rows (one device sync per epoch)."""
        if not self.batch_losses:
            return []
        losses = torch.stack(self.batch_losses).float().cpu().tolist()
        return [{"step": (epoch - 1) * steps + i + 1, "epoch": epoch, "loss": v} for i, v in enumerate(losses)]


def train_one_epoch(loop: Loop, epoch: int, lr_at: Callable[[float], float]) -> EpochStats:
    """Train ``loop.net`` for one epoch; ``lr_at(progress)`` is the learning-rate factor at a
    fraction of training (steps, or seconds of ``--max-seconds``)."""
    cfg, ctx = loop.cfg, loop.ctx
    assert cfg.lr is not None  # cfg is validated: lr has its default
    loop.sampler.set_epoch(epoch)
    order = torch.tensor(list(iter(loop.sampler)), dtype=torch.long)
    gen = torch.Generator().manual_seed(derived_seed(cfg.seed, epoch * STREAM_GAP, ctx.rank))
    # Dropout draws from torch's global generator: its own stride, so it is resumable too.
    torch.manual_seed(derived_seed(cfg.seed, epoch * 104_729, ctx.rank, stride=1_000_033))
    if loop.cached:
        loop.net.train()
    else:
        _train_mode(loop.net)
    loop.emit(TrainEvent("epoch_start", epoch, cfg.epochs, 0, loop.steps))
    zero = torch.zeros((), dtype=torch.float64, device=loop.rt.device)
    stats = EpochStats(zero.clone(), zero.clone(), lr=cfg.lr)
    log_every = max(1, min(20, loop.steps // 10))
    for step in range(loop.steps):
        progress = _progress(loop, epoch, step)
        if progress is None:
            stats.stopped, stats.message = "time-limit", f"stopped at the {cfg.max_seconds:g} s training budget"
            break
        stats.lr = cfg.lr * lr_at(progress)
        set_lr(loop.optimizer, stats.lr)
        idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        loss = _train_step(loop, idx, gen, stats)
        if (step + 1) % log_every == 0 or step + 1 == loop.steps:
            if not ctx.all_ok(math.isfinite(float(loss))):
                stats.stopped = "nan"
                stats.message = (f"the loss became NaN/inf in epoch {epoch} (step {step + 1}) at lr {stats.lr:.3g}: "
                                 "lower --lr")
                break
            loop.emit(TrainEvent("step", epoch, cfg.epochs, step + 1, loop.steps,
                                 {"loss": float(stats.loss_sum / max(stats.seen, 1)),
                                  "acc": float(stats.correct / max(stats.seen, 1)), "lr": stats.lr}))
    return stats


def _progress(loop: Loop, epoch: int, step: int) -> float | None:
    """The fraction of training done at ``step`` of ``epoch``; None once the time budget is spent."""
    cfg, ctx = loop.cfg, loop.ctx
    if not cfg.max_seconds:
        return ((epoch - 1) * loop.steps + step + 0.5) / (loop.steps * cfg.epochs)
    elapsed = loop.clock.seconds()
    over = not ctx.all_ok(elapsed < cfg.max_seconds) if ctx.enabled else elapsed >= cfg.max_seconds
    return None if over else elapsed / cfg.max_seconds


def _train_step(loop: Loop, idx: torch.Tensor, gen: torch.Generator, stats: EpochStats) -> torch.Tensor:
    """One optimizer step on the batch ``idx``, added to ``stats``; returns its (detached) loss."""
    cfg, src = loop.cfg, loop.sources["train"]
    assert cfg.label_smoothing is not None  # cfg is validated: the recipe filled it in
    x = src.batch(idx, cfg.augment, gen)
    y = src.labels[idx.to(src.labels.device)]
    with loop.rt.autocast():
        out = loop.train_net(x)
    loss = classification_loss(cfg.loss, out.float(), y, label_smoothing=cfg.label_smoothing)
    loop.optimizer.zero_grad(set_to_none=True)
    backward_step(loss, loop.optimizer, loop.scaler)
    loss = loss.detach()
    stats.loss_sum += loss.double() * len(idx)
    stats.batch_losses.append(loss)
    stats.correct += (out.detach().argmax(1) == y).sum().double()
    stats.seen += len(idx)
    return loss


def _train_mode(net: nn.Module) -> None:
    """Train mode, except batch norm whose parameters are all frozen (keeps its statistics)."""
    net.train()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters())
            if params and not any(p.requires_grad for p in params):
                m.eval()
