"""One writer per run directory or output file.

A lock is a file ``.styleforge.runtime.lock`` inside a run directory (or ``.NAME.lock`` beside an
output file) held with ``flock``: the kernel releases it when the process ends, however it
ends, so a killed run never leaves a stale lock behind. A second run into the same place
stops at once with one line naming the process that holds it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from . import guard
from .errors import StyleforgeError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    HAS_FLOCK = False
else:
    HAS_FLOCK = True

LOCK_NAME = ".styleforge.runtime.lock"


def lock_path(target: str | os.PathLike, folder: bool) -> Path:
    """Where the lock of a run directory (``folder``) or of an output file lives (beside it,
    or inside a folder that has no name to put beside, such as ``.`` or ``/``)."""
    target = Path(target).expanduser().resolve()
    return target / LOCK_NAME if folder or not target.name else target.with_name(f".{target.name}.lock")


def _open(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None


@contextlib.contextmanager
def hold(target: str | os.PathLike, folder: bool = True) -> Iterator[None]:
    """Hold the lock of ``target`` for the block; refuse with one line if another run holds it."""
    path = lock_path(target, folder)
    if not HAS_FLOCK:
        yield
        return
    fd, locked = None, False
    # Ctrl-C and SIGTERM are held back until the lock is taken and noted, so one cannot land between
    # creating the file and the ``finally`` that removes it (as in io.atomic_path).
    held = guard.InterruptsHeld()
    try:
        try:
            fd, path = _take(target, folder, path)
            locked = True
        finally:
            held.release()
        yield
    finally:
        if locked:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if fd is not None:
            os.close(fd)


def _take(target: str | os.PathLike, folder: bool, path: Path) -> tuple[int, Path]:
    """Open ``path`` (or, for a run directory in a read-only parent, a lock inside it) and lock it;
    the descriptor and the lock file. One line if another run holds it."""
    fd = _open(path)
    if fd is None and not folder and Path(target).is_dir():
        # An existing run directory in a read-only parent: lock it from inside instead.
        path = lock_path(target, folder=True)
        fd = _open(path)
    if fd is None:
        raise StyleforgeError(f"cannot create the lock file {path}: choose an output in a writable folder")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The holder before us may have removed the file between our open and flock.
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise BlockingIOError
    except (BlockingIOError, FileNotFoundError):
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise StyleforgeError(f"{target} is in use by another styleforge run (process {pid}): wait for it to "
                              "finish or choose another output") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd, path
