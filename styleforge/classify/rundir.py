"""The run directory of :func:`~.train.fit`: what it holds, preparing it, its checkpoints and results.

:class:`RunState` *is* last.pt: the model's description and weights, the optimizer's and
grad scaler's state, and the run so far (epoch, metric rows, best epoch, early-stopping
count, training seconds). :class:`Checkpoints` writes best.pt and last.pt at most every
``--checkpoint-every`` seconds, and says which one is valid when a run stops early.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from ..runtime import distributed, guard
from ..runtime.errors import StyleforgeError
from ..runtime.io import check_writable, make_folder, refuse_foreign, save_json, written_by_styleforge
from . import report
from .checkpoint import check_compatible, load_checkpoint, save_checkpoint
from .data import DataSpec
from .spec import file_ref_path, short_name

if TYPE_CHECKING:
    from .train import TrainConfig

# Files that make a folder "hold a run" (and that --overwrite removes).
RUN_FILES = ("config.json", "metrics.csv", "steps.csv", "summary.json", "best.pt", "last.pt", "curves.png", "model.py",
             "predictions.png",
             "confusion_test.png", "per_class_test.csv", "per_class_test.md", "report.md")
# Every file name a run directory or grid search of styleforge holds ("--overwrite" deletes
# a folder only when it holds nothing else).
OWN_FILES = RUN_FILES + tuple(f"{stem}_{split}.{ext}" for split in ("test", "val", "train")
                              for stem, ext in (("confusion", "png"), ("per_class", "csv"), ("per_class", "md"),
                                                ("eval", "json"))) + ("grid.csv", "grid.md", "grid.json")
RUN_DIRS = "[0-9][0-9]-*"  # a grid search's run folders

# Settings that may differ on --resume: where things are and how fast they run, not what is trained.
RESUME_MAY_CHANGE = ("output", "overwrite", "resume", "data_root", "download", "weights", "device", "precision",
                     "channels_last", "checkpoint_seconds", "eval_batch_size", "cache_features", "plots",
                     "evaluate_test", "batch_size")  # batch_size: compared per effective batch below
# The keys of a checkpoint that describe the model (the rest is weights and progress).
_META_KEYS = ("model", "input_shape", "num_classes", "class_names", "activation", "model_options", "freeze",
              "model_source")


@dataclass
class RunState:
    """A run so far, as last.pt holds it (the layout of ``styleforge-classifier/1``, unchanged).

    No random-generator state is kept: each epoch's shuffle, augmentation and dropout
    streams are derived from (seed, epoch, rank), so the epoch after a resume draws what it
    would have drawn in an uninterrupted run.
    """

    epoch: int = 0                                            # the last finished epoch (0: none yet)
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics.csv: one row per finished epoch
    best: dict[str, Any] | None = None                        # score, epoch, val_acc, val_loss of the best epoch
    bad_epochs: int = 0                                       # epochs since the best one (early stopping)
    train_seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)        # the model's description (checkpoint.make_meta)
    config: dict[str, Any] = field(default_factory=dict)      # the run's record (config.json)
    # The states read from a checkpoint, for restore(); save() takes them from the live objects.
    model: dict[str, torch.Tensor] | None = None
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: Path) -> "RunState":
        """Read last.pt, checking its structure (one-line errors)."""
        record = load_checkpoint(path)
        guard.require_keys(record, path, {"epoch": int, "config": dict, "optimizer": dict, "rows": list})
        return cls(epoch=int(record["epoch"]), rows=[dict(r) for r in record["rows"]],
                   best=dict(record["best"]) if record.get("best") else None,
                   bad_epochs=int(record.get("bad_epochs", 0)), train_seconds=float(record.get("train_seconds", 0.0)),
                   meta={k: record[k] for k in _META_KEYS if k in record}, config=record["config"],
                   model=record["state_dict"], optimizer=record["optimizer"], scaler=record.get("scaler"))

    def save(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler | None) -> None:
        """Write last.pt with the live model's, optimizer's and scaler's state."""
        save_checkpoint(path, model, self.meta, epoch=self.epoch, metrics=self.rows[-1], config=self.config,
                        optimizer=optimizer.state_dict(), scaler=scaler.state_dict() if scaler else None,
                        rows=self.rows, best=self.best, bad_epochs=self.bad_epochs, train_seconds=self.train_seconds)

    def restore(self, model: nn.Module, model_name: str, classes: list[str], shape: tuple[int, int, int],
                where: Path) -> None:
        """Load the saved weights into ``model``, after checking that they fit it and the data."""
        check_compatible({**self.meta, "path": str(where)}, model=model_name, num_classes=len(classes),
                         class_names=classes, channels=shape[0])
        if list(self.meta["input_shape"]) != list(shape):
            raise StyleforgeError(f"{where} takes {'x'.join(map(str, self.meta['input_shape']))} "
                                  f"input, this run {'x'.join(map(str, shape))}: use the same --image-size")
        guard.load_state(model, self.model, where)

    def restore_optimizer(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                          where: Path) -> None:
        if self.optimizer:
            guard.load_state(optimizer, self.optimizer, where, "optimizer settings")
            if scaler is not None and self.scaler:
                scaler.load_state_dict(self.scaler)

    def add_epoch(self, row: dict[str, Any]) -> bool:
        """Record a finished epoch; True when it is the new best (lowest validation loss, or
        the latest epoch without a validation split)."""
        self.rows.append(row)
        self.epoch = row["epoch"]
        score = row["val_loss"] if row["val_loss"] is not None else row["train_loss"]
        improved = math.isfinite(score) and (self.best is None or score < self.best["score"]
                                             or row["val_loss"] is None)
        if improved:
            self.best = {"score": score, "epoch": row["epoch"], "val_acc": row["val_acc"], "val_loss": row["val_loss"]}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return improved


class Checkpoints:
    """best.pt and last.pt of a run (rank 0 writes; every rank keeps the best weights).

    Written at most every ``every`` seconds: with a frozen trunk an epoch can take less
    time than writing a VGG-sized checkpoint twice. best.pt is written before last.pt, so
    the best record in last.pt always matches best.pt.
    """

    def __init__(self, run_dir: Path, state: RunState, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler | None, every: float, ctx: distributed.Dist) -> None:
        self.run_dir, self.state, self.model, self.every, self.ctx = run_dir, state, model, every, ctx
        self.optimizer, self.scaler = optimizer, scaler
        self.best_state: dict[str, torch.Tensor] | None = None  # a CPU copy (on resume: best.pt, read at the end)
        self.pending_best: dict[str, Any] | None = None
        self.last_saved, self.saved_epoch = time.perf_counter(), state.epoch

    def improved(self, row: dict[str, Any]) -> None:
        self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        self.pending_best = {"epoch": row["epoch"], "metrics": dict(row)}

    def save_best(self) -> None:
        if self.pending_best is not None:
            assert self.best_state is not None  # improved() sets both
            save_checkpoint(self.run_dir / "best.pt", self.best_state, self.state.meta, config=self.state.config,
                            **self.pending_best)
            self.pending_best = None

    def save_last(self) -> None:
        self.save_best()
        self.state.save(self.run_dir / "last.pt", self.model, self.optimizer, self.scaler)
        self.last_saved, self.saved_epoch = time.perf_counter(), self.state.epoch

    def after_epoch(self, final: bool) -> None:
        """Rank 0, after an epoch: save when it is the last one or the interval has passed."""
        if final or time.perf_counter() - self.last_saved >= self.every:
            self.save_last()

    def finish(self, nan: bool) -> None:
        """Rank 0, after training: last.pt up to date (unless the loss became NaN: it keeps its
        earlier, clean state) and best.pt with the last clean best weights."""
        if not nan and self.state.rows and self.saved_epoch < self.state.epoch:
            self.save_last()  # e.g. the time budget ran out at an epoch's start
        self.save_best()

    def best_weights(self) -> dict[str, torch.Tensor]:
        """The best epoch's weights, on every rank."""
        if self.best_state is None:  # resumed and never improved: the best weights are on disk
            self.best_state = on_main(self.ctx, lambda: load_checkpoint(self.run_dir / "best.pt")["state_dict"])
        return self.best_state

    def resume_hint(self) -> distributed.ResumeHint:
        saved = self.saved_epoch >= 1
        if not self.ctx.is_main:
            text = f"rank 0 keeps the checkpoints in {self.run_dir}"
        elif saved:
            text = f"the checkpoint {self.run_dir / 'last.pt'} (epoch {self.saved_epoch}) is valid"
        else:
            text = distributed.NO_CHECKPOINT
        return distributed.ResumeHint(text, saved)


def on_main(ctx: distributed.Dist, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 and share its result, or its one-line error, with every rank."""
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except StyleforgeError as exc:
            error = str(exc)
    result, error = ctx.broadcast((result, error)) if ctx.enabled else (result, error)
    if error is not None:
        raise StyleforgeError(error)
    return result


def load_resume(run_dir: Path, cfg: TrainConfig, world_size: int) -> RunState:
    """last.pt, after checking its structure and that ``cfg`` continues the same run."""
    last = run_dir / "last.pt"
    if not last.is_file():
        raise StyleforgeError(f"nothing to resume: {last} does not exist (train without --resume first)")
    state = RunState.load(last)
    check_same_run(state.config, last, cfg, world_size)
    return state


def check_same_run(record: dict[str, Any], where: Path, cfg: TrainConfig, world_size: int) -> None:
    """Refuse to continue the run recorded as ``record`` (read from ``where``) with settings ``cfg`` that
    would change it; a grid search's --resume also keeps a finished run only on this check."""
    current = {**cfg.as_dict(), "freeze": cfg.resolved_freeze()}  # the record holds the resolved policy
    saved = _with_defaults(record, where, type(cfg))
    # The batch is compared per effective batch (--batch-size x processes), beside the other settings.
    batches = ({"effective_batch": record.get("effective_batch_size", record.get("batch_size"))},
               {"effective_batch": cfg.batch_size * world_size})
    guard.check_resume({**_settings(saved), **batches[0]}, {**_settings(current), **batches[1]}, RESUME_MAY_CHANGE,
                       where, {"model_options": "--option", "effective_batch": "the effective batch (--batch-size x "
                                                                               "processes)"})


def _with_defaults(record: dict[str, Any], where: Path, config: type[TrainConfig]) -> dict[str, Any]:
    """``record`` with the settings it lacks at their defaults: a run recorded before a setting
    existed continues as if it had been given that setting's default."""
    filled = config.from_dict(record, str(where)).as_dict()
    out = {**{k: v for k, v in filled.items() if k not in record}, **record}
    data = {**filled["data"], **record.get("data", {})}
    # Runs recorded before their folders were made absolute name them as given: read from here, as then.
    located = DataSpec.from_dict(data).located()
    out["data"] = {**data, "dataset": located.dataset, "test_data": located.test_data}
    return out


def _settings(record: dict[str, Any]) -> dict[str, Any]:
    """A record's settings side by side, as the options name them (``data``'s beside the others)."""
    return {**{k: v for k, v in record.items() if k != "data"}, **record.get("data", {})}


def _copied_model(run_dir: Path) -> bool:
    """Whether the run's model.py is its copy of a user's model file: its config.json (styleforge's) names a
    FILE.py:CLASS model. Else a model.py there is the user's own, which --overwrite never deletes."""
    config = run_dir / "config.json"
    if not (config.is_file() and written_by_styleforge(config)):
        return False
    model = json.loads(config.read_text()).get("model")
    return isinstance(model, str) and file_ref_path(model) is not None


def prepare_run_dir(run_dir: Path, cfg: TrainConfig, world_size: int = 1) -> RunState | None:
    """Refuse to mix runs; with --resume return last.pt's content."""
    if run_dir.exists() and not run_dir.is_dir():
        raise StyleforgeError(f"-o {run_dir} is a file: give a run directory")
    if cfg.resume:
        return load_resume(run_dir, cfg, world_size)
    user_file = file_ref_path(cfg.model)
    if user_file is not None and user_file.resolve() in {(run_dir / f).resolve() for f in OWN_FILES}:
        raise StyleforgeError(f"--model {user_file} is in -o {run_dir}, where the run writes its own "
                              f"{user_file.name}: move the model file out of the run folder or choose another -o")
    held = [f for f in RUN_FILES if (run_dir / f).exists()]
    if held and not cfg.overwrite:
        # A run that stopped before its first epoch's checkpoint (a NaN loss) has nothing to resume.
        resume = ", --resume to continue it," if (run_dir / "last.pt").exists() else ""
        raise StyleforgeError(f"{run_dir} already holds a run ({', '.join(held[:3])}): use --overwrite to replace "
                              f"it{resume} or another -o")
    refuse_foreign(run_dir / f for f in held if not (f == "model.py" and _copied_model(run_dir)))
    make_folder(run_dir)
    check_writable(run_dir / "config.json")
    for f in held:
        (run_dir / f).unlink()
    grid_dir = run_dir / "grid"
    if cfg.overwrite and grid_dir.is_dir() and not guard.foreign_entries(grid_dir, OWN_FILES, RUN_DIRS):
        shutil.rmtree(grid_dir)  # only a grid search styleforge made
    return None


def write_results(run_dir: Path, cfg: TrainConfig, summary: dict[str, Any], state: RunState,
                  step_rows: list[dict[str, Any]], per_class_rows: list[dict[str, Any]] | None,
                  predictions: Callable[[], Any]) -> None:
    """Rank 0, at the end: the curves, ``predictions()`` (a figure of the best model on test
    images), the test confusion matrix and per-class table, summary.json and report.md."""
    best, classes = state.best, summary["classes"]
    if cfg.plots and state.rows:
        report.plot_curves(state.rows, run_dir / "curves.png", title=f"{short_name(cfg.model)} on "
                           f"{Path(cfg.data.dataset).name}", steps=step_rows, best_epoch=summary["best_epoch"],
                           loss_name=cfg.loss)
    if cfg.plots and best is not None and cfg.evaluate_test:
        report.save_figure(predictions(), run_dir / "predictions.png")
    if per_class_rows is not None:
        assert best is not None  # the test set's table is made with the best checkpoint only
        if cfg.plots:
            report.plot_confusion(torch.tensor(summary["confusion_test"]), classes, run_dir / "confusion_test.png",
                                  title=f"test set, best epoch ({best['epoch']}): accuracy {summary['test_acc']:.2%}")
        columns = ["class", "precision", "recall", "f1", "support"]
        report.write_csv(per_class_rows, columns, run_dir / "per_class_test.csv")
        report.write_text(report.markdown_table(per_class_rows, columns) + "\n", run_dir / "per_class_test.md")
    save_json(summary, run_dir / "summary.json")
    report.write_report(run_dir, summary, state.config, per_class_rows)
