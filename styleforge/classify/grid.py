"""Grid search: train every combination of some settings, rank on validation accuracy.

The test set decides nothing: every run trains with a validation split and without a test
evaluation; only the best run (highest validation accuracy, then lowest validation loss)
is evaluated on the test set at the end.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..runtime import distributed, guard, lock
from ..runtime.errors import StyleforgeError
from ..runtime.io import check_writable, make_folder, no_empty_folder_left, read_json, refuse_foreign, save_json
from . import report
from .data import DataSpec
from .evaluate import EvalConfig, evaluate
from .rundir import check_same_run, on_main
from .train import OWN_FILES, RUN_DIRS, TrainConfig, TrainEvent, fit

# Short names used in the run folder names.
_SHORT = {"lr": "lr", "batch_size": "bs", "optimizer": "opt", "weight_decay": "wd", "momentum": "mom",
          "epochs": "ep", "label_smoothing": "ls", "activation": "act", "model": "m", "schedule": "sch"}
GRID_FILES = ("grid.csv", "grid.md", "grid.json")
DAMAGED = "start the search again with --overwrite"


@dataclass
class GridResult:
    output: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any]
    test: dict[str, Any]


# The settings that decide the validation split's size: where none is searched over, every run has the first's.
SPLIT_SETTINGS = frozenset({"val_split", "test_split", "split_seed", "classes"})


def _run_name(i: int, combo: Mapping[str, Any]) -> str:
    parts = [f"{_SHORT.get(k, k)}{v:g}" if isinstance(v, float) else f"{_SHORT.get(k, k)}{v}" for k, v in combo.items()]
    return f"{i:02d}-" + "-".join(parts).replace("/", "_")


def grid(base: TrainConfig, axes: Mapping[str, Sequence[Any]], output: str | Path,
         callback: Callable[[TrainEvent], None] | None = None, overwrite: bool = False,
         resume: bool = False) -> GridResult:
    """Train ``base`` with every combination of ``axes`` (setting → values: a TrainConfig field,
    or a DataSpec one such as per_class) into ``output/NN-.../``; write grid.csv / grid.md /
    grid.json ranked on validation accuracy; evaluate the best run on the test set. The output
    folder is locked while it runs.

    ``resume``: continue an interrupted search in ``output``: its finished runs are kept (each
    checked to be this search's), an interrupted run continues from its last.pt, the rest train."""
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
    guard.check_overwrite_resume(overwrite, resume)
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise StyleforgeError(f"-o {out} is a file: give a folder for the grid search")
    if resume and not out.is_dir():
        raise _nothing_to_resume(out)
    combos = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    runs = {out / _run_name(i, combo): combo for i, combo in enumerate(combos, start=1)}
    ctx = distributed.current()
    with contextlib.ExitStack() as held:
        def prepare() -> None:  # rank 0 alone checks, clears and locks the folder (under torchrun)
            # Bad settings stop the first run before it writes anything: no empty grid folder (or parent) is left.
            held.enter_context(no_empty_folder_left(out))
            make_folder(out.parent)
            held.enter_context(lock.hold(out, folder=False))
            if resume:
                _check_resumable(out, runs, axes)
            else:
                _clear(out, overwrite, runs)
                save_json({"axes": _plain(axes), "runs": []}, out / "grid.json")  # what --resume checks

        on_main(ctx, prepare)
        try:
            return _grid(base, axes, runs, out, callback if ctx.is_main else None, resume)
        except StyleforgeError:
            if ctx.is_main and not resume and not any(run.exists() for run in runs):  # nothing began: nothing
                (out / "grid.json").unlink()                                           # to resume
            raise


def _plain(axes: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """The axes as grid.json holds them."""
    return {k: list(v) for k, v in axes.items()}


def _earlier_runs(out: Path) -> tuple[list[Path], list[Path]]:
    """The folders in ``out`` named like runs: those styleforge wrote, and those holding other files (a
    user's ``01-holiday``, or a run folder someone put notes into), which no search clears or trains into."""
    named = [p for p in sorted(out.glob(RUN_DIRS)) if p.is_dir()]
    foreign = [p for p in named if guard.foreign_entries(p, OWN_FILES)]
    return [p for p in named if p not in foreign], foreign


def _refuse_kept(runs: Mapping[Path, Any], foreign: Sequence[Path]) -> None:
    """A run folder that holds files styleforge did not write would mix with the run."""
    kept = [d for d in foreign if d in runs]
    if kept:
        raise StyleforgeError(f"{kept[0]} holds files styleforge did not write, so it was not cleared: move them or "
                              "choose another -o")


def _clear(out: Path, overwrite: bool, runs: Mapping[Path, Any]) -> None:
    """Refuse to mix searches; with ``overwrite`` delete the earlier one, and nothing else:
    a folder named like a run (``01-holiday``) that holds other files is left alone."""
    earlier, foreign = _earlier_runs(out) if out.is_dir() else ([], [])
    held = [out / f for f in GRID_FILES if (out / f).exists()] + earlier
    if held and not overwrite:
        raise StyleforgeError(f"{out} already holds a grid search ({held[0].name}, ...): use --resume to continue "
                              "it, --overwrite to replace it, or another -o")
    refuse_foreign(held, "a styleforge grid search")
    make_folder(out)
    check_writable(out / "grid.csv")
    _refuse_kept(runs, foreign)
    for target in held:
        shutil.rmtree(target) if target.is_dir() else target.unlink()


def _check_resumable(out: Path, runs: Mapping[Path, Any], axes: Mapping[str, Sequence[Any]]) -> None:
    """--resume: ``out`` holds this search, over the same comma lists (grid.json records them when a search
    starts); each run's settings are checked as it comes (a finished run's record, an interrupted one's
    last.pt)."""
    earlier, foreign = _earlier_runs(out)
    record = out / "grid.json"
    if not earlier and not record.is_file():
        raise _nothing_to_resume(out)
    if record.is_file():
        recorded = read_json(record, DAMAGED).get("axes")
        if recorded != _plain(axes):
            raise StyleforgeError(f"--resume: {out} holds a search over {_lists(recorded)}, not {_lists(axes)}: give "
                                  "the same comma lists as the search you continue")
    other = next((p for p in earlier if p not in runs), None)
    if other is not None:
        raise StyleforgeError(f"--resume: {other.name} in {out} is not a run of this search (its settings differ): "
                              "give the same comma lists as the search you continue")
    _refuse_kept(runs, foreign)
    check_writable(out / "grid.csv")


def _nothing_to_resume(out: Path) -> StyleforgeError:
    return StyleforgeError(f"nothing to resume: {out} holds no grid search (run it without --resume first)")


def _lists(axes: Any) -> str:
    """Comma lists as the options take them: ``--lr 0.05,0.1 --batch-size 8,16``."""
    if not isinstance(axes, Mapping):
        return "unknown settings"
    return " ".join(f"--{k.replace('_', '-')} " + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in vals)
                    for k, vals in axes.items())


def _figures(path: Path) -> dict[str, Any]:
    """A run's row of the table, from its summary.json (numbers checked: a kept run's may be damaged)."""
    summary = read_json(path, DAMAGED)
    row = {k: summary.get(k) for k in ("val_acc", "val_loss", "train_acc", "best_epoch", "epochs_run", "stopped")}
    row["seconds"] = summary.get("wall_seconds", 0.0)
    numbers = ("val_acc", "val_loss", "train_acc", "best_epoch", "epochs_run", "seconds")
    if any(row[k] is not None and (isinstance(row[k], bool) or not isinstance(row[k], (int, float)))
           for k in numbers):
        raise StyleforgeError(f"{path} is damaged (a figure is not a number): {DAMAGED}")
    row["seconds"] = round(row["seconds"] or 0.0, 2)
    return row


def _train_run(cfg: TrainConfig, callback: Callable[[TrainEvent], None] | None, i: int, n: int,
               run_dir: Path) -> None:
    """One run of the search. A run whose loss became NaN is a result (it ranks last); bad settings and an
    interruption stop the search."""
    try:
        fit(cfg, callback=callback)
    except StyleforgeError as exc:
        if exc.stopped_by:  # the run's own advice (its --resume) would not continue the search
            raise StyleforgeError(f"{exc.stopped_by} in run {i} of {n} ({run_dir.name}): run the same command with "
                                  "--resume to continue the search") from None
        if not on_main(distributed.current(), (run_dir / "summary.json").is_file):
            raise  # bad settings, not a diverging run: stop the search


def _grid(base: TrainConfig, axes: Mapping[str, Sequence[Any]], runs: Mapping[Path, dict[str, Any]], out: Path,
          callback: Callable[[TrainEvent], None] | None, resume: bool) -> GridResult:
    emit = callback or (lambda event: None)
    ctx = distributed.current()
    rows: list[dict[str, Any]] = []  # read by rank 0, shared with every process (under torchrun)
    for i, (run_dir, combo) in enumerate(runs.items(), start=1):
        settings = ", ".join(f"{k}={v}" for k, v in combo.items())
        cfg = base.with_settings(output=str(run_dir), evaluate_test=False, overwrite=False, resume=False, **combo)
        if resume and on_main(ctx, lambda: _kept(run_dir, cfg, ctx.world_size)):
            emit(TrainEvent("phase", message=f"run {i}/{len(runs)}: {settings}: finished earlier, kept"))
        else:
            emit(TrainEvent("phase", message=f"run {i}/{len(runs)}: {settings}"))
            # --resume: an interrupted run continues from its last.pt; one stopped before its first epoch's
            # checkpoint has nothing to continue, and starts again (only styleforge's files are replaced).
            if resume and run_dir.exists():
                cfg = replace(cfg, resume=(run_dir / "last.pt").is_file(),
                              overwrite=not (run_dir / "last.pt").is_file())
            _train_run(cfg, callback, i, len(runs), run_dir)
        rows.append(on_main(ctx, lambda: {"run": run_dir.name, **combo, **_figures(run_dir / "summary.json")}))
        if not SPLIT_SETTINGS & set(axes) and on_main(ctx, lambda: _no_validation(run_dir)):
            raise StyleforgeError(on_main(ctx, lambda: _unranked(run_dir)))  # every run would have none
    ranked = _ranked(rows)
    best = ranked[0]
    if best["val_acc"] is None:
        raise StyleforgeError(on_main(ctx, lambda: _unranked(out / best["run"])))
    emit(TrainEvent("phase", message=f"evaluating the best run ({best['run']}) on the test set"))
    ev = evaluate(EvalConfig(str(out / best["run"]), device=base.device, precision=base.precision,
                             output=str(out / best["run"])))
    test = {"run": best["run"], "test_acc": ev.acc, "test_loss": ev.loss, "n": ev.n}
    if ctx.is_main:
        _write_tables(base, axes, out, ranked, test)
    return GridResult(out, ranked, best, test)


def _no_validation(run_dir: Path) -> bool:
    """Whether the run's validation split was empty (its summary.json says so)."""
    return read_json(run_dir / "summary.json", DAMAGED).get("num_val") == 0


def _unranked(run_dir: Path) -> str:
    """Why no run has a validation accuracy: an empty validation split, or no epoch finished."""
    if _no_validation(run_dir):
        return (f"no run can be ranked: the validation split is empty ({run_dir.name} had no validation images); "
                "give a larger --val-split or more images per class")
    return f"no run of the grid finished an epoch (see {run_dir.parent}): lower --lr"


def _kept(run_dir: Path, cfg: TrainConfig, world_size: int) -> bool:
    """--resume: whether ``run_dir`` holds a finished run (its summary.json), checked to be this search's."""
    if not (run_dir / "summary.json").is_file():
        return False
    # cfg validated: its defaults resolved, as fit records them
    check_same_run(read_json(run_dir / "config.json", DAMAGED), run_dir / "config.json", cfg.validate(), world_size)
    return True


def _ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows by validation accuracy, then loss, each with its rank."""
    ranked = sorted(rows, key=lambda r: (-(r["val_acc"] if r["val_acc"] is not None else -1.0),
                                         r["val_loss"] if r["val_loss"] is not None else float("inf")))
    return [{**row, "rank": rank} for rank, row in enumerate(ranked, start=1)]


def _write_tables(base: TrainConfig, axes: Mapping[str, Sequence[Any]], out: Path, ranked: list[dict[str, Any]],
                  test: dict[str, Any]) -> None:
    """grid.csv, grid.md and grid.json."""
    keys, best = list(axes), ranked[0]
    columns = ["rank", "run", *keys, "val_acc", "val_loss", "train_acc", "best_epoch", "epochs_run", "seconds",
               "stopped"]
    report.write_csv(ranked, columns, out / "grid.csv")
    md = [f"# Grid search: {base.model} on {base.data.dataset}", "",
          "Ranked on validation accuracy (the test set is used once, for the best run only).", "",
          report.markdown_table(ranked, columns), "",
          f"Best: **{best['run']}** ({', '.join(f'{k}={best[k]}' for k in keys)}): validation accuracy "
          f"{best['val_acc']:.4f}, test accuracy **{test['test_acc']:.4f}** (loss {test['test_loss']:.4f}, "
          f"{test['n']} images).", ""]
    report.write_text("\n".join(md), out / "grid.md")
    save_json({"axes": _plain(axes), "runs": ranked, "best": best, "test": test}, out / "grid.json")
