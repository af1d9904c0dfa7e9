"""The command group and option parsers shared by the commands."""

from __future__ import annotations

import sys

import click

from .. import __version__, guard
from ..errors import StyleforgeError
from ..guard import Terminated, number_problem, sigterm_as_interrupt
from .lazy import LazyGroup


class StyleforgeGroup(LazyGroup):
    """A group whose errors are one line on stderr: ``error: ...``, exit status 2.

    StyleforgeError (bad input the user can fix) and click's usage errors are printed
    without traceback; Ctrl-C and SIGTERM exit 130 and 143 (temporary files removed).
    Anything else is a bug and keeps its traceback.
    Commands load when first needed (:class:`~styleforge.cli.lazy.LazyGroup`).
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            with sigterm_as_interrupt():
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except StyleforgeError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(getattr(exc, "exit_code", 2))
        except (KeyboardInterrupt, click.exceptions.Abort) as exc:
            what = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
            click.echo(f"error: {what}; files written so far are complete", err=True)
            sys.exit(143 if isinstance(exc, Terminated) else 130)
        except click.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=StyleforgeGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="styleforge")
def main_group() -> None:
    """styleforge: neural style transfer and CNN transfer learning on PyTorch."""


class Number(click.ParamType):
    """A number in a range, never NaN or infinite: the one type every numeric option uses."""

    def __init__(self, kind: type = float, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
        self.kind, self.range = kind, (low, high, low_open, high_open)
        self.name = "integer" if kind is int else "number"

    def convert(self, value, param, ctx):
        if not isinstance(value, self.kind) or isinstance(value, bool):
            try:
                value = self.kind(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not {'a whole number' if self.kind is int else 'a number'}", param, ctx)
        problem = number_problem(value, *self.range)
        if problem:
            self.fail(problem, param, ctx)
        return value


POSITIVE = Number(float, **guard.POSITIVE)
NON_NEGATIVE = Number(float, **guard.NON_NEGATIVE)
FRACTION = Number(float, **guard.FRACTION)
PROBABILITY = Number(float, **guard.PROBABILITY)
COUNT = Number(int, **guard.COUNT)
NON_NEGATIVE_INT = Number(int, **guard.NON_NEGATIVE)
SEED = Number(int, **guard.SEED)


def parse_layer_weights(text: str, option: str) -> dict[str, float]:
    """``relu1_1,relu2_1:0.5`` -> {"relu1_1": 1.0, "relu2_1": 0.5}."""
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, weight = item.partition(":")
        try:
            out[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise click.BadParameter(f"{item!r} is not NAME or NAME:WEIGHT", param_hint=option) from None
    if not out:
        raise click.BadParameter("give at least one layer", param_hint=option)
    return out


def parse_numbers(text: str | None, option: str, kind=float, number: Number | None = None) -> list | None:
    """``0.01,0.1`` -> [0.01, 0.1]; each value checked against ``number`` (default: finite)."""
    if text is None:
        return None
    try:
        values = [kind(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers", param_hint=option) from None
    for v in values:
        problem = number_problem(v, *(number.range if number else (None, None, False, False)))
        if problem:
            raise click.BadParameter(problem, param_hint=option)
    return values


def runtime_options(f):
    """--device, --precision, --seed."""
    from ..device import PRECISIONS  # here, not at the top: styleforge.device imports torch

    f = click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed.")(f)
    f = click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                     help="Autocast precision; auto picks what is fast and safe on the device.")(f)
    f = click.option("--device", default="auto", show_default=True,
                     help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")(f)
    return f
