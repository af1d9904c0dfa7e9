"""Figures without global state: matplotlib's object API, saved atomically.

No pyplot and no ``matplotlib.use``: a library must not switch the backend of a program
that imports it (a notebook, a GUI). Each figure gets its own Agg canvas instead.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Literal

from .io import atomic_path


def new_figure(figsize: tuple[float, float] | None = None,
               layout: Literal["constrained", "compressed", "tight"] | None = None, dpi: float | None = None):
    """A Figure with its own Agg canvas (never pyplot's). In a notebook it shows itself (``_repr_png_``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    class ShownFigure(Figure):
        def _repr_png_(self) -> bytes:
            buf = io.BytesIO()
            self.savefig(buf, format="png", dpi=90, bbox_inches="tight")
            return buf.getvalue()

    fig = ShownFigure(figsize=figsize, layout=layout, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None, dpi: float | None = None,
             **kwargs):
    """A new figure and its axes (as ``Figure.subplots`` returns them), drawn by its own Agg canvas."""
    fig = new_figure(figsize, dpi=dpi)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def colors() -> list[str]:
    """The colour cycle of the current matplotlib style."""
    from matplotlib import rcParams

    return rcParams["axes.prop_cycle"].by_key()["color"]


def save_figure(fig, path: str | os.PathLike, dpi: float = 110, tight: bool = True) -> Path:
    """Write ``fig`` atomically; the format follows the suffix (PNG by default).

    A title with characters the font lacks (a file name in Chinese) is drawn with boxes for them, without
    matplotlib's warning about each one reaching the terminal."""
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi,
                    bbox_inches="tight" if tight else None)
    return Path(path)
