"""``styleforge stylize``: optimization-based style transfer."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import StyleforgeError
from ..guard import Terminated, check_not_inputs
from ..io import check_writable, image_format, save_image, save_json
from ..perceptual import STYLE_STRENGTH_HELP
from ..progress import Bar
from ..transfer import DEFAULT_STYLE_STRENGTH, Progress, StylizeConfig, stylize
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


class _Bars(Bar):
    """Progress callbacks to one bar per scale (and optional snapshots)."""

    def __init__(self, quiet: bool, save_every: int, output: Path, inputs: list[Path]) -> None:
        super().__init__(quiet)
        self.save_every, self.output, self.inputs = save_every, output, inputs
        self.last: Progress | None = None

    def __call__(self, p: Progress) -> None:
        self.last = p  # p.image is a fresh tensor each step: keeping it costs no copy
        self.show(f"scale {p.scale + 1}/{p.n_scales} {p.size[1]}x{p.size[0]}", p.step, p.steps, "it",
                  {k: f"{v:.4g}" for k, v in p.losses.items()})
        if self.save_every and (p.step % self.save_every == 0 or p.step == p.steps):
            snap = self.output.with_name(f"{self.output.stem}.s{p.scale + 1}-{p.step:04d}{self.output.suffix}")
            save_image(p.image, snap)

    def keep_partial(self, exc: KeyboardInterrupt) -> StyleforgeError:
        """On Ctrl-C or SIGTERM: write the image so far, and say how to continue from it."""
        what = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
        err = StyleforgeError(f"{what} before the first step: nothing was written")
        if self.last is not None:
            p, path = self.last, partial_path(self.output, self.inputs)
            save_image(p.image, path)
            err = StyleforgeError(f"{what} at scale {p.scale + 1}/{p.n_scales}, step {p.step}/{p.steps}: the image so "
                                  f"far is in {path}; continue with --init {path}")
        err.exit_code = 143 if isinstance(exc, Terminated) else 130
        return err


def partial_path(output: Path, inputs: list[Path]) -> Path:
    """Where an interrupted run leaves its image: ``OUT.partial.png`` beside ``OUT.png``, or
    ``OUT.partial-2.png``, ... when that is this run's ``--init`` (never written over)."""
    taken = {p.resolve() for p in inputs}
    for n in range(1, 1000):
        path = output.with_name(f"{output.stem}.partial{'' if n == 1 else f'-{n}'}{output.suffix}")
        if path.resolve() not in taken:
            return path
    raise StyleforgeError("no free name for the partial image")


@main_group.command("stylize")
@click.argument("content", type=click.Path(path_type=Path))
@click.argument("styles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Output image (.png/.jpg). Default: CONTENT-STYLE.png here.")
@click.option("--size", type=COUNT, default=512, show_default=True, help="Long side of the output, px.")
@click.option("--style-strength", type=FRACTION,
              help=f"{STYLE_STRENGTH_HELP} Default {DEFAULT_STYLE_STRENGTH}.")
@click.option("--content-weight", type=NON_NEGATIVE, help="Content weight (instead of --style-strength).")
@click.option("--style-weight", type=NON_NEGATIVE, help="Style weight (instead of --style-strength).")
@click.option("--tv-weight", type=NON_NEGATIVE, default=1.0, show_default=True, help="Total-variation weight.")
@click.option("--content-layers", default="relu4_2", show_default=True,
              help="Content layers, NAME[:WEIGHT],...")
@click.option("--style-layers", default="relu1_1,relu2_1,relu3_1,relu4_1,relu5_1", show_default=True,
              help="Style layers, NAME[:WEIGHT],...")
@click.option("--style-blend", help="Weights of the style images, e.g. 0.7,0.3 (default: equal).")
@click.option("--style-scale", type=POSITIVE, default=1.0, show_default=True,
              help="Style image size relative to the output size.")
@click.option("--init", default="content", show_default=True, help="content, noise or an image FILE.")
@click.option("--optimizer", type=click.Choice(["lbfgs", "adam"]), default="lbfgs", show_default=True)
@click.option("--steps", help="Iterations per scale: N, or one value per scale (default 60,200 for lbfgs).")
@click.option("--pyramid-levels", type=NON_NEGATIVE_INT, default=4, show_default=True,
              help="Optimize the image as a pyramid of this many coarser layers plus pixels (0: pixels only).")
@click.option("--lr", type=POSITIVE, help="Learning rate (default: 1 for lbfgs, 0.02 for adam).")
@click.option("--scales", help="Long sides of the coarse-to-fine scales, e.g. 128,256,512.")
@click.option("--multiscale/--no-multiscale", default=True, show_default=True,
              help="Optimize coarse to fine (default: half size, then full size).")
@click.option("--original-colors", is_flag=True, help="Keep the content's colours (luminance-only transfer).")
@click.option("--pooling", type=click.Choice(["max", "avg"]), default="max", show_default=True)
@click.option("--arch", type=click.Choice(["vgg19", "vgg16"]), default="vgg19", show_default=True)
@click.option("--weights", type=click.Path(path_type=Path), help="Backbone weights file (skips the lookup).")
@runtime_options
@click.option("--save-every", type=NON_NEGATIVE_INT, default=0, help="Also write the image every N steps.")
@click.option("--log", "log_path", type=click.Path(path_type=Path),
              help="Write a JSON record (configuration and loss history).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def stylize_cmd(content, styles, output, size, style_strength, content_weight, style_weight, tv_weight,
                content_layers, style_layers, style_blend, style_scale, init, optimizer, steps, pyramid_levels, lr,
                scales, multiscale, original_colors, pooling, arch, weights, device, precision, seed,
                save_every, log_path, quiet):
    """Stylize CONTENT with one or more STYLE images (Gatys et al.)."""
    output = output or Path(f"{content.stem}-{styles[0].stem}.png")
    image_format(output)
    check_writable(output)
    if log_path is not None:
        check_writable(log_path)
    named = {"-o": output, **({"--log": log_path} if log_path else {})}
    inputs = {"the content image": content, **{f"the style image {s}": s for s in styles},
              **({"the --weights file": weights} if weights else {}),
              **({"the --init image": init} if init not in ("content", "noise") else {})}
    check_not_inputs(named, inputs)
    step_list = parse_numbers(steps, "--steps", int, NON_NEGATIVE_INT)
    cfg = StylizeConfig(
        size=size, style_strength=style_strength, content_weight=content_weight, style_weight=style_weight,
        tv_weight=tv_weight, content_layers=parse_layer_weights(content_layers, "--content-layers"),
        style_layers=parse_layer_weights(style_layers, "--style-layers"),
        style_blend=parse_numbers(style_blend, "--style-blend", float, NON_NEGATIVE), style_scale=style_scale,
        init=init,
        optimizer=optimizer, steps=step_list[0] if step_list and len(step_list) == 1 else step_list, lr=lr,
        pyramid_levels=pyramid_levels,
        multiscale=multiscale, scales=parse_numbers(scales, "--scales", int, COUNT), original_colors=original_colors,
        pooling=pooling, arch=arch, weights=str(weights) if weights else None, device=device,
        precision=precision, seed=seed)
    bars = _Bars(quiet, save_every, output, [Path(p) for p in inputs.values()])
    try:
        result = stylize(str(content), [str(s) for s in styles], cfg, callback=bars)
    except KeyboardInterrupt as exc:
        bars.close()
        raise bars.keep_partial(exc) from None
    finally:
        bars.close()
    save_image(result.image, output)
    if log_path is not None:
        save_json({"content": str(content), "styles": [str(s) for s in styles], "output": str(output),
                   "seconds": result.seconds, "config": result.config, "history": result.history}, log_path)
    if not quiet:
        last = result.history[-1] if result.history else {}
        click.echo(f"wrote {output} ({result.seconds:.1f} s, loss {last.get('total', float('nan')):.4g})")
