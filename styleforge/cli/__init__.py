"""The ``styleforge`` command line: thin wrappers that build configs and call the library.

Each command module registers its commands on :data:`main_group` when imported; the group
imports a module only when one of its commands is run or asked for help (see
:class:`~styleforge.cli.options.StyleforgeGroup`), so ``styleforge --help`` stays fast.
"""

from __future__ import annotations

from .options import main_group

__all__ = ["main", "main_group"]


def main() -> None:
    """Console-script entry point."""
    main_group.main(prog_name="styleforge")
