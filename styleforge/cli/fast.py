"""``styleforge fast train|apply|export|models``: feed-forward style networks."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import StyleforgeError
from ..fast import ARCHS, FastTrainConfig, available_models, train_style
from ..fast.apply import stylize_files
from ..fast.export import export_onnx
from ..fast.sheet import DEFAULT_TILE, style_sheet
from ..fast.train import (
    DEFAULT_CONTENT_LAYERS,
    DEFAULT_STEPS,
    DEFAULT_STYLE_LAYERS,
    DEFAULT_STYLE_STRENGTH,
    LR_SCHEDULES,
)
from ..io import check_writable, image_format, save_image
from ..perceptual import STYLE_STRENGTH_HELP
from .options import (
    COUNT,
    FRACTION,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    main_group,
    parse_layer_weights,
    runtime_options,
)
from .progress import Bar


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
        if bar.bar is None:
            bar.write(p.note)
        bar.show("training", p.step, p.steps, "step", {
            "img/s": f"{p.images_per_s:.2f}", "content": f"{p.losses['content']:.3g}",
            "style": f"{p.losses['style']:.3g}", "skipped": str(p.skipped)})

    with bar:
        result = train_style(cfg, progress)
    if not quiet:
        note = f", skipped {len(result.skipped)} unreadable files" if result.skipped else ""
        click.echo(f"wrote {result.model_path} ({result.seconds:.0f} s{note})")


@fast_group.command("apply")
@click.argument("model")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Output image/video file (one input) or folder.")
@click.option("--size", type=COUNT, help="Long side of the outputs, px (default: as the input).")
@click.option("--original-colors", is_flag=True, help="Keep the input's colours.")
@click.option("--batch-size", type=COUNT, default=4, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True)
@click.option("-q", "--quiet", is_flag=True)
def apply_cmd(model, inputs, output, size, original_colors, batch_size, device, precision, quiet):
    """Stylize INPUTS (images, folders, videos) with MODEL (a file or a shipped style name)."""
    with Bar(quiet) as bar:
        written = stylize_files(model, inputs, output, size=size, original_colors=original_colors,
                                batch_size=batch_size, device=device, precision=precision,
                                callback=lambda p: bar.show(p.stage, p.done, p.total,
                                                            "img" if p.stage == "images" else "frame"))
    if not quiet:
        click.echo(f"wrote {len(written)} file(s) to {output}")


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
