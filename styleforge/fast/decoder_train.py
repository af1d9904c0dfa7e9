"""Training the universal-style decoders: photos in, each level's decoder learns to invert VGG19.

Li et al. (2017) train each decoder on its own with the loss
``||I_out - I_in||^2 + lambda * ||Phi(I_out) - Phi(I_in)||^2`` (Phi: the encoder up to the
decoder's level). Here all requested levels train together: one encoder pass gives every
level's features, each decoder's loss is its own, and one Adam optimizer holds all their
parameters (Adam is per-parameter, so this equals separate runs sharing the photo stream).

Departure from the paper: both terms are relative (:func:`styleforge.losses.image_content_loss`,
the squared error over the target's mean square, per image), so ``feature_weight`` means
the same at every level whatever its activation scale.

Data, resume, checkpoints and multi-process runs work as in :mod:`styleforge.fast.train`:
the replayable photo stream of :mod:`styleforge.fast.data`, a learning rate that is a
function of the step, rank 0 writing, DDP under ``torchrun``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import distributed, guard
from ..backbone import VGGFeatures
from ..device import backward_step, optimizer_to, seed_everything
from ..device import runtime as make_runtime
from ..errors import StyleforgeError
from ..io import check_writable, save_torch
from ..losses import image_content_loss
from .data import RandomCrops, StreamSampler, collate, list_images
from .model import parameter_count
from .train import LR_SCHEDULES, _cpu, _resolved, lr_at, read_checkpoint, write_history
from .universal import LEVELS, Decoder, decoder_name, level_index, save_decoder

CHECKPOINT_FORMAT = "styleforge-decoder-checkpoint"
CHECKPOINT_NAME = "decoders.ckpt"
DEFAULT_DECODER_STEPS = 4000


@dataclass
class DecoderTrainConfig:
    """Everything that defines a decoder training run."""

    data: str | Sequence[str]
    output: str                          # folder for decoder-reluK_1.pth, the checkpoint and the loss CSV
    levels: Sequence[str] = LEVELS
    width: float = 0.5                   # decoder channels relative to VGG19's
    image_size: int = 256
    batch_size: int = 8
    steps: int = DEFAULT_DECODER_STEPS
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    feature_weight: float = 1.0          # perceptual term; the pixel term has weight 1
    weights: str | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None
    checkpoint_every: int = 500
    stop_at: int | None = None
    resume: bool = False
    half: bool = True


@dataclass
class DecoderProgress:
    step: int
    steps: int
    images_per_s: float
    losses: dict[str, float]        # running average of each level's total loss
    note: str = ""


@dataclass
class DecoderTrainResult:
    paths: list[Path]               # the decoder files (or the checkpoint after --stop-at)
    history: list[dict[str, float]]
    seconds: float


_RESUME_KEYS = ("levels", "width", "image_size", "lr", "lr_schedule", "feature_weight", "seed")


def _check(cfg: DecoderTrainConfig) -> list[str]:
    if not cfg.levels:
        raise StyleforgeError("--levels: give at least one level")
    levels = sorted(dict.fromkeys(cfg.levels), key=level_index)
    for name in ("image_size", "batch_size", "steps", "checkpoint_every"):
        if getattr(cfg, name) < 1:
            raise StyleforgeError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    stride = 2 ** (level_index(levels[-1]) - 1)
    if cfg.image_size % stride or cfg.image_size < 2 * stride:
        raise StyleforgeError(f"--image-size {cfg.image_size} must be a multiple of {stride} and at least "
                              f"{2 * stride} for {levels[-1]}")
    if not cfg.lr > 0 or not cfg.width > 0 or cfg.feature_weight < 0:
        raise StyleforgeError("--lr and --width must be positive and --feature-weight not negative")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise StyleforgeError(f"unknown --lr-schedule {cfg.lr_schedule!r}: use one of {', '.join(LR_SCHEDULES)}")
    if cfg.stop_at is not None and cfg.stop_at < 1:
        raise StyleforgeError(f"--stop-at must be a positive step, got {cfg.stop_at}")
    return levels


class Reconstruction(nn.Module):
    """The trained decoders, one per level; calling it gives each level's loss on a batch.

    A module (not a function) so that under DDP the call goes through the wrapper, which
    synchronizes the gradients. The frozen encoder is passed in, so it is no part of it.
    """

    def __init__(self, levels: Sequence[str], width: float) -> None:
        super().__init__()
        self.decoders = nn.ModuleDict({lv: Decoder(lv, width) for lv in levels})

    def set_input_scales(self, images: torch.Tensor, encoder: VGGFeatures) -> None:
        """Each decoder's fixed input scale: 1 / RMS of its level's features on ``images``."""
        with torch.no_grad():
            feats = encoder(images, list(self.decoders))
            for level, decoder in self.decoders.items():
                rms = feats[level].float().pow(2).mean().sqrt()
                decoder.input_scale.fill_(float(1.0 / rms.clamp_min(1e-6)))

    def forward(self, images: torch.Tensor, encoder: VGGFeatures, feature_weight: float) -> torch.Tensor:
        """(levels,) losses: relative pixel error + feature_weight * relative feature error."""
        with torch.no_grad():
            targets = encoder(images, list(self.decoders))
        out = []
        for level, decoder in self.decoders.items():
            decoded = decoder(targets[level])
            pixel = image_content_loss(decoded, images)
            feature = image_content_loss(encoder(decoded, [level])[level], targets[level])
            out.append(pixel + feature_weight * feature)
        return torch.stack(out)


def _load_resume(cfg: DecoderTrainConfig, ckpt: Path, config_record: dict) -> dict:
    record = read_checkpoint(ckpt, CHECKPOINT_FORMAT, "decoder")
    # The shared resume check (as fast train and classify train): every setting that changes the
    # run, the photos and the global batch; the steps too where the schedule spans them.
    keys = (*_RESUME_KEYS, "data", "global_batch") + (("steps",) if cfg.lr_schedule != "constant" else ())
    guard.check_resume(record["config"], {k: config_record.get(k) for k in keys}, (), ckpt)
    if record["step"] >= min(cfg.steps, cfg.stop_at or cfg.steps):
        raise StyleforgeError(f"--resume: the checkpoint is at step {record['step']}, already at --steps "
                              f"{cfg.steps}: give more --steps to train further")
    return record


def train_decoders(cfg: DecoderTrainConfig, callback: Callable[[DecoderProgress], None] | None = None,
                   encoder: VGGFeatures | None = None) -> DecoderTrainResult:
    """Train one decoder per level; writes ``decoder-<level>.pth`` files, a checkpoint and the loss CSV."""
    levels = _check(cfg)
    ctx = distributed.current()
    out_dir = Path(cfg.output)
    if ctx.is_main:
        if out_dir.exists() and not out_dir.is_dir():
            raise StyleforgeError(f"-o {out_dir} is a file: give a folder for the decoders")
        out_dir.mkdir(parents=True, exist_ok=True)
        for p in [out_dir / decoder_name(lv) for lv in levels] + [out_dir / CHECKPOINT_NAME]:
            check_writable(p)
    ckpt = out_dir / CHECKPOINT_NAME
    folders = _resolved(cfg.data)  # absolute: resume compares the photos, however the paths are written
    files: list[Path] = []
    for folder in folders:
        files += list_images(folder)[0]
    global_batch = cfg.batch_size * ctx.world_size
    if len(files) < global_batch:
        raise StyleforgeError(f"--data holds {len(files)} usable photo(s), fewer than one batch of {global_batch}: "
                              "add photos or lower --batch-size")
    config_record = {**asdict(cfg), "levels": levels, "data": folders, "world_size": ctx.world_size,
                     "global_batch": global_batch}
    rt = make_runtime(ctx.device_spec(cfg.device), cfg.precision)
    seed_everything(cfg.seed)
    decoders = Reconstruction(levels, cfg.width)
    optimizer = torch.optim.Adam(decoders.parameters(), lr=cfg.lr)
    step, history = 0, []
    if cfg.resume:
        record = _load_resume(cfg, ckpt, config_record)
        decoders.load_state_dict(record["model"])
        optimizer.load_state_dict(record["optimizer"])
        step, history = record["step"], list(record["history"])
    if encoder is None:
        encoder = VGGFeatures(levels, weights=cfg.weights)
    encoder = rt.to(encoder)
    crops = RandomCrops(files, cfg.image_size)
    if not cfg.resume:  # every process: the whole first global batch, so all get the same scales
        first = next(iter(StreamSampler(len(files), global_batch, 1, cfg.seed)))
        with rt.autocast():
            decoders.set_input_scales(rt.to(collate([crops[i] for i in first])[0]), encoder)
    decoders = rt.to(decoders)
    optimizer_to(optimizer, rt.device)
    model = distributed.wrap(decoders, ctx, rt.device)
    scaler = rt.grad_scaler()
    workers = cfg.workers if cfg.workers is not None else rt.loader_workers
    end = min(cfg.steps, cfg.stop_at or cfg.steps)
    sampler = StreamSampler(len(files), global_batch, end, cfg.seed, step, ctx.rank, ctx.world_size)
    loader = DataLoader(crops, batch_sampler=sampler, collate_fn=collate,
                        num_workers=workers, pin_memory=rt.pin_memory, prefetch_factor=4 if workers else None)
    history_file = out_dir / "decoders.pth"  # write_history names the CSV after this stem

    def save_checkpoint() -> None:
        if ctx.is_main:
            save_torch({"format": CHECKPOINT_FORMAT, "step": step, "config": config_record,
                        "model": {k: v.detach().cpu() for k, v in decoders.state_dict().items()},
                        "optimizer": _cpu(optimizer.state_dict()), "history": history}, ckpt)
            write_history(history, history_file, plot=False)
        ctx.barrier()

    start, start_step = time.perf_counter(), step
    elapsed_before = history[-1]["seconds"] if history else 0.0
    running: dict[str, float] = {}
    last_ckpt = step
    decoders.train()

    def resume_hint() -> str:
        where = f"the checkpoint {ckpt} (step {last_ckpt}) is valid" if last_ckpt else "no checkpoint yet"
        return f"at step {step}, {where}"

    with distributed.stop_cleanly(ctx, resume_hint):
        for batch, _bad in loader:
            step += 1
            x = rt.to(batch, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg.steps, cfg.lr, cfg.lr_schedule)
            with rt.autocast():
                parts = model(x, encoder, cfg.feature_weight).float()
            optimizer.zero_grad(set_to_none=True)
            backward_step(parts.sum(), optimizer, scaler)
            values = (ctx.sum(parts.detach().cpu()) / ctx.world_size).tolist()
            if not all(math.isfinite(v) for v in values):
                raise StyleforgeError(f"the loss became {values} at step {step}: lower --lr; the last "
                                      f"checkpoint (step {last_ckpt}) is valid for --resume")
            row = dict(zip(levels, values))
            for k, v in row.items():
                running[k] = v if k not in running else 0.95 * running[k] + 0.05 * v
            history.append({"step": step, **row, "seconds": elapsed_before + time.perf_counter() - start})
            if callback is not None and ctx.is_main:
                rate = (step - start_step) * global_batch / (time.perf_counter() - start)
                callback(DecoderProgress(step, cfg.steps, rate, dict(running),
                                         distributed.batch_note(cfg.batch_size, ctx.world_size, cfg.lr)))
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                save_checkpoint()
                last_ckpt = step
    seconds = elapsed_before + time.perf_counter() - start
    save_checkpoint()
    if step < cfg.steps:
        return DecoderTrainResult([ckpt], history, seconds)
    paths = [out_dir / decoder_name(lv) for lv in levels]
    if ctx.is_main:
        for lv, path in zip(levels, paths):
            training = {**config_record, "parameters": parameter_count(decoders.decoders[lv]),
                        "seconds": round(seconds, 1), "device": str(rt.device), "precision": rt.precision,
                        "final_loss": round(running[lv], 6)}
            save_decoder(decoders.decoders[lv], path, training, half=cfg.half)
    ctx.barrier()
    return DecoderTrainResult(paths, history, seconds)
