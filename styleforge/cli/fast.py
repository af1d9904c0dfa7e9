"""``styleforge fast train|apply|train-decoders|sheet|export|models``: feed-forward style networks."""

from __future__ import annotations

from pathlib import Path

import click

from ..runtime import distributed
from ..runtime.device import keep_freed_memory
from ..runtime.errors import StyleforgeError
from ..runtime.io import IMAGE_SUFFIXES, check_writable, image_format, save_image
from ..runtime.progress import Bar
from ..style.fast import ARCHS, FastTrainConfig, available_models, train_style
from ..style.fast.apply import VIDEO_SUFFIXES, stylize_files
from ..style.fast.decoder_train import ARCHITECTURES, CHECKPOINT_NAME, DecoderTrainConfig, train_decoders
from ..style.fast.export import export_onnx
from ..style.fast.model import MODEL_SUFFIX, UPSAMPLE_MODES
from ..style.fast.planes import FLAT_SHARE
from ..style.fast.sheet import style_sheet
from ..style.fast.train import (
    DEFAULT_LR,
    DEFAULT_STEPS,
    FLAT_HATCHING_WEIGHT,
    HATCHING_WEIGHT,
    LR_FLOOR,
    LR_SCHEDULES,
)
from ..style.fast.universal import (
    DECODERS,
    DEFAULT_DECODER,
    DEFAULT_DETAIL,
    DEFAULT_LEVELS,
    DEFAULT_STRENGTH,
    DEFAULT_TONES,
    DEFAULT_WORK_SIZE,
    FLAT_TONE_SIGMA,
    METHODS,
    AnyStyle,
)
from ..style.losses import TONE_SIGMA
from .options import (
    BATCH_HELP,
    BLEND_HELP,
    COUNT,
    CROP_HELP,
    FRACTION,
    NAME_LIST,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    ORIGINAL_COLORS_HELP,
    POSITIVE,
    SIZE_HELP,
    STYLE_SIZE_HELP,
    CommaList,
    config_option,
    device_option,
    main_group,
    number_text,
    option,
    overwrite_option,
    parse_layer_weights,
    precision_option,
    quiet_option,
    runtime_options,
    style_loss_options,
    training_run_options,
    weights_option,
)

SCHEDULE_HELP = f"Learning-rate schedule: cosine decays to {LR_FLOOR:.0%} of --lr by the last step; constant keeps it."
WARMUP_HELP = "The learning rate rises linearly from 0 over these first steps (0: none)."
LEVELS_HELP = "VGG19 levels with a decoder, e.g. relu4_1,relu1_1."
LAPLACIAN_HELP = ("Weight of a loss on the Laplacian of the 4x4-pooled picture against the photo's (Li et al. "
                  "2017): keeps the photo's outlines in place.")
HATCHING_HELP = ("Penalty on fine texture that repeats itself every 3-10 px more than the photo's does (a woven "
                 "hatching or streaks instead of strokes).")
data_option = option("--data", required=True, multiple=True, type=click.Path(path_type=Path),
                     help="Folder of training photos (searched recursively); repeat for several.")


@main_group.group("fast")
def fast_group() -> None:
    """Feed-forward style networks (Johnson et al.): train once, stylize in one pass."""


@fast_group.command("train")
@click.argument("style_image", type=click.Path(path_type=Path))
@data_option
@option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Model file to write (.pth).")
@config_option(FastTrainConfig, "arch", "--network", type=click.Choice(list(ARCHS)), old=("--arch",),
               help="The style network: light (0.26 M parameters, what the shipped styles use) or johnson "
                    "(the published 1.68 M network).")
@config_option(FastTrainConfig, "upsample", "--upsample", type=click.Choice(UPSAMPLE_MODES),
               help="How the network's decoder doubles the resolution: bilinear, or nearest (as published; prints a "
                    "2-4 px grid on the light network).")
@config_option(FastTrainConfig, "input_noise", "--input-noise", type=NON_NEGATIVE, metavar="AMOUNT",
               help="Noise added to the photos the network sees (unit variance times AMOUNT; a fixed pattern at "
                    "inference): something to paint from on flat regions, but the network blurs outlines to remove "
                    "it. 0: none, as published.")
@config_option(FastTrainConfig, "lattice_weight", "--lattice-weight", type=NON_NEGATIVE, metavar="WEIGHT",
               help="Penalty on texture that repeats on the network's 4-px lattice (the grid the eye sees first); "
                    "0: none, as published.")
@config_option(FastTrainConfig, "laplacian_weight", "--laplacian-weight", type=NON_NEGATIVE, metavar="WEIGHT",
               help=LAPLACIAN_HELP + " 0: none, as published.")
@config_option(FastTrainConfig, "hatching_weight", "--hatching-weight", type=NON_NEGATIVE, metavar="WEIGHT",
               show_default=f"{HATCHING_WEIGHT:g}, or {FLAT_HATCHING_WEIGHT:g} for a painting of flat planes",
               help=HATCHING_HELP + " It also charges long straight edges, which a painting of flat planes (at "
                    f"least {FLAT_SHARE:.0%} of its pixels flat) is made of. 0: none.")
@config_option(FastTrainConfig, "detail_weight", "--detail-weight", type=NON_NEGATIVE, metavar="WEIGHT",
               help="Weight of a loss on the photo's 1-4 px detail lost in the picture (a face turned into one "
                    "dark tone inside a kept outline). 0: none.")
@config_option(FastTrainConfig, "palette_weight", "--palette-weight", type=NON_NEGATIVE, metavar="WEIGHT",
               help="Weight of a loss on the picture's colours against the painting's, in its proportions "
                    "(sliced Wasserstein): against a one-colour wash. 0: none.")
@config_option(FastTrainConfig, "tone_weight", "--tone-weight", type=NON_NEGATIVE, metavar="WEIGHT",
               help="Weight of a loss on the picture's blurred light and dark against the photo's in the "
                    "painting's tones (histogram-matched): against inverted light and dark. 0: none.")
@config_option(FastTrainConfig, "gradient_weight", "--gradient-weight", type=NON_NEGATIVE, metavar="WEIGHT",
               help="Weight of a loss on the picture's luminance gradient magnitudes against the painting's, in "
                    "its proportions: its share of flat planes and hard edges. 0: none.")
@config_option(FastTrainConfig, "chroma_weight", "--chroma-weight", type=NON_NEGATIVE, metavar="WEIGHT",
               help="Weight of a loss on the picture's blurred (I, Q) chrominance against the photo's moved "
                    "into the painting's: the painting's colours, as much of each as it has, where the photo "
                    "has the nearest ones. 0: none.")
@config_option(FastTrainConfig, "image_size", "--crop-size", type=COUNT, metavar="PX", old=("--image-size",),
               help=CROP_HELP)
@config_option(FastTrainConfig, "photo_size", "--photo-size", type=COUNT, metavar="PX",
               show_default="each photo's short side to the crop size, as published",
               help="Long side the photos are scaled to (times a random zoom up to 1.25) before the crops are cut: "
                    "the scale the network learns to paint at, best near the size you will apply it at.")
@config_option(FastTrainConfig, "style_size", "--style-size", type=COUNT, metavar="PX", help=STYLE_SIZE_HELP)
@config_option(FastTrainConfig, "batch_size", "--batch-size", type=COUNT, help=BATCH_HELP)
@option("--steps", type=COUNT, metavar="STEPS", show_default=str(DEFAULT_STEPS), help="Optimizer steps.")
@option("--epochs", type=POSITIVE, help="Passes over the training data. Here instead of --steps; fractions work.")
@config_option(FastTrainConfig, "lr", "--lr", type=POSITIVE,
               show_default=", ".join(f"{v:g} for {k}" for k, v in DEFAULT_LR.items()), help="Learning rate.")
@config_option(FastTrainConfig, "lr_schedule", "--lr-schedule", type=click.Choice(LR_SCHEDULES), help=SCHEDULE_HELP)
@config_option(FastTrainConfig, "warmup_steps", "--warmup-steps", type=NON_NEGATIVE_INT, metavar="STEPS",
               help=WARMUP_HELP)
@style_loss_options(FastTrainConfig)
@weights_option
@training_run_options(FastTrainConfig, "OUTPUT.ckpt")
@overwrite_option()
@runtime_options(FastTrainConfig)
@quiet_option
def train_cmd(style_image, data, output, arch, upsample, input_noise, lattice_weight, laplacian_weight,
              hatching_weight, detail_weight, palette_weight, tone_weight, gradient_weight, chroma_weight,
              image_size, photo_size, style_size, batch_size, steps, epochs, lr, lr_schedule, warmup_steps,
              style_strength, content_weight, style_weight, tv_weight, content_layers, style_layers, weights,
              workers, checkpoint_every, resume, stop_at, fp32_model, overwrite, device, precision, seed, quiet):
    """Train a style network for STYLE_IMAGE on the photos in --data."""
    cfg = FastTrainConfig(
        style=str(style_image), data=[str(d) for d in data], output=str(output), arch=arch, upsample=upsample,
        input_noise=input_noise, lattice_weight=lattice_weight, laplacian_weight=laplacian_weight,
        hatching_weight=hatching_weight, detail_weight=detail_weight, palette_weight=palette_weight,
        tone_weight=tone_weight, gradient_weight=gradient_weight, chroma_weight=chroma_weight,
        image_size=image_size, photo_size=photo_size, style_size=style_size, batch_size=batch_size, steps=steps,
        epochs=epochs, lr=lr, lr_schedule=lr_schedule, warmup_steps=warmup_steps,
        style_strength=style_strength, content_weight=content_weight, style_weight=style_weight,
        tv_weight=tv_weight, content_layers=parse_layer_weights(content_layers, "--content-layers"),
        style_layers=parse_layer_weights(style_layers, "--style-layers"),
        weights=str(weights) if weights else None, seed=seed, device=device, precision=precision,
        workers=workers, checkpoint_every=checkpoint_every, resume=resume, stop_at=stop_at, half=not fp32_model,
        overwrite=overwrite)
    bar = Bar(quiet)

    def progress(p):
        if not bar.is_open:
            bar.write(p.note)
        bar.show("training", p.step, p.steps, "step", {
            "img/s": f"{p.images_per_s:.2f}", "content": f"{p.losses['content']:.3g}",
            "style": f"{p.losses['style']:.3g}", "skipped": str(p.skipped)})

    with bar, distributed.session() as ctx:
        result = train_style(cfg, progress)
    if ctx.is_main and not quiet:
        note = f", skipped {len(result.skipped)} unreadable files" if result.skipped else ""
        click.echo(f"wrote {result.model_path} ({result.seconds:.0f} s{note})")


def _strength_default() -> str:
    """--strength's default as --help shows it: the default decoder's, then the other values and their decoders."""
    common = DEFAULT_STRENGTH[DEFAULT_DECODER]
    others: dict[float, list[str]] = {}
    for decoder, value in DEFAULT_STRENGTH.items():
        if value != common:
            others.setdefault(value, []).append(decoder)
    return "; ".join([number_text(common), *(f"{number_text(v)} with --decoder {' or '.join(ds)}"
                                              for v, ds in others.items())])


@fast_group.command("apply")
@click.argument("args", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="[MODEL] INPUTS...")
@option("-o", "--output", required=True, type=click.Path(path_type=Path),
        help="Output image/video file (one input) or folder.")
@option("--style-image", multiple=True, type=click.Path(path_type=Path),
        help="Any image as the style, instead of MODEL (universal style transfer); repeat to blend several.")
@option("--style-blend", type=CommaList(NON_NEGATIVE), metavar="W,W,...", show_default="equal",
        help=BLEND_HELP)
@config_option(AnyStyle, "strength", "--strength", type=FRACTION, show_default=_strength_default(),
               help="With --style-image: how much of the painting's feature statistics, blended with the photo's at "
                    "every level; 0 gives the decoders' version of the photo (lighter, finely textured: they are "
                    "trained to stylize), 1 full style.")
@config_option(AnyStyle, "style_size", "--style-size", type=COUNT, metavar="PX", help=STYLE_SIZE_HELP)
@config_option(stylize_files, "work_size", "--work-size", type=COUNT, metavar="PX",
               show_default=DEFAULT_WORK_SIZE or "the photo's size",
               help="Long side to stylize at, px; larger photos get the result scaled up "
                    "(faster, coarser brush strokes).")
@config_option(AnyStyle, "method", "--method", type=click.Choice(METHODS),
               help="With --style-image: wct matches the style's feature covariance; adain only means and spreads.")
@config_option(AnyStyle, "decoder", "--decoder", type=click.Choice(DECODERS),
               help="With --style-image: hourglass+cascade restyles the hourglass's picture with the cascade (the "
                    "most of the painting); cascade restyles the photo itself, one decoder per --levels level, "
                    "coarse to fine (about a third of the time); hourglass decodes relu4_1, relu3_1 and relu2_1 at "
                    "once (the photo kept closest).")
@option("--levels", type=NAME_LIST, metavar="LEVEL,...",
        show_default=",".join(DEFAULT_LEVELS),
        help=LEVELS_HELP + " With the cascade (--decoder cascade or hourglass+cascade).")
@config_option(AnyStyle, "detail", "--detail", type=FRACTION, show_default=number_text(DEFAULT_DETAIL),
               help="With the hourglass decoder (--decoder hourglass or hourglass+cascade): how much of the photo's "
                    "finer structure (relu3_1, relu2_1) joins "
                    "what it paints from relu4_1; 0 paints from relu4_1 alone.")
@config_option(AnyStyle, "tones", "--tones", type=FRACTION, show_default=number_text(DEFAULT_TONES),
               help="With the cascade (--decoder cascade or hourglass+cascade): how far each picture it restyles "
                    "first takes the photo's light and dark (in the painting's tones, at a "
                    f"{TONE_SIGMA:g} px blur, {FLAT_TONE_SIGMA:g} px for a painting of flat planes), so subjects stay "
                    "light or dark where the photo has them; 0 leaves the transforms' own.")
@option("--decoders", type=click.Path(path_type=Path), show_default="the weights folders",
        help="Folder of decoder files (decoder-hourglass.pth, decoder-reluK_1.pth).")
@weights_option
@option("--size", type=COUNT, metavar="PX", show_default="the input's", help=SIZE_HELP)
@option("--original-colors", is_flag=True, help=ORIGINAL_COLORS_HELP)
@config_option(stylize_files, "batch_size", "--batch-size", type=COUNT, help=BATCH_HELP)
@device_option(stylize_files)
@precision_option(stylize_files)
@quiet_option
def apply_cmd(args, output, style_image, style_blend, strength, style_size, work_size, method, decoder, levels,
              detail, tones, decoders, weights, size, original_colors, batch_size, device, precision, quiet):
    """Stylize INPUTS (images, folders, videos) with MODEL (a file or a shipped style name) or --style-image."""
    model, inputs = _model_and_inputs(args, style_image)
    if model is not None:
        _refuse_any_style_options(click.get_current_context())
    keep_freed_memory()
    any_style = None
    if style_image:
        any_style = AnyStyle([str(p) for p in style_image], style_blend, strength, style_size, decoders, levels, method,
                             weights, decoder, detail, tones)
    with Bar(quiet) as bar:
        written = stylize_files(model, inputs, output, size=size, original_colors=original_colors,
                                batch_size=batch_size, device=device, precision=precision,
                                callback=lambda p: bar.show(p.stage, p.done, p.total,
                                                            "img" if p.stage == "images" else "frame"),
                                any_style=any_style, work_size=work_size)
    if not quiet:
        click.echo(f"wrote {len(written)} file(s) to {output}")


# fast apply's options that only --style-image reads (a trained MODEL paints its own style).
_ANY_STYLE_ONLY = ("style_blend", "strength", "style_size", "method", "decoder", "levels", "detail", "tones",
                   "decoders", "weights")


def _refuse_any_style_options(ctx: click.Context) -> None:
    given = [name for name in _ANY_STYLE_ONLY
             if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)]
    if given:
        raise StyleforgeError(f"--{given[0].replace('_', '-')} is for --style-image: a trained MODEL paints its own "
                              "style; leave it out")


def _model_and_inputs(args: tuple[Path, ...], style_images: tuple[Path, ...]) -> tuple[str | None, list[Path]]:
    """MODEL is the first argument unless --style-image is given; one-line errors for both or neither."""
    first = args[0]
    looks_like_model = first.suffix == MODEL_SUFFIX or (first.suffix == "" and not first.exists()
                                                         and first.name in available_models())
    if style_images:
        if looks_like_model:
            raise StyleforgeError(f"give a MODEL ({first}) or --style-image, not both")
        return None, list(args)
    if len(args) < 2 or first.is_dir() or first.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        raise StyleforgeError("give a MODEL (a style name or .pth file) or --style-image PAINTING, then the inputs")
    return str(first), list(args[1:])


@fast_group.command("train-decoders")
@data_option
@option("-o", "--output", required=True, type=click.Path(path_type=Path),
        help="Folder for the decoder files, the checkpoint and the loss CSV.")
@config_option(DecoderTrainConfig, "levels", "--levels", type=NAME_LIST, metavar="LEVEL,...",
               help=LEVELS_HELP)
@config_option(DecoderTrainConfig, "architecture", "--architecture", type=click.Choice(ARCHITECTURES),
               help="mirror: one decoder per level (a cascade); hourglass: one decoder from relu4_1 with skips "
                    "from relu3_1 and relu2_1.")
@config_option(DecoderTrainConfig, "width", "--width", type=POSITIVE, help="Decoder channels relative to VGG19's.")
@config_option(DecoderTrainConfig, "image_size", "--crop-size", type=COUNT, metavar="PX", old=("--image-size",),
               help=CROP_HELP)
@config_option(DecoderTrainConfig, "batch_size", "--batch-size", type=COUNT, help=BATCH_HELP)
@config_option(DecoderTrainConfig, "steps", "--steps", type=COUNT, metavar="STEPS", help="Optimizer steps.")
@config_option(DecoderTrainConfig, "lr", "--lr", type=POSITIVE, help="Learning rate.")
@config_option(DecoderTrainConfig, "lr_schedule", "--lr-schedule", type=click.Choice(LR_SCHEDULES),
               help=SCHEDULE_HELP)
@config_option(DecoderTrainConfig, "warmup_steps", "--warmup-steps", type=NON_NEGATIVE_INT, metavar="STEPS",
               help=WARMUP_HELP + " Without it a relu5_1 decoder's first layer dies.")
@config_option(DecoderTrainConfig, "style_weight", "--style-weight", type=NON_NEGATIVE,
               help="Style weight. Above 0: train the decoders to stylize, the batch's photos as each other's "
                    "styles, with this weight on the Gram loss at relu1_1..relu5_1.")
@config_option(DecoderTrainConfig, "hatching_weight", "--hatching-weight", type=NON_NEGATIVE, metavar="WEIGHT",
               help=HATCHING_HELP + " With --style-weight (the stylizing stage); 0: none.")
@config_option(DecoderTrainConfig, "laplacian_weight", "--laplacian-weight", type=NON_NEGATIVE, metavar="WEIGHT",
               help=LAPLACIAN_HELP + " With --style-weight (the stylizing stage); 0: none.")
@option("--init-decoder", type=click.Path(path_type=Path), metavar="FILE",
        help="Start from this decoder (a reconstruction run's): an hourglass decoder, or with --architecture "
             "mirror the decoder of the one level in --levels.")
@config_option(DecoderTrainConfig, "feature_weight", "--feature-weight", type=NON_NEGATIVE,
               help="Weight of the feature (perceptual) reconstruction term; the pixel term has weight 1.")
@weights_option
@training_run_options(DecoderTrainConfig, f"OUTPUT/{CHECKPOINT_NAME}")
@overwrite_option()
@runtime_options(DecoderTrainConfig)
@quiet_option
def train_decoders_cmd(data, output, levels, architecture, width, image_size, batch_size, steps, lr, lr_schedule,
                       warmup_steps, style_weight, hatching_weight, laplacian_weight, init_decoder, feature_weight,
                       weights, workers, checkpoint_every, resume, stop_at, fp32_model, overwrite, device, precision,
                       seed, quiet):
    """Train the decoders that --style-image uses, on photos alone: one per VGG19 level, or the hourglass."""
    cfg = DecoderTrainConfig(
        data=[str(d) for d in data], output=str(output), levels=levels, architecture=architecture, width=width,
        image_size=image_size, batch_size=batch_size, steps=steps, lr=lr, lr_schedule=lr_schedule,
        warmup_steps=warmup_steps, feature_weight=feature_weight, style_weight=style_weight,
        hatching_weight=hatching_weight, laplacian_weight=laplacian_weight,
        init_decoder=str(init_decoder) if init_decoder else None, weights=str(weights) if weights else None,
        seed=seed, device=device, precision=precision, workers=workers, checkpoint_every=checkpoint_every,
        stop_at=stop_at, resume=resume, half=not fp32_model, overwrite=overwrite)
    bar = Bar(quiet)

    def progress(p):
        if not bar.is_open:
            bar.write(p.note)
        bar.show("training", p.step, p.steps, "step", {"img/s": f"{p.images_per_s:.2f}",
                                                      **{k: f"{v:.3g}" for k, v in p.losses.items()}})

    with bar, distributed.session() as ctx:
        result = train_decoders(cfg, progress)
    if ctx.is_main and not quiet:
        click.echo(f"wrote {', '.join(str(p) for p in result.paths)} ({result.seconds:.0f} s)")


@fast_group.command("sheet")
@click.argument("photo", type=click.Path(path_type=Path))
@option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Image file to write.")
@option("--styles", type=NAME_LIST, metavar="NAME,...", show_default="every installed style",
        help="Model names or files.")
@config_option(style_sheet, "tile", "--size", type=COUNT, metavar="PX", help=f"{SIZE_HELP} Here each tile.")
@option("--columns", type=COUNT, show_default="a near-square grid", help="Tiles per row.")
@device_option(style_sheet)
@precision_option(style_sheet)
@quiet_option
def sheet_cmd(photo, output, styles, tile, columns, device, precision, quiet):
    """PHOTO through every installed style, labelled, in one picture: how to choose a style."""
    if output.resolve() == photo.resolve():
        raise StyleforgeError(f"-o {output} is the input photo: give another file name")
    image_format(output)
    check_writable(output)
    keep_freed_memory()
    bar = Bar(quiet)
    with bar:
        sheet = style_sheet(photo, styles, tile=tile, columns=columns, device=device, precision=precision,
                            callback=lambda p: bar.show("sheet", p.done, p.total, "style"))
    save_image(sheet, output)
    if not quiet:
        click.echo(f"wrote {output}")


@fast_group.command("export")
@click.argument("model")
@option("-o", "--output", required=True, type=click.Path(path_type=Path), help="ONNX file to write.")
@quiet_option
def export_cmd(model, output, quiet):
    """Export MODEL to ONNX (dynamic batch, height and width; input and output in [0, 1])."""
    check_writable(output)
    path = export_onnx(model, output)
    if not quiet:
        click.echo(f"wrote {path}")


@fast_group.command("models")
def models_cmd():
    """List the style models found in the weights folders."""
    found = available_models()
    if not found:
        click.echo("no style models found (looked in $STYLEFORGE_WEIGHTS and the project's weights/)")
    width = max((len(name) for name in found), default=0)
    for name, path in found.items():
        click.echo(f"{name:{width}s}  {path}")
