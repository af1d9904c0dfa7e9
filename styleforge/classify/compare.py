"""Comparing finished runs: overlaid learning curves and a results table."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Sequence

from ..runtime.errors import StyleforgeError, first_line
from ..runtime.io import check_writable, make_folder, no_empty_folder_left, read_json
from . import report

COLUMNS = ["run", "model", "dataset", "activation", "params", "train_images", "epochs", "best_epoch", "train_loss",
           "train_acc", "val_acc", "test_acc", "test_loss", "images_per_s", "seconds"]
DAMAGED = "train the run again or leave it out"  # what to do about a damaged run record


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary.json, metrics.csv rows) of a run directory."""
    run = Path(run_dir).expanduser()
    if not (run / "summary.json").is_file() or not (run / "metrics.csv").is_file():
        raise StyleforgeError(f"{run} is not a finished run directory (no summary.json / metrics.csv)")
    summary = read_json(run / "summary.json", DAMAGED)
    try:
        metrics = report.read_metrics(run / "metrics.csv")
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise StyleforgeError(f"{run / 'metrics.csv'} is damaged ({first_line(exc, 100)}): {DAMAGED}") from None
    if any("epoch" not in m or m["epoch"] is None for m in metrics):
        raise StyleforgeError(f"{run / 'metrics.csv'} is damaged (not a run's record): {DAMAGED}")
    return summary, metrics


def _label(run: Path, runs: Sequence[Path]) -> str:
    names = [r.name for r in runs]
    return run.name if names.count(run.name) == 1 else str(run)


def _row(run: Path, runs: Sequence[Path], summary: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    ips = summary.get("images_per_second")
    return {"run": _label(run, runs), "model": summary.get("model"),
            "dataset": Path(str(summary.get("dataset"))).name, "activation": config.get("activation"),
            "params": summary.get("params_trainable"), "train_images": summary.get("num_train"),
            "epochs": summary.get("epochs_run"), "best_epoch": summary.get("best_epoch"),
            "train_loss": summary.get("train_loss"), "train_acc": summary.get("train_acc"),
            "val_acc": summary.get("val_acc"), "test_acc": summary.get("test_acc"),
            "test_loss": summary.get("test_loss"), "images_per_s": round(ips) if ips else None,
            "seconds": round(summary.get("wall_seconds", 0.0), 1)}


def compare_figure(runs: Sequence[Path], metrics: Sequence[list[dict[str, Any]]]):
    """Loss and accuracy per epoch of every run: validation solid, train dashed (the title
    says which lines are drawn)."""
    import matplotlib

    fig = report.new_figure((11, 4.2))
    ax_loss, ax_acc = fig.subplots(1, 2)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = set()
    for i, (run, rows) in enumerate(zip(runs, metrics)):
        for ax, key in ((ax_loss, "loss"), (ax_acc, "acc")):
            # Markers as in each run's curves: a run of one epoch is one point, which a line alone does not show.
            for split, style in (("val", "-s"), ("train", "--o")):
                pts = [(m["epoch"], m[f"{split}_{key}"]) for m in rows if m.get(f"{split}_{key}") is not None]
                if pts:
                    drawn.add(split)
                    ax.plot(*zip(*pts), style, markersize=3, color=colors[i % len(colors)],
                            label=f"{_label(run, runs)} ({'validation' if split == 'val' else 'train'})")
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(report.integer_locator())
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7)
    key = "solid: validation, dashed: train" if drawn == {"val", "train"} else (
        "validation" if drawn == {"val"} else "train")
    ax_loss.set_title(f"loss ({key})")
    ax_acc.set_title(f"accuracy ({key})")
    fig.tight_layout()
    return fig


def _config(run: Path) -> dict[str, Any]:
    path = run / "config.json"
    return read_json(path, DAMAGED) if path.is_file() else {}


def compare(run_dirs: Sequence[str | Path], output: str | Path | None = None,
            table: str | Path | None = None) -> list[dict[str, Any]]:
    """Rows of results for each run; with ``output`` a PNG of the curves of every run
    (:func:`compare_figure`; its folder is created); with ``table`` a CSV, or markdown for ``.md``."""
    if not run_dirs:
        raise StyleforgeError("give at least one run directory")
    runs = [Path(r).expanduser() for r in run_dirs]
    loaded = [load_run(r) for r in runs]
    targets = {label: Path(t).expanduser() for label, t in (("-o", output), ("--table", table)) if t is not None}
    _check_outside_runs(targets, runs)
    with contextlib.ExitStack() as made:  # a folder made here and left empty by an error is removed
        for target in targets.values():
            made.enter_context(no_empty_folder_left(target.parent))
            make_folder(target.parent)
        if "-o" in targets:
            report.check_figure_path(targets["-o"])
        if "--table" in targets:
            check_writable(targets["--table"])
        return _write(runs, loaded, targets.get("-o"), targets.get("--table"))


def _check_outside_runs(targets: dict[str, Path], runs: Sequence[Path]) -> None:
    """Refuse an output inside a run being compared: it would replace that run's own files."""
    for label, target in targets.items():
        for run in runs:
            if run.resolve() in target.resolve().parents:
                raise StyleforgeError(f"{label} {target} is inside {run}, a run being compared: styleforge never "
                                      f"writes over an input; choose another {label}")


def _write(runs: list[Path], loaded: list, output: Path | None, table: Path | None) -> list[dict[str, Any]]:
    rows = [_row(run, runs, summary, _config(run)) for run, (summary, _) in zip(runs, loaded)]
    if output is not None:
        report.save_figure(compare_figure(runs, [m for _, m in loaded]), output)
    if table is not None:
        if table.suffix.lower() == ".md":
            report.write_text(report.markdown_table(rows, COLUMNS) + "\n", table)
        else:
            report.write_csv(rows, COLUMNS, table)
    return rows
