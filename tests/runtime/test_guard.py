import os
import signal
import subprocess
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from styleforge.runtime import guard
from styleforge.runtime.errors import StyleforgeError


class _Slow(Dataset):
    def __len__(self) -> int:
        return 1000

    def __getitem__(self, i: int) -> torch.Tensor:
        time.sleep(0.05)
        return torch.zeros(1)


class _Broken(_Slow):
    def __getitem__(self, i: int) -> torch.Tensor:
        raise OSError(f"cannot read photo {i}")


def _read_after_worker_gets(sig: int | None, dataset: Dataset) -> None:
    loader = DataLoader(dataset, batch_size=1, num_workers=1)
    with guard.worker_errors("reading the photos"):
        it = iter(loader)
        if sig is not None:
            next(it)
            # From another process, as a signal to the whole process group comes (a worker takes its
            # parent's SIGTERM as "exit quietly").
            subprocess.run(["kill", f"-{sig}", str(it._workers[0].pid)], check=True)
        for _ in it:
            pass


def test_a_worker_stopped_by_sigterm_stops_the_run_as_sigterm_does():
    with pytest.raises(guard.Terminated):  # not a data error, which would lose the resume hint
        _read_after_worker_gets(signal.SIGTERM, _Slow())


def test_a_worker_killed_otherwise_is_a_one_line_data_error():
    with pytest.raises(StyleforgeError, match=r"^reading the photos failed in a data-loading process .*"
                                              r"killed by signal: Killed.*try --workers 0"):
        _read_after_worker_gets(signal.SIGKILL, _Slow())


def test_a_worker_exception_keeps_its_last_line():
    with pytest.raises(StyleforgeError) as caught:
        _read_after_worker_gets(None, _Broken())
    assert "cannot read photo 0" in str(caught.value) and "\n" not in str(caught.value)


def test_interrupts_held_are_acted_on_at_release_as_their_handler_says():
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        held = guard.InterruptsHeld()
        os.kill(os.getpid(), signal.SIGTERM)  # noted, not acted on
        assert held.caught == [signal.SIGTERM]
        held.release()  # ignored before, ignored now; the handler is back
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        with guard.sigterm_as_interrupt():
            held = guard.InterruptsHeld()
            os.kill(os.getpid(), signal.SIGTERM)
            with pytest.raises(guard.Terminated):
                held.release()
    finally:
        signal.signal(signal.SIGTERM, previous)
