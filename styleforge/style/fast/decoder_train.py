"""Training the universal-style decoders: photos in, each level's decoder learns to invert VGG19.

Li et al. (2017) train each decoder on its own with the loss
``||I_out - I_in||^2 + lambda * ||Phi(I_out) - Phi(I_in)||^2`` (Phi: the encoder up to the
decoder's level). Here all requested levels train together: one encoder pass gives every
level's features, each decoder's loss is its own, and one Adam optimizer holds all their
parameters (Adam is per-parameter, so this equals separate runs sharing the photo stream).

The hourglass decoder (``architecture="hourglass"``) has the same loss at relu4_1, with its
skips scaled by a weight drawn uniformly in [0, 1] at every step (:func:`detail_at`).

Departure from the paper: both terms are relative (:func:`styleforge.style.losses.image_content_loss`,
the squared error over the target's mean square, per image), so ``feature_weight`` means
the same at every level whatever its activation scale.

Data, resume, checkpoints and multi-process runs are those of :mod:`styleforge.style.fast.train`,
through the step loop both share (:mod:`styleforge.style.fast.loop`): the replayable photo stream
of :mod:`styleforge.style.fast.data`, a learning rate that is a function of the step, rank 0
writing, DDP under ``torchrun``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ...backbone import VGGFeatures
from ...runtime import distributed, guard
from ...runtime.device import Runtime, seed_everything
from ...runtime.device import runtime as make_runtime
from ...runtime.errors import StyleforgeError
from ...runtime.io import check_replaceable, check_writable, make_folder, no_empty_folder_left
from ..losses import gram_matrix, image_content_loss, laplacian_loss, repetition_loss, style_loss
from .data import RandomCrops, StreamSampler, collate
from .decoders import (
    HOURGLASS,
    LEVELS,
    AnyDecoder,
    Decoder,
    HourglassDecoder,
    decoder_name,
    level_index,
    load_decoder,
    save_decoder,
)
from .loop import (
    LR_SCHEDULES,
    OPTION_NAMES,
    StepRun,
    check_batch,
    history_paths,
    photo_files,
    read_checkpoint,
    resolved,
)
from .model import parameter_count
from .universal import swapped_wct

CHECKPOINT_FORMAT = "styleforge-decoder-checkpoint"
CHECKPOINT_NAME = "decoders.ckpt"
HISTORY_STEM = "decoders.pth"  # the loss table and plot are decoders.losses.csv and .png
DEFAULT_DECODER_STEPS = 4000
ARCHITECTURES = ("mirror", HOURGLASS)
# The style loss of the stylizing stage (style_weight > 0): stylize's style layers, equally weighted.
STYLE_LEVELS = tuple(LEVELS)


@dataclass
class DecoderTrainConfig:
    """Everything that defines a decoder training run."""

    data: str | Sequence[str]
    output: str                          # folder for the decoder-<name>.pth files, the checkpoint and the loss CSV
    levels: Sequence[str] = LEVELS       # mirror: one decoder per level
    architecture: str = "mirror"         # or "hourglass": one decoder from relu4_1 with skips (decoders.py)
    width: float = 0.5                   # decoder channels relative to VGG19's
    image_size: int = 256
    batch_size: int = 8
    steps: int = DEFAULT_DECODER_STEPS
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    # The learning rate rises linearly over these first steps (loop.lr_at). Not in Li et al.: without
    # it the relu5_1 decoder's first layer died in its first steps (every ReLU off for every input: a
    # flat-colour picture, 12.9-13.1 dB, on the CPU and on a GPU); with 100, 44 % of it lived and the
    # decoder learnt (16.7 dB after 1200 CPU steps, 17.05 after 5000). For the other levels it is 2.5 %
    # of the default run at a lower rate (not measured against none: they learnt without it).
    warmup_steps: int = 100
    feature_weight: float = 1.0          # perceptual term; the pixel term has weight 1
    # > 0: train the decoders to stylize (Reconstruction._stylizing), usually from a reconstruction run's
    # decoder (init_decoder, one decoder), whose weights and input scales it starts from.
    style_weight: float = 0.0
    # With style_weight: weight of the hatching penalty (losses.repetition_loss of the picture against its
    # photo, fast train's --hatching-weight term). Not in the papers: the hourglass paints horizontal streaks
    # that the benchmark's hatching measure sees on the dark paintings (bench/HISTORY.md, session 41).
    hatching_weight: float = 0.0
    # With style_weight: weight of the Laplacian loss (losses.laplacian_loss of the picture against its photo,
    # fast train's --laplacian-weight term; Li et al. 2017). Not in the universal-style papers: the decoders
    # break the photo's main outlines into the painting's texture, where the peer keeps them as strokes
    # (the benchmark's edge measure on shipwreck and the_scream; bench/HISTORY.md, session 44).
    laplacian_weight: float = 0.0
    init_decoder: str | None = None
    weights: str | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None
    checkpoint_every: int = 500
    stop_at: int | None = None
    resume: bool = False
    half: bool = True
    overwrite: bool = False              # replace the decoders and checkpoint already in ``output``

    def validate(self) -> list[str]:
        """One-line errors for settings no run can use; returns the decoders' names (levels shallow to deep)."""
        guard.check_choice(self.architecture, "--architecture", ARCHITECTURES)
        if not self.levels:
            raise StyleforgeError("--levels: give at least one level")
        levels = sorted(dict.fromkeys(self.levels), key=level_index)
        if self.architecture == HOURGLASS and levels != list(LEVELS):
            raise StyleforgeError("--levels is for --architecture mirror: the hourglass decoder reads relu4_1, "
                                  "relu3_1 and relu2_1")
        if self.architecture != HOURGLASS and self.init_decoder and len(levels) != 1:
            raise StyleforgeError("--init-decoder starts one decoder: with --architecture mirror give one level in "
                                  "--levels")
        names = [HOURGLASS] if self.architecture == HOURGLASS else levels
        # The deepest level the crops must reach: the style loss's, else the deepest a decoder reads.
        deepest = STYLE_LEVELS[-1] if self.style_weight else \
            HourglassDecoder.levels[0] if self.architecture == HOURGLASS else levels[-1]
        if self.style_weight and self.batch_size < 2:
            raise StyleforgeError("--style-weight needs --batch-size 2 or more: each photo's style is another photo "
                                  "of its batch")
        for option, weight in (("--hatching-weight", self.hatching_weight),
                               ("--laplacian-weight", self.laplacian_weight)):
            if weight and not self.style_weight:
                raise StyleforgeError(f"{option} is for the stylizing stage: give --style-weight too")
        if self.style_weight and self.feature_weight != 1.0:
            raise StyleforgeError("--feature-weight is for reconstruction; with --style-weight the feature term has "
                                  "weight 1")
        if self.init_decoder is not None and not self.resume and not Path(self.init_decoder).is_file():
            raise StyleforgeError(f"--init-decoder {self.init_decoder!r} does not exist")
        guard.check_numbers(
            [("--crop-size", self.image_size, guard.COUNT), ("--batch-size", self.batch_size, guard.COUNT),
             ("--steps", self.steps, guard.COUNT), ("--checkpoint-steps", self.checkpoint_every, guard.COUNT),
             ("--lr", self.lr, guard.POSITIVE), ("--width", self.width, guard.POSITIVE),
             ("--warmup-steps", self.warmup_steps, guard.NON_NEGATIVE),
             ("--feature-weight", self.feature_weight, guard.NON_NEGATIVE), ("--seed", self.seed, guard.SEED),
             ("--style-weight", self.style_weight, guard.NON_NEGATIVE),
             ("--hatching-weight", self.hatching_weight, guard.NON_NEGATIVE),
             ("--laplacian-weight", self.laplacian_weight, guard.NON_NEGATIVE),
             ("--workers", self.workers, guard.NON_NEGATIVE), ("--stop-at", self.stop_at, guard.COUNT)])
        guard.check_stop_at(self.stop_at, self.steps)
        stride = 2 ** (level_index(deepest) - 1)
        if self.image_size % stride or self.image_size < 2 * stride:
            why = " (--style-weight's style loss reads it)" if self.style_weight else ""
            raise StyleforgeError(f"--crop-size {self.image_size} must be a multiple of {stride} and at least "
                                  f"{2 * stride} for {deepest}{why}")
        guard.check_choice(self.lr_schedule, "--lr-schedule", LR_SCHEDULES)
        guard.check_overwrite_resume(self.overwrite, self.resume)
        return names


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


_RESUME_KEYS = ("levels", "architecture", "width", "image_size", "lr", "lr_schedule", "warmup_steps", "feature_weight",
                "style_weight", "hatching_weight", "laplacian_weight", "init_decoder", "seed")


def detail_at(seed: int, step: int) -> float:
    """The hourglass decoder's skip weight at ``step``: uniform in [0, 1], a function of the seed and step
    alone (resume and every process draw the same)."""
    return float(torch.rand((), generator=torch.Generator().manual_seed(seed * 1_000_003 + step)))


class Reconstruction(nn.Module):
    """The trained decoders (one per level, or the hourglass); calling it gives each one's loss on a batch.

    A module (not a function) so that under DDP the call goes through the wrapper, which
    synchronizes the gradients. The frozen encoder is passed in, so it is no part of it.
    """

    def __init__(self, names: Sequence[str], width: float, style_weight: float = 0.0,
                 hatching_weight: float = 0.0, laplacian_weight: float = 0.0) -> None:
        super().__init__()
        self.decoders = nn.ModuleDict({n: HourglassDecoder(width) if n == HOURGLASS else Decoder(n, width)
                                       for n in names})
        self.style_weight, self.hatching_weight, self.laplacian_weight = style_weight, hatching_weight, laplacian_weight
        read = {lv for d in self.decoders.values() for lv in _reads(d)} | (set(STYLE_LEVELS) if style_weight else set())
        self.encoder_levels = sorted(read, key=level_index)

    def set_input_scales(self, images: torch.Tensor, encoder: VGGFeatures) -> None:
        """Each decoder's fixed input scale(s): 1 / RMS of its level's features on ``images``."""
        with torch.no_grad():
            feats = encoder(images, self.encoder_levels)
            for decoder in self.decoders.values():
                rms = [feats[lv].float().pow(2).mean().sqrt().clamp_min(1e-6) for lv in _reads(decoder)]
                scales = decoder.get_buffer("input_scales" if isinstance(decoder, HourglassDecoder) else "input_scale")
                scales.copy_(1.0 / torch.stack(rms).reshape(scales.shape))

    def forward(self, images: torch.Tensor, encoder: VGGFeatures, feature_weight: float,
                detail: float = 1.0) -> torch.Tensor:
        """(decoders,) losses: relative pixel error + feature_weight * relative feature error (at the
        deepest level read); the hourglass gets its skips scaled by ``detail``. With ``style_weight``,
        the stylizing loss instead (:meth:`_stylizing`)."""
        with torch.no_grad():
            targets = encoder(images, self.encoder_levels)
        if self.style_weight:
            return self._stylizing(images, targets, encoder, detail)
        out = []
        for decoder in self.decoders.values():
            level = _reads(decoder)[0]
            decoded = _decode(decoder, targets, detail)
            pixel = image_content_loss(decoded, images)
            feature = image_content_loss(encoder(decoded, [level])[level], targets[level])
            out.append(pixel + feature_weight * feature)
        return torch.stack(out)

    def _stylizing(self, images: torch.Tensor, targets: dict[str, torch.Tensor], encoder: VGGFeatures,
                   detail: float) -> torch.Tensor:
        """Huang & Belongie's objective (AdaIN, 2017), one loss per decoder: every photo gets the previous photo
        of the batch as its style (WCT at each level the decoder reads); the loss is the relative error of
        the picture's features at the deepest of those levels against the transformed ones plus
        ``style_weight`` times the mean relative Gram error at relu1_1..relu5_1 against the style photo's,
        plus ``hatching_weight`` times how much more the picture's fine texture repeats itself than its photo's,
        plus ``laplacian_weight`` times the error of its outlines (the Laplacian of its pooled luminance) against
        the photo's.

        Departure from the paper: the styles are photos, not a collection of paintings (a decoder learns
        to paint any second-order statistics it is given, not a painting's look), the transform is WCT,
        which the styler uses, not AdaIN, and the per-level decoders of the cascade are trained so too
        (the paper trains one decoder, from relu4_1). The pairs are made within each process's batch, so
        a run on N processes is a different run from one on one (resume checks the count).
        """
        with torch.no_grad():
            style_grams = {lv: gram_matrix(targets[lv]).roll(1, 0) for lv in STYLE_LEVELS}
        out = []
        for decoder in self.decoders.values():
            reads = _reads(decoder)
            with torch.no_grad():
                transformed = {lv: swapped_wct(targets[lv]) for lv in reads}
            picture = _decode(decoder, transformed, detail)
            feats = encoder(picture, self.encoder_levels)
            content = image_content_loss(feats[reads[0]], transformed[reads[0]])
            style = torch.stack([style_loss(gram_matrix(feats[lv]), style_grams[lv]) for lv in STYLE_LEVELS]).mean()
            loss = content + self.style_weight * style
            if self.hatching_weight:
                loss = loss + self.hatching_weight * repetition_loss(picture, images)
            if self.laplacian_weight:
                loss = loss + self.laplacian_weight * laplacian_loss(picture, images)
            out.append(loss)
        return torch.stack(out)


def _reads(decoder: nn.Module) -> list[str]:
    """The levels a decoder reads, deepest first."""
    if isinstance(decoder, HourglassDecoder):
        return list(decoder.levels)
    assert isinstance(decoder, Decoder)  # Reconstruction holds these two kinds
    return [decoder.level]


def _decode(decoder: nn.Module, features: dict[str, torch.Tensor], detail: float) -> torch.Tensor:
    """The decoder's picture from the features of the levels it reads (the hourglass's skips scaled by ``detail``)."""
    if isinstance(decoder, HourglassDecoder):
        return decoder(features, detail)
    return decoder(features[_reads(decoder)[0]])


def _load_resume(cfg: DecoderTrainConfig, ckpt: Path, config_record: dict) -> dict:
    record = read_checkpoint(ckpt, CHECKPOINT_FORMAT, "decoder")
    # The shared resume check (as fast train and classify train): every setting that changes the
    # run, the photos and the global batch; the steps too where the schedule spans them.
    keys = (*_RESUME_KEYS, "data", "global_batch") + (("steps",) if cfg.lr_schedule != "constant" else ()) \
        + (("world_size",) if cfg.style_weight else ())  # the stylizing stage pairs photos within each process
    saved = {"warmup_steps": 0, "architecture": "mirror", "style_weight": 0.0, "hatching_weight": 0.0,
             "laplacian_weight": 0.0, "init_decoder": None, **record["config"]}  # checkpoints from before these options
    guard.check_resume(saved, {k: config_record.get(k) for k in keys}, (), ckpt, OPTION_NAMES)
    return record


def train_decoders(cfg: DecoderTrainConfig, callback: Callable[[DecoderProgress], None] | None = None,
                   encoder: VGGFeatures | None = None) -> DecoderTrainResult:
    """Train one decoder per level (or the hourglass decoder); writes ``decoder-<name>.pth`` files, a checkpoint
    and the loss CSV."""
    levels = cfg.validate()
    init = _read_init(cfg.init_decoder, levels[0], cfg.width) if cfg.init_decoder and not cfg.resume else None
    if not distributed.current().is_main:
        return _train_decoders(cfg, levels, init, callback, encoder)
    with no_empty_folder_left(cfg.output):  # bad input stops before anything is written: no empty -o is left
        # VGG19 encodes each crop, and again the decoded picture for the perceptual loss; the decoders
        # mirror it (about one more encoder's activations).
        guard.check_memory(cfg.batch_size * cfg.image_size ** 2 * 3 * guard.VGG_BYTES_PER_PIXEL,
                           f"training at --crop-size {cfg.image_size}, --batch-size {cfg.batch_size}",
                           "use a smaller --crop-size or --batch-size",
                           make_runtime(distributed.current().device_spec(cfg.device), cfg.precision).device)
        _prepare_output(cfg, levels)
        return _train_decoders(cfg, levels, init, callback, encoder)


def _train_decoders(cfg: DecoderTrainConfig, levels: list[str], init: AnyDecoder | None,
                    callback: Callable[[DecoderProgress], None] | None,
                    encoder: VGGFeatures | None) -> DecoderTrainResult:
    ctx = distributed.current()
    out_dir = Path(cfg.output)
    folders = resolved(cfg.data)  # absolute: resume compares the photos, however the paths are written
    files = photo_files(folders)[0]
    global_batch = cfg.batch_size * ctx.world_size
    check_batch(files, global_batch)
    rt = make_runtime(ctx.device_spec(cfg.device), cfg.precision)
    record = {**asdict(cfg), "levels": levels, "data": folders, "world_size": ctx.world_size,
              "init_decoder": str(Path(cfg.init_decoder).resolve()) if cfg.init_decoder else None,
              "global_batch": global_batch}
    run = _start(cfg, ctx, rt, levels, record, init)
    if encoder is None:
        encoder = VGGFeatures(run.model.encoder_levels, weights=cfg.weights)
    encoder = rt.to(encoder)
    crops = RandomCrops(files, cfg.image_size)
    if not cfg.resume and init is None:  # every process: the whole first global batch, so all get the same scales
        first = next(iter(StreamSampler(len(files), global_batch, 1, cfg.seed)))
        with rt.autocast():
            run.model.set_input_scales(rt.to(collate([crops[i] for i in first])[0]), encoder)
    run.place()

    def loss_fn(x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert run.train_model is not None  # run.place() made it
        with rt.autocast():
            parts = run.train_model(x, encoder, cfg.feature_weight, detail_at(cfg.seed, run.step)).float()
        return parts.sum(), dict(zip(levels, parts))

    def report(rate: float) -> None:
        assert callback is not None  # report is passed on only with a callback
        callback(DecoderProgress(run.step, cfg.steps, rate, dict(run.running),
                                 distributed.batch_note(cfg.batch_size, ctx.world_size, cfg.lr)))

    loader = run.loader(crops, len(files), global_batch, min(cfg.steps, cfg.stop_at or cfg.steps), cfg.seed,
                        cfg.workers)
    seconds = run.run(loader, loss_fn, cfg, cfg.steps, global_batch, report if callback else None, rates=False)
    run.save()  # every rank: it holds a barrier
    if run.step < cfg.steps:
        return DecoderTrainResult([run.ckpt], run.history, seconds)
    paths = [out_dir / decoder_name(lv) for lv in levels]
    if ctx.is_main:
        for lv, path in zip(levels, paths):
            decoder = run.model.decoders[lv]
            assert isinstance(decoder, (Decoder, HourglassDecoder))  # what Reconstruction holds
            training = {**record, "parameters": parameter_count(decoder),
                        "seconds": round(seconds, 1), "device": str(rt.device), "precision": rt.precision,
                        "final_loss": round(run.running[lv], 6)}
            save_decoder(decoder, path, training, half=cfg.half)
    ctx.barrier()
    return DecoderTrainResult(paths, run.history, seconds)


def _prepare_output(cfg: DecoderTrainConfig, levels: list[str]) -> None:
    """The output folder, made; inputs there (--init-decoder, --weights) are never written over, and an
    earlier run's files are refused unless --resume or --overwrite."""
    out_dir = Path(cfg.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise StyleforgeError(f"-o {out_dir} is a file: give a folder for the decoders")
    written = [out_dir / decoder_name(lv) for lv in levels] + [out_dir / CHECKPOINT_NAME]
    written += history_paths(out_dir / HISTORY_STEM)
    inputs = {"the --init-decoder": cfg.init_decoder, "the --weights file": cfg.weights}
    guard.check_not_inputs({f"the output {p.name}": p for p in written},
                           {label: path for label, path in inputs.items() if path})
    make_folder(out_dir)
    for p in written:
        check_writable(p)
    if not cfg.resume:
        check_replaceable(written, cfg.overwrite, out_dir / CHECKPOINT_NAME)


def _start(cfg: DecoderTrainConfig, ctx: distributed.Dist, rt: Runtime, levels: list[str], record: dict,
           init: AnyDecoder | None = None) -> StepRun[Reconstruction]:
    """The decoders and their optimizer: fresh, from ``init`` (--init-decoder) or from the checkpoint (--resume)."""
    seed_everything(cfg.seed)
    decoders = Reconstruction(levels, cfg.width, cfg.style_weight, cfg.hatching_weight, cfg.laplacian_weight)
    if init is not None:
        decoders.decoders[levels[0]].load_state_dict(init.state_dict())  # validate allows one decoder with it
    out_dir = Path(cfg.output)
    run = StepRun(ctx, rt, decoders, torch.optim.Adam(decoders.parameters(), lr=cfg.lr), out_dir / CHECKPOINT_NAME,
                  CHECKPOINT_FORMAT, record, out_dir / HISTORY_STEM)  # write_history names the CSV after this stem
    if cfg.resume:
        run.resume(_load_resume(cfg, run.ckpt, record), cfg.steps, cfg.stop_at)
    return run


def _read_init(path: str, name: str, width: float) -> AnyDecoder:
    """The decoder to start from (--init-decoder), read before anything is written; one-line errors."""
    init = load_decoder(path)
    kind = "an hourglass decoder" if name == HOURGLASS else f"a {name} decoder"
    if init.level != name or init.width != width:
        raise StyleforgeError(f"--init-decoder {path} is not {kind} of --width {width:g}")
    return init
