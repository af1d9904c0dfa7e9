"""``styleforge fast train|apply|train-decoders|sheet|export|models``: feed-forward style networks."""

from __future__ import annotations

from pathlib import Path

import click

from .. import distributed
from ..errors import StyleforgeError
from ..fast import ARCHS, FastTrainConfig, available_models, train_style
from ..fast.apply import VIDEO_SUFFIXES, stylize_files
from ..fast.decoder_train import DEFAULT_DECODER_STEPS, DecoderTrainConfig, train_decoders
from ..fast.export import export_onnx
from ..fast.model import MODEL_SUFFIX
from ..fast.sheet import DEFAULT_TILE, style_sheet
from ..fast.train import (
    DEFAULT_CONTENT_LAYERS,
    DEFAULT_STEPS,
    DEFAULT_STYLE_LAYERS,
    DEFAULT_STYLE_STRENGTH,
    LR_SCHEDULES,
)
from ..fast.universal import DEFAULT_STYLE_SIZE, LEVELS, METHODS, AnyStyle
from ..io import IMAGE_SUFFIXES, check_writable, image_format, save_image
from ..perceptual import STYLE_STRENGTH_HELP
from ..progress import Bar
from .options import (
    COUNT,
    FRACTION,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    main_group,
    parse_layer_weights,
    parse_numbers,
    runtime_options,
)


def _layers(d: dict) -> str:
    return ",".join(d)


@main_group.group("fast")
def fast_group() -> None:
    """Feed-forward style networks (Johnson et al.): train once, stylize in one pass."""


@fast_group.command("train")
@click.argument("style_image", type=click.Path(path_type=Path))
@click.option("--data", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Folder of training photos (searched recursively); repeat for several.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Model file to write (.pth).")
@click.option("--arch", type=click.Choice(list(ARCHS)), default="light", show_default=True,
              help="light: 0.26 M parameters, what the shipped styles use; johnson: the published 1.68 M network.")
@click.option("--image-size", type=COUNT, default=256, show_default=True, help="Training crop size, px.")
@click.option("--style-size", type=COUNT, default=512, show_default=True, help="Long side of the style image, px.")
@click.option("--batch-size", type=COUNT, default=4, show_default=True, help="Images per step (per process).")
@click.option("--steps", type=COUNT, help=f"Training steps (default {DEFAULT_STEPS}).")
@click.option("--epochs", type=POSITIVE, help="Passes over --data (instead of --steps).")
@click.option("--lr", type=POSITIVE, default=1e-3, show_default=True)
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default="cosine", show_default=True,
              help="cosine: decay to 5% of --lr by the last step; constant: the published recipe.")
@click.option("--style-strength", type=FRACTION, help=f"{STYLE_STRENGTH_HELP} Default {DEFAULT_STYLE_STRENGTH}.")
@click.option("--content-weight", type=NON_NEGATIVE)
@click.option("--style-weight", type=NON_NEGATIVE)
@click.option("--tv-weight", type=NON_NEGATIVE, default=1.0, show_default=True)
@click.option("--content-layers", default=_layers(DEFAULT_CONTENT_LAYERS), show_default=True)
@click.option("--style-layers", default=_layers(DEFAULT_STYLE_LAYERS), show_default=True)
@click.option("--weights", type=click.Path(path_type=Path), help="VGG19 weights file (skips the lookup).")
@click.option("--workers", type=NON_NEGATIVE_INT, help="Data-loading processes (default 1 on CPU, 2 on GPU).")
@click.option("--checkpoint-every", type=COUNT, default=500, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUTPUT.ckpt.")
@click.option("--stop-at", type=COUNT, help="Stop after this step, leaving OUTPUT.ckpt to --resume (splits a run).")
@click.option("--fp32-model", is_flag=True, help="Store the model in float32 (default float16).")
@click.option("--overwrite", is_flag=True, help="Replace an existing model (and its checkpoint) at OUTPUT.")
@runtime_options
@click.option("-q", "--quiet", is_flag=True)
def train_cmd(style_image, data, output, arch, image_size, style_size, batch_size, steps, epochs, lr, lr_schedule,
              style_strength, content_weight, style_weight, tv_weight, content_layers, style_layers, weights,
              workers, checkpoint_every, resume, stop_at, fp32_model, overwrite, device, precision, seed, quiet):
    """Train a style network for STYLE_IMAGE on the photos in --data."""
    cfg = FastTrainConfig(
        style=str(style_image), data=[str(d) for d in data], output=str(output), arch=arch, image_size=image_size,
        style_size=style_size, batch_size=batch_size, steps=steps, epochs=epochs, lr=lr, lr_schedule=lr_schedule,
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


@fast_group.command("apply")
@click.argument("args", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="[MODEL] INPUTS...")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Output image/video file (one input) or folder.")
@click.option("--style-image", multiple=True, type=click.Path(path_type=Path),
              help="Any image as the style, instead of MODEL (universal style transfer); repeat to blend several.")
@click.option("--style-blend", help="Weights of the --style-image files, e.g. 0.7,0.3 (default: equal).")
@click.option("--strength", type=FRACTION, default=1.0, show_default=True,
              help="With --style-image: 0 keeps the photo, 1 is full style (blend of the features).")
@click.option("--style-size", type=COUNT, default=DEFAULT_STYLE_SIZE, show_default=True,
              help="Long side of the style image, px.")
@click.option("--method", type=click.Choice(METHODS), default="wct", show_default=True,
              help="With --style-image: wct matches the style's feature covariance; adain only means and spreads.")
@click.option("--levels", help="With --style-image: decoder levels, e.g. relu4_1,relu1_1 (default: all found).")
@click.option("--decoders", type=click.Path(path_type=Path),
              help="Folder of decoder-reluK_1.pth files (default: the weights folders).")
@click.option("--weights", type=click.Path(path_type=Path), help="VGG19 weights file (skips the lookup).")
@click.option("--size", type=COUNT, help="Long side of the outputs, px (default: as the input).")
@click.option("--original-colors", is_flag=True, help="Keep the input's colours.")
@click.option("--batch-size", type=COUNT, default=4, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True)
@click.option("-q", "--quiet", is_flag=True)
def apply_cmd(args, output, style_image, style_blend, strength, style_size, method, levels, decoders, weights, size,
              original_colors, batch_size, device, precision, quiet):
    """Stylize INPUTS (images, folders, videos) with MODEL (a file or a shipped style name) or --style-image."""
    model, inputs = _model_and_inputs(args, style_image)
    any_style = None
    if style_image:
        any_style = AnyStyle([str(p) for p in style_image], parse_numbers(style_blend, "--style-blend"), strength,
                             style_size, decoders, _level_list(levels), method, weights)
    with Bar(quiet) as bar:
        written = stylize_files(model, inputs, output, size=size, original_colors=original_colors,
                                batch_size=batch_size, device=device, precision=precision,
                                callback=lambda p: bar.show(p.stage, p.done, p.total,
                                                            "img" if p.stage == "images" else "frame"),
                                any_style=any_style)
    if not quiet:
        click.echo(f"wrote {len(written)} file(s) to {output}")


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


def _level_list(text: str | None) -> list[str] | None:
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


@fast_group.command("train-decoders")
@click.option("--data", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Folder of training photos (searched recursively); repeat for several.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Folder for the decoder files, the checkpoint and the loss CSV.")
@click.option("--levels", default=",".join(LEVELS), show_default=True, help="VGG19 levels to train decoders for.")
@click.option("--width", type=POSITIVE, default=0.5, show_default=True, help="Decoder channels relative to VGG19's.")
@click.option("--image-size", type=COUNT, default=256, show_default=True, help="Training crop size, px.")
@click.option("--batch-size", type=COUNT, default=8, show_default=True, help="Images per step (per process).")
@click.option("--steps", type=COUNT, default=DEFAULT_DECODER_STEPS, show_default=True, help="Training steps.")
@click.option("--lr", type=POSITIVE, default=1e-3, show_default=True)
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default="cosine", show_default=True)
@click.option("--feature-weight", type=NON_NEGATIVE, default=1.0, show_default=True,
              help="Weight of the feature (perceptual) reconstruction term; the pixel term has weight 1.")
@click.option("--weights", type=click.Path(path_type=Path), help="VGG19 weights file (skips the lookup).")
@click.option("--workers", type=NON_NEGATIVE_INT, help="Data-loading processes (default 1 on CPU, 2 on GPU).")
@click.option("--checkpoint-every", type=COUNT, default=500, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUTPUT/decoders.ckpt.")
@click.option("--stop-at", type=COUNT, help="Stop after this step, leaving the checkpoint to --resume (splits a run).")
@click.option("--fp32-model", is_flag=True, help="Store the decoders in float32 (default float16).")
@runtime_options
@click.option("-q", "--quiet", is_flag=True)
def train_decoders_cmd(data, output, levels, width, image_size, batch_size, steps, lr, lr_schedule, feature_weight,
                       weights, workers, checkpoint_every, resume, stop_at, fp32_model, device, precision, seed,
                       quiet):
    """Train the decoders that --style-image uses: each inverts one VGG19 level, on photos alone."""
    cfg = DecoderTrainConfig(
        data=[str(d) for d in data], output=str(output), levels=_level_list(levels) or [], width=width,
        image_size=image_size, batch_size=batch_size, steps=steps, lr=lr, lr_schedule=lr_schedule,
        feature_weight=feature_weight, weights=str(weights) if weights else None, seed=seed, device=device,
        precision=precision, workers=workers, checkpoint_every=checkpoint_every, stop_at=stop_at, resume=resume,
        half=not fp32_model)
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
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Image file to write.")
@click.option("--styles", help="Comma-separated model names or files (default: every installed style).")
@click.option("--size", type=COUNT, default=DEFAULT_TILE, show_default=True, help="Long side of each tile, px.")
@click.option("--columns", type=COUNT, help="Tiles per row (default: a near-square grid).")
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True)
@click.option("-q", "--quiet", is_flag=True)
def sheet_cmd(photo, output, styles, size, columns, device, precision, quiet):
    """PHOTO through every installed style, labelled, in one picture: how to choose a style."""
    if output.resolve() == photo.resolve():
        raise StyleforgeError(f"-o {output} is the input photo: give another file name")
    image_format(output)
    check_writable(output)
    names = [s.strip() for s in styles.split(",") if s.strip()] if styles else None
    bar = Bar(quiet)
    with bar:
        sheet = style_sheet(photo, names, tile=size, columns=columns, device=device, precision=precision,
                            callback=lambda p: bar.show("sheet", p.done, p.total, "style"))
    save_image(sheet, output)
    if not quiet:
        click.echo(f"wrote {output}")


@fast_group.command("export")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="ONNX file to write.")
def export_cmd(model, output):
    """Export MODEL to ONNX (dynamic batch, height and width; input and output in [0, 1])."""
    check_writable(output)
    click.echo(f"wrote {export_onnx(model, output)}")


@fast_group.command("models")
def models_cmd():
    """List the style models found in the weights folders."""
    found = available_models()
    if not found:
        click.echo("no style models found (looked in $STYLEFORGE_WEIGHTS and the project's weights/)")
    for name, path in found.items():
        click.echo(f"{name:20s} {path}")
