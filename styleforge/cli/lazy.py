"""Commands that load on first use: ``styleforge --help`` and ``--version`` never import torch.

The command modules import the library, and with it torch (seconds). The group finds its
top-level commands by reading the modules of this package as text (the names in
``@main_group.command("NAME")`` / ``@main_group.group("NAME")`` and their functions'
docstrings), and imports a module only when one of its commands runs or shows its help.
A new command module needs no registration.
"""

from __future__ import annotations

import ast
import functools
import importlib
import pkgutil
from pathlib import Path

import click

GROUP_NAME = "main_group"


@functools.lru_cache(maxsize=1)
def top_level_commands() -> dict[str, tuple[str, str]]:
    """{command name: (module of this package, its function's docstring)}, from the source."""
    found: dict[str, tuple[str, str]] = {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef):
                for name in _registered_names(node):
                    found[name] = (path.stem, ast.get_docstring(node) or "")
    return found


def _registered_names(fn: ast.FunctionDef) -> list[str]:
    return [d.args[0].value for d in fn.decorator_list
            if isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr in ("command", "group")
            and isinstance(d.func.value, ast.Name) and d.func.value.id == GROUP_NAME
            and d.args and isinstance(d.args[0], ast.Constant) and isinstance(d.args[0].value, str)]


class LazyGroup(click.Group):
    """A click group whose commands load from :func:`top_level_commands` when first needed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        if not top_level_commands():  # installed without sources (.pyc only): import them all
            for module in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
                importlib.import_module(f"{__package__}.{module.name}")
        return sorted(set(self.commands) | set(top_level_commands()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in top_level_commands():
            importlib.import_module(f"{__package__}.{top_level_commands()[name][0]}")
        elif name not in self.commands:
            self.list_commands(ctx)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list with each one-line help, without importing unloaded commands."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            cmd = self.commands.get(name)
            if cmd is None:  # click's own shortening, as for a loaded command's docstring
                cmd = click.Command(name, help=top_level_commands()[name][1])
            help_text = cmd.get_short_help_str(limit)
            rows.append((name, help_text))
        with formatter.section("Commands"):
            formatter.write_dl(rows)
