"""The ``styleforge`` command line: thin wrappers that build configs and call the library."""

from __future__ import annotations

from .options import main_group
from . import classify as _classify, fast as _fast, stylize as _stylize, visualize as _visualize, weights as _weights  # noqa: F401  (register commands)


def main() -> None:
    """Console-script entry point."""
    main_group.main(prog_name="styleforge")
