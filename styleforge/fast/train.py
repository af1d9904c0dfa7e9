"""Training a feed-forward style network for one style image (Johnson et al., 2016).

The loss is the one :func:`styleforge.stylize` optimizes (relative content and Gram
losses on VGG features, total variation), averaged over a batch of random photo crops;
the style Gram targets are computed once. Runs unchanged under ``torchrun`` (one process
per device, DistributedDataParallel); only rank 0 writes files and reports progress.
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader

from .. import distributed, figures, guard, lock
from ..backbone import VGGFeatures
from ..device import backward_step, for_training, optimizer_to, seed_everything
from ..device import runtime as make_runtime
from ..errors import StyleforgeError
from ..io import atomic_path, check_writable, open_rgb, pil_to_tensor, resize_long_side, save_torch
from ..perceptual import PerceptualLoss, loss_weights
from .data import RandomCrops, StreamSampler, collate, list_images
from .model import ARCHS, CHECKPOINT_FORMAT, TransformerNet, parameter_count, read_record, save_model

DEFAULT_CONTENT_LAYERS: dict[str, float] = {"relu2_2": 1.0}
# Departure from Johnson et al. (VGG16 relu1_2, relu2_2, relu3_3, relu4_3): the first ReLU
# of each VGG19 block, as Gatys et al. and `stylize` use. Stopping at relu4_1 needs 13% fewer
# multiply-adds per training image than VGG16 to relu4_3.
DEFAULT_STYLE_LAYERS: dict[str, float] = {f"relu{i}_1": 1.0 for i in range(1, 5)}
DEFAULT_STYLE_STRENGTH = 0.5
DEFAULT_STEPS = 4000
LR_SCHEDULES = ("cosine", "constant")
# Departure from Johnson et al. (constant lr for 40k steps): runs a CPU affords are 10-50x
# shorter, and decaying the rate over the run removes most of the high-frequency noise
# that the last constant-rate steps leave in the network's output.
LR_FLOOR = 0.05


def lr_at(step: int, steps: int, lr: float, schedule: str) -> float:
    """Learning rate of (1-based) ``step`` of ``steps``: a function of the step alone, so resume is exact."""
    if schedule == "constant" or steps <= 1:
        return lr
    t = (step - 1) / (steps - 1)
    return lr * (LR_FLOOR + (1.0 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * t)))


@dataclass
class FastTrainConfig:
    """Everything that defines a training run (``None``: the documented default)."""

    style: str
    data: str | Sequence[str]           # a folder of photos, or several
    output: str
    # Default: the thin network the shipped styles use (about 2x the training images/s of
    # ``johnson`` on a CPU, 6x at inference); ``johnson`` is the published one.
    arch: str = "light"
    image_size: int = 256
    style_size: int = 512
    batch_size: int = 4                 # per process
    steps: int | None = None            # default DEFAULT_STEPS unless epochs is given
    epochs: float | None = None
    lr: float = 1e-3
    lr_schedule: str = "cosine"         # cosine: decays to LR_FLOOR * lr by the last step; constant
    style_strength: float | None = None
    content_weight: float | None = None
    style_weight: float | None = None
    tv_weight: float = 1.0
    content_layers: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_CONTENT_LAYERS))
    style_layers: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_STYLE_LAYERS))
    backbone: str = "vgg19"
    weights: str | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None          # data loader processes (default: 2 on GPU, 1 on CPU)
    checkpoint_every: int = 500
    stop_at: int | None = None          # stop after this step with a checkpoint (the schedule spans steps)
    resume: bool = False
    half: bool = True                   # store the final model in float16
    overwrite: bool = False             # replace an existing model (and its checkpoint)

    def weights_pair(self) -> tuple[float, float]:
        return loss_weights(self.style_strength, self.content_weight, self.style_weight, DEFAULT_STYLE_STRENGTH)


@dataclass
class FastProgress:
    """What the progress callback receives after each step (rank 0 only)."""

    step: int
    steps: int
    images_per_s: float
    losses: dict[str, float]        # running averages of the weighted losses
    skipped: int                    # unreadable files met so far
    note: str = ""                  # effective batch and learning rate


@dataclass
class FastTrainResult:
    model_path: Path
    history: list[dict[str, float]]
    seconds: float
    skipped: list[str]


def checkpoint_path(output: str | os.PathLike) -> Path:
    out = Path(output)
    return out.with_name(out.name + ".ckpt")


def history_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    out = Path(output)
    return out.with_name(out.stem + ".losses.csv"), out.with_name(out.stem + ".losses.png")


# Settings that may change between a run and its --resume (every other one must not):
# where things run and how fast, and how long (more --steps continue the run).
_RESUME_MAY_CHANGE = ("output", "steps", "epochs", "device", "precision", "workers", "checkpoint_every", "resume",
                      "half", "weights", "batch_size", "overwrite", "stop_at")
# (batch_size is compared as the global batch; steps must stay the same under a decaying schedule.)


def _check(cfg: FastTrainConfig) -> None:
    guard.check_numbers(
        [("--lr", cfg.lr, guard.POSITIVE), ("--epochs", cfg.epochs, guard.POSITIVE), ("--seed", cfg.seed, guard.SEED),
         ("--tv-weight", cfg.tv_weight, guard.NON_NEGATIVE), ("--workers", cfg.workers, guard.NON_NEGATIVE)])
    if cfg.arch not in ARCHS:
        raise StyleforgeError(f"unknown --arch {cfg.arch!r}: use one of {', '.join(ARCHS)}")
    for name in ("image_size", "style_size", "batch_size", "checkpoint_every"):
        if getattr(cfg, name) < 1:
            raise StyleforgeError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if cfg.image_size % 4:
        raise StyleforgeError(f"--image-size must be a multiple of 4, got {cfg.image_size}")
    if cfg.overwrite and cfg.resume:
        raise StyleforgeError("--overwrite and --resume exclude each other")
    if cfg.steps is not None and cfg.epochs is not None:
        raise StyleforgeError("give --steps or --epochs, not both")
    if (cfg.steps is not None and cfg.steps < 1) or (cfg.epochs is not None and cfg.epochs <= 0):
        raise StyleforgeError("--steps / --epochs must be positive")
    if cfg.stop_at is not None and cfg.stop_at < 1:
        raise StyleforgeError(f"--stop-at must be a positive step, got {cfg.stop_at}")
    if not cfg.lr > 0:
        raise StyleforgeError(f"--lr must be positive, got {cfg.lr}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise StyleforgeError(f"unknown --lr-schedule {cfg.lr_schedule!r}: use one of {', '.join(LR_SCHEDULES)}")


def _check_min_size(cfg: FastTrainConfig, style: torch.Tensor, extractor: VGGFeatures) -> None:
    """The loss network's deepest layer needs a few pixels (as ``stylize`` checks)."""
    need = extractor.min_size
    if cfg.image_size < need:
        raise StyleforgeError(f"--image-size {cfg.image_size} is too small for the loss layers (they need at least "
                              f"{need} px): use --image-size {max(need, 4)} or more")
    h, w = style.shape[-2:]
    if min(h, w) < need:
        raise StyleforgeError(f"the style image is {w}x{h} px at --style-size {cfg.style_size}, too small for the "
                              f"loss layers (they need at least {need} px per side): use a larger --style-size")


def _check_data(cfg: FastTrainConfig, files: list[Path], global_batch: int) -> None:
    """One-line errors, before training starts, for photos that cannot give a model."""
    if len(files) < global_batch:
        raise StyleforgeError(f"--data holds {len(files)} usable photo(s), fewer than one batch of {global_batch}: "
                              "add photos or lower --batch-size")
    largest = 0
    for f in files:
        with Image.open(f) as img:
            largest = max(largest, min(img.size))
        if largest >= cfg.image_size:
            return
    raise StyleforgeError(f"--image-size {cfg.image_size} is larger than every photo in --data (the largest short "
                          f"side is {largest} px): use --image-size {largest // 4 * 4} or less, or larger photos")


def read_checkpoint(ckpt: Path, fmt: str, kind: str) -> dict:
    """A training checkpoint for --resume, its format and structure checked (one-line errors)."""
    if not ckpt.is_file():
        raise StyleforgeError(f"--resume: no checkpoint {ckpt} to continue from (train without --resume)")
    record = read_record(ckpt)
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise StyleforgeError(f"{ckpt} is not a styleforge {kind} checkpoint")
    guard.require_keys(record, ckpt, {"model": dict, "optimizer": dict, "step": int, "history": list,
                                      "config": dict})
    guard.check_state_dict(record["model"], ckpt, "model")
    return record


def _load_resume(cfg: FastTrainConfig, ckpt: Path, steps: int) -> dict:
    record = read_checkpoint(ckpt, CHECKPOINT_FORMAT, "training")
    old = dict(record["config"])
    mine = _jsonable(asdict(cfg))
    for key in ("style", "data"):  # the same files, however the paths are written
        old[key], mine[key] = (_resolved(d.get(key)) for d in (old, mine))
    guard.check_resume(old, mine, _RESUME_MAY_CHANGE, ckpt, {"style": "STYLE_IMAGE"})
    before = old.get("global_batch", old.get("batch_size"))
    if before != cfg.batch_size * distributed.current().world_size:
        raise StyleforgeError(f"--resume: {ckpt} was trained with a global batch of {before}, this run has "
                              f"{cfg.batch_size * distributed.current().world_size} (--batch-size x processes): "
                              "use the same")
    if cfg.lr_schedule != "constant" and old.get("steps") != steps:
        raise StyleforgeError(f"--resume: {ckpt} was a run of {old.get('steps')} steps and the learning-rate "
                              f"schedule spans them; give --steps {old.get('steps')} (use --stop-at to split a run)")
    return record


def _check_paths(cfg: FastTrainConfig, files: list[Path]) -> None:
    """Never write over the style image or a training photo, nor over another run's model."""
    output, ckpt = Path(cfg.output), checkpoint_path(cfg.output)
    written = {"-o": output, "the checkpoint": ckpt}
    written.update(zip(("the loss table", "the loss plot"), history_paths(output)))
    inputs = {"the style image": cfg.style, **{f"the training photo {f}": f for f in files if f.name in
                                                {p.name for p in written.values()}}}
    guard.check_not_inputs(written, inputs)
    if cfg.resume or cfg.overwrite:
        return
    for what, path in (("a model", output), ("an interrupted run's checkpoint", ckpt)):
        if path.exists():
            raise StyleforgeError(f"{path} already holds {what}: use --overwrite to replace it"
                                  + (", --resume to continue it" if path == ckpt else "") + ", or another -o")


def _folders(data: str | os.PathLike | Sequence[str]) -> list[str]:
    return [str(data)] if isinstance(data, (str, os.PathLike)) else [str(d) for d in data]


def _resolved(data) -> list[str]:
    """--data (or the style path) as absolute paths, to compare runs however the paths were written."""
    return [str(Path(d).resolve()) for d in _folders(data)] if data is not None else []


def _jsonable(d: dict) -> dict:
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in d.items()}


def write_history(history: list[dict[str, float]], output: str | os.PathLike, plot: bool = True) -> None:
    """The loss history as CSV and (optionally) a PNG plot beside the model."""
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
        fig, ax = figures.subplots(figsize=(7, 4), dpi=100)
        window = max(1, len(history) // 50)
        for key in ("total", "content", "style", "tv"):
            vals = [r[key] for r in history]
            smooth = [sum(vals[max(0, i - window + 1):i + 1]) / len(vals[max(0, i - window + 1):i + 1])
                      for i in range(len(vals))]
            ax.plot(steps, smooth, label=key)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(f"weighted loss (mean of last {window} steps)")
        ax.set_title(f"fast style training: {Path(output).stem}")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        figures.save_figure(fig, png_path, dpi=100, tight=False)


def train_style(cfg: FastTrainConfig, callback: Callable[[FastProgress], None] | None = None,
                extractor: VGGFeatures | None = None) -> FastTrainResult:
    """Train a style network; writes the model, a checkpoint, the loss CSV and plot.

    The output is locked while it runs: a second run onto the same model stops at once.
    """
    _check(cfg)
    ctx = distributed.current()
    if not ctx.is_main:
        return _train_style(cfg, callback, extractor)
    check_writable(cfg.output)
    with lock.hold(cfg.output, folder=False):
        return _train_style(cfg, callback, extractor)


def _train_style(cfg: FastTrainConfig, callback: Callable[[FastProgress], None] | None,
                 extractor: VGGFeatures | None) -> FastTrainResult:
    ctx = distributed.current()
    output = Path(cfg.output)
    ckpt = checkpoint_path(output)
    files, unreadable = [], []
    for folder in _folders(cfg.data):
        good, bad = list_images(folder)
        files, unreadable = files + good, unreadable + bad
    if ctx.is_main:
        for p in (output, ckpt, *history_paths(output)):
            check_writable(p)
        _check_paths(cfg, files)
    content_w, style_w = cfg.weights_pair()
    style_src = open_rgb(cfg.style)

    global_batch = cfg.batch_size * ctx.world_size
    steps = cfg.steps or (math.ceil(cfg.epochs * len(files) / global_batch) if cfg.epochs else DEFAULT_STEPS)
    rt = for_training(make_runtime(ctx.device_spec(cfg.device), cfg.precision), cfg.precision)
    per_pixel = 2 * guard.VGG_BYTES_PER_PIXEL + guard.transformer_bytes_per_pixel(ARCHS[cfg.arch].channels[0])
    guard.check_memory(cfg.batch_size * cfg.image_size ** 2 * per_pixel
                       + guard.scaled_pixels(style_src.size, cfg.style_size) * guard.VGG_BYTES_PER_PIXEL,
                       f"training at --image-size {cfg.image_size}, --batch-size {cfg.batch_size}, --style-size "
                       f"{cfg.style_size}", "use a smaller --image-size, --batch-size or --style-size", rt.device)
    style_img = pil_to_tensor(resize_long_side(style_src, cfg.style_size))
    seed_everything(cfg.seed)
    model = TransformerNet(cfg.arch)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start_step, history, skipped = 0, [], [str(p) for p in unreadable]
    record = _load_resume(cfg, ckpt, steps) if cfg.resume else None
    if record is not None:
        guard.load_state(model, record["model"], ckpt)
        guard.load_state(optimizer, record["optimizer"], ckpt, "optimizer settings")
        start_step, history = record["step"], list(record["history"])
        skipped = sorted(set(skipped) | set(record.get("skipped", [])))
        if start_step >= min(steps, cfg.stop_at or steps):
            raise StyleforgeError(f"--resume: the checkpoint is at step {start_step}, already at --steps {steps}: "
                                  "give more --steps to train further")
    model = rt.to(model)
    optimizer_to(optimizer, rt.device)
    ddp_model = distributed.wrap(model, ctx, rt.device)

    if extractor is None:
        extractor = VGGFeatures(list(cfg.content_layers) + list(cfg.style_layers), arch=cfg.backbone,
                                weights=cfg.weights)
    extractor = rt.to(extractor)
    _check_min_size(cfg, style_img, extractor)
    _check_data(cfg, files, global_batch)
    loss_fn = PerceptualLoss(extractor, style_img, cfg.content_layers, cfg.style_layers, content_weight=content_w,
                             style_weight=style_w, tv_weight=cfg.tv_weight, rt=rt)
    scaler = rt.grad_scaler()

    workers = cfg.workers if cfg.workers is not None else rt.loader_workers
    end = min(steps, cfg.stop_at or steps)
    sampler = StreamSampler(len(files), global_batch, end, cfg.seed, start_step, ctx.rank, ctx.world_size)
    loader = DataLoader(RandomCrops(files, cfg.image_size), batch_sampler=sampler, collate_fn=collate,
                        num_workers=workers, pin_memory=rt.pin_memory, prefetch_factor=4 if workers else None)

    config_record = {**_jsonable(asdict(cfg)), "steps": steps, "world_size": ctx.world_size,
                     "global_batch": global_batch}

    def save_checkpoint(step: int) -> None:
        if ctx.is_main:
            save_torch({"format": CHECKPOINT_FORMAT, "arch": cfg.arch, "step": step,
                        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                        "optimizer": _cpu(optimizer.state_dict()), "config": config_record,
                        "history": history, "skipped": skipped}, ckpt)
            write_history(history, output, plot=False)
        ctx.barrier()

    start = time.perf_counter()
    elapsed_before = history[-1]["seconds"] if history else 0.0
    running: dict[str, float] = {}
    last_ckpt = start_step
    step = start_step
    model.train()

    def resume_hint() -> str:
        if not ctx.is_main:
            return f"rank 0 keeps the checkpoint {ckpt}"
        where = f"the checkpoint {ckpt} (step {last_ckpt}) is valid" if last_ckpt else "no checkpoint was written yet"
        return f"at step {step}, {where}"

    # Ctrl-C, SIGTERM (torchrun stopping the others when one process dies) and a lost peer
    # end in one line that names the checkpoint to --resume from.
    with distributed.stop_cleanly(ctx, resume_hint), guard.worker_errors("reading the training photos"):
        for batch, bad in loader:
            step += 1
            skipped.extend(b for b in bad if b not in skipped)
            t0 = time.perf_counter()
            x = rt.to(batch, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, steps, cfg.lr, cfg.lr_schedule)
            parts = loss_fn(ddp_model(x), content=x)
            optimizer.zero_grad(set_to_none=True)
            backward_step(parts["total"], optimizer, scaler)
            # Losses averaged over all processes: the loss of the global batch.
            values = ctx.sum([float(parts[k].detach()) for k in ("content", "style", "tv", "total")])
            values = (values / ctx.world_size).tolist()
            if not all(math.isfinite(v) for v in values):
                kept = (f"the last checkpoint {ckpt} (step {last_ckpt}) is valid for --resume" if last_ckpt
                        else "no checkpoint was written")
                raise StyleforgeError(f"the loss became {values[-1]} at step {step}: lower --lr; {kept}")
            dt = time.perf_counter() - t0
            row = dict(zip(("content", "style", "tv", "total"), values))
            for k, v in row.items():
                running[k] = v if k not in running else 0.95 * running[k] + 0.05 * v
            history.append({"step": step, **row, "images_per_s": global_batch / dt,
                            "seconds": elapsed_before + time.perf_counter() - start})
            if callback is not None and ctx.is_main:
                rate = (step - start_step) * global_batch / (time.perf_counter() - start)
                callback(FastProgress(step, steps, rate, dict(running), len(skipped),
                                      distributed.batch_note(cfg.batch_size, ctx.world_size, cfg.lr)))
            if step % cfg.checkpoint_every == 0 and step < steps:
                save_checkpoint(step)
                last_ckpt = step

    seconds = elapsed_before + time.perf_counter() - start
    save_checkpoint(step)  # every rank: it holds a barrier
    if step < steps:  # --stop-at: the checkpoint is the result; --resume finishes the run
        return FastTrainResult(ckpt, history, seconds, skipped)
    if ctx.is_main:
        training = {**config_record, "parameters": parameter_count(model), "seconds": round(seconds, 1),
                    "device": str(rt.device), "precision": rt.precision, "skipped_files": len(skipped),
                    "final_losses": {k: round(v, 6) for k, v in running.items()}}
        save_model(model, output, Path(cfg.style).stem, training, half=cfg.half)
        write_history(history, output)
    ctx.barrier()
    return FastTrainResult(output, history, seconds, skipped)


def _cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj
