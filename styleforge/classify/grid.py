"""Grid search: train every combination of some settings, rank on validation accuracy.

The test set decides nothing: every run trains with a validation split and without a test
evaluation; only the best run (highest validation accuracy, then lowest validation loss)
is evaluated on the test set at the end.
"""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..runtime import guard, lock
from ..runtime.errors import StyleforgeError
from ..runtime.io import check_writable, make_folder, no_empty_folder_left, refuse_foreign, save_json
from . import report
from .data import DataSpec
from .evaluate import EvalConfig, evaluate
from .train import OWN_FILES, RUN_DIRS, TrainConfig, TrainEvent, fit

# Short names used in the run folder names.
_SHORT = {"lr": "lr", "batch_size": "bs", "optimizer": "opt", "weight_decay": "wd", "momentum": "mom",
          "epochs": "ep", "label_smoothing": "ls", "activation": "act", "model": "m", "schedule": "sch"}
GRID_FILES = ("grid.csv", "grid.md", "grid.json")


@dataclass
class GridResult:
    output: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any]
    test: dict[str, Any]


def _run_name(i: int, combo: Mapping[str, Any]) -> str:
    parts = [f"{_SHORT.get(k, k)}{v:g}" if isinstance(v, float) else f"{_SHORT.get(k, k)}{v}" for k, v in combo.items()]
    return f"{i:02d}-" + "-".join(parts).replace("/", "_")


def grid(base: TrainConfig, axes: Mapping[str, Sequence[Any]], output: str | Path,
         callback: Callable[[TrainEvent], None] | None = None, overwrite: bool = False) -> GridResult:
    """Train ``base`` with every combination of ``axes`` (setting → values: a TrainConfig field,
    or a DataSpec one such as per_class) into ``output/NN-.../``; write grid.csv / grid.md /
    grid.json ranked on validation accuracy; evaluate the best run on the test set. The output
    folder is locked while it runs."""
    names = {f.name for f in fields(TrainConfig)} | {f.name for f in fields(DataSpec)}
    for key, values in axes.items():
        if key not in names or key in ("data", "dataset", "output"):
            raise StyleforgeError(f"cannot search over {key!r}: use settings such as lr, batch_size, optimizer")
        if not values:
            raise StyleforgeError(f"grid axis {key} has no values")
        repeated = next((v for i, v in enumerate(values) if v in list(values)[:i]), None)
        if repeated is not None:
            raise StyleforgeError(f"--{key.replace('_', '-')} gives {repeated} twice: give each value once "
                                  "(a repeated value trains the same run again)")
    if base.data.val_split <= 0:
        raise StyleforgeError("a grid search ranks runs on validation accuracy: give --val-split > 0")
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise StyleforgeError(f"-o {out} is a file: give a folder for the grid search")
    # Bad settings stop the first run before it writes anything: no empty grid folder (or parent) is left.
    with no_empty_folder_left(out):
        make_folder(out.parent)
        with lock.hold(out, folder=False):
            _clear(out, overwrite)
            return _grid(base, axes, out, callback)


def _clear(out: Path, overwrite: bool) -> None:
    """Refuse to mix searches; with ``overwrite`` delete the earlier one, and nothing else:
    a folder named like a run (``01-holiday``) that holds other files is left alone."""
    runs = [p for p in sorted(out.glob(RUN_DIRS)) if p.is_dir() and not guard.foreign_entries(p, OWN_FILES)]
    held = [out / f for f in GRID_FILES if (out / f).exists()] + runs
    if held and not overwrite:
        raise StyleforgeError(f"{out} already holds a grid search ({held[0].name}, ...): use --overwrite or "
                              "another -o")
    refuse_foreign(held, "a styleforge grid search")
    make_folder(out)
    check_writable(out / "grid.csv")
    for target in held:
        shutil.rmtree(target) if target.is_dir() else target.unlink()


def _grid(base: TrainConfig, axes: Mapping[str, Sequence[Any]], out: Path,
          callback: Callable[[TrainEvent], None] | None) -> GridResult:
    keys = list(axes)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]
    emit = callback or (lambda event: None)
    # A run folder --overwrite left (it holds files styleforge did not write) would mix with the new run.
    run_dirs = [out / _run_name(i, combo) for i, combo in enumerate(combos, start=1)]
    kept = [d for d in run_dirs if d.exists()]
    if kept:
        raise StyleforgeError(f"{kept[0]} holds files styleforge did not write, so it was not cleared: move them or "
                              "choose another -o")
    rows: list[dict[str, Any]] = []
    for i, (combo, run_dir) in enumerate(zip(combos, run_dirs), start=1):
        emit(TrainEvent("phase", message=f"run {i}/{len(combos)}: " + ", ".join(f"{k}={v}" for k, v in combo.items())))
        cfg = base.with_settings(output=str(run_dir), evaluate_test=False, overwrite=False, resume=False, **combo)
        status = "completed"
        try:
            fit(cfg, callback=callback)
        except StyleforgeError as exc:
            if exc.stopped_by:  # a grid search has no --resume: its runs' advice would not work
                raise StyleforgeError(f"{exc.stopped_by} in run {i} of {len(combos)} ({run_dir.name}): a grid search "
                                      "does not resume; run the same command with --overwrite to start it over") \
                    from None
            if not (run_dir / "summary.json").is_file():
                raise  # bad settings, not a diverging run: stop the search
            status = f"failed: {exc}"
        summary = json.loads((run_dir / "summary.json").read_text())
        rows.append({"run": run_dir.name, **combo, "val_acc": summary.get("val_acc"),
                     "val_loss": summary.get("val_loss"), "train_acc": summary.get("train_acc"),
                     "best_epoch": summary.get("best_epoch"), "epochs_run": summary.get("epochs_run"),
                     "seconds": round(summary.get("wall_seconds", 0.0), 2),
                     "stopped": summary.get("stopped") if status == "completed" else "nan"})
    ranked = sorted(rows, key=lambda r: (-(r["val_acc"] if r["val_acc"] is not None else -1.0),
                                         r["val_loss"] if r["val_loss"] is not None else float("inf")))
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank
    best = ranked[0]
    if best["val_acc"] is None:
        raise StyleforgeError(f"no run of the grid finished an epoch (see {out}): lower --lr")
    emit(TrainEvent("phase", message=f"evaluating the best run ({best['run']}) on the test set"))
    ev = evaluate(EvalConfig(str(out / best["run"]), device=base.device, precision=base.precision,
                             output=str(out / best["run"])))
    test = {"run": best["run"], "test_acc": ev.acc, "test_loss": ev.loss, "n": ev.n}
    columns = ["rank", "run", *keys, "val_acc", "val_loss", "train_acc", "best_epoch", "epochs_run", "seconds",
               "stopped"]
    report.write_csv(ranked, columns, out / "grid.csv")
    md = [f"# Grid search: {base.model} on {base.data.dataset}", "",
          "Ranked on validation accuracy (the test set is used once, for the best run only).", "",
          report.markdown_table(ranked, columns), "",
          f"Best: **{best['run']}** ({', '.join(f'{k}={best[k]}' for k in keys)}): validation accuracy "
          f"{best['val_acc']:.4f}, test accuracy **{ev.acc:.4f}** (loss {ev.loss:.4f}, {ev.n} images).", ""]
    report.write_text("\n".join(md), out / "grid.md")
    save_json({"axes": {k: list(v) for k, v in axes.items()}, "runs": ranked, "best": best, "test": test},
              out / "grid.json")
    return GridResult(out, ranked, best, test)
