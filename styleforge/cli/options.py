"""The command group, option types, and the options several commands share, with their defaults read
from the library (each written once) and old spellings kept working."""

from __future__ import annotations

import dataclasses
import errno
import inspect
import sys
from pathlib import Path
from typing import Mapping

import click
from click.core import ParameterSource

from .. import __version__
from ..runtime import guard
from ..runtime.errors import StyleforgeError
from ..runtime.guard import Terminated, number_problem, number_text, sigterm_as_interrupt
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
            sys.exit(exc.exit_code)
        except (KeyboardInterrupt, click.exceptions.Abort) as exc:
            what = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
            click.echo(f"error: {what}; files written so far are complete", err=True)
            sys.exit(143 if isinstance(exc, Terminated) else 130)
        except OSError as exc:
            # A name over the file system's limit (255 bytes) fails in any path check, ours or the OS's.
            if exc.errno != errno.ENAMETOOLONG:
                raise
            name = max(Path(str(exc.filename or "")).parts or ("",), key=len)  # the part over the limit
            click.echo(f"error: the file name {name[:40]}... is too long (over 255 bytes): use a shorter one",
                       err=True)
            sys.exit(2)
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
    items = [s.strip() for s in text.split(",")]
    if not any(items):
        raise click.BadParameter("give at least one layer", param_hint=option)
    if not all(items):
        raise click.BadParameter(f"{text!r} has an empty item; separate the layers by single commas",
                                 param_hint=option)
    for item in items:
        name, _, weight = item.partition(":")
        if name.strip() in out:
            raise click.BadParameter(f"{name.strip()} is named twice: give each layer once", param_hint=option)
        try:
            out[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise click.BadParameter(f"{item!r} is not NAME or NAME:WEIGHT", param_hint=option) from None
    return out


class CommaList(click.ParamType):
    """``0.01,0.1`` -> [0.01, 0.1]: several values of one option, each checked as ``inner`` checks one."""

    def __init__(self, inner: click.ParamType, distinct: bool = False) -> None:
        self.inner, self.distinct = inner, distinct  # distinct: a value given twice is refused
        self.name = f"{inner.name} list"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        items = [s.strip() for s in str(value).split(",")]
        if not any(items):
            self.fail(f"{value!r} holds no value; give one or more, comma-separated", param, ctx)
        if not all(items):
            self.fail(f"{value!r} has an empty item; separate the values by single commas", param, ctx)
        values = [self.inner.convert(item, param, ctx) for item in items]
        twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if self.distinct and twice is not None:
            self.fail(f"{twice} is given twice: give each value once", param, ctx)
        return values


NAME_LIST = CommaList(click.STRING, distinct=True)  # levels, styles: each named once


# ----------------------------------------------------------------- defaults from the library

# Help texts of options several commands share, with their meaning in the first sentence.
SIZE_HELP = "Long side of each output image, px."
BLEND_HELP = "Weights of the style images, e.g. 0.7,0.3 (normalized to sum to 1)."
STYLE_SIZE_HELP = "Long side of the style image, px."
CROP_HELP = "Side of the square training crops, px."
BATCH_HELP = "Images per batch (per process under torchrun)."
ORIGINAL_COLORS_HELP = "Keep the content's colours (luminance-only transfer)."


def default_of(source, name: str):
    """The default of field ``name`` of a config dataclass, or of parameter ``name`` of a library
    function: the one place each default is written (options read it from there)."""
    if dataclasses.is_dataclass(source):
        f = {f.name: f for f in dataclasses.fields(source)}[name]
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        return None if f.default is dataclasses.MISSING else f.default
    default = inspect.signature(source).parameters[name].default
    return None if default is inspect.Parameter.empty else default


def as_text(value) -> str:
    """A default as the user would type it: ``relu1_1,relu2_1:0.5``, ``0.001``, ``vgg19``."""
    if isinstance(value, Mapping):
        return ",".join(k if w == 1 else f"{k}:{w:g}" for k, w in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(as_text(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def config_option(source, name: str, *decls: str, **kw):
    """An option whose default is ``source``'s default for ``name`` (see :func:`default_of`).

    Lists and layer mappings become the text the option parses; the default shows in --help.
    """
    default = default_of(source, name)
    if isinstance(default, (Mapping, list, tuple)):
        default = as_text(default)
    kw.setdefault("show_default", default is not None)
    return option(*decls, name, default=default, **kw)


class _Option(click.Option):
    """``click.Option`` that shows a float default as users type it (:func:`number_text`), and a
    described default (``show_default="the input's"``) as written, where click adds parentheses."""

    def get_help_extra(self, ctx: click.Context):
        extra = super().get_help_extra(ctx)
        if "default" not in extra:
            return extra
        if isinstance(self.show_default, str):
            extra["default"] = self.show_default
        elif isinstance(self.default, float):
            extra["default"] = number_text(self.default)
        return extra


# ------------------------------------------------------------------------ renamed options

_OLD = "styleforge.old_spellings"


def option(*decls: str, old: tuple[str, ...] = (), **kw):
    """``click.option`` that also accepts the ``old`` spellings, hidden from --help: each still
    works, printing one line on stderr that names the new spelling."""
    def decorate(f):
        f = click.option(*decls, cls=_Option, **({"callback": _take_old_value} if old else {}), **kw)(f)
        new = next(d for d in decls if d.startswith("--"))
        dest = f.__click_params__[-1].name
        for spelling in old:
            f = click.option(spelling, f"{dest}__{spelling.strip('-').replace('-', '_')}", type=kw.get("type"),
                             multiple=kw.get("multiple", False), is_flag=kw.get("is_flag", False), hidden=True,
                             expose_value=False, callback=_keep_old_value(spelling, new, dest),
                             help=f"Old spelling of {new}.")(f)
        return f
    return decorate


def _keep_old_value(spelling: str, new: str, dest: str):
    def callback(ctx: click.Context, param: click.Parameter, value):
        if ctx.get_parameter_source(param.name) in (None, ParameterSource.DEFAULT) or value is None:
            return value
        click.echo(f"warning: {spelling} is now {new}; the old name will go in a later version", err=True)
        if ctx.get_parameter_source(dest) not in (None, ParameterSource.DEFAULT):
            raise click.UsageError(f"give {new} or its old spelling {spelling}, not both", ctx)
        ctx.meta.setdefault(_OLD, {})[dest] = value
        if dest in ctx.params:  # the new option was processed first (Click orders by the command line)
            ctx.params[dest] = value
        return value
    return callback


def _take_old_value(ctx: click.Context, param: click.Parameter, value):
    if param.name not in ctx.meta.get(_OLD, {}):
        return value
    if ctx.get_parameter_source(param.name) not in (None, ParameterSource.DEFAULT):
        raise click.UsageError(f"give {param.opts[0]} or its old spelling, not both", ctx)
    return ctx.meta[_OLD][param.name]


# ------------------------------------------------------------- options every command shares

def stack(*options):
    """One decorator applying ``options`` in the order given (as listed in --help)."""
    def decorate(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return decorate


def device_option(source):
    return config_option(source, "device", "--device", metavar="DEVICE",
                         help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")


def precision_option(source):
    from ..runtime.device import PRECISIONS

    return config_option(source, "precision", "--precision", type=click.Choice(PRECISIONS),
                         help="Autocast precision; auto picks what is fast and safe on the device.")


def seed_option(source, what: str = "Random seed (weights, data order, augmentation, noise).", name="seed"):
    return config_option(source, name, "--" + name.replace("_", "-"), type=SEED, help=what)


def runtime_options(source):
    """--device, --precision, --seed, with ``source``'s defaults (a config class or library function)."""
    return stack(device_option(source), precision_option(source), seed_option(source))


def weights_option(f):
    return option("--weights", type=click.Path(path_type=Path), metavar="FILE",
                  help="Pretrained backbone weights file (skips the lookup: see 'styleforge weights').")(f)


def quiet_option(f):
    return option("-q", "--quiet", is_flag=True, help="No progress bars or status lines (errors still print).")(f)


def style_loss_options(source):
    """--style-strength, --content-weight, --style-weight, --tv-weight, --content-layers, --style-layers:
    the perceptual loss of ``stylize`` and ``fast train``, defaults from ``source`` (a config class)."""
    from ..style.perceptual import DEFAULT_STYLE_STRENGTH, STYLE_STRENGTH_HELP

    opts = [
        option("--style-strength", type=FRACTION,
               show_default=f"{getattr(source, 'default_style_strength', DEFAULT_STYLE_STRENGTH):g}",
               help=STYLE_STRENGTH_HELP),
        option("--content-weight", type=NON_NEGATIVE, help="Content weight (instead of --style-strength)."),
        option("--style-weight", type=NON_NEGATIVE,
               help="Style weight. Sets the balance instead of --style-strength."),
        config_option(source, "tv_weight", "--tv-weight", type=NON_NEGATIVE, help="Total-variation weight."),
        config_option(source, "content_layers", "--content-layers", metavar="NAME[:WEIGHT],...",
                      help="Content layers of VGG, each with an optional weight."),
        config_option(source, "style_layers", "--style-layers", metavar="NAME[:WEIGHT],...",
                      help="Style layers of VGG, each with an optional weight."),
    ]
    return stack(*opts)


def overwrite_option():
    """--overwrite of every command that writes a run."""
    return option("--overwrite", is_flag=True,
                  help="Replace what an earlier run wrote at OUTPUT (only files styleforge wrote).")


def resume_option(where: str):
    """--resume of every command that writes a run; ``where`` says what it continues from."""
    return option("--resume", is_flag=True, help=f"Continue the interrupted run from its checkpoint. Here {where}.")


def training_run_options(source, checkpoint: str):
    """--workers, --checkpoint-steps, --resume, --stop-at, --fp32-model of the fast-style trainers;
    ``checkpoint`` names the file --resume reads."""
    opts = [
        option("--workers", type=NON_NEGATIVE_INT, show_default="1 on CPU, 2 on GPU",
               help="Data-loading processes."),
        config_option(source, "checkpoint_every", "--checkpoint-steps", type=COUNT,
                      metavar="STEPS", old=("--checkpoint-every",),
                      help="Write the checkpoint every this many steps (and at the end)."),
        resume_option(checkpoint),
        option("--stop-at", type=COUNT, metavar="STEP",
               help="Stop after this step, leaving the checkpoint to --resume (splits a run)."),
        option("--fp32-model", is_flag=True, help="Store the trained weights in float32 instead of float16."),
    ]
    return stack(*opts)
