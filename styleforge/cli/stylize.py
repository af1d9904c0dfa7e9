"""``styleforge stylize``: optimization-based style transfer."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import click

from ..runtime.errors import StyleforgeError
from ..runtime.guard import Terminated, check_not_inputs
from ..runtime.io import check_writable, image_format, save_image, save_json
from ..runtime.progress import Bar
from ..style.gatys import DEFAULT_LR, DEFAULT_STEPS, MIN_COARSE_SIZE, OPTIMIZERS, Progress, StylizeConfig, stylize
from .options import (
    BLEND_HELP,
    COUNT,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    ORIGINAL_COLORS_HELP,
    POSITIVE,
    SIZE_HELP,
    CommaList,
    config_option,
    main_group,
    option,
    parse_layer_weights,
    quiet_option,
    runtime_options,
    style_loss_options,
    weights_option,
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
            save_image(p.image, snapshot_path(self.output, p.scale + 1, p.step))

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


def snapshot_path(output: Path, scale: int, step: int) -> Path:
    """``--save-every``'s image of a scale's step: ``OUT.s1-0050.png`` beside ``OUT.png``."""
    return output.with_name(f"{output.stem}.s{scale}-{step:04d}{output.suffix}")


def check_snapshots(output: Path, inputs: Mapping[str, str | Path]) -> None:
    """Refuse an -o whose --save-every images would take the name of an input."""
    pattern = re.compile(re.escape(output.stem) + r"\.s[0-9]+-[0-9]{4,}" + re.escape(output.suffix))
    folder = output.expanduser().resolve().parent
    for path in inputs.values():
        p = Path(path).expanduser().resolve()
        if p.parent == folder and pattern.fullmatch(p.name):
            raise StyleforgeError(f"--save-every's images beside -o {output} would take the name of an input, "
                                  f"{path}: styleforge never writes over an input; choose another -o")


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
@option("-o", "--output", type=click.Path(path_type=Path), show_default="CONTENT-STYLE.png here",
        help="Output image (.png/.jpg).")
@config_option(StylizeConfig, "size", "--size", type=COUNT, metavar="PX", help=SIZE_HELP)
@style_loss_options(StylizeConfig)
@option("--style-blend", type=CommaList(NON_NEGATIVE), metavar="W,W,...", show_default="equal",
        help=BLEND_HELP)
@config_option(StylizeConfig, "style_scale", "--style-scale", type=POSITIVE,
               help="Style image size relative to the output size.")
@config_option(StylizeConfig, "init", "--init", metavar="content|noise|FILE",
               help="The starting image: the content, noise or an image file of the content's shape (such as "
                    "OUT.partial.png).")
@config_option(StylizeConfig, "optimizer", "--optimizer", type=click.Choice(OPTIMIZERS), help="Optimizer.")
@option("--steps", type=CommaList(NON_NEGATIVE_INT), metavar="STEPS",
        show_default=", ".join(f"{','.join(map(str, v))} for {k}" for k, v in DEFAULT_STEPS.items()),
        help="Optimizer steps. Here per scale: N for every scale, or one value per scale.")
@config_option(StylizeConfig, "pyramid_levels", "--pyramid-levels", type=NON_NEGATIVE_INT,
               help="Optimize the image as a pyramid of this many coarser layers plus pixels (0: pixels only).")
@option("--lr", type=POSITIVE, show_default=", ".join(f"{v:g} for {k}" for k, v in DEFAULT_LR.items()),
        help="Learning rate.")
@option("--scales", type=CommaList(COUNT), metavar="PX,PX,...",
        show_default=f"half size, then --size; one scale under {2 * MIN_COARSE_SIZE} px",
        help="Long sides of the coarse-to-fine scales, e.g. 128,256,512.")
@config_option(StylizeConfig, "multiscale", "--multiscale/--no-multiscale",
               help="Optimize coarse to fine (off: at --size only).")
@option("--original-colors", is_flag=True, help=ORIGINAL_COLORS_HELP)
@config_option(StylizeConfig, "pooling", "--pooling", type=click.Choice(["max", "avg"]),
               help="Pooling layers of VGG.")
@config_option(StylizeConfig, "backbone", "--backbone", type=click.Choice(["vgg19", "vgg16"]), old=("--arch",),
               help="The pretrained network whose features define the loss.")
@weights_option
@runtime_options(StylizeConfig)
@option("--save-every", type=NON_NEGATIVE_INT, metavar="STEPS", default=0, show_default=True,
        help="Also write the image every this many steps (0: never).")
@option("--log", "log_path", type=click.Path(path_type=Path),
        help="Write a JSON record (configuration and loss history).")
@quiet_option
def stylize_cmd(content, styles, output, size, style_strength, content_weight, style_weight, tv_weight,
                content_layers, style_layers, style_blend, style_scale, init, optimizer, steps, pyramid_levels, lr,
                scales, multiscale, original_colors, pooling, backbone, weights, device, precision, seed,
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
    if save_every:
        check_snapshots(output, inputs)
    cfg = StylizeConfig(
        size=size, style_strength=style_strength, content_weight=content_weight, style_weight=style_weight,
        tv_weight=tv_weight, content_layers=parse_layer_weights(content_layers, "--content-layers"),
        style_layers=parse_layer_weights(style_layers, "--style-layers"), style_blend=style_blend,
        style_scale=style_scale, init=init, optimizer=optimizer, steps=steps[0] if steps and len(steps) == 1 else steps,
        lr=lr, pyramid_levels=pyramid_levels, multiscale=multiscale, scales=scales, original_colors=original_colors,
        pooling=pooling, backbone=backbone, weights=str(weights) if weights else None, device=device,
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
