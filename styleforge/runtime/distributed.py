"""Multi-process training on PyTorch's own engine (torchrun + DistributedDataParallel).

The caller owns the process group: the CLI's training commands run the library inside
``with session() as ctx:``. Launched plainly, a session is a single-process context and
nothing changes; launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous variables) it joins the process group (``nccl`` on CUDA,
``gloo`` on CPU) and leaves it on the way out. The training loops ask :func:`current`
which process they are, who writes files (:attr:`Dist.is_main`) and how to combine metrics;
called from Python without torchrun they need no session at all.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import importlib
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist

from . import guard
from .errors import StyleforgeError, first_line
from .guard import Terminated  # SIGTERM: torchrun stops the surviving processes this way when one fails

# A rank that stops answering makes the others fail after this long instead of hanging.
TIMEOUT = datetime.timedelta(minutes=float(os.environ.get("STYLEFORGE_DIST_TIMEOUT_MIN", "10")))


@dataclass(frozen=True)
class Dist:
    """Where this process sits in the job. ``world_size == 1`` means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics, plots and reports and shows progress."""
        return self.rank == 0

    def device_spec(self, requested: str) -> str:
        """One process per device: under torchrun, ``auto``/``cuda`` become ``cuda:LOCAL_RANK``."""
        if not self.enabled:
            return requested
        req = str(requested).lower()
        if req in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        if req == "auto":
            return "cpu"
        return requested

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: list[float] | torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (float64 on CPU, so counts stay exact)."""
        t = torch.as_tensor(values, dtype=torch.float64).detach().cpu().clone()
        if self.enabled:
            t = _to_comm_device(t)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t = t.cpu()
        return t

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's value of ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_ok(self, ok: bool) -> bool:
        """True only if ``ok`` holds on every rank (for decisions all ranks must share)."""
        return bool(self.sum([0.0 if ok else 1.0])[0] == 0)


def _to_comm_device(t: torch.Tensor) -> torch.Tensor:
    if dist.get_backend() == "nccl":
        return t.to(torch.device("cuda", torch.cuda.current_device()))
    return t


_CURRENT: Dist | None = None  # the Dist of the open session; None outside any


@contextlib.contextmanager
def session() -> Iterator[Dist]:
    """The process group's lifetime: ``with distributed.session() as ctx: fit(cfg)``.

    Launched by torchrun, it joins the group, makes SIGTERM raise
    :class:`~styleforge.runtime.guard.Terminated` (how torchrun stops the survivors when one process
    fails) and, on the way out, whatever happened, destroys the group and puts back the
    SIGTERM handler from before. Launched plainly it yields a 1-process :class:`Dist` and
    touches nothing. Nested sessions share the outer one (so a grid's runs share one group).
    The CLI's training commands open one; library functions ask :func:`current`.
    """
    global _CURRENT
    if _CURRENT is not None:
        yield _CURRENT
        return
    ctx = _from_environment()
    with contextlib.ExitStack() as stack:
        if ctx.enabled and not dist.is_initialized():
            stack.enter_context(guard.sigterm_as_interrupt())  # restored last, after the group is gone
            # Imported before the group exists: DistributedDataParallel imports this module, whose
            # functions take `group=group.WORLD` as a default argument, so imported later they hold the
            # group for good. destroy_process_group then left gloo's threads running, and under load
            # the process aborted at exit ("terminate called without an active exception").
            importlib.import_module("torch.distributed.nn.functional")
            _join(ctx)
            stack.callback(_leave)
        _CURRENT = ctx
        try:
            yield ctx
            # Every rank done before any takes its side of the group down, so none leaves while a peer
            # is still inside a collective. (The abort at exit it was first added for had other causes:
            # the import above and _leave.) Not after an error: the other ranks may never arrive.
            ctx.barrier()
        finally:
            _CURRENT = None


def _leave() -> None:
    """Destroy the group, after freeing the garbage cycles that may still hold it: a DDP model
    caught in a reference cycle keeps the group, and with it gloo's threads, alive past
    destroy_process_group, and a process that exits with them running can abort."""
    gc.collect()
    dist.destroy_process_group()


def current() -> Dist:
    """The open session's :class:`Dist`; outside any session a 1-process one.

    Under torchrun a training function called outside :func:`session` would run as
    independent copies writing the same files, so that is refused with what to do.
    """
    if _CURRENT is not None:
        return _CURRENT
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise StyleforgeError("launched by torchrun (WORLD_SIZE is set), but outside a process group: call "
                              "the training inside `with styleforge.runtime.distributed.session():`")
    return Dist()


def _from_environment() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    try:
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise StyleforgeError("WORLD_SIZE is set but RANK is not: launch with torchrun") from None
    return Dist(rank, world, local)


def _join(ctx: Dist) -> None:
    use_cuda = torch.cuda.is_available() and os.environ.get("STYLEFORGE_DIST_BACKEND", "") != "gloo"
    if use_cuda:
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=TIMEOUT)


@dataclass(frozen=True)
class ResumeHint:
    """Where an interrupted run stands (``stop_cleanly``): ``text`` names the valid checkpoint, or
    says there is none yet; ``has_checkpoint`` chooses the advice (--resume, or start over)."""

    text: str
    has_checkpoint: bool


NO_CHECKPOINT = "no checkpoint was written yet"  # a trainer's text when has_checkpoint is False


def _lost_peer(exc: BaseException) -> bool:
    """A collective failed because another process died or stopped answering."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(s in text for s in (
        "gloo", "nccl", "connection", "peer", "timed out", "timeout", "broken pipe"))


def _stop_error(ctx: Dist, exc: BaseException, resume_hint: Callable[[], ResumeHint]) -> BaseException:
    resume = resume_hint()
    hint = resume.text
    # --resume with no checkpoint is refused, so before the first one the advice is to start again.
    then = ("run the same command with --resume to continue" if resume.has_checkpoint
            else "run the same command again to start over")
    where = f", rank {ctx.rank} of {ctx.world_size}" if ctx.enabled else ""
    if isinstance(exc, KeyboardInterrupt):
        why = " (under torchrun: another process failed)" if ctx.enabled else ""
        err = StyleforgeError(f"stopped by SIGTERM{where}{why}: {hint}; {then}" if isinstance(exc, Terminated)
                              else f"interrupted: {hint}; {then}")
        err.stopped_by = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"  # for a grid search
        return err
    if ctx.enabled and isinstance(exc, Exception) and _lost_peer(exc):
        return StyleforgeError(f"lost contact with another training process{where} ({first_line(exc, 160)}): "
                               f"{hint}; {then}")
    return exc


@contextlib.contextmanager
def stop_cleanly(ctx: Dist, resume_hint: Callable[[], ResumeHint]) -> Iterator[None]:
    """Turn an interruption into a one-line :class:`StyleforgeError` naming what to resume from.

    Covers Ctrl-C, SIGTERM (how torchrun stops the other processes when one fails) and a
    collective that fails because a peer died. ``resume_hint()`` says which checkpoint
    is valid (:class:`ResumeHint`), e.g. "the checkpoint run/last.pt (epoch 3) is valid".
    """
    try:
        yield
    except BaseException as exc:
        # Stopping now: a SIGTERM from here on (torchrun stopping the survivors) must not
        # interrupt the report or the exit with a traceback.
        if ctx.enabled and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            err = _stop_error(ctx, exc, resume_hint)
        except Terminated:  # torchrun's SIGTERM landed while the peer's failure was being reported
            err = _stop_error(ctx, exc, resume_hint)
        if err is exc:
            raise
        raise err from None


def wrap(model: torch.nn.Module, ctx: Dist, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when running on several processes."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index if device.index is not None else ctx.local_rank] if device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP wrapper (for saving: same format as 1-process runs)."""
    return getattr(model, "module", model)


def batch_note(batch_size: int, world_size: int, lr: float) -> str:
    """The line that reports the effective batch and learning rate at the start of training."""
    if world_size == 1:
        return f"batch {batch_size}, lr {lr:g}"
    # The learning rate is used as given: scaling it with the effective batch is the user's call.
    return (f"{world_size} processes x batch {batch_size} = effective batch {batch_size * world_size}, "
            f"lr {lr:g} (as given, not scaled)")
