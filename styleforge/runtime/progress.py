"""The one progress-bar adapter: library callbacks in, one tqdm bar at a time out.

Every command's progress goes through :class:`Bar`; so does ``fit()``'s own display in a
notebook (``tqdm.auto``: a text bar in a terminal, a widget in Jupyter with ipywidgets).
"""

from __future__ import annotations

from typing import Mapping

from tqdm.auto import tqdm


class Bar:
    """A tqdm bar per stage: ``show`` with a new ``label`` closes the previous bar and opens one.

    A bar's clock starts when it opens, so a stage should report ``done=0`` when its work
    begins; ``done`` is the count so far (never an increment), which keeps the rate right
    however often, or in what batches, a stage reports. Quiet: shows nothing.
    """

    def __init__(self, quiet: bool = False, leave: bool = True) -> None:
        self.quiet, self.leave = quiet, leave
        self.label: str | None = None
        self.bar: tqdm | None = None

    @property
    def is_open(self) -> bool:
        return self.bar is not None

    def show(self, label: str, done: int, total: int | None, unit: str,
             postfix: Mapping[str, str] | None = None) -> None:
        if self.quiet:
            return
        if self.bar is None or label != self.label:
            self.close()
            self.label = label
            self.bar = tqdm(total=total, initial=done, unit=unit, desc=label, dynamic_ncols=True, leave=self.leave)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(done - self.bar.n)

    def write(self, message: str) -> None:
        """A line above the bar (nothing when quiet)."""
        if not self.quiet:
            tqdm.write(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.label = None

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
