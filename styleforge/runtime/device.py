"""The device layer: device choice, precision, memory format, seeding, determinism.

Every job gets a :class:`Runtime` from :func:`runtime` and uses it for everything
device-specific: moving tensors and modules (``rt.to(x)``), forward passes under the
chosen autocast precision (``with rt.autocast(): ...``; a network that only stylizes:
``rt.for_inference(net)`` under ``rt.inference(net)``), the backward step
(:func:`backward_step` with ``rt.grad_scaler()``), and the few choices that differ by
device (data-loader processes, pinned memory, what stays on the GPU, peak memory).
Jobs do not test ``device.type`` themselves.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import platform
import random
from dataclasses import dataclass
from typing import TypeVar, Union, cast

import torch

from .errors import StyleforgeError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

T = TypeVar("T", bound=Union[torch.Tensor, torch.nn.Module])
M = TypeVar("M", bound=torch.nn.Module)


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must exist."""
    spec = str(spec).strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise StyleforgeError(
            f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise StyleforgeError(
                f"device {spec!r} requested but CUDA is not available here: use --device cpu or auto"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise StyleforgeError(
                f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif dev.type == "mps":
        if not _mps_available():
            raise StyleforgeError(
                "device 'mps' requested but Apple MPS is not available here: use --device cpu or auto"
            )
    elif dev.type != "cpu":
        raise StyleforgeError(f"unsupported device {spec!r}: use auto, cpu, cuda, cuda:N or mps")
    return dev


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(spec: str, device: torch.device) -> torch.dtype | None:
    """Map ``auto|fp32|bf16|fp16`` to an autocast dtype (``None`` means plain fp32).

    ``auto``: bf16 on CUDA GPUs that support it (fp16 on older ones), fp16 on MPS,
    bf16 on CPUs with native bf16 and fp32 on other CPUs, where bf16 is slower.
    """
    spec = spec.strip().lower()
    if spec not in PRECISIONS:
        raise StyleforgeError(f"unknown precision {spec!r}: use one of {', '.join(PRECISIONS)}")
    if spec != "auto":
        if spec == "fp16" and device.type == "cpu":
            raise StyleforgeError("fp16 autocast is not supported on CPU: use --precision bf16 or fp32")
        return _DTYPES[spec]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


@dataclass(frozen=True)
class Runtime:
    """Where and how to run: device, autocast dtype (None = fp32) and memory format."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def autocast(self, enabled: bool = True) -> contextlib.AbstractContextManager:
        """Autocast context for forward passes; a no-op for fp32."""
        if self.amp_dtype is None or not enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def to(self, x: T, non_blocking: bool = False) -> T:
        """Move a tensor or module to the device, in channels_last where that is on (4-D only)."""
        if isinstance(x, torch.Tensor):
            t = x.to(self.device, non_blocking=non_blocking)
            if self.channels_last and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            return cast(T, t)
        x.to(self.device)  # a module moves in place (and keeps its class: rt.to(VGGFeatures) is a VGGFeatures)
        if self.channels_last:
            x.to(memory_format=torch.channels_last)
        return x

    def for_inference(self, module: M) -> M:
        """A copy of a feed-forward style network (fp32 weights) to stylize with, under :meth:`inference`.

        On a CPU the copy is channels_last whatever the precision, and with bf16 chosen its weights
        are bf16, run without autocast (which runs normalization and padding in fp32 and casts back
        to bf16 before every convolution). Measured on the ``light`` network at 1024 px, one thread,
        AVX512-BF16 (issue 11): bf16 autocast 0.80-0.94 s, bf16 weights 0.54-0.64 s; fp32 1.4-1.7 s,
        fp32 channels_last 1.06-1.11 s (and 1.0 s against 1.4-1.5 s with oneDNN held to AVX2).
        Elsewhere (CUDA, MPS, where autocast is the measured path) the module itself, moved.
        """
        if self.device.type != "cpu":
            return self.to(module)
        module = copy.deepcopy(module).to(self.device).to(memory_format=torch.channels_last)
        return module.to(torch.bfloat16) if self.amp_dtype is torch.bfloat16 else module

    def inference(self, module: torch.nn.Module) -> contextlib.AbstractContextManager:
        """The context to run ``module`` in: autocast for fp32 weights, none for a :meth:`for_inference`
        copy whose weights are already in the low precision."""
        weights = {p.dtype for p in module.parameters() if p.is_floating_point()}
        return self.autocast(enabled=torch.float32 in weights or not weights)

    @property
    def pin_memory(self) -> bool:
        """Whether data loaders should pin host memory (only helps host→CUDA copies)."""
        return self.device.type == "cuda"

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    @property
    def loader_workers(self) -> int:
        """Default data-loader processes: 2 keep a GPU fed; on a CPU they would take its cores."""
        return 2 if self.device.type == "cuda" else 1

    def holds(self, data: torch.Tensor) -> bool:
        """Whether a whole dataset tensor should live on the device (small datasets on a GPU:
        no host copies per batch; indexing is limited to 2**31 elements)."""
        return self.device.type == "cuda" and data.numel() < 2 ** 31

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler where fp16 autocast needs one (its narrow range underflows gradients), else None."""
        return torch.amp.GradScaler(self.device.type) if self.amp_dtype is torch.float16 else None

    def peak_memory_mb(self) -> float | None:
        """Peak memory allocated on a CUDA device so far, MB; None elsewhere."""
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None


# glibc's malloc maps each block above its mmap threshold (which it raises to at most 32 MB) fresh
# from the OS and unmaps it when freed, so every large tensor of a forward pass pays a page fault
# per 4 KB page: at 1024 px the `light` network's 16-channel fp32 maps are 64 MB each. Blocks up to
# this size are served from the heap instead, and freed memory is kept for the next tensor.
KEPT_BLOCK = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve blocks up to :data:`KEPT_BLOCK` from its heap and keep freed memory
    (``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD``) rather than map and unmap pages for each large tensor.

    Process-wide and not undone, so only the CLI calls it, for the commands that run a style
    network over whole pictures (``fast apply``, ``fast sheet``): their process is theirs. The
    ``light`` network at 1024 px, one thread, end to end (bench/fast_inference.py, AVX512-BF16):
    bf16 537-575 -> 399-409 ms, fp32 949-995 -> 626-649 ms; peak memory about 6-15 % higher.
    ``stylize`` was unchanged. A library user can call it the same way. Returns whether it took
    effect (glibc only; elsewhere nothing changes).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, KEPT_BLOCK)) and bool(mallopt(_M_TRIM_THRESHOLD, KEPT_BLOCK))


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler | None = None) -> None:
    """``loss.backward()`` and ``optimizer.step()``, through ``scaler`` (from :meth:`Runtime.grad_scaler`)."""
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def runtime(device: str | torch.device = "auto", precision: str = "auto",
            channels_last: bool | None = None) -> Runtime:
    """Build the :class:`Runtime` for a job.

    channels_last defaults to on for CUDA and for CPU bf16 (oneDNN's fast path), off
    otherwise (plain fp32 CPU convolutions gain nothing from it).
    """
    dev = resolve_device(device)
    amp = resolve_precision(precision, dev)
    if channels_last is None:
        channels_last = dev.type == "cuda" or (dev.type == "cpu" and amp is torch.bfloat16)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(dev, amp, channels_last)


# Seeds of a run's random streams are derived from its one --seed as seed * stride + offsets.
# The strides are primes larger than any offset sum used, so different run seeds never
# share a stream; STREAM_GAP (a prime) keeps streams of one run seed apart (offset k*GAP + i).
SEED_STRIDE = 1_000_003
STREAM_GAP = 7919


def derived_seed(seed: int, *offsets: int, stride: int = SEED_STRIDE) -> int:
    """The seed of one random stream of a run seeded ``seed`` (an epoch's order, an image's crop):
    deterministic, so a resumed or data-parallel run draws exactly what an uninterrupted one does."""
    return seed * stride + sum(offsets)
def for_training(rt: Runtime, requested: str) -> Runtime:
    """The runtime a classifier's training loop, and its evaluation, use: ``auto`` on a CPU runs in fp32. (Style
    networks and decoders train at ``auto`` as resolved; a style network's bf16 losses matched
    its fp32 ones, README, issue 11.)

    CPU bf16 autocast runs convolutions and matrix products in bf16 (oneDNN's native
    kernels where the CPU has AVX512-BF16/AMX); training a classifier that way diverged
    where fp32 reached 98.9 % (simple-cnn, SGD at lr 0.05). The loss, softmax, optimizer
    state and batch-norm statistics are fp32 in either case, so what bf16 changes is the
    gradients themselves: ``auto`` must never be worse than fp32, so it keeps bf16 for
    inference-only work (feature extraction, evaluation, stylizing) and trains in fp32.
    ``--precision bf16`` still trains in bf16 when asked.
    """
    if requested.strip().lower() == "auto" and rt.device.type == "cpu" and rt.amp_dtype is not None:
        return Runtime(rt.device, None, False)
    return rt


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed Python, torch (all devices) and return a CPU generator for explicit use.

    ``deterministic`` also asks torch for deterministic kernels (slower on CUDA).
    """
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def optimizer_to(optimizer, device: torch.device) -> None:
    """Move a (resumed) optimizer's state tensors to ``device``: moving the model re-creates no
    parameters, so the state loaded on the CPU must follow it. Adam's ``step`` counts stay put."""
    for state in optimizer.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and k != "step":
                state[k] = v.to(device)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group's learning rate (the trainers' schedules are functions of progress)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
