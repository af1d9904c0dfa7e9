"""styleforge: neural style transfer and transfer learning on PyTorch.

The public names below are imported on first use (PEP 562), so importing the package, and
the command line's ``--help`` and ``--version``, do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one place it is written: pyproject.toml reads it

# public name -> the module that defines it
_EXPORTS = {
    "StyleforgeError": "runtime.errors",
    "Progress": "style.gatys",
    "StylizeConfig": "style.gatys",
    "StylizeResult": "style.gatys",
    "stylize": "style.gatys",
}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from .runtime.errors import StyleforgeError  # noqa: F401  (for type checkers: the names __getattr__ serves)
    from .style.gatys import Progress, StylizeConfig, StylizeResult, stylize  # noqa: F401


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
