"""The ``styleforge`` command line: thin wrappers that build configs and call the library."""

from __future__ import annotations

# Importing the command modules registers their commands on the group.
from . import classify as _classify  # noqa: F401
from . import fast as _fast  # noqa: F401
from . import stylize as _stylize  # noqa: F401
from . import visualize as _visualize  # noqa: F401
from . import weights as _weights  # noqa: F401
from .options import main_group


def main() -> None:
    """Console-script entry point."""
    main_group.main(prog_name="styleforge")
