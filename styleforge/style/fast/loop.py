"""The step loop both fast trainers share (:mod:`.train`, :mod:`.decoder_train`), by phase.

- setup: :func:`photo_files`, :meth:`StepRun.place` (model and optimizer on the device,
  DDP-wrapped), :meth:`StepRun.loader` (the replayable photo stream of :mod:`.data`,
  starting after the resumed step);
- resume: :func:`read_checkpoint` (format and structure), :meth:`StepRun.resume`;
- one step: :meth:`StepRun.train_step` runs the trainer's loss function, the backward
  step, and averages the named losses over processes (the loss of the global batch);
- checkpoint: :meth:`StepRun.save`, every ``checkpoint_every`` steps and at the end.

The learning rate is a function of the step alone (:func:`lr_at`), so resume is exact.
Only rank 0 writes files and reports progress.
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Mapping, Sequence, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ...runtime import distributed, figures, guard
from ...runtime.device import Runtime, backward_step, optimizer_to, set_lr
from ...runtime.errors import StyleforgeError
from ...runtime.io import atomic_path, open_rgb, save_torch
from .data import StreamSampler, collate, list_images
from .model import read_record

LR_SCHEDULES = ("cosine", "constant")
# Departure from Johnson et al. (constant lr for 40k steps): runs a CPU affords are 10-50x
# shorter, and decaying the rate over the run removes most of the high-frequency noise
# that the last constant-rate steps leave in the network's output.
LR_FLOOR = 0.05

# The trainer's loss: a batch on the device -> (the loss to minimize, named losses to record).
LossFn = Callable[[torch.Tensor], tuple[torch.Tensor, Mapping[str, torch.Tensor]]]
M = TypeVar("M", bound=nn.Module)  # the network a StepRun trains


def lr_at(step: int, steps: int, lr: float, schedule: str, warmup: int = 0) -> float:
    """Learning rate of (1-based) ``step`` of ``steps``: a function of the step alone, so resume is exact.

    ``warmup``: the rate rises linearly over the first ``warmup`` steps (``step / warmup`` of it).
    Not in the papers: Adam's first steps move every weight by about the full rate whatever the
    gradient's size, and the relu5_1 decoder's first layer died in them (every ReLU off for every
    input, a flat-colour picture ever after: session 18); with 100 warmup steps 44 % of it stayed
    alive and the decoder learnt (16.7 dB on 20 test photos after 1200 CPU steps, against 13.1).
    """
    scale = min(1.0, step / warmup) if warmup > 0 else 1.0
    if schedule == "constant" or steps <= 1:
        return lr * scale
    t = (step - 1) / (steps - 1)
    return scale * lr * (LR_FLOOR + (1.0 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * t)))


def folders(data: str | os.PathLike | Sequence[str]) -> list[str]:
    """--data: one folder or several."""
    return [str(data)] if isinstance(data, (str, os.PathLike)) else [str(d) for d in data]


def resolved(data) -> list[str]:
    """--data (or the style path) as absolute paths, to compare runs however the paths were written."""
    return [str(Path(d).resolve()) for d in folders(data)] if data is not None else []


def photo_files(data: str | os.PathLike | Sequence[str]) -> tuple[list[Path], list[Path]]:
    """The readable and the unreadable photos of every --data folder."""
    files: list[Path] = []
    unreadable: list[Path] = []
    for folder in folders(data):
        good, bad = list_images(folder)
        files, unreadable = files + good, unreadable + bad
    return files, unreadable


# Settings of the fast trainers whose option is not named after them (the rest: --the-setting-name), for
# the resume check's message.
OPTION_NAMES = {"arch": "--network", "image_size": "--crop-size", "checkpoint_every": "--checkpoint-steps",
                "global_batch": "the global batch (--batch-size x processes)", "world_size": "the processes"}


def check_batch(files: list[Path], global_batch: int) -> None:
    """One-line error when the photos do not fill one batch. Only headers were read (list_images): files
    are decoded here, in order, until one batch's worth decode, so a truncated file never counts toward it."""
    usable = 0
    for f in files:
        usable += _decodes(f)
        if usable == global_batch:
            return
    raise StyleforgeError(f"--data holds {usable} usable photo(s), fewer than one batch of {global_batch}: "
                          "add photos or lower --batch-size")


def _decodes(path: Path) -> bool:
    try:
        open_rgb(path)
    except StyleforgeError:
        return False
    return True


def read_checkpoint(ckpt: Path, fmt: str, kind: str) -> dict:
    """A training checkpoint for --resume, its format and structure checked (one-line errors)."""
    if not ckpt.is_file():
        raise StyleforgeError(f"--resume: no checkpoint {ckpt} to continue from (train without --resume)")
    record = read_record(ckpt, "start the run again without --resume (with --overwrite)")
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise StyleforgeError(f"{ckpt} is not a styleforge {kind} checkpoint")
    guard.require_keys(record, ckpt, {"model": dict, "optimizer": dict, "step": int, "history": list,
                                      "config": dict})
    guard.check_state_dict(record["model"], ckpt, "model")
    return record


@dataclass
class StepRun(Generic[M]):
    """A step-based training run: where it is, its loss history, its checkpoint.

    The checkpoint is ``{format, step, model, optimizer, config, history, skipped, **extra}``:
    the plain state dicts (never a DDP wrapper's), so a run resumes under any world size.
    """

    ctx: distributed.Dist
    rt: Runtime
    model: M                         # what trains
    optimizer: torch.optim.Optimizer
    ckpt: Path
    fmt: str                         # the checkpoint's "format" entry
    config: dict[str, Any]           # the run's record (--resume compares it)
    history_file: Path               # write_history names the loss table after it
    extra: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # unreadable photos met so far
    last_ckpt: int = 0
    running: dict[str, float] = field(default_factory=dict)  # exponential averages of the named losses
    train_model: nn.Module | None = None                     # ``model``, wrapped for DDP when distributed
    scaler: torch.amp.GradScaler | None = None

    def resume(self, record: dict, steps: int, stop_at: int | None) -> None:
        """Continue from a checkpoint read by :func:`read_checkpoint` (and checked by the trainer)."""
        if record["step"] >= min(steps, stop_at or steps):
            raise StyleforgeError(f"--resume: the checkpoint is at step {record['step']}, already at --steps "
                                  f"{steps}: give more --steps to train further")
        guard.load_state(self.model, record["model"], self.ckpt)
        guard.load_state(self.optimizer, record["optimizer"], self.ckpt, "optimizer settings")
        self.step = self.last_ckpt = record["step"]
        self.history = list(record["history"])
        self.running = running_averages(self.history)  # as an uninterrupted run would hold them
        self.skipped = sorted(set(self.skipped) | set(record.get("skipped", [])))

    def place(self) -> None:
        """Model and optimizer state on the device; the DDP wrapper; the grad scaler."""
        self.model = self.rt.to(self.model)
        optimizer_to(self.optimizer, self.rt.device)
        self.train_model = distributed.wrap(self.model, self.ctx, self.rt.device)
        self.scaler = self.rt.grad_scaler()

    def loader(self, dataset: Dataset, n: int, global_batch: int, end: int, seed: int,
               workers: int | None) -> DataLoader:
        """Batches of the replayable stream from the step after ``self.step`` to ``end``."""
        workers = workers if workers is not None else self.rt.loader_workers
        sampler = StreamSampler(n, global_batch, end, seed, self.step, self.ctx.rank, self.ctx.world_size)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                          pin_memory=self.rt.pin_memory, prefetch_factor=4 if workers else None)

    def save(self) -> None:
        """The checkpoint and the loss table (rank 0), then a barrier: call on every rank."""
        if self.ctx.is_main:
            save_torch({"format": self.fmt, **self.extra, "step": self.step,
                        "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                        "optimizer": _cpu(self.optimizer.state_dict()), "config": self.config,
                        "history": self.history, "skipped": self.skipped}, self.ckpt)
            write_history(self.history, self.history_file, plot=False)
        self.ctx.barrier()

    def train_step(self, batch: torch.Tensor, loss_fn: LossFn, lr: float) -> dict[str, float]:
        """One optimizer step; the named losses averaged over processes."""
        x = self.rt.to(batch, non_blocking=True)
        set_lr(self.optimizer, lr)
        loss, parts = loss_fn(x)
        self.optimizer.zero_grad(set_to_none=True)
        backward_step(loss, self.optimizer, self.scaler)
        values = (self.ctx.sum([float(v.detach()) for v in parts.values()]) / self.ctx.world_size).tolist()
        row = dict(zip(parts, values))
        bad = [v for v in values if not math.isfinite(v)]
        if bad:
            kept = (f"the last checkpoint {self.ckpt} (step {self.last_ckpt}) is valid for --resume"
                    if self.last_ckpt else "no checkpoint was written")
            raise StyleforgeError(f"the loss became {row.get('total', bad[0])} at step {self.step}: lower --lr; "
                                  f"{kept}")
        _average_into(self.running, row)
        return row

    def run(self, loader: DataLoader, loss_fn: LossFn, cfg: Any, steps: int, global_batch: int,
            report: Callable[[float], None] | None, rates: bool = True) -> float:
        """Steps until ``loader`` ends, checkpointing every ``cfg.checkpoint_every``; ``report(images_per_s)``
        after each (rank 0). ``cfg``: the trainer's config (lr, lr_schedule, warmup_steps, checkpoint_every). ``rates``:
        record each step's images/s in the history. Returns the training seconds, resumed ones included."""
        start, start_step = time.perf_counter(), self.step
        before = self.history[-1]["seconds"] if self.history else 0.0
        self.model.train()
        # Ctrl-C, SIGTERM (torchrun stopping the others when one process dies) and a lost peer
        # end in one line that names the checkpoint to --resume from.
        with distributed.stop_cleanly(self.ctx, self.resume_hint), guard.worker_errors("reading the training photos"):
            for batch, bad in loader:
                self.step += 1
                self.skipped.extend(b for b in bad if b not in self.skipped)
                t0 = time.perf_counter()
                row = self.train_step(batch, loss_fn, lr_at(self.step, steps, cfg.lr, cfg.lr_schedule,
                                                                  cfg.warmup_steps))
                rate = {"images_per_s": global_batch / (time.perf_counter() - t0)} if rates else {}
                self.history.append({"step": self.step, **row, **rate,
                                     "seconds": before + time.perf_counter() - start})
                if report is not None and self.ctx.is_main:
                    report((self.step - start_step) * global_batch / (time.perf_counter() - start))
                if self.step % cfg.checkpoint_every == 0 and self.step < steps:
                    self.save()
                    self.last_ckpt = self.step
        return before + time.perf_counter() - start

    def resume_hint(self) -> distributed.ResumeHint:
        saved = bool(self.last_ckpt)
        if not self.ctx.is_main:
            return distributed.ResumeHint(f"rank 0 keeps the checkpoint {self.ckpt}", saved)
        where = f"the checkpoint {self.ckpt} (step {self.last_ckpt}) is valid" if saved else distributed.NO_CHECKPOINT
        return distributed.ResumeHint(f"at step {self.step}, {where}", saved)


_NOT_LOSSES = ("step", "images_per_s", "seconds")  # the other columns of a history row


def _average_into(running: dict[str, float], row: Mapping[str, float]) -> None:
    """Fold one step's named losses into their exponential averages (what progress and a model's
    ``final_losses`` report)."""
    for k, v in row.items():
        if k not in _NOT_LOSSES:
            running[k] = v if k not in running else 0.95 * running[k] + 0.05 * v


def running_averages(history: list[dict[str, float]]) -> dict[str, float]:
    """The exponential averages after ``history``: a resumed run's, or a stopped run's from its checkpoint."""
    running: dict[str, float] = {}
    for row in history:
        _average_into(running, row)
    return running


def write_history(history: list[dict[str, float]], output: str | os.PathLike, plot: bool = True,
                  style: str | None = None) -> None:
    """The loss history as CSV and (optionally) a PNG plot beside the model, titled by ``style`` and
    the model's file name."""
    csv_path, png_path = history_paths(output)
    if not history:
        return
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
    if plot:
        steps = [r["step"] for r in history]
        fig, ax = figures.subplots(figsize=(8.5, 4), dpi=100)
        window = max(1, len(history) // 50)
        # every loss the trainer recorded, except terms switched off (all zero: nothing on a log scale)
        names = [k for k in history[0] if k not in _NOT_LOSSES and any(r[k] > 0 for r in history)]
        for key in names:
            vals = [r[key] for r in history]
            smooth = [sum(vals[max(0, i - window + 1):i + 1]) / len(vals[max(0, i - window + 1):i + 1])
                      for i in range(len(vals))]
            # the total in black: with the chroma loss there are eleven curves, one more than the colour cycle
            ax.plot(steps, smooth, label=key, **({"color": "black"} if key == "total" else {}))
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(f"weighted loss (mean of last {window} steps)")
        ax.set_title(f"fast style training: {style + ', ' if style else ''}{Path(output).name}")
        # beside the axes, not on them: with eight terms a legend inside covers the first steps' curves
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        figures.save_figure(fig, png_path, dpi=100, tight=False)


def history_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    out = Path(output)
    return out.with_name(out.stem + ".losses.csv"), out.with_name(out.stem + ".losses.png")


def _cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj
