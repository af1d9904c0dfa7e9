"""Progress display for training: :class:`~styleforge.classify.train.TrainEvent` callbacks
shown through the one bar adapter, :class:`styleforge.runtime.progress.Bar`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable

from ..runtime.progress import Bar

if TYPE_CHECKING:
    from .train import TrainEvent


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where fit() shows its progress without being asked)."""
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    ip = get() if get else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


class TrainBars(Bar):
    """TrainEvents as bars that clear when their stage ends (feature extraction, one per
    epoch) and a line per phase and per epoch."""

    def __init__(self, quiet: bool = False) -> None:
        super().__init__(quiet, leave=False)

    def __call__(self, e: TrainEvent) -> None:
        if e.kind == "phase" and e.steps:
            self.show(e.message, e.step, e.steps, "img")
        elif e.kind == "epoch_start":
            self.close()
            self.show(f"epoch {e.epoch}/{e.epochs}", e.step, e.steps, "batch")
        elif e.kind == "step" and self.is_open:
            self.show(self.label or "", e.step, e.steps, "batch", {
                "loss": f"{e.metrics['loss']:.4f}", "acc": f"{e.metrics['acc']:.3f}", "lr": f"{e.metrics['lr']:.3g}"})
        elif e.kind == "epoch_end":
            self.close()
            m = e.metrics
            val = (f", val loss {m['val_loss']:.4f} acc {m['val_acc']:.4f}" if m.get("val_loss") is not None else "")
            self.write(f"epoch {e.epoch}/{e.epochs}: train loss {m['train_loss']:.4f} acc {m['train_acc']:.4f}{val} "
                       f"({m['seconds']:.1f} s)")
        elif e.kind in ("phase", "done"):
            self.close()
            if e.message:
                self.write(e.message)


def default_progress(progress: bool | None) -> Callable[[TrainEvent], None] | None:
    """The callback fit() uses when given none: bars when ``progress`` is True, or when it
    is None and running in a notebook; else nothing."""
    return TrainBars() if progress or (progress is None and in_notebook()) else None
