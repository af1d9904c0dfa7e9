"""Training a classifier: :class:`TrainConfig` in, a run directory out (:func:`fit`).

The phases, as in torchvision's reference scripts, each in its own place:

- configuration: :class:`TrainConfig` and its ``validate()`` (here);
- batches: :mod:`.batches` (uint8 tensors in memory, cut by index, resized and augmented on
  the device as a batch; :func:`~.batches.evaluate_source` for a whole split); with a frozen
  trunk and no augmentation the trunk's outputs are computed once (:mod:`.cache`) and only
  the head runs each epoch;
- optimizer and schedule: :mod:`.optim` (no weight decay on biases and batch norm; the
  learning rate a function of progress in steps, or in elapsed time under ``max_seconds``);
- one epoch: :func:`~.loop.train_one_epoch`; the per-epoch evaluation and the final one: here;
- the run directory: :mod:`.rundir` (:class:`~.rundir.RunState` is last.pt).

The loop is written for ``torchrun`` from the start (``styleforge.runtime.distributed``): each
process takes a :class:`~torch.utils.data.DistributedSampler` shard of every epoch, metrics
are summed over processes, evaluation shards the data ``rank::world`` and sums counts and
loss sums, so totals are exact whatever the world size; only rank 0 writes files and
reports progress. ``batch_size`` is per process. Checkpoints hold the plain state dict
(never a DDP wrapper's), so a run resumes under any world size.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.data import DistributedSampler

from ..runtime import distributed, guard, lock
from ..runtime.device import Runtime, for_training, runtime, seed_everything
from ..runtime.errors import StyleforgeError
from ..runtime.io import make_folder, no_empty_folder_left, save_json
from . import report
from .batches import AUGMENTS, Source, augment_batch, check_augment, evaluate_source, load_data, prepare_batch
from .cache import extract_features, extraction_trunk
from .checkpoint import CONFIG_VERSION, load_checkpoint, make_meta, upgrade_config
from .data import DataSpec, Splits, channel_stats
from .gallery import model_predictions_figure
from .loop import Callback, Clock, Loop, TrainEvent, _train_mode, train_one_epoch
from .models import (
    FREEZE_POLICIES,
    MODELS,
    Classifier,
    InputNorm,
    apply_freeze,
    as_classifier,
    build_model,
    check_model_name,
    check_pretrained,
)
from .optim import DEFAULT_LR, OPTIMIZERS, SCHEDULES, lr_factor, make_optimizer, steps_per_epoch
from .progress import default_progress
from .recipe import describe_recipe, resolve_recipe
from .rundir import OWN_FILES, RUN_DIRS, RUN_FILES, Checkpoints, RunState, on_main, prepare_run_dir, write_results
from .spec import is_file_ref, model_source

# Re-exported: the names the CLI, the tests and the benchmarks import from here.
__all__ = ["TrainConfig", "TrainEvent", "FitResult", "Callback", "fit", "OPTIMIZERS", "SCHEDULES", "AUGMENTS",
           "CACHE_MODES", "DEFAULT_LR", "RUN_FILES", "OWN_FILES", "RUN_DIRS", "Source", "evaluate_source",
           "prepare_batch", "augment_batch", "lr_factor", "make_optimizer", "load_checkpoint", "_train_mode"]

CACHE_MODES = ("auto", "on", "off")
EVAL_BATCH_SIZE = 512  # evaluation keeps no activations for backward: larger batches fit


@dataclass
class TrainConfig:
    """Everything a training run needs; the CLI's ``classify train`` fills one in.

    ``data`` is what to load and how to cut it, e.g.
    ``TrainConfig(DataSpec("mnist", per_class=50), "runs/mnist", model="convnet2")``.
    """

    data: DataSpec
    output: str
    model: str = "simple-cnn"
    augment: list[str] = field(default_factory=list)
    # model
    activation: str = "relu"
    pretrained: bool | None = None    # None: ImageNet weights for vgg19, random init for resnet18
    weights: str | None = None
    freeze: str = "auto"              # auto: all-but-head for vgg19, all-but-layer4 for pretrained resnet18
    model_options: dict[str, Any] = field(default_factory=dict)
    # optimization; the settings left None come from the recipe (classify.recipe.RECIPES)
    optimizer: str = "sgd"
    lr: float | None = None           # default per optimizer (DEFAULT_LR)
    recipe: str = "default"           # default (momentum, decay, one-cycle) or plain (textbook SGD/Adam)
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    label_smoothing: float | None = None
    schedule: str | None = None
    warmup: float | None = None       # fraction of training spent warming up (onecycle, cosine)
    loss: str = "cross-entropy"       # cross-entropy, mse or nll (classify.recipe.LOSSES)
    track_test: bool = False          # record test loss/accuracy per epoch (never used for any choice)
    epochs: int = 10
    batch_size: int = 128             # per process
    eval_batch_size: int = EVAL_BATCH_SIZE
    patience: int | None = None       # early stopping on validation loss
    max_seconds: float | None = None  # training-time budget (the schedule follows elapsed time)
    cache_features: str = "auto"
    int8_features: bool = False       # CPU frozen-trunk cache: extract with an int8 copy of the trunk
    checkpoint_seconds: float = 30.0  # write best.pt/last.pt at most this often (and after the last epoch)
    # runtime
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    seed: int = 0
    # run directory
    overwrite: bool = False
    resume: bool = False
    evaluate_test: bool = True        # grid search turns this off: the test set decides nothing
    plots: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The settings as config.json records them (``data`` nested), with the format's version."""
        return {"config_version": CONFIG_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], where: str = "the config") -> "TrainConfig":
        """The settings of a run's record (config.json, a checkpoint's ``config``, :meth:`as_dict`),
        in this or an earlier format; the keys of what the run found are left out."""
        record = upgrade_config(record, where)
        guard.require_keys(record, where, {"data": dict, "output": str})
        guard.require_keys(record["data"], where, {"dataset": str})
        names = {f.name for f in fields(cls)} - {"data"}
        return cls(data=DataSpec.from_dict(record["data"]), **{k: v for k, v in record.items() if k in names})

    def with_settings(self, **settings: Any) -> "TrainConfig":
        """A copy with ``settings`` changed, named as the options name them: DataSpec's fields
        (``val_split``, ``per_class``, ...) change ``data``, the others this config."""
        data_names = {f.name for f in fields(DataSpec)}
        data = {k: settings.pop(k) for k in list(settings) if k in data_names}
        return replace(self, data=replace(self.data, **data), **settings)

    def resolved_pretrained(self) -> bool:
        if self.pretrained is not None:
            return self.pretrained
        return self.model == "vgg19" or (self.model == "resnet18" and self.weights is not None)

    def resolved_freeze(self) -> str:
        if self.freeze != "auto":
            return self.freeze
        if self.model == "vgg19":
            return "all-but-head"
        if self.model == "resnet18" and self.resolved_pretrained():
            return "all-but-layer4"
        return "none"

    def validate(self) -> "TrainConfig":
        """Check the settings (one-line errors) and fill in defaults; returns a copy."""
        self = resolve_recipe(self)
        guard.check_numbers(
            [("--lr", self.lr, guard.POSITIVE), ("--momentum", self.momentum, guard.PROBABILITY),
             ("--weight-decay", self.weight_decay, guard.NON_NEGATIVE), ("--epochs", self.epochs, guard.COUNT),
             ("--batch-size", self.batch_size, guard.COUNT), ("--eval-batch-size", self.eval_batch_size, guard.COUNT),
             ("--max-seconds", self.max_seconds, guard.POSITIVE), ("--seed", self.seed, guard.SEED),
             ("--checkpoint-seconds", self.checkpoint_seconds, guard.NON_NEGATIVE)])
        self = replace(self, data=self.data.validate().located())
        checks = [(self.optimizer, OPTIMIZERS, "--optimizer"), (self.schedule, SCHEDULES, "--schedule"),
                  (self.cache_features, CACHE_MODES, "--cache-features"),
                  (self.freeze, ("auto",) + FREEZE_POLICIES, "--freeze")]
        for value, valid, option in checks:
            guard.check_choice(value, option, valid)
        check_augment(self.augment)
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise StyleforgeError("--epochs and --batch-size must be at least 1")
        lr = DEFAULT_LR[self.optimizer] if self.lr is None else self.lr
        if not (lr > 0 and math.isfinite(lr)):
            raise StyleforgeError(f"--lr {lr} must be a positive number")
        if self.patience is not None and self.patience < 1:
            raise StyleforgeError("--patience must be at least 1")
        if self.patience is not None and self.data.val_split <= 0:
            raise StyleforgeError("--patience needs a validation set: give --val-split > 0")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise StyleforgeError("--max-seconds must be positive")
        assert self.warmup is not None and self.label_smoothing is not None  # resolve_recipe filled them in
        if not 0 <= self.warmup < 1:
            raise StyleforgeError("--warmup must be in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            raise StyleforgeError("--label-smoothing must be in [0, 1)")
        guard.check_overwrite_resume(self.overwrite, self.resume)
        has_weights = self.model in MODELS and MODELS[self.model].pretrained
        check_pretrained(self.model, self.pretrained)
        check_model_name(self.model, self.model_options)  # before the data loads
        return replace(self, lr=lr, augment=list(dict.fromkeys(self.augment)),
                       pretrained=self.resolved_pretrained() if has_weights else False)


@dataclass
class FitResult:
    """The run directory, summary.json's content, one dict per epoch (``history``: the rows
    of metrics.csv) and one per batch (``steps``: steps.csv)."""

    run_dir: Path
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    steps: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Data:
    """The loaded splits, the model's input size, and the time they took."""

    splits: Splits
    size: tuple[int, int]           # the model's input (H, W)
    seconds: float                  # loading them
    feature_seconds: float = 0.0    # computing the frozen trunk's outputs (when cached)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.splits.train.shape[0], *self.size)


def fit(cfg: TrainConfig, callback: Callback | None = None, model: nn.Module | None = None,
        progress: bool | None = None) -> FitResult:
    """Train ``cfg.model`` on ``cfg.data`` and write the run directory ``cfg.output``.

    ``model``: an ``nn.Module`` object to train instead of ``cfg.model`` (trained in place;
    the best weights are loaded into it at the end). Its checkpoints record the class name
    only: rebuild it in Python to load them (``load_classifier(run, model=...)``).
    ``progress``: without a ``callback``, show progress bars (None: only in a notebook).

    Returns a :class:`FitResult`; ``pandas.DataFrame(result.history)`` is the per-epoch
    table, ``DataFrame(result.steps)`` the per-batch losses.

    Files: config.json, metrics.csv, curves.png, best.pt, last.pt, summary.json,
    confusion_test.png, per_class_test.csv/.md, report.md. Raises StyleforgeError for
    bad input, and after writing every file when the loss became NaN (the best
    checkpoint so far is kept). While it runs, the run directory is locked: a second
    run into it stops at once.
    """
    callback = callback or default_progress(progress)
    if model is not None:
        cfg = replace(cfg, model=f"python:{type(model).__qualname__}")
    cfg = cfg.validate()
    ctx = distributed.current()
    run_dir = Path(cfg.output).expanduser()
    if not ctx.is_main:
        return _fit(cfg, callback, model)
    # Bad data or a model that does not fit stop before anything is written: no empty run folder is left,
    # nor a parent made for it (the lock file lives there, so the parent is checked after the lock is gone).
    with no_empty_folder_left(run_dir):
        if not run_dir.parent.is_dir():
            make_folder(run_dir.parent)
        with lock.hold(run_dir, folder=False):
            return _fit(cfg, callback, model)


def _fit(cfg: TrainConfig, callback: Callback | None = None, model: nn.Module | None = None) -> FitResult:
    t_start = time.perf_counter()
    ctx = distributed.current()
    emit: Callback = callback if (callback is not None and ctx.is_main) else (lambda event: None)
    run_dir = Path(cfg.output).expanduser()
    resumed: RunState | None = on_main(ctx, lambda: prepare_run_dir(run_dir, cfg, ctx.world_size))
    state = resumed or RunState()
    data = _load(cfg, ctx, emit)
    if resumed is not None:
        _check_same_data(resumed.config, data.splits, run_dir / "last.pt")
    rt = runtime(ctx.device_spec(cfg.device), cfg.precision, cfg.channels_last)
    extract_rt, rt = rt, for_training(rt, cfg.precision)  # auto on a CPU: bf16 extracts, fp32 trains
    seed_everything(cfg.seed)
    model, state.meta = _build_model(cfg, ctx, data, model, resumed, run_dir)
    model = rt.to(model)
    cached = _use_cache(cfg, model, rt)
    state.config = _config_record(cfg, ctx, data, model, rt, cached)
    emit(TrainEvent("phase", message=state.config["recipe_text"]))
    assert cfg.lr is not None  # cfg is validated: lr has its default
    emit(TrainEvent("phase", message=distributed.batch_note(cfg.batch_size, ctx.world_size, cfg.lr)))
    if resumed is not None and resumed.epoch >= cfg.epochs:
        epochs = f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}"
        emit(TrainEvent("phase", message=f"the run had finished its {epochs}: nothing to train; its best checkpoint "
                                         "is evaluated again and its results rewritten"))
    sources, net = _inputs(cfg, model, data, rt, extract_rt, cached, emit)
    loop = _make_loop(cfg, ctx, rt, sources, net, cached, state, len(data.splits.classes), emit, run_dir)
    if ctx.is_main:  # only now: a resumed checkpoint has been checked in full
        save_json(state.config, run_dir / "config.json")
    ckpts = Checkpoints(run_dir, state, model, loop.optimizer, loop.scaler, cfg.checkpoint_seconds, ctx)
    start_epoch = state.epoch + 1
    step_rows = report.previous_steps(run_dir / "steps.csv", start_epoch) if ctx.is_main else []
    loop.clock = Clock(state.train_seconds)
    # Ctrl-C, SIGTERM (torchrun stopping the others when one process dies) and a lost peer
    # end in one line that names the checkpoint to --resume from.
    with distributed.stop_cleanly(ctx, ckpts.resume_hint):
        stopped, message = _train(loop, state, ckpts, step_rows, run_dir)
    if ctx.is_main:
        ckpts.finish(nan=stopped == "nan")
    summary = _summary(loop, state, data, stopped, message, start_epoch)
    per_class_rows = _evaluate_final(loop, state, ckpts, summary, data.splits.classes)
    summary["wall_seconds"] = time.perf_counter() - t_start
    if ctx.is_main:
        write_results(run_dir, cfg, summary, state, step_rows, per_class_rows,
                      lambda: _predictions_figure(cfg, model, data, rt, state))
    # A NaN loss is said once, by the error below (summary["message"] keeps it for callbacks).
    said = "" if stopped == "nan" else message
    emit(TrainEvent("done", state.epoch, cfg.epochs, metrics=dict(summary), message=said))
    if stopped == "nan":
        kept = (f"the best checkpoint (epoch {state.best['epoch']}) is kept in {run_dir / 'best.pt'}" if state.best
                else "no epoch finished, so no checkpoint was kept")
        raise StyleforgeError(f"{message}; {kept}")
    return FitResult(run_dir, summary, state.rows, step_rows)


# --------------------------------------------------------------------------- setup

def _load(cfg: TrainConfig, ctx: distributed.Dist, emit: Callback) -> _Data:
    image_size = cfg.data.image_size
    if image_size:  # a lower bound: one float channel of a batch, before and after resizing
        guard.check_memory(8 * max(cfg.batch_size, cfg.eval_batch_size) * image_size ** 2,
                           f"a batch at --image-size {image_size}", "use a smaller --image-size or --batch-size")
    emit(TrainEvent("phase", message="loading data"))
    t_data = time.perf_counter()
    splits = load_data(ctx, cfg.data)
    _, h, w = splits.train.shape
    size = (image_size, image_size) if image_size else (h, w)
    return _Data(splits, size, time.perf_counter() - t_data)


def _build_model(cfg: TrainConfig, ctx: distributed.Dist, data: _Data, model: nn.Module | None,
                 resumed: RunState | None, run_dir: Path) -> tuple[Classifier, dict[str, Any]]:
    """The model (``model`` wrapped, or ``cfg.model`` built), frozen as asked, with the resumed
    weights; and its description for the checkpoints."""
    assert cfg.pretrained is not None  # cfg is validated: pretrained is resolved
    shape, classes = data.shape, data.splits.classes
    if not ctx.is_main and cfg.pretrained:
        ctx.barrier()  # rank 0 finds (or downloads) the backbone weights first
    source = model_source(cfg.model, model, resumed.meta if resumed else None)
    file_source = source if is_file_ref(cfg.model) else None
    try:
        model = (as_classifier(model, shape, len(classes)) if model is not None else
                 build_model(cfg.model, shape, len(classes), cfg.activation, cfg.pretrained, cfg.weights,
                             model_source=file_source, **cfg.model_options))
    finally:
        if ctx.is_main and cfg.pretrained:
            ctx.barrier()
    if isinstance(model.input_norm, InputNorm):
        model.input_norm.set(*channel_stats(data.splits.train.images))
    freeze = cfg.resolved_freeze()
    apply_freeze(model, freeze)
    meta = make_meta(cfg.model, shape, classes, cfg.activation, cfg.model_options, freeze, file_source)
    if source is not None and ctx.is_main:
        report.write_text(source, run_dir / "model.py")
    if resumed is not None:
        resumed.restore(model, cfg.model, classes, shape, run_dir / "last.pt")
    return model, meta


def _use_cache(cfg: TrainConfig, model: Classifier, rt: Runtime) -> bool:
    """Whether to compute the frozen trunk's outputs once and train only the head."""
    trunk_params = list(model.trunk.parameters())  # fc-only's trunk (a flatten) has none: nothing to cache
    trunk_frozen = bool(trunk_params) and not any(p.requires_grad for p in trunk_params)
    cacheable = trunk_frozen and not cfg.augment
    if cfg.cache_features == "on" and not cacheable:
        raise StyleforgeError("--cache-features on needs a frozen trunk (--freeze all-but-head) and no --augment")
    use_cache = cacheable and cfg.cache_features != "off"
    if cfg.int8_features and not (use_cache and rt.on_cpu):
        raise StyleforgeError("--int8-features needs the frozen-trunk cache on the CPU (--freeze all-but-head, "
                              "no --augment, --device cpu): drop --int8-features")
    return use_cache


def _split_counts(splits: Splits) -> dict[str, list[int]]:
    """Images per class in each split: what --resume compares to find data that changed."""
    return {name: s.counts() for name, s in (("train", splits.train), ("val", splits.val), ("test", splits.test))
            if s is not None}


def _check_same_data(saved: dict[str, Any], splits: Splits, where: Path) -> None:
    """--resume on data that gained or lost images would re-draw the splits (training images could land
    in the test set): refused. Runs recorded before session 40 lack the counts and are not checked."""
    before, now = saved.get("split_counts"), _split_counts(splits)
    if before is None:
        return
    changed = [k for k in now if before.get(k) != now[k]]
    if changed:
        k = changed[0]
        raise StyleforgeError(f"--resume: {where} was trained on other data ({k} images per class {before[k]} -> "
                              f"{now[k]}): use the same data, or start a new run")


def _config_record(cfg: TrainConfig, ctx: distributed.Dist, data: _Data, model: Classifier, rt: Runtime,
                   cached: bool) -> dict[str, Any]:
    """config.json: the settings, resolved, and what the run found (data, device, parameters)."""
    splits = data.splits
    return {**cfg.as_dict(), "freeze": cfg.resolved_freeze(), "input_shape": list(data.shape),
            "split_counts": _split_counts(splits),
            "class_names": splits.classes, "num_classes": len(splits.classes), "data_source": splits.source,
            "data_notes": splits.notes, "device": str(rt.device), "precision": rt.precision,
            "channels_last": rt.channels_last, "world_size": ctx.world_size,
            "effective_batch_size": cfg.batch_size * ctx.world_size, "cached_features": cached,
            "params_total": sum(p.numel() for p in model.parameters()),
            "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "recipe_text": describe_recipe(cfg, ctx.world_size)}


def _inputs(cfg: TrainConfig, model: Classifier, data: _Data, rt: Runtime, extract_rt: Runtime, cached: bool,
            emit: Callback) -> tuple[dict[str, Source], nn.Module]:
    """A source per split, and what trains on them: images and the model, or the frozen
    trunk's outputs computed once and the model's head."""
    splits = {"train": data.splits.train, "val": data.splits.val, "test": data.splits.test}
    sets = {name: s for name, s in splits.items() if s is not None}
    if not cached:
        return {name: Source(s.images, s.labels, rt, data.size, features=False) for name, s in sets.items()}, model
    emit(TrainEvent("phase", message="extracting features"))
    t_feat = time.perf_counter()
    prepare = lambda x: prepare_batch(x, extract_rt, data.size)  # noqa: E731
    if cfg.int8_features:
        emit(TrainEvent("phase", message="calibrating the int8 trunk"))
    trunk = extraction_trunk(model, extract_rt, prepare, data.splits.train.images if cfg.int8_features else None,
                             cfg.seed)
    sources = {}
    for name, s in sets.items():
        def progress(done: int, n: int, name: str = name) -> None:
            emit(TrainEvent("phase", step=done, steps=n, message=f"features: {name}"))

        # Every process extracts the whole split (no communication; the training
        # sampler draws any index on any rank).
        feats = extract_features(trunk, s.images, prepare, extract_rt, cfg.eval_batch_size, progress=progress)
        sources[name] = Source(feats, s.labels, rt, data.size, features=True)
    data.feature_seconds = time.perf_counter() - t_feat
    return sources, model.head


def _make_loop(cfg: TrainConfig, ctx: distributed.Dist, rt: Runtime, sources: dict[str, Source], net: nn.Module,
               cached: bool, state: RunState, num_classes: int, emit: Callback, run_dir: Path) -> Loop:
    """The optimizer (with a resumed run's state), the grad scaler and the sampler, around ``net``."""
    train_net = distributed.wrap(net, ctx, rt.device)
    optimizer = make_optimizer(cfg, net)
    scaler = rt.grad_scaler()
    state.restore_optimizer(optimizer, scaler, run_dir / "last.pt")
    # torch types the sampler's dataset as a Dataset, but it only takes its len(): a range does.
    sampler: DistributedSampler[int] = DistributedSampler(
        range(len(sources["train"])), num_replicas=ctx.world_size, rank=ctx.rank,  # type: ignore[arg-type]
        shuffle=True, seed=cfg.seed, drop_last=False)
    return Loop(cfg, ctx, rt, sources, net, train_net, optimizer, scaler, sampler,
                steps_per_epoch(len(sampler), cfg.batch_size), num_classes, cached, emit)


# --------------------------------------------------------------------------- epochs

def _train(loop: Loop, state: RunState, ckpts: Checkpoints, step_rows: list[dict[str, Any]],
           run_dir: Path) -> tuple[str, str]:
    """Epochs until the last one, the time budget, early stopping or a NaN loss; returns why it stopped
    (completed, time-limit, early-stopping, nan) and a message."""
    cfg, ctx = loop.cfg, loop.ctx
    schedule, warmup = cfg.schedule, cfg.warmup
    assert schedule is not None and warmup is not None  # cfg is validated: the recipe filled them in
    stopped, message = "completed", ""
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if stopped != "completed":
            break
        t_epoch = time.perf_counter()
        stats = train_one_epoch(loop, epoch, lambda p: lr_factor(schedule, p, warmup))
        state.train_seconds = loop.clock.seconds()
        step_rows += stats.step_rows(epoch, loop.steps)  # rank 0's batches
        stopped, message = stats.stopped, stats.message
        if stopped == "nan":
            break
        totals = ctx.sum([float(stats.loss_sum), float(stats.correct), float(stats.seen)])
        if totals[2] == 0:  # the time budget ran out before this epoch's first step
            break
        row = _epoch_row(loop, epoch, totals, stats.lr)
        row["seconds"] = time.perf_counter() - t_epoch
        if state.add_epoch(row):
            ckpts.improved(row)
        if cfg.patience is not None and state.bad_epochs >= cfg.patience:
            stopped, message = "early-stopping", f"validation loss did not improve for {cfg.patience} epochs"
        if ctx.is_main:
            report.write_csv(state.rows, report.TRACKED_METRIC_COLUMNS if cfg.track_test else report.METRIC_COLUMNS,
                             run_dir / "metrics.csv")
            report.write_csv(step_rows, report.STEP_COLUMNS, run_dir / "steps.csv")
            ckpts.after_epoch(final=epoch == cfg.epochs or stopped != "completed")
        loop.emit(TrainEvent("epoch_end", epoch, cfg.epochs, loop.steps, loop.steps, dict(row)))
    return stopped, message


def _evaluate(loop: Loop, split: str) -> dict[str, Any]:
    cfg = loop.cfg
    return evaluate_source(loop.net, loop.sources[split], loop.rt, loop.ctx, cfg.eval_batch_size, loop.num_classes,
                           cfg.loss)


def _epoch_row(loop: Loop, epoch: int, totals: torch.Tensor, lr: float) -> dict[str, Any]:
    """metrics.csv's row of an epoch: the training sums, and the validation (and tracked test) split."""
    row: dict[str, Any] = {"epoch": epoch, "train_loss": float(totals[0] / totals[2]),
                           "train_acc": float(totals[1] / totals[2]), "val_loss": None, "val_acc": None, "lr": lr}
    if "val" in loop.sources:
        ev = _evaluate(loop, "val")
        row["val_loss"], row["val_acc"] = ev["loss"], ev["acc"]
    if loop.cfg.track_test and loop.cfg.evaluate_test:  # recorded for the curves only: no choice looks at it
        ev = _evaluate(loop, "test")
        row["test_loss"], row["test_acc"] = ev["loss"], ev["acc"]
    return row


# --------------------------------------------------------------------------- final evaluation

def _summary(loop: Loop, state: RunState, data: _Data, stopped: str, message: str,
             start_epoch: int) -> dict[str, Any]:
    """summary.json's facts about the run; the evaluation adds the figures."""
    cfg, ctx, rt, record, splits = loop.cfg, loop.ctx, loop.rt, state.config, data.splits
    trained = state.train_seconds - loop.clock.before  # in this process
    return {
        "model": cfg.model, "dataset": cfg.data.dataset, "classes": splits.classes, "input_shape": list(data.shape),
        "num_train": len(splits.train), "num_val": len(splits.val) if splits.val is not None else 0,
        "num_test": len(splits.test), "epochs_run": state.epoch,
        "best_epoch": state.best["epoch"] if state.best else None, "stopped": stopped, "message": message,
        "cached_features": loop.cached,
        "int8_features": bool(cfg.int8_features), "device": str(rt.device), "precision": rt.precision,
        "world_size": ctx.world_size, "effective_batch_size": cfg.batch_size * ctx.world_size,
        "lr": cfg.lr, "params_total": record["params_total"], "params_trainable": record["params_trainable"],
        "data_seconds": data.seconds, "feature_seconds": data.feature_seconds, "train_seconds": state.train_seconds,
        "images_per_second": (state.epoch - start_epoch + 1) * len(splits.train) / max(trained, 1e-9)
        if state.epoch >= start_epoch else None,
    }


def _evaluate_final(loop: Loop, state: RunState, ckpts: Checkpoints, summary: dict[str, Any],
                    classes: list[str]) -> list[dict[str, Any]] | None:
    """The final epoch's and the best epoch's figures into ``summary``; the best weights stay
    loaded. Returns the per-class table of the test set (None when it was not evaluated)."""
    rows, best = state.rows, state.best
    final_epoch = rows[-1]["epoch"] if rows and summary["stopped"] != "nan" else None
    final_differs = best is not None and final_epoch is not None and final_epoch != best["epoch"]
    if final_epoch is not None:
        summary["final_val_acc"], summary["final_val_loss"] = rows[-1]["val_acc"], rows[-1]["val_loss"]
    if final_differs:
        loop.emit(TrainEvent("phase", message=f"evaluating the final epoch ({final_epoch})"))
        for name in ("train", "test") if loop.cfg.evaluate_test else ("train",):
            ev = _evaluate(loop, name)
            summary[f"final_{name}_acc"], summary[f"final_{name}_loss"] = ev["acc"], ev["loss"]
    per_class_rows = None
    if best is not None:
        ckpts.model.load_state_dict(ckpts.best_weights())
        loop.emit(TrainEvent("phase", message="evaluating the best checkpoint"))
    for name in ("train", "val", "test"):
        if best is None or name not in loop.sources or (name == "test" and not loop.cfg.evaluate_test):
            summary[f"{name}_acc"] = summary[f"{name}_loss"] = None
            continue
        ev = _evaluate(loop, name)
        summary[f"{name}_acc"], summary[f"{name}_loss"] = ev["acc"], ev["loss"]
        if not final_differs and name != "val":
            summary[f"final_{name}_acc"], summary[f"final_{name}_loss"] = ev["acc"], ev["loss"]
        if name == "test":
            summary["confusion_test"] = ev["confusion"].tolist()
            per_class_rows = report.per_class(ev["confusion"], classes)
    summary["final_epoch"] = final_epoch
    return per_class_rows


def _predictions_figure(cfg: TrainConfig, model: Classifier, data: _Data, rt: Runtime, state: RunState):
    assert state.best is not None  # write_results draws it only for a run that has a best epoch
    test = data.splits.test
    return model_predictions_figure(model, test.images, test.labels, data.splits.classes,
                                    lambda x: prepare_batch(x, rt, data.size), seed=cfg.data.split_seed,
                                    title=f"best checkpoint (epoch {state.best['epoch']})")
