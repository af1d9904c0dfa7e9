"""Checks on what users type and what files hold, shared by every command.

Each check raises :class:`~styleforge.runtime.errors.StyleforgeError` with one line that says what
is wrong and what to do; the CLI prints it as ``error: ...``. Library functions call these
too, so a config built in Python is held to the same limits as one built by the CLI.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, TypedDict

from .errors import StyleforgeError, first_line

if TYPE_CHECKING:  # torch is imported where needed: the CLI imports this module before any command runs
    import torch

# Seeds feed torch generators after being multiplied by about 1e6; 32 bits keep that in range.
MAX_SEED = 2 ** 32 - 1


class Range(TypedDict, total=False):
    """A range of numbers: keyword arguments of check_number and of the CLI's Number."""

    low: float
    high: float
    low_open: bool
    high_open: bool


# The ranges numeric options use.
POSITIVE: Range = {"low": 0, "low_open": True}                 # learning rates, scales, time budgets
NON_NEGATIVE: Range = {"low": 0}                               # loss weights, weight decay, workers
FRACTION: Range = {"low": 0, "high": 1}                        # --style-strength
PROBABILITY: Range = {"low": 0, "high": 1, "high_open": True}  # momentum, splits, smoothing, warm-up
COUNT: Range = {"low": 1}                                      # sizes, epochs, steps, batch sizes
SEED: Range = {"low": 0, "high": MAX_SEED}




# --------------------------------------------------------------------------- numbers

def number_problem(value: Any, low: float | None = None, high: float | None = None, low_open: bool = False,
                   high_open: bool = False) -> str | None:
    """What is wrong with ``value`` for the range, as a phrase ("must be ..."), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    below = low is not None and (value < low or (low_open and value == low))
    above = high is not None and (value > high or (high_open and value == high))
    if not (below or above):
        return None
    lo, hi = _num(low), _num(high)
    if low is not None and high is not None:
        want = f"in {'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
    elif low is not None:
        want = f"greater than {lo}" if low_open else f"at least {lo}"
    else:
        want = f"less than {hi}" if high_open else f"at most {hi}"
    return f"must be {want}, got {value}"


def _num(v: float | None) -> str:
    return str(int(v)) if v is not None and float(v).is_integer() else f"{v:g}" if v is not None else ""


def check_number(value: Any, option: str, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> Any:
    """``value`` itself if it is finite and in range (``None`` passes), else a one-line error."""
    if value is None:
        return value
    problem = number_problem(value, low, high, low_open, high_open)
    if problem:
        raise StyleforgeError(f"{option} {problem}")
    return value


def check_numbers(checks: Iterable[tuple[str, Any, Mapping[str, Any]]]) -> None:
    """``check_number`` over ``(option, value, range)`` triples (a config's numeric fields)."""
    for option, value, rng in checks:
        check_number(value, option, **rng)


def check_choice(value: Any, option: str, choices: Iterable[str]) -> None:
    """A one-line error for a value of ``option`` that is not one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise StyleforgeError(f"unknown {option} {value!r}: use one of {', '.join(choices)}")


def check_overwrite_resume(overwrite: bool, resume: bool) -> None:
    """``--overwrite`` (start the run again) and ``--resume`` (continue it) cannot both be given."""
    if overwrite and resume:
        raise StyleforgeError("--overwrite and --resume exclude each other: --resume continues the run, "
                              "--overwrite starts it again")


def check_model_options(model: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """A model's ``--option`` values against the type of their defaults: whole numbers at
    least 1 (0 where the default is 0, e.g. ``hidden=0``), probabilities in [0, 1),
    lists of whole numbers, true/false."""
    for key, value in options.items():
        default = defaults.get(key)
        where = f"--option {key}={value!r} for {model}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise StyleforgeError(f"{where}: give true or false")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                whole = isinstance(value, float) and value.is_integer()
                hint = ", written in digits (1000000, not 1e6)" if whole else ""
                raise StyleforgeError(f"{where}: give a whole number{hint}")
            check_number(value, where, low=min(1, default))
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise StyleforgeError(f"{where}: give a number in [0, 1)")
            check_number(float(value), where, low=0, high=1, high_open=True)
        elif isinstance(default, tuple):
            items = value if isinstance(value, tuple) else (value,)
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in items):
                raise StyleforgeError(f"{where}: give whole numbers of at least 1, e.g. {','.join(map(str, default))}")
        elif isinstance(default, str) and not isinstance(value, str):
            raise StyleforgeError(f"{where}: give a name, e.g. {default}")


# --------------------------------------------------------------------------- memory

# Lower bounds of the peak memory per pixel, so that a refusal is always right (the real
# peak is higher: autograd buffers, allocator slack). VGG19 to relu5_1 in fp32 keeps one
# tensor per convolution (its ReLUs work in place): about 320 floats per input pixel.
VGG_BYTES_PER_PIXEL = 1300
# Scaling a working-size result up to the output (universal.upscale, then the output image):
# about eight float32 3-channel or luminance tensors at the output's size.
UPSCALE_BYTES_PER_PIXEL = 100
# L-BFGS keeps at least 20 steps x 2 vectors of the image pyramid (3 channels x 4/3 levels).
LBFGS_BYTES_PER_PIXEL = 640


def transformer_bytes_per_pixel(full_width: int) -> int:
    """A style network at inference: about four and a half full-resolution fp32 tensors of its widest
    full-resolution layer. Measured with freed memory kept for reuse (``device.keep_freed_memory``,
    as ``fast apply`` runs), the ``light`` network (16) on a 6-megapixel photo in fp32: 1643 MB over
    the loaded model, 288 bytes per pixel (1156 MB without keeping freed memory; bf16 1071)."""
    return 18 * full_width


def scaled_pixels(size: tuple[int, int], long_side: float | None) -> int:
    """Pixels of an image of ``size`` (w, h) once its long side is ``long_side`` (None: as is)."""
    w, h = size
    if long_side is None:
        return w * h
    s = long_side / max(w, h)
    return max(1, round(w * s)) * max(1, round(h * s))


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes the job can still allocate: free GPU memory, or the host's MemAvailable."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return 1 << 62  # unknown: never refuse


def check_memory(needed: float, what: str, hint: str, device: torch.device | str = "cpu") -> None:
    """Refuse before starting when an estimate of the memory a job needs exceeds what is free."""
    import torch

    have = available_memory(device)
    if needed > have:
        where = "free on the GPU" if torch.device(device).type == "cuda" else "available"
        raise StyleforgeError(f"{what} needs about {_gb(needed)} of memory, but only {_gb(have)} is {where}: {hint}")


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


# --------------------------------------------------------------------------- files read

def check_state_dict(state: Any, where: str | os.PathLike, key: str = "state_dict") -> Mapping[str, torch.Tensor]:
    """A state dict read from a file: names to tensors, every floating value finite."""
    import torch

    if not isinstance(state, Mapping) or not state:
        raise StyleforgeError(f"{where} has no {key} of weights: the file is damaged or was edited")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise StyleforgeError(f"{where}: entry {name!r} of its {key} is not a tensor: "
                                  "the file is damaged or was edited")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise StyleforgeError(f"{where}: weight {name} holds NaN or infinite values (the training diverged "
                                  "or the file is damaged): use an earlier checkpoint or train again")
    return state


def load_state(target: Any, state: Any, where: str | os.PathLike, what: str = "weights") -> None:
    """``target.load_state_dict(state)`` (a model or an optimizer) with a one-line error when
    the saved state does not fit: a damaged or edited checkpoint."""
    try:
        target.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise StyleforgeError(f"{where}: its {what} do not fit this run ({first_line(exc)}): the file is damaged "
                              "or was edited; train again with --overwrite") from None


def require_keys(record: Mapping[str, Any], where: str | os.PathLike, types: Mapping[str, type | tuple]) -> None:
    """Each key present with the given type, else a one-line error naming the first one wrong."""
    for key, kind in types.items():
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool) and kind in (int, float):
            raise StyleforgeError(f"{where} lacks a valid {key!r} entry: the file is damaged or was not "
                                  "written by styleforge")


def check_stop_at(stop_at: int | None, steps: int | None) -> None:
    """--stop-at splits a run of --steps: a step past the end is a mistake, not a longer run."""
    if stop_at is not None and steps is not None and stop_at > steps:
        raise StyleforgeError(f"--stop-at {stop_at} is past --steps {steps}: --stop-at stops a run part-way "
                              "(continue it with --resume); give a step up to --steps or leave it out")


def check_resume(saved: Mapping[str, Any], current: Mapping[str, Any], ignore: Iterable[str],
                 where: str | os.PathLike, options: Mapping[str, str] | None = None) -> None:
    """Refuse to resume when a setting that changes the run differs from the saved run's.

    Every key of ``current`` not in ``ignore`` must equal the saved value (compared as
    JSON would store them, so tuples equal lists). ``options`` maps keys to option names.
    """
    skip, names = set(ignore), dict(options or {})
    changed = []
    for key, value in current.items():
        if key in skip:
            continue
        old = saved.get(key)
        if _plain(old) != _plain(value):
            changed.append(f"{names.get(key, '--' + key.replace('_', '-'))} {_show(old)} -> {_show(value)}")
    if changed:
        raise StyleforgeError(f"--resume: {where} was trained with other settings ({'; '.join(changed)}): "
                              "use the same settings to continue, or start a new run")


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def number_text(x: float) -> str:
    """A float as users type it: 1e6, 3e5, 0.25, 30 (not 1000000.0, 300000 or 1e+06)."""
    mantissa, _, exponent = f"{x:g}".partition("e")
    if not exponent and abs(x) >= 1e4 and x.is_integer():  # 300000 -> 3e5 where that is exact
        digits = mantissa.lstrip("-").rstrip("0")
        if len(digits) == 1:
            return f"{'-' if x < 0 else ''}{digits}e{len(mantissa.lstrip('-')) - 1}"
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def _show(v: Any) -> str:
    if isinstance(v, float):
        return number_text(v)
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) or "none"
    if isinstance(v, Mapping):
        return ",".join(f"{k}={x}" for k, x in v.items()) or "none"
    return "unset" if v is None else str(v)


# --------------------------------------------------------------------------- outputs

def check_not_inputs(outputs: Mapping[str, str | os.PathLike], inputs: Mapping[str, str | os.PathLike],
                     option: str = "-o") -> None:
    """Refuse an output that is one of the inputs, or two outputs that are one file.

    Both maps go from a label (``-o``, ``--log``, ``the content image``) to a path
    (compared after following links); the error names both.
    """
    given = {Path(p).expanduser().resolve(): label for label, p in inputs.items()}
    seen: dict[Path, str] = {}
    for label, path in outputs.items():
        key = Path(path).expanduser().resolve()
        if key in given:
            # "-o out.png is the content image"; a described output ("the output of a.png") is not followed by
            # its path, which may be the input's own.
            what = f"{label} {path} is" if label.startswith("-") else f"{label} would be written over"
            raise StyleforgeError(f"{what} {given[key]}: styleforge never writes over an input; "
                                  f"choose another {label if label.startswith('-') else option}")
        if key in seen:
            raise StyleforgeError(f"{seen[key]} and {label} would both be written to {path}: rename one of them "
                                  "or write them separately")
        seen[key] = label


def foreign_entries(folder: str | os.PathLike, names: Iterable[str], run_dirs: str | None = None) -> list[Path]:
    """What in ``folder`` styleforge did not write: anything but files named in ``names``
    (or its temporaries), and sub-folders matching the ``run_dirs`` pattern that hold
    anything else. Before deleting a folder, styleforge checks this is empty."""
    from fnmatch import fnmatch

    from .io import is_temporary

    allowed, out = set(names), []
    for p in sorted(Path(folder).iterdir()):
        if p.is_dir() and not p.is_symlink() and run_dirs and fnmatch(p.name, run_dirs):
            out += foreign_entries(p, allowed)
        elif not (p.is_file() and not p.is_symlink() and (p.name in allowed or is_temporary(p.name))):
            out.append(p)
    return out


# --------------------------------------------------------------------------- signals and workers

class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process was, so it stops like Ctrl-C (temporaries removed)."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated`; the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


class InterruptsHeld:
    """Ctrl-C and SIGTERM noted instead of acted on, from here to :meth:`release`: for a few steps
    that must not be cut in two, such as creating a temporary file and taking note of it. Call
    :meth:`release` inside the ``try`` whose clean-up removes what was made; the first signal that
    came meanwhile is acted on there, as it would have been. (Python runs signal handlers in the
    main thread, whichever thread the signal reached; elsewhere this holds nothing.)"""

    def __init__(self) -> None:
        self.caught: list[int] = []
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in _INTERRUPTS:
                self.previous[sig] = signal.signal(sig, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self.caught.append(signum)

    def release(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self.previous = {}
        if self.caught:
            sig, self.caught = self.caught[0], []
            handler = signal.getsignal(sig)
            if callable(handler):
                handler(sig, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(sig)


@contextlib.contextmanager
def worker_errors(what: str) -> Iterator[None]:
    """A DataLoader re-raises a worker's exception with the worker's whole traceback in its
    message; keep the last line, the one that says what went wrong. A worker killed by SIGTERM
    raises :class:`Terminated`, as the signal does here."""
    try:
        yield
    except StyleforgeError as exc:
        text = str(exc).strip()
        if "DataLoader worker" not in text:
            raise
        last = text.splitlines()[-1]
        raise StyleforgeError(last.split(": ", 1)[-1] if last.startswith("styleforge.") else last) from None
    except Exception as exc:
        text = str(exc).strip()
        if "DataLoader worker" not in text:
            raise
        # Which signal killed the worker: in the message, or (when the death was noticed while
        # waiting for a batch: "exited unexpectedly") in the exception it was raised from.
        killed = next((str(e).strip() for e in (exc, exc.__cause__) if "killed by signal" in str(e)), text)
        # A worker stopped by SIGTERM sent to the whole process group (which stops this process
        # too) is a stop, not a data error: stop as that signal does (checkpoint, resume hint).
        if killed.endswith("killed by signal: Terminated."):
            raise Terminated() from None
        raise StyleforgeError(f"{what} failed in a data-loading process ({killed.splitlines()[-1][:200]}): "
                              "try --workers 0 to see the file") from None
