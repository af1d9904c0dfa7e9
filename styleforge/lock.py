"""One writer per run directory or output file.

A lock is a file ``.styleforge.lock`` inside a run directory (or ``.NAME.lock`` beside an
output file) held with ``flock``: the kernel releases it when the process ends, however it
ends, so a killed run never leaves a stale lock behind. A second run into the same place
stops at once with one line naming the process that holds it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from .errors import StyleforgeError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

LOCK_NAME = ".styleforge.lock"


def lock_path(target: str | os.PathLike, folder: bool) -> Path:
    """Where the lock of a run directory (``folder``) or of an output file lives."""
    target = Path(target)
    return target / LOCK_NAME if folder else target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def hold(target: str | os.PathLike, folder: bool = True) -> Iterator[None]:
    """Hold the lock of ``target`` for the block; refuse with one line if another run holds it."""
    path = lock_path(target, folder)
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StyleforgeError(f"cannot create the lock file {path} ({exc.strerror}): choose a writable output") \
            from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The holder before us may have removed the file between our open and flock.
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError):
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise StyleforgeError(f"{target} is in use by another styleforge run (process {pid}): wait for it to "
                                  "finish or choose another output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
    finally:
        os.close(fd)
