"""Progress display for training: tqdm bars driven by :class:`~styleforge.classify.train.TrainEvent` callbacks."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from .train import TrainEvent


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where fit() shows its progress without being asked)."""
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    ip = get() if get else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


class TrainBars:
    """Turns TrainEvents into one tqdm bar per epoch and a line per epoch (a text bar in a
    terminal, a widget in a notebook where ipywidgets is installed: ``tqdm.auto``)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.bar: tqdm | None = None
        self.feature_bar: tqdm | None = None

    def __call__(self, e: TrainEvent) -> None:
        if self.quiet:
            return
        if e.kind == "phase" and e.steps:
            if self.feature_bar is None or self.feature_bar.desc != e.message:
                self._close_features()
                self.feature_bar = tqdm(total=e.steps, desc=e.message, unit="img", dynamic_ncols=True, leave=False)
            self.feature_bar.update(e.step - self.feature_bar.n)
        elif e.kind == "phase":
            self._close_features()
            tqdm.write(e.message)
        elif e.kind == "epoch_start":
            self._close_features()
            self.close()
            self.bar = tqdm(total=e.steps, desc=f"epoch {e.epoch}/{e.epochs}", unit="batch", dynamic_ncols=True,
                            leave=False)
        elif e.kind == "step" and self.bar is not None:
            self.bar.set_postfix(loss=f"{e.metrics['loss']:.4f}", acc=f"{e.metrics['acc']:.3f}",
                                 lr=f"{e.metrics['lr']:.3g}", refresh=False)
            self.bar.update(e.step - self.bar.n)
        elif e.kind == "epoch_end":
            self.close()
            m = e.metrics
            val = (f", val loss {m['val_loss']:.4f} acc {m['val_acc']:.4f}" if m.get("val_loss") is not None else "")
            tqdm.write(f"epoch {e.epoch}/{e.epochs}: train loss {m['train_loss']:.4f} acc {m['train_acc']:.4f}{val} "
                       f"({m['seconds']:.1f} s)")
        elif e.kind == "done":
            self._close_features()
            self.close()
            if e.message:
                tqdm.write(e.message)

    def _close_features(self) -> None:
        if self.feature_bar is not None:
            self.feature_bar.close()
            self.feature_bar = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def default_progress(progress: bool | None) -> Callable[[TrainEvent], None] | None:
    """The callback fit() uses when given none: bars when ``progress`` is True, or when it
    is None and running in a notebook; else nothing."""
    return TrainBars() if progress or (progress is None and in_notebook()) else None
