"""Training a classifier: :class:`TrainConfig` in, a run directory out (:func:`fit`).

The loop is written for ``torchrun`` from the start (``styleforge.distributed``): each
process takes a :class:`~torch.utils.data.DistributedSampler` shard of every epoch
(reshuffled per epoch; one process is the special case world size 1), metrics are
summed over processes, evaluation shards the data ``rank::world`` and sums counts and
loss sums, so totals are exact whatever the world size; only rank 0 writes files and
reports progress. ``batch_size`` is per process. Checkpoints hold the plain state dict
(never a DDP wrapper's), so a run resumes under any world size.

Departures from the textbook loop, each for speed on small datasets:

- Data are uint8 tensors in memory; a batch is cut by indexing, converted to float and
  resized on the device, and augmented there as a batch (random crop with reflection
  padding, horizontal flip).
- With a frozen trunk and no augmentation the trunk's outputs are computed once
  (:mod:`.cache`) and only the head runs each epoch.
- Frozen batch-norm layers stay in eval mode (their running statistics do not drift).
- Weight decay applies to weights only, not to biases and batch-norm parameters.
- The learning-rate schedule is a function of training progress (steps, or elapsed time
  when ``max_seconds`` is set), so a time-budgeted run still anneals to zero.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler

from .. import distributed, guard, lock
from ..device import STREAM_GAP, Runtime, backward_step, derived_seed, for_training, runtime, seed_everything
from ..errors import StyleforgeError
from ..io import check_writable, make_folder, save_json
from . import report
from .cache import extract_features, extraction_trunk
from .checkpoint import check_compatible, load_checkpoint, make_meta, save_checkpoint
from .data import DataSpec, Splits, channel_stats, load_splits
from .gallery import model_predictions_figure
from .models import FREEZE_POLICIES, MODELS, InputNorm, apply_freeze, as_classifier, build_model
from .progress import default_progress
from .recipe import classification_loss, describe_recipe, resolve_recipe
from .spec import is_file_ref, model_source
from .spec import short_name as _short

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "step", "constant")
AUGMENTS = ("crop", "flip")
CACHE_MODES = ("auto", "on", "off")
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
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


@dataclass
class TrainConfig:
    """Everything a training run needs; the CLI's ``classify train`` fills one in."""

    dataset: str
    output: str
    model: str = "simple-cnn"
    # data
    data_root: str | None = None
    test_data: str | None = None
    download: bool = False
    classes: list[str] | None = None
    per_class: int | None = None
    val_split: float = 0.1
    test_split: float = 0.2
    split_seed: int = 0
    image_size: int | None = None     # the model's input size (square); default: the data's own size
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
    eval_batch_size: int = 512
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

    def data_spec(self) -> DataSpec:
        return DataSpec(self.dataset, self.data_root, self.test_data, self.download, self.classes, self.per_class,
                        self.val_split, self.test_split, self.split_seed, self.image_size)

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
             ("--checkpoint-every", self.checkpoint_seconds, guard.NON_NEGATIVE),
             ("--split-seed", self.split_seed, guard.SEED), ("--per-class", self.per_class, guard.COUNT)])
        checks = [(self.optimizer, OPTIMIZERS, "--optimizer"), (self.schedule, SCHEDULES, "--schedule"),
                  (self.cache_features, CACHE_MODES, "--cache-features"),
                  (self.freeze, ("auto",) + FREEZE_POLICIES, "--freeze")]
        for value, valid, option in checks:
            if value not in valid:
                raise StyleforgeError(f"{option} {value!r} is unknown: use one of {', '.join(valid)}")
        for a in self.augment:
            if a not in AUGMENTS:
                raise StyleforgeError(f"--augment {a!r} is unknown: use none or a list of {', '.join(AUGMENTS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise StyleforgeError("--epochs and --batch-size must be at least 1")
        lr = DEFAULT_LR[self.optimizer] if self.lr is None else self.lr
        if not (lr > 0 and math.isfinite(lr)):
            raise StyleforgeError(f"--lr {lr} must be a positive number")
        if self.patience is not None and self.patience < 1:
            raise StyleforgeError("--patience must be at least 1")
        if self.patience is not None and self.val_split <= 0:
            raise StyleforgeError("--patience needs a validation set: give --val-split > 0")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise StyleforgeError("--max-seconds must be positive")
        if not 0 <= self.warmup < 1:
            raise StyleforgeError("--warmup must be in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            raise StyleforgeError("--label-smoothing must be in [0, 1)")
        if self.image_size is not None and self.image_size < 4:
            raise StyleforgeError("--image-size must be at least 4")
        if self.overwrite and self.resume:
            raise StyleforgeError("--overwrite and --resume exclude each other")
        has_weights = self.model in MODELS and MODELS[self.model].pretrained
        if self.pretrained and not has_weights:
            raise StyleforgeError(f"{self.model} has no pretrained weights: --pretrained works with resnet18 and vgg19")
        return replace(self, lr=lr, augment=list(dict.fromkeys(self.augment)),
                       pretrained=self.resolved_pretrained() if has_weights else False)


@dataclass
class TrainEvent:
    """Progress for callbacks (rank 0 only). ``kind``: phase, epoch_start, step, epoch_end, done."""

    kind: str
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""


@dataclass
class FitResult:
    """The run directory, summary.json's content, one dict per epoch (``history``: the rows
    of metrics.csv) and one per batch (``steps``: steps.csv)."""

    run_dir: Path
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    steps: list[dict[str, Any]] = field(default_factory=list)


Callback = Callable[[TrainEvent], None]


# --------------------------------------------------------------------------- batches

def lr_factor(schedule: str, progress: float, warmup: float = 0.2) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1] of training."""
    p = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "step":  # ×0.1 at half and at three quarters of training
        return 0.1 ** ((p >= 0.5) + (p >= 0.75))
    if warmup > 0 and p < warmup:
        return p / warmup
    q = (p - warmup) / (1 - warmup) if warmup < 1 else 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * q))
    return max(0.0, 1 - q)  # onecycle: linear warm-up, linear decay to zero


def prepare_batch(x: torch.Tensor, rt: Runtime, size: tuple[int, int] | None) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` → float in [0, 1] on the device, resized to ``size``."""
    x = rt.to(x, non_blocking=True).float().div_(255)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        down = size[0] < x.shape[-2]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=down)
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
    return x


def augment_batch(x: torch.Tensor, ops: list[str], gen: torch.Generator) -> torch.Tensor:
    """Random crop (reflection padding of 1/8 of the side) and horizontal flip, per image."""
    b, _, h, w = x.shape
    if "crop" in ops:
        pad = max(1, round(h / 8))
        xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]   # (B, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]   # (B, 1, W)
        # Advanced indexing gives (B, H, W, C); the permute is a channels_last view.
        x = xp[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if "flip" in ops:
        flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


class Source:
    """Where a split's inputs come from: images (uint8) or cached trunk features."""

    def __init__(self, data: torch.Tensor, labels: torch.Tensor, rt: Runtime, size, features: bool) -> None:
        self.data, self.rt, self.size, self.features = data, rt, size, features
        self.labels = labels.to(rt.device)
        if not features and rt.holds(data):
            self.data = data.to(rt.device)
        elif rt.pin_memory and not features:
            self.data = data.pin_memory()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, index: torch.Tensor, augment: list[str] | None = None,
              gen: torch.Generator | None = None) -> torch.Tensor:
        x = self.data[index.to(self.data.device)]
        if self.features:
            return x.to(self.rt.device, non_blocking=True)
        x = prepare_batch(x, self.rt, self.size)
        if augment:
            x = augment_batch(x, augment, gen)
        return x


# --------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate_source(net: nn.Module, source: Source, rt: Runtime, ctx: distributed.Dist, batch_size: int,
                    num_classes: int, loss: str = "cross-entropy") -> dict[str, Any]:
    """Loss, accuracy and confusion matrix over a whole split, sharded ``rank::world``.

    Each process sums loss and counts over its shard; the sums are added over processes,
    so the totals are exact whatever the dataset size and world size.
    """
    was = net.training
    net.eval()
    index = torch.arange(ctx.rank, len(source), ctx.world_size)
    loss_sum = torch.zeros((), dtype=torch.float64)
    cm = torch.zeros(num_classes * num_classes, dtype=torch.float64)
    try:
        for start in range(0, len(index), batch_size):
            idx = index[start:start + batch_size]
            x, y = source.batch(idx), source.labels[idx.to(source.labels.device)]
            with rt.autocast():
                out = net(x)
            out = out.float()
            loss_sum += classification_loss(loss, out, y, reduction="sum").double().cpu()
            cm += torch.bincount((y * num_classes + out.argmax(1)).cpu(), minlength=num_classes ** 2).double()
    finally:
        net.train(was)
    total = ctx.sum(torch.cat([loss_sum.view(1), cm]))
    cm = total[1:].view(num_classes, num_classes).round().long()
    n = int(cm.sum())
    return {"loss": float(total[0]) / n if n else None, "acc": int(cm.diag().sum()) / n if n else None,
            "n": n, "confusion": cm}


# --------------------------------------------------------------------------- helpers

def _train_mode(net: nn.Module) -> None:
    """Train mode, except batch norm whose parameters are all frozen (keeps its statistics)."""
    net.train()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters())
            if params and not any(p.requires_grad for p in params):
                m.eval()


def _param_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in net.parameters():
        if p.requires_grad:
            (decay if p.dim() > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(cfg: TrainConfig, net: nn.Module) -> torch.optim.Optimizer:
    groups = _param_groups(net, cfg.weight_decay)
    if not any(g["params"] for g in groups):
        raise StyleforgeError("nothing to train: the freeze policy froze every parameter")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=cfg.lr)


def _on_main(ctx: distributed.Dist, fn: Callable[[], Any]) -> Any:
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


# Settings that may differ on --resume: where things are and how fast they run, not what is trained.
RESUME_MAY_CHANGE = ("output", "overwrite", "resume", "data_root", "download", "weights", "device", "precision",
                     "channels_last", "checkpoint_seconds", "eval_batch_size", "cache_features", "plots",
                     "evaluate_test", "batch_size")  # batch_size: compared per effective batch below


def _load_resume(run_dir: Path, cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """last.pt, after checking its structure and that ``cfg`` continues the same run."""
    last = run_dir / "last.pt"
    if not last.is_file():
        raise StyleforgeError(f"nothing to resume: {last} does not exist (train without --resume first)")
    state = load_checkpoint(last)
    guard.require_keys(state, last, {"epoch": int, "config": dict, "optimizer": dict, "rows": list})
    saved = state["config"]
    current = {**asdict(cfg), "freeze": cfg.resolved_freeze()}  # the record holds the resolved policy
    guard.check_resume(saved, current, RESUME_MAY_CHANGE, last, {"model_options": "--option"})
    before = saved.get("effective_batch_size", saved.get("batch_size"))
    if before != cfg.batch_size * world_size:
        raise StyleforgeError(f"--resume: {last} was trained with an effective batch of {before}, this run has "
                              f"{cfg.batch_size * world_size} (--batch-size x processes): use the same")
    return state


def _prepare_run_dir(run_dir: Path, cfg: TrainConfig, world_size: int = 1) -> dict[str, Any] | None:
    """Refuse to mix runs; with --resume return last.pt's content."""
    if run_dir.exists() and not run_dir.is_dir():
        raise StyleforgeError(f"-o {run_dir} is a file: give a run directory")
    if cfg.resume:
        return _load_resume(run_dir, cfg, world_size)
    held = [f for f in RUN_FILES if (run_dir / f).exists()]
    if held and not cfg.overwrite:
        raise StyleforgeError(f"{run_dir} already holds a run ({', '.join(held[:3])}): use --overwrite to replace "
                              "it, --resume to continue it, or another -o")
    make_folder(run_dir)
    check_writable(run_dir / "config.json")
    for f in held:
        (run_dir / f).unlink()
    grid_dir = run_dir / "grid"
    if cfg.overwrite and grid_dir.is_dir() and not guard.foreign_entries(grid_dir, OWN_FILES, RUN_DIRS):
        shutil.rmtree(grid_dir)  # only a grid search styleforge made
    return None


def _load_data(ctx: distributed.Dist, cfg: TrainConfig) -> Splits:
    # Rank 0 decodes first (and fills the decode cache); the others then read the cache.
    if not ctx.is_main:
        ctx.barrier()
    try:
        return load_splits(cfg.data_spec())
    finally:
        if ctx.is_main:
            ctx.barrier()


# --------------------------------------------------------------------------- fit

def fit(cfg: TrainConfig, callback: Callback | None = None, model: nn.Module | None = None,
        progress: bool | None = None) -> FitResult:
    """Train ``cfg.model`` on ``cfg.dataset`` and write the run directory ``cfg.output``.

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
    if not run_dir.parent.is_dir():
        make_folder(run_dir.parent)
    with lock.hold(run_dir, folder=False):
        return _fit(cfg, callback, model)


def _fit(cfg: TrainConfig, callback: Callback | None = None, model: nn.Module | None = None) -> FitResult:
    t_start = time.perf_counter()
    ctx = distributed.current()
    emit: Callback = callback if (callback is not None and ctx.is_main) else (lambda event: None)
    run_dir = Path(cfg.output).expanduser()
    resume_state = _on_main(ctx, lambda: _prepare_run_dir(run_dir, cfg, ctx.world_size))

    if cfg.image_size:  # a lower bound: one float channel of a batch, before and after resizing
        guard.check_memory(8 * max(cfg.batch_size, cfg.eval_batch_size) * cfg.image_size ** 2,
                           f"a batch at --image-size {cfg.image_size}", "use a smaller --image-size or --batch-size")
    emit(TrainEvent("phase", message="loading data"))
    t_data = time.perf_counter()
    splits = _load_data(ctx, cfg)
    data_seconds = time.perf_counter() - t_data
    train, val, test, classes = splits.train, splits.val, splits.test, splits.classes
    k = len(classes)
    c, h, w = train.shape
    size = (cfg.image_size, cfg.image_size) if cfg.image_size else (h, w)
    shape = (c, *size)

    rt = runtime(ctx.device_spec(cfg.device), cfg.precision, cfg.channels_last)
    extract_rt, rt = rt, for_training(rt, cfg.precision)  # auto on a CPU: bf16 extracts, fp32 trains
    seed_everything(cfg.seed)
    freeze = cfg.resolved_freeze()
    if not ctx.is_main and cfg.pretrained:
        ctx.barrier()  # rank 0 finds (or downloads) the backbone weights first
    source = model_source(cfg.model, model, resume_state)
    try:
        model = (as_classifier(model, shape, k) if model is not None else
                 build_model(cfg.model, shape, k, cfg.activation, cfg.pretrained, cfg.weights,
                             model_source=source if is_file_ref(cfg.model) else None, **cfg.model_options))
    finally:
        if ctx.is_main and cfg.pretrained:
            ctx.barrier()
    if isinstance(model.input_norm, InputNorm):
        model.input_norm.set(*channel_stats(train.images))
    apply_freeze(model, freeze)
    meta = make_meta(cfg.model, shape, classes, cfg.activation, cfg.model_options, freeze,
                     source if is_file_ref(cfg.model) else None)
    if source is not None and ctx.is_main:
        report.write_text(source, run_dir / "model.py")

    start_epoch, rows, best, bad_epochs, train_seconds_before = 1, [], None, 0, 0.0
    if resume_state is not None:
        check_compatible({**resume_state, "path": str(run_dir / "last.pt")}, model=cfg.model, num_classes=k,
                         class_names=classes, channels=c)
        if list(resume_state["input_shape"]) != list(shape):
            raise StyleforgeError(f"{run_dir / 'last.pt'} takes {'x'.join(map(str, resume_state['input_shape']))} "
                                  f"input, this run {'x'.join(map(str, shape))}: use the same --image-size")
        guard.load_state(model, resume_state["state_dict"], run_dir / "last.pt")
        start_epoch = int(resume_state["epoch"]) + 1
        rows = [dict(r) for r in resume_state.get("rows", [])]
        best = dict(resume_state["best"]) if resume_state.get("best") else None
        bad_epochs = int(resume_state.get("bad_epochs", 0))
        train_seconds_before = float(resume_state.get("train_seconds", 0.0))
    model = rt.to(model)

    trunk_params = list(model.trunk.parameters())  # fc-only's trunk (a flatten) has none: nothing to cache
    trunk_frozen = bool(trunk_params) and not any(p.requires_grad for p in trunk_params)
    cacheable = trunk_frozen and not cfg.augment
    if cfg.cache_features == "on" and not cacheable:
        raise StyleforgeError("--cache-features on needs a frozen trunk (--freeze all-but-head) and no --augment")
    use_cache = cacheable and cfg.cache_features != "off"
    if cfg.int8_features and not (use_cache and rt.on_cpu):
        raise StyleforgeError("--int8-features needs the frozen-trunk cache on the CPU (--freeze all-but-head, "
                              "no --augment, --device cpu): drop --int8-features")

    n_total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config_record = {**asdict(cfg), "freeze": freeze, "input_shape": list(shape), "class_names": classes,
                     "num_classes": k, "data_source": splits.source, "data_notes": splits.notes,
                     "device": str(rt.device), "precision": rt.precision, "channels_last": rt.channels_last,
                     "world_size": ctx.world_size, "effective_batch_size": cfg.batch_size * ctx.world_size,
                     "cached_features": use_cache, "params_total": n_total, "params_trainable": n_train,
                     "recipe_text": describe_recipe(cfg, ctx.world_size)}
    emit(TrainEvent("phase", message=config_record["recipe_text"]))
    emit(TrainEvent("phase", message=distributed.batch_note(cfg.batch_size, ctx.world_size, cfg.lr)))

    # Inputs: images, or the frozen trunk's outputs computed once.
    feature_seconds = 0.0
    sets = {"train": train, "val": val, "test": test}
    if use_cache:
        emit(TrainEvent("phase", message="extracting features"))
        t_feat = time.perf_counter()
        sources = {}
        prepare = lambda x: prepare_batch(x, extract_rt, size)  # noqa: E731
        if cfg.int8_features:
            emit(TrainEvent("phase", message="calibrating the int8 trunk"))
        trunk = extraction_trunk(model, extract_rt, prepare, train.images if cfg.int8_features else None, cfg.seed)
        for name, s in sets.items():
            if s is None:
                continue
            # Every process extracts the whole split (no communication; the training
            # sampler draws any index on any rank).
            feats = extract_features(trunk, s.images, prepare, extract_rt,
                                     cfg.eval_batch_size,
                                     progress=lambda done, n, name=name: emit(TrainEvent(
                                         "phase", step=done, steps=n, message=f"features: {name}")))
            sources[name] = Source(feats, s.labels, rt, size, features=True)
        feature_seconds = time.perf_counter() - t_feat
        net: nn.Module = model.head
    else:
        sources = {name: Source(s.images, s.labels, rt, size, features=False)
                   for name, s in sets.items() if s is not None}
        net = model

    train_net = distributed.wrap(net, ctx, rt.device)
    optimizer = make_optimizer(cfg, net)
    scaler = rt.grad_scaler()
    if resume_state is not None and resume_state.get("optimizer"):
        guard.load_state(optimizer, resume_state["optimizer"], run_dir / "last.pt", "optimizer settings")
        if scaler is not None and resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
    if ctx.is_main:  # only now: a resumed checkpoint has been checked in full
        save_json(config_record, run_dir / "config.json")

    sampler = DistributedSampler(range(len(train)), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    per_rank = len(sampler)
    # A final batch of one image is skipped: batch norm cannot train on it.
    steps_per_epoch = per_rank // cfg.batch_size + (1 if per_rank % cfg.batch_size > 1 else 0)
    steps_per_epoch = max(1, steps_per_epoch)
    total_steps = steps_per_epoch * cfg.epochs
    log_every = max(1, min(20, steps_per_epoch // 10))

    best_state = None  # a CPU copy of the best weights (on resume: read back from best.pt at the end)
    stopped, message = "completed", ""
    train_seconds = train_seconds_before
    # Checkpoints are written at most every cfg.checkpoint_seconds: with a frozen trunk an
    # epoch can take less time than writing a VGG-sized checkpoint twice. best.pt is
    # written before last.pt, so the best record in last.pt always matches best.pt.
    last_saved, pending_best, saved_epoch = time.perf_counter(), None, start_epoch - 1

    def save_best() -> None:
        nonlocal pending_best
        if pending_best is not None:
            save_checkpoint(run_dir / "best.pt", best_state, meta, config=config_record, **pending_best)
            pending_best = None

    def save_last(epoch: int, row: dict[str, Any]) -> None:
        nonlocal last_saved, saved_epoch
        save_best()
        save_checkpoint(run_dir / "last.pt", model, meta, epoch=epoch, metrics=row, config=config_record,
                        optimizer=optimizer.state_dict(), scaler=scaler.state_dict() if scaler else None,
                        rows=rows, best=best, bad_epochs=bad_epochs, train_seconds=train_seconds)
        last_saved, saved_epoch = time.perf_counter(), epoch

    t_loop = time.perf_counter()
    epochs_run = start_epoch - 1
    step_rows = report.previous_steps(run_dir / "steps.csv", start_epoch) if ctx.is_main else []

    def resume_hint() -> str:
        if not ctx.is_main:
            return f"rank 0 keeps the checkpoints in {run_dir}"
        if saved_epoch >= 1:
            return f"the checkpoint {run_dir / 'last.pt'} (epoch {saved_epoch}) is valid"
        return "no checkpoint was written yet"

    # Ctrl-C, SIGTERM (torchrun stopping the others when one process dies) and a lost peer
    # end in one line that names the checkpoint to --resume from.
    with distributed.stop_cleanly(ctx, resume_hint):
        for epoch in range(start_epoch, cfg.epochs + 1):
            if stopped != "completed":
                break
            t_epoch = time.perf_counter()
            sampler.set_epoch(epoch)
            order = torch.tensor(list(iter(sampler)), dtype=torch.long)
            gen = torch.Generator().manual_seed(derived_seed(cfg.seed, epoch * STREAM_GAP, ctx.rank))
            # Dropout draws from torch's global generator: its own stride, so it is resumable too.
            torch.manual_seed(derived_seed(cfg.seed, epoch * 104_729, ctx.rank, stride=1_000_033))
            if use_cache:
                net.train()
            else:
                _train_mode(net)
            emit(TrainEvent("epoch_start", epoch, cfg.epochs, 0, steps_per_epoch))
            loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
            correct = torch.zeros((), dtype=torch.float64, device=rt.device)
            seen, lr_now, batch_losses = 0, cfg.lr, []
            src = sources["train"]
            for step in range(steps_per_epoch):
                idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                global_step = (epoch - 1) * steps_per_epoch + step
                if cfg.max_seconds:
                    elapsed = train_seconds_before + (time.perf_counter() - t_loop)
                    over = not ctx.all_ok(elapsed < cfg.max_seconds) if ctx.enabled else elapsed >= cfg.max_seconds
                    if over:
                        stopped, message = "time-limit", f"stopped at the {cfg.max_seconds:g} s training budget"
                        break
                    progress = elapsed / cfg.max_seconds
                else:
                    progress = (global_step + 0.5) / total_steps
                lr_now = cfg.lr * lr_factor(cfg.schedule, progress, cfg.warmup)
                for g in optimizer.param_groups:
                    g["lr"] = lr_now
                x = src.batch(idx, cfg.augment, gen)
                y = src.labels[idx.to(src.labels.device)]
                with rt.autocast():
                    out = train_net(x)
                loss = classification_loss(cfg.loss, out.float(), y, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                backward_step(loss, optimizer, scaler)
                loss_sum += loss.detach().double() * len(idx)
                batch_losses.append(loss.detach())
                correct += (out.detach().argmax(1) == y).sum().double()
                seen += len(idx)
                if (step + 1) % log_every == 0 or step + 1 == steps_per_epoch:
                    value = float(loss.detach())
                    if not ctx.all_ok(math.isfinite(value)):
                        stopped = "nan"
                        message = (f"the loss became NaN/inf in epoch {epoch} (step {step + 1}) at lr {lr_now:.3g}: "
                                   "lower --lr")
                        break
                    emit(TrainEvent("step", epoch, cfg.epochs, step + 1, steps_per_epoch,
                                    {"loss": float(loss_sum / max(seen, 1)), "acc": float(correct / max(seen, 1)),
                                     "lr": lr_now}))
            train_seconds = train_seconds_before + (time.perf_counter() - t_loop)
            if batch_losses:  # rank 0's batches; one device sync per epoch
                step_rows += [{"step": (epoch - 1) * steps_per_epoch + i + 1, "epoch": epoch, "loss": v}
                              for i, v in enumerate(torch.stack(batch_losses).float().cpu().tolist())]
            if stopped == "nan":
                break
            totals = ctx.sum([float(loss_sum), float(correct), float(seen)])
            if totals[2] == 0:  # the time budget ran out before this epoch's first step
                break
            epochs_run = epoch
            row: dict[str, Any] = {"epoch": epoch, "train_loss": float(totals[0] / totals[2]),
                                   "train_acc": float(totals[1] / totals[2]), "val_loss": None, "val_acc": None,
                                   "lr": lr_now}
            if "val" in sources:
                ev = evaluate_source(net, sources["val"], rt, ctx, cfg.eval_batch_size, k, cfg.loss)
                row["val_loss"], row["val_acc"] = ev["loss"], ev["acc"]
            if cfg.track_test and cfg.evaluate_test:  # recorded for the curves only: no choice looks at it
                ev = evaluate_source(net, sources["test"], rt, ctx, cfg.eval_batch_size, k, cfg.loss)
                row["test_loss"], row["test_acc"] = ev["loss"], ev["acc"]
            row["seconds"] = time.perf_counter() - t_epoch
            rows.append(row)
            score = row["val_loss"] if row["val_loss"] is not None else row["train_loss"]
            improved = math.isfinite(score) and (best is None or score < best["score"] or row["val_loss"] is None)
            if improved:
                best = {"score": score, "epoch": epoch, "val_acc": row["val_acc"], "val_loss": row["val_loss"]}
                bad_epochs = 0
                best_state = copy.deepcopy({k_: v.detach().cpu() for k_, v in model.state_dict().items()})
                pending_best = {"epoch": epoch, "metrics": dict(row)}
            else:
                bad_epochs += 1
            if cfg.patience is not None and bad_epochs >= cfg.patience:
                stopped = "early-stopping"
                message = f"validation loss did not improve for {cfg.patience} epochs"
            if ctx.is_main:
                report.write_csv(rows, report.TRACKED_METRIC_COLUMNS if cfg.track_test else report.METRIC_COLUMNS,
                                 run_dir / "metrics.csv")
                report.write_csv(step_rows, report.STEP_COLUMNS, run_dir / "steps.csv")
                if (epoch == cfg.epochs or stopped != "completed"
                        or time.perf_counter() - last_saved >= cfg.checkpoint_seconds):
                    save_last(epoch, row)
            emit(TrainEvent("epoch_end", epoch, cfg.epochs, steps_per_epoch, steps_per_epoch, dict(row)))

    if ctx.is_main and stopped != "nan" and rows and saved_epoch < rows[-1]["epoch"]:
        save_last(rows[-1]["epoch"], rows[-1])  # e.g. the time budget ran out at an epoch's start
    if ctx.is_main:
        save_best()  # after NaN: the last clean best weights (last.pt keeps its earlier, clean state)

    # ---------------------------------------------------------------- final evaluation
    summary: dict[str, Any] = {
        "model": cfg.model, "dataset": cfg.dataset, "classes": classes, "input_shape": list(shape),
        "num_train": len(train), "num_val": len(val) if val is not None else 0, "num_test": len(test),
        "epochs_run": epochs_run, "best_epoch": best["epoch"] if best else None, "stopped": stopped,
        "message": message, "cached_features": use_cache,
        "int8_features": bool(cfg.int8_features), "device": str(rt.device), "precision": rt.precision,
        "world_size": ctx.world_size, "effective_batch_size": cfg.batch_size * ctx.world_size,
        "lr": cfg.lr, "params_total": n_total, "params_trainable": n_train,
        "data_seconds": data_seconds, "feature_seconds": feature_seconds, "train_seconds": train_seconds,
        "images_per_second": (epochs_run - start_epoch + 1) * len(train) / max(train_seconds - train_seconds_before,
                                                                              1e-9)
        if epochs_run >= start_epoch else None,
    }
    per_class_rows = None
    final_epoch = rows[-1]["epoch"] if rows and stopped != "nan" else None
    final_differs = best is not None and final_epoch is not None and final_epoch != best["epoch"]
    if final_epoch is not None:
        summary["final_val_acc"], summary["final_val_loss"] = rows[-1]["val_acc"], rows[-1]["val_loss"]
    if final_differs:
        emit(TrainEvent("phase", message=f"evaluating the final epoch ({final_epoch})"))
        for name in ("train", "test"):
            if name == "test" and not cfg.evaluate_test:
                continue
            ev = evaluate_source(net, sources[name], rt, ctx, cfg.eval_batch_size, k, cfg.loss)
            summary[f"final_{name}_acc"], summary[f"final_{name}_loss"] = ev["acc"], ev["loss"]
    if best is not None:
        if best_state is None:  # resumed and never improved: the best weights are on disk
            best_state = _on_main(ctx, lambda: load_checkpoint(run_dir / "best.pt")["state_dict"])
        model.load_state_dict(best_state)
        emit(TrainEvent("phase", message="evaluating the best checkpoint"))
        for name in ("train", "val", "test"):
            if name not in sources or (name == "test" and not cfg.evaluate_test):
                summary[f"{name}_acc"] = summary[f"{name}_loss"] = None
                continue
            ev = evaluate_source(net, sources[name], rt, ctx, cfg.eval_batch_size, k, cfg.loss)
            summary[f"{name}_acc"], summary[f"{name}_loss"] = ev["acc"], ev["loss"]
            if not final_differs and name != "val":
                summary[f"final_{name}_acc"], summary[f"final_{name}_loss"] = ev["acc"], ev["loss"]
            if name == "test":
                summary["confusion_test"] = ev["confusion"].tolist()
                per_class_rows = report.per_class(ev["confusion"], classes)
    else:
        for name in ("train", "val", "test"):
            summary[f"{name}_acc"] = summary[f"{name}_loss"] = None
    summary["final_epoch"] = final_epoch
    summary["wall_seconds"] = time.perf_counter() - t_start
    if ctx.is_main:
        if cfg.plots and rows:
            report.plot_curves(rows, run_dir / "curves.png", title=f"{_short(cfg.model)} on {Path(cfg.dataset).name}",
                               steps=step_rows, best_epoch=summary["best_epoch"], loss_name=cfg.loss)
        if cfg.plots and best is not None and cfg.evaluate_test:
            report.save_figure(model_predictions_figure(model, test.images, test.labels, classes,
                                                        lambda x: prepare_batch(x, rt, size), seed=cfg.split_seed,
                                                        title=f"best checkpoint (epoch {best['epoch']})"),
                               run_dir / "predictions.png")
        if per_class_rows is not None:
            cm = torch.tensor(summary["confusion_test"])
            if cfg.plots:
                report.plot_confusion(cm, classes, run_dir / "confusion_test.png",
                                      title=f"test set, best epoch ({best['epoch']}): accuracy "
                                            f"{summary['test_acc']:.2%}")
            report.write_csv(per_class_rows, ["class", "precision", "recall", "f1", "support"],
                             run_dir / "per_class_test.csv")
            report.write_text(report.markdown_table(per_class_rows, ["class", "precision", "recall", "f1", "support"])
                              + "\n", run_dir / "per_class_test.md")
        save_json(summary, run_dir / "summary.json")
        report.write_report(run_dir, summary, config_record, per_class_rows)
    emit(TrainEvent("done", epochs_run, cfg.epochs, metrics=dict(summary), message=message))
    if stopped == "nan":
        kept = (f"the best checkpoint (epoch {best['epoch']}) is kept in {run_dir / 'best.pt'}" if best
                else "no epoch finished, so no checkpoint was kept")
        raise StyleforgeError(f"{message}; {kept}")
    return FitResult(run_dir, summary, rows, step_rows)
