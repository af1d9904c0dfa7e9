"""``styleforge classify models`` and ``styleforge summary``."""

from __future__ import annotations

import click

from ..classify import MODELS, build_model, summarize
from ..classify.models import ACTIVATIONS
from ..errors import StyleforgeError
from .options import main_group


def parse_shape(text: str) -> tuple[int, int, int]:
    """``3x32x32`` -> (3, 32, 32)."""
    try:
        c, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise StyleforgeError(f"--input {text!r} is not CxHxW, e.g. 1x28x28 or 3x32x32") from None
    if c not in (1, 3) or h < 1 or w < 1:
        raise StyleforgeError(f"--input {text!r}: channels must be 1 or 3 and sizes positive")
    return c, h, w


@main_group.group("classify")
def classify_group() -> None:
    """CNN classifiers and transfer learning."""


@classify_group.command("models")
def models_cmd() -> None:
    """List the registered models."""
    for spec in MODELS.values():
        extra = " (--pretrained)" if spec.pretrained else ""
        click.echo(f"{spec.name:12s} {spec.description}{extra}")


@main_group.command("summary")
@click.argument("model")
@click.option("--input", "input_shape", default="3x32x32", show_default=True, help="Input shape CxHxW.")
@click.option("--classes", type=int, default=10, show_default=True, help="Number of classes.")
@click.option("--activation", type=click.Choice(list(ACTIVATIONS)), default="relu", show_default=True)
def summary_cmd(model: str, input_shape: str, classes: int, activation: str) -> None:
    """Per-layer output shapes and parameter counts of MODEL, and the totals."""
    shape = parse_shape(input_shape)
    net = build_model(model, shape, classes, activation)
    try:
        result = summarize(net, shape)
    except RuntimeError as exc:
        raise StyleforgeError(f"{model} cannot take a {input_shape} input ({str(exc).splitlines()[0][:100]}): "
                              "use a larger --input") from None
    click.echo(result.table())
