"""Comparing finished runs: overlaid learning curves and a results table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..errors import StyleforgeError
from ..guard import first_line
from ..io import check_writable
from . import report

COLUMNS = ["run", "model", "dataset", "epochs", "best_epoch", "train_acc", "val_acc", "test_acc", "test_loss",
           "seconds"]


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary.json, metrics.csv rows) of a run directory."""
    run = Path(run_dir).expanduser()
    if not (run / "summary.json").is_file() or not (run / "metrics.csv").is_file():
        raise StyleforgeError(f"{run} is not a finished run directory (no summary.json / metrics.csv)")
    try:
        summary = json.loads((run / "summary.json").read_text())
        metrics = report.read_metrics(run / "metrics.csv")
    except (ValueError, UnicodeDecodeError, OSError) as exc:  # JSONDecodeError is a ValueError
        raise StyleforgeError(f"{run} holds a damaged summary.json or metrics.csv ({first_line(exc, 100)}): "
                              "train the run again or leave it out") from None
    if not isinstance(summary, dict) or any("epoch" not in m or m["epoch"] is None for m in metrics):
        raise StyleforgeError(f"{run} holds a damaged summary.json or metrics.csv (not a run's record): train the "
                              "run again or leave it out")
    return summary, metrics


def _label(run: Path, runs: Sequence[Path]) -> str:
    names = [r.name for r in runs]
    return run.name if names.count(run.name) == 1 else str(run)


def compare(run_dirs: Sequence[str | Path], output: str | Path | None = None,
            table: str | Path | None = None) -> list[dict[str, Any]]:
    """Rows of results for each run; with ``output`` a PNG of the validation (solid) and
    training (dashed) curves of every run; with ``table`` a CSV, or markdown for ``.md``."""
    if not run_dirs:
        raise StyleforgeError("give at least one run directory")
    runs = [Path(r).expanduser() for r in run_dirs]
    if output is not None:
        report.check_figure_path(output)
    if table is not None:
        check_writable(table)
    loaded = [load_run(r) for r in runs]
    rows = []
    for run, (summary, _metrics) in zip(runs, loaded):
        rows.append({"run": _label(run, runs), "model": summary.get("model"),
                     "dataset": Path(str(summary.get("dataset"))).name, "epochs": summary.get("epochs_run"),
                     "best_epoch": summary.get("best_epoch"), "train_acc": summary.get("train_acc"),
                     "val_acc": summary.get("val_acc"), "test_acc": summary.get("test_acc"),
                     "test_loss": summary.get("test_loss"), "seconds": round(summary.get("wall_seconds", 0.0), 1)})
    if output is not None:
        plt = report._plt()
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (run, (_, metrics)) in enumerate(zip(runs, loaded)):
            color = colors[i % len(colors)]
            for ax, key in ((ax_loss, "loss"), (ax_acc, "acc")):
                epochs = [m["epoch"] for m in metrics]
                for split, style in (("val", "-"), ("train", "--")):
                    col = f"{split}_{key}"
                    pts = [(e, m[col]) for e, m in zip(epochs, metrics) if m.get(col) is not None]
                    if pts:
                        ax.plot(*zip(*pts), style, color=color,
                                label=f"{_label(run, runs)} ({'validation' if split == 'val' else 'train'})")
        for ax, name in ((ax_loss, "loss (cross-entropy)"), (ax_acc, "accuracy")):
            ax.set_xlabel("epoch")
            ax.set_ylabel(name)
            ax.xaxis.set_major_locator(report._integer_locator())
            ax.grid(alpha=0.3)
        ax_acc.legend(fontsize=7)
        ax_loss.set_title("loss (solid: validation, dashed: train)")
        ax_acc.set_title("accuracy")
        fig.tight_layout()
        report.save_figure(fig, output)
    if table is not None:
        table = Path(table)
        if table.suffix.lower() == ".md":
            report.write_text(report.markdown_table(rows, COLUMNS) + "\n", table)
        else:
            report.write_csv(rows, COLUMNS, table)
    return rows
