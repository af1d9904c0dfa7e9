"""``styleforge visualize filters|activations|layers``: looking inside a classifier."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import StyleforgeError
from .classify import parse_shape
from .options import COUNT, NON_NEGATIVE_INT, main_group, parse_numbers


@main_group.group("visualize")
def visualize_group() -> None:
    """Filters and activation maps of a model (registered name) or trained checkpoint."""


def _model_args(f):
    opts = [
        click.argument("model_or_checkpoint"),
        click.option("--input", "input_shape", help="Input shape CxHxW for a model name (default 3x224x224 for "
                     "pretrained models, 3x32x32 otherwise; a checkpoint knows its own)."),
        click.option("--classes", "num_classes", type=COUNT, default=10, show_default=True,
                     help="Number of classes (model names only; the head is not shown)."),
        click.option("--weights", type=click.Path(path_type=Path), help="Backbone weights file (vgg19, resnet18)."),
        click.option("--random-init", is_flag=True, help="Random weights instead of ImageNet weights."),
        click.option("--device", default="cpu", show_default=True),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _load(model_or_checkpoint, input_shape, num_classes, weights, random_init):
    from ..classify.visualize import load_model

    shape = parse_shape(input_shape) if input_shape else None
    return load_model(model_or_checkpoint, shape, num_classes, pretrained=not random_init,
                      weights=str(weights) if weights else None)


def _indices(text):
    values = parse_numbers(text, "--indices", int, NON_NEGATIVE_INT)
    if values is not None and not values:
        raise StyleforgeError("--indices is empty")
    return values


@visualize_group.command("filters")
@_model_args
@click.option("--image", required=True, type=click.Path(path_type=Path), help="Image to compute activations on.")
@click.option("--layer", default="conv1", show_default=True, help="A first conv layer (1 or 3 input channels).")
@click.option("--indices", help="Filters to show, e.g. 14,26,32,49,52 (default: the first --count).")
@click.option("--count", type=COUNT, default=8, show_default=True)
@click.option("--size", type=COUNT, help="Resize the image's shorter side to SIZE, keeping its shape "
                                      "(default: the model's input size).")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output PNG.")
def filters_cmd(model_or_checkpoint, input_shape, num_classes, weights, random_init, device, image, layer, indices,
                count, size, output):
    """Each chosen first-layer filter, as a picture, above its activation map on IMAGE."""
    from ..classify.report import check_figure_path, save_figure
    from ..classify.visualize import filters_figure

    check_figure_path(output)
    loaded = _load(model_or_checkpoint, input_shape, num_classes, weights, random_init)
    path = save_figure(filters_figure(loaded, image, layer, _indices(indices), count, size, device), output)
    click.echo(f"wrote {path}")


@visualize_group.command("activations")
@_model_args
@click.option("--image", required=True, type=click.Path(path_type=Path))
@click.option("--layer", required=True, help="Any named layer (see 'styleforge visualize layers').")
@click.option("--count", type=COUNT, default=10, show_default=True, help="Show the first COUNT channels.")
@click.option("--indices", help="Channels to show instead of the first --count.")
@click.option("--size", type=COUNT, help="Resize the image's shorter side to SIZE, keeping its shape "
                                      "(default: the model's input size).")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output PNG.")
def activations_cmd(model_or_checkpoint, input_shape, num_classes, weights, random_init, device, image, layer, count,
                    indices, size, output):
    """Activation maps of the first COUNT channels of a named layer on IMAGE."""
    from ..classify.report import check_figure_path, save_figure
    from ..classify.visualize import activations_figure

    check_figure_path(output)
    loaded = _load(model_or_checkpoint, input_shape, num_classes, weights, random_init)
    fig, shape = activations_figure(loaded, image, layer, count, _indices(indices), size, device)
    path = save_figure(fig, output)
    click.echo(f"wrote {path} ({layer} output {'x'.join(map(str, shape))})")


@visualize_group.command("layers")
@_model_args
def layers_cmd(model_or_checkpoint, input_shape, num_classes, weights, random_init, device):
    """List the layer names --layer accepts, with each layer's type."""
    from ..classify.visualize import layer_table

    loaded = _load(model_or_checkpoint, input_shape, num_classes, weights, random_init)
    for name, module in layer_table(loaded.model).items():
        click.echo(f"{name:36s} {type(module).__name__}")
