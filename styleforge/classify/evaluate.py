"""Re-evaluating a trained classifier (a run directory or checkpoint) on a dataset split."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..runtime import distributed, guard
from ..runtime.device import for_training, runtime
from ..runtime.errors import StyleforgeError
from ..runtime.io import check_output_folder, make_folder, read_json, refuse_foreign, save_json
from . import report
from .batches import Source, evaluate_source
from .checkpoint import check_compatible, load_checkpoint, model_from_checkpoint
from .data import DataSpec, load_splits
from .rundir import RUN_FILES
from .train import EVAL_BATCH_SIZE

SPLITS = ("test", "val", "train")


@dataclass
class EvalConfig:
    """What to evaluate, and on which data.

    Without ``dataset`` the checkpoint's own data settings are used (same dataset,
    classes and splits as in training). With ``dataset`` the data are as given (DataSpec's
    defaults for the rest), and the checkpoint must fit them (same number of classes, same
    class names). The data settings left None are the checkpoint's, or DataSpec's.
    """

    checkpoint: str
    dataset: str | None = None
    split: str = "test"
    data_root: str | None = None
    test_data: str | None = None
    download: bool = False
    classes: list[str] | None = None
    val_split: float | None = None
    test_split: float | None = None
    image_size: int | None = None
    batch_size: int = EVAL_BATCH_SIZE
    device: str = "auto"
    precision: str = "auto"
    output: str | None = None  # a folder for confusion_<split>.png, per_class_<split>.csv/.md, eval_<split>.json

    def validate(self) -> None:
        """One-line errors for settings no evaluation can use (the checkpoint is checked when read,
        the data settings with the checkpoint's: :func:`_data_spec`)."""
        guard.check_choice(self.split, "--split", SPLITS)
        guard.check_numbers([("--batch-size", self.batch_size, guard.COUNT)])


@dataclass
class EvalResult:
    checkpoint: str
    split: str
    n: int
    loss: float | None
    acc: float | None
    confusion: torch.Tensor
    classes: list[str]
    per_class: list[dict[str, Any]]
    seconds: float
    precision: str = "fp32"  # what the model ran in

    def as_dict(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "split": self.split, "n": self.n, "loss": self.loss, "acc": self.acc,
                "classes": self.classes, "confusion": self.confusion.tolist(), "per_class": self.per_class,
                "seconds": self.seconds, "precision": self.precision}


# EvalConfig's data settings, each replacing the checkpoint's (or DataSpec's default) when given.
_DATA_OVERRIDES = ("data_root", "test_data", "classes", "val_split", "test_split", "image_size")


def _data_spec(cfg: EvalConfig, ckpt: dict[str, Any]) -> DataSpec:
    """The data to evaluate on: ``cfg.dataset`` with DataSpec's defaults, or else the data the
    checkpoint was trained on (its classes as found), with ``cfg``'s settings where given."""
    if cfg.dataset is not None:
        base = DataSpec(cfg.dataset)
    else:
        trained = (ckpt.get("config") or {}).get("data") or {}
        if not trained.get("dataset"):
            raise StyleforgeError(f"{ckpt['path']} does not record its dataset: give --dataset")
        base = replace(DataSpec.from_dict(trained), classes=ckpt.get("class_names"))
    given = {k: getattr(cfg, k) for k in _DATA_OVERRIDES if getattr(cfg, k) is not None}
    return replace(base, download=cfg.download, **given).validate()


def _output_files(split: str) -> list[str]:
    """What an evaluation writes into its -o folder."""
    return [f"confusion_{split}.png", f"per_class_{split}.csv", f"per_class_{split}.md", f"eval_{split}.json"]


def _tested_in_training(run_dir: Path) -> bool:
    """Whether training evaluated the test set, so that the run's test files are training's (a grid search's
    runs train without it, and its evaluation of the best run writes them)."""
    try:
        return read_json(run_dir / "summary.json", "").get("test_acc") is not None
    except StyleforgeError:  # no readable record: take the files for training's
        return True


def _check_outputs(out: Path, run_dir: Path, split: str) -> None:
    """Refuse an -o that would replace the files training wrote for this split (the test set's
    confusion matrix and table, which report.md describes; other splits may go into the run),
    or a file there that styleforge did not write (an earlier evaluation's are replaced)."""
    held = [name for name in _output_files(split) if (out / name).exists()]
    own = [name for name in held if name in RUN_FILES]
    if own and out.is_dir() and out.resolve() == run_dir.resolve() and _tested_in_training(run_dir):
        raise StyleforgeError(f"-o {out} would replace the run's own {own[0]} from training: choose another -o "
                              "(or another --split)")
    refuse_foreign((out / name for name in held), "styleforge", "evaluations replace")


def evaluate(cfg: EvalConfig, callback: Callable[[str], None] | None = None,
             model: torch.nn.Module | None = None) -> EvalResult:
    """Loss (the one the run trained with), accuracy, confusion matrix and per-class
    precision/recall of a checkpoint. ``model``: a fresh instance of the network for runs
    of a model object passed to ``fit(model=...)``."""
    t0 = time.perf_counter()
    cfg.validate()
    if cfg.output:
        check_output_folder(cfg.output)
    ckpt = load_checkpoint(cfg.checkpoint)
    if cfg.output:
        _check_outputs(Path(cfg.output).expanduser(), Path(ckpt["path"]).parent, cfg.split)
    ctx = distributed.current()
    say = callback if (callback is not None and ctx.is_main) else (lambda msg: None)
    say("loading data")
    splits = load_splits(_data_spec(cfg, ckpt))
    data = {"train": splits.train, "val": splits.val, "test": splits.test}[cfg.split]
    if data is None or len(data) == 0:
        raise StyleforgeError(f"the {cfg.split} split is empty: give --val-split > 0 (or a larger one)"
                              if cfg.split == "val" else f"the {cfg.split} split is empty: choose another --split")
    check_compatible(ckpt, num_classes=len(splits.classes), class_names=splits.classes, channels=data.shape[0])
    model = model_from_checkpoint(ckpt, model)
    # auto evaluates as training's own evaluation did (fp32 on a CPU: runtime.for_training), so `classify eval RUN`
    # gives the run's figures; bf16 on a CPU flipped 1 % of a weak CIFAR-10 model's answers. --precision bf16 asks.
    rt = for_training(runtime(ctx.device_spec(cfg.device), cfg.precision), cfg.precision)
    model = rt.to(model)
    size = tuple(ckpt["input_shape"][1:])
    say(f"evaluating {len(data)} {cfg.split} images")
    ev = evaluate_source(model, Source(data.images, data.labels, rt, size, features=False), rt, ctx,
                         cfg.batch_size, len(splits.classes), (ckpt.get("config") or {}).get("loss", "cross-entropy"))
    rows = report.per_class(ev["confusion"], splits.classes)
    result = EvalResult(ckpt["path"], cfg.split, ev["n"], ev["loss"], ev["acc"], ev["confusion"], splits.classes,
                        rows, time.perf_counter() - t0, rt.precision)
    if cfg.output and ctx.is_main:
        out = make_folder(Path(cfg.output).expanduser())
        figure, table_csv, table_md, record = (out / name for name in _output_files(cfg.split))
        report.plot_confusion(ev["confusion"], splits.classes, figure,
                              title=f"{cfg.split} set: accuracy {ev['acc']:.2%}")
        cols = ["class", "precision", "recall", "f1", "support"]
        report.write_csv(rows, cols, table_csv)
        report.write_text(report.markdown_table(rows, cols) + "\n", table_md)
        save_json(result.as_dict(), record)
    return result
