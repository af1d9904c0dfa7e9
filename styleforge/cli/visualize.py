"""``styleforge visualize filters|activations|layers``: looking inside a classifier."""

from __future__ import annotations

from pathlib import Path

import click

from ..classify.summary import DEFAULT_SHAPE
from ..classify.visualize import PRETRAINED_SHAPE, activations_figure, filters_figure, load_model
from ..runtime.guard import check_not_inputs
from .classify import INPUT_HELP, as_text_shape, num_classes_option, parse_shape
from .options import (
    COUNT,
    NON_NEGATIVE_INT,
    CommaList,
    config_option,
    device_option,
    main_group,
    option,
    quiet_option,
    stack,
    weights_option,
)


@main_group.group("visualize")
def visualize_group() -> None:
    """Filters and activation maps of a model (registered name) or trained checkpoint."""


def _model_args(f):
    return stack(
        click.argument("model_or_checkpoint"),
        option("--input", "input_shape", metavar="CxHxW", help=INPUT_HELP,
               show_default=f"{as_text_shape(PRETRAINED_SHAPE)} for pretrained models, "
                            f"{as_text_shape(DEFAULT_SHAPE)} otherwise"),
        num_classes_option(load_model),
        weights_option,
        option("--random-init", is_flag=True, help="Random weights instead of ImageNet weights."),
        device_option(filters_figure))(f)


def _load(model_or_checkpoint, input_shape, num_classes, weights, random_init):
    shape = parse_shape(input_shape) if input_shape else None
    return load_model(model_or_checkpoint, shape, num_classes, pretrained=not random_init,
                      weights=str(weights) if weights else None)


def _check_output(output: Path, image: Path) -> None:
    """Before any work: the figure's path can be written, in a figure format (so never the checkpoint), and is not
    the image."""
    from ..classify.report import check_figure_path

    check_figure_path(output)
    check_not_inputs({"-o": output}, {"the --image": image})


LAYER_HELP = "A layer name (see 'styleforge visualize layers')."
image_option = option("--image", required=True, type=click.Path(path_type=Path),
                      help="The image the activations are computed on.")
indices_option = option("--indices", type=CommaList(NON_NEGATIVE_INT, distinct=True), metavar="I,I,...",
                        show_default="the first --count", help="Which ones to show, e.g. 14,26,32,49,52.")
short_side_option = option("--short-side", type=COUNT, metavar="PX", old=("--size",),
                           show_default="the model's input size",
                           help="Resize the image's shorter side to this, keeping its shape.")


@visualize_group.command("filters")
@_model_args
@image_option
@config_option(filters_figure, "layer", "--layer",
               help=f"{LAYER_HELP} Here a first conv layer (1 or 3 input channels).")
@indices_option
@config_option(filters_figure, "count", "--count", type=COUNT, help="How many to show. Here filters.")
@short_side_option
@option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output PNG.")
@quiet_option
def filters_cmd(model_or_checkpoint, input_shape, num_classes, weights, random_init, device, image, layer, indices,
                count, short_side, output, quiet):
    """Each chosen first-layer filter, as a picture, above its activation map on IMAGE."""
    from ..classify.report import save_figure

    _check_output(output, image)
    loaded = _load(model_or_checkpoint, input_shape, num_classes, weights, random_init)
    path = save_figure(filters_figure(loaded, image, layer, indices, count, short_side, device), output)
    if not quiet:
        click.echo(f"wrote {path}")


@visualize_group.command("activations")
@_model_args
@image_option
@option("--layer", required=True, help=f"{LAYER_HELP} Here any layer.")
@config_option(activations_figure, "count", "--count", type=COUNT, help="How many to show. Here channels.")
@indices_option
@short_side_option
@option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output PNG.")
@quiet_option
def activations_cmd(model_or_checkpoint, input_shape, num_classes, weights, random_init, device, image, layer, count,
                    indices, short_side, output, quiet):
    """Activation maps of the first COUNT channels of a named layer on IMAGE."""
    from ..classify.report import save_figure

    _check_output(output, image)
    loaded = _load(model_or_checkpoint, input_shape, num_classes, weights, random_init)
    fig, shape = activations_figure(loaded, image, layer, count, indices, short_side, device)
    path = save_figure(fig, output)
    if not quiet:
        click.echo(f"wrote {path} ({layer} output {'x'.join(map(str, shape))})")


@visualize_group.command("layers")
@_model_args
def layers_cmd(model_or_checkpoint, input_shape, num_classes, weights, random_init, device):
    """List the layer names --layer accepts, with each layer's type."""
    from ..classify.visualize import layer_table

    loaded = _load(model_or_checkpoint, input_shape, num_classes, weights, random_init)
    for name, module in layer_table(loaded.model).items():
        click.echo(f"{name:36s} {type(module).__name__}")
