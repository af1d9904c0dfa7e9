"""The run directory's files: metrics.csv, curves.png, confusion matrix, per-class table, report.md.

Every file is written atomically (a temporary file renamed into place), so a run that is
interrupted or stopped leaves only complete files. Figures are built with matplotlib's object
API on their own Agg canvas (:func:`new_figure`); pyplot and the global backend are never used.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..runtime.errors import StyleforgeError
from ..runtime.figures import new_figure, save_figure  # noqa: F401  (re-exported for the classify modules)
from ..runtime.io import atomic_path, check_writable

METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
TRACKED_METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr",
                          "seconds")  # with --track-test
STEP_COLUMNS = ("step", "epoch", "loss")


def integer_locator():
    """Epoch ticks: whole numbers only, even where the axis spans one epoch (MaxNLocator's default of two
    ticks at least would fall back to fractions such as 0.945 ... 1.050)."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True, min_n_ticks=1)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], path: str | os.PathLike) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_fmt(row.get(c)) for c in columns])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return Path(path)


def read_metrics(path: str | os.PathLike) -> list[dict[str, float | None]]:
    """metrics.csv back as a list of dicts (empty cells become None)."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: (float(v) if v not in ("", None) else None) for k, v in row.items()})
    return rows


def previous_steps(path: Path, before_epoch: int) -> list[dict[str, Any]]:
    """A resumed run's per-batch losses (steps.csv) of the epochs before ``before_epoch``."""
    if before_epoch <= 1 or not path.is_file():
        return []
    return [r for r in read_metrics(path) if r["epoch"] is not None and r["epoch"] < before_epoch]


def write_text(text: str, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def check_figure_path(path: str | os.PathLike) -> Path:
    """Fail before any work if a figure cannot be written to ``path`` (folder, format)."""
    path = check_writable(path)
    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if suffix and suffix not in kinds:
        raise StyleforgeError(f"cannot write a figure as {path.name}: use .png, .pdf or .svg "
                              f"(or one of {', '.join(sorted(kinds))})")
    return path


def _step_points(steps: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[float]]:
    """Per-batch losses at fractional epochs (batch i of n in epoch e at e - 1 + i / n)."""
    per_epoch: dict[int, int] = {}
    for r in steps:
        per_epoch[int(r["epoch"])] = per_epoch.get(int(r["epoch"]), 0) + 1
    xs, ys, seen = [], [], dict.fromkeys(per_epoch, 0)
    for r in steps:
        e = int(r["epoch"])
        seen[e] += 1
        xs.append(e - 1 + seen[e] / per_epoch[e])
        ys.append(r["loss"])
    return xs, ys


def curves_figure(rows: Sequence[Mapping[str, Any]], title: str = "", steps: Sequence[Mapping[str, Any]] = (),
                  best_epoch: int | None = None, loss_name: str = "cross-entropy"):
    """Loss and accuracy per epoch (train, validation, and the tracked test set if recorded),
    the loss of every batch behind them, and the best epoch marked; returns the Figure."""
    fig = new_figure((10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in rows]
    if steps:
        ax_loss.plot(*_step_points(steps), "-", color="0.6", linewidth=0.7, alpha=0.7, label="train (each batch)")
    labels = {"train": "train", "val": "validation", "test": "test (tracked, never used for choices)"}
    for ax, key in ((ax_loss, "loss"), (ax_acc, "acc")):
        for split, style in (("train", "-o"), ("val", "-s"), ("test", ":^")):
            pts = [(e, r.get(f"{split}_{key}")) for e, r in zip(epochs, rows) if r.get(f"{split}_{key}") is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, markersize=3, label=labels[split])
        if best_epoch is not None:
            ax.axvline(best_epoch, color="tab:red", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(integer_locator())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_loss.set_ylabel(f"loss ({loss_name})")
    ax_acc.set_ylabel("accuracy")
    ax_loss.set_title("loss")
    ax_acc.set_title("accuracy")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "", **kw: Any) -> Path:
    """:func:`curves_figure` written to ``path``."""
    return save_figure(curves_figure(rows, title, **kw), path)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """``cm[true, predicted]`` counts (int64)."""
    return torch.bincount(target.long() * k + pred.long(), minlength=k * k).view(k, k)


def per_class(cm: torch.Tensor, names: Sequence[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support per class from a confusion matrix."""
    cm = cm.double()
    rows = []
    for i, name in enumerate(names):
        tp, predicted, actual = cm[i, i].item(), cm[:, i].sum().item(), cm[i, :].sum().item()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": int(actual)})
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], digits: int = 4) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def confusion_figure(cm: torch.Tensor, names: Sequence[str], title: str = ""):
    """The confusion matrix with class names; counts in the cells (up to 20 classes)."""
    k = len(names)
    size = max(4.5, 0.5 * k + 2.5)
    fig = new_figure((size, size * 0.9))
    ax = fig.subplots()
    norm = cm.double() / cm.sum(1, keepdim=True).clamp_min(1)
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), labels=list(names), rotation=45 if max(len(n) for n in names) > 3 else 0, ha="right")
    ax.set_yticks(range(k), labels=list(names))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    return fig


def plot_confusion(cm: torch.Tensor, names: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """:func:`confusion_figure` written to ``path``."""
    return save_figure(confusion_figure(cm, names, title), path)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def _best_final_table(s: Mapping[str, Any], loss: str) -> str:
    """Accuracy and loss per split of the best checkpoint, with the final epoch's beside them."""
    best, final = s.get("best_epoch"), s.get("final_epoch")
    lines = [f"| split | best (epoch {best}) accuracy | loss ({loss}) | final (epoch {final}) accuracy | loss |",
             "|---|---|---|---|---|"]
    for split in ("train", "val", "test"):
        fa, fl = s.get(f"final_{split}_acc"), s.get(f"final_{split}_loss")
        lines.append(f"| {split} | {_pct(s.get(f'{split}_acc'))} | {_num(s.get(f'{split}_loss'))} | {_pct(fa)} | "
                     f"{_num(fl)} |")
    return "\n".join(lines)


def write_report(run_dir: Path, summary: Mapping[str, Any], config: Mapping[str, Any],
                 per_class_rows: Sequence[Mapping[str, Any]] | None) -> Path:
    """A short report.md that puts the numbers and figures together."""
    s = summary

    lines = [f"# {config.get('model')} on {s.get('dataset')}", ""]
    cached = ""
    if s.get("cached_features"):
        cached = " (frozen-trunk features cached{})".format(
            ", extracted by an int8 copy of the trunk" if s.get("int8_features") else "")
    lines.append(f"{s.get('num_train')} training, {s.get('num_val')} validation and {s.get('num_test')} test "
                 f"images, {len(s.get('classes', []))} classes; input {'x'.join(map(str, s.get('input_shape', [])))}; "
                 f"{s.get('params_trainable'):,} of {s.get('params_total'):,} parameters trained"
                 + cached + ".")
    lines.append("")
    recipe = config.get("recipe_text") or (f"optimizer {config.get('optimizer')}, lr {config.get('lr')}, batch "
                                            f"{config.get('batch_size')}, schedule {config.get('schedule')}")
    lines.append(f"Training recipe (fully resolved): {recipe}.")
    lines.append("")
    lines.append(f"{s.get('epochs_run')} epoch(s); stopped: {s.get('stopped')}. Best epoch: {s.get('best_epoch')} "
                 + ("(lowest validation loss)" if s.get("num_val") else "(the last; no validation split)")
                 + f". Wall time {s.get('wall_seconds', 0):.1f} s "
                 f"(training {s.get('train_seconds', 0):.1f} s"
                 + (f", feature extraction {s['feature_seconds']:.1f} s" if s.get("feature_seconds") else "")
                 + f", data {s.get('data_seconds', 0):.1f} s) on {s.get('device')} ({s.get('precision')}).")
    lines += ["", _best_final_table(s, str(config.get("loss") or "cross-entropy")), ""]
    lines += [f"The checkpoint best.pt, the confusion matrix, the per-class table and predictions.png describe the "
              f"best epoch ({s.get('best_epoch')}); the final epoch's figures are beside them. Train figures are "
              "the weights evaluated on the (unaugmented) training set.", ""]
    if config.get("track_test"):
        lines += ["Test loss and accuracy were also recorded after every epoch (--track-test) for the curves; "
                  "no choice (best epoch, early stopping) looked at them.", ""]
    if (run_dir / "curves.png").exists():
        lines += ["## Learning curves", "", "![loss and accuracy per epoch](curves.png)", ""]
    if (run_dir / "predictions.png").exists():
        lines += ["## Predictions on test images", "", "![predicted and true classes](predictions.png)", ""]
    if (run_dir / "confusion_test.png").exists():
        lines += ["## Test confusion matrix", "", "![confusion matrix on the test set](confusion_test.png)", ""]
    if per_class_rows:
        lines += ["## Per class (test set)", "",
                  markdown_table(per_class_rows, ["class", "precision", "recall", "f1", "support"]), ""]
    if s.get("message"):
        lines += ["## Note", "", str(s["message"]), ""]
    return write_text("\n".join(lines), run_dir / "report.md")
