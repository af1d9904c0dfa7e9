"""Feed-forward style networks (Johnson, Alahi & Fei-Fei, 2016) and their model files.

Two architectures share one definition, differing in width and depth:

* ``johnson``: the published network (32-64-128 channels, five residual blocks, 1.68 M
  parameters), with two departures that later work settled on: instance normalization
  instead of batch normalization (Ulyanov et al., 2016) and nearest-neighbour upsampling
  followed by a convolution instead of transposed convolutions (Odena et al., 2016), which
  removes checkerboard artifacts.
* ``light``: half the encoder width (16-32-64), three residual blocks, a thin decoder
  (16-8 channels) and 5x5 edge convolutions: 0.26 M parameters and about 7x fewer
  multiply-adds per pixel, for fast CPU inference at 1024 px and above (the full-size
  layers, not the residual blocks, dominate CPU time, so those are the ones thinned).

Inputs and outputs are RGB in [0, 1]. Any size works, down to 1x1: the input is padded
(edge pixels repeated) to a multiple of 4 (the two stride-2 stages) and to at least
MIN_SIDE per side (reflection padding and instance norm need a few pixels even at 1/4
resolution), and the output cropped back.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...runtime.errors import StyleforgeError
from ...runtime.guard import check_state_dict
from ...runtime.io import load_torch, save_torch

MODEL_FORMAT = "styleforge-fast-style"
CHECKPOINT_FORMAT = "styleforge-fast-style-checkpoint"
FORMAT_VERSION = 1
MODEL_SUFFIX = ".pth"
# Smallest side the layers see: 1/4 of it (4 px) still takes the residual blocks' reflection
# padding and gives instance norm more than one value per channel.
MIN_SIDE = 16
# The networks' pixel lattice: two stride-2 stages, so what they paint can repeat every 4 px.
LATTICE = 4
# How the decoder doubles the resolution before each of its convolutions. ``nearest`` copies
# every value into a 2x2 block, which the thin ``light`` decoder cannot smooth away: its
# outputs carry a 2- and 4-pixel grid (issue 11). ``bilinear`` interpolates instead.
UPSAMPLE_MODES = ("bilinear", "nearest")
# Input noise (departure from Johnson et al.; texture networks, Ulyanov et al. 2016, feed noise
# too). Where a photo is flat, a stride-4 network sees a constant input, so any texture it paints
# there repeats every 4 px, locked to its own lattice: the hatching the grid measure catches
# (issue 11). Noise of unit variance, times the model's ``noise`` amount, is added to the input:
# fresh in training, at inference one fixed pattern (:func:`pixel_noise`), so a picture is
# reproducible and the exported ONNX graph computes the very same values.
_NOISE_PRIME = 2_147_483_647  # 2**31 - 1: products of two residues fit in int64


@dataclass(frozen=True)
class ArchSpec:
    channels: tuple[int, int, int]   # encoder: full, 1/2 and 1/4 resolution
    blocks: int                      # residual blocks at 1/4 resolution
    decoder: tuple[int, int]         # channels after upsampling to 1/2 and to full resolution
    edge_kernel: int = 9


ARCHS: dict[str, ArchSpec] = {
    "johnson": ArchSpec((32, 64, 128), 5, (64, 32)),
    "light": ArchSpec((16, 32, 64), 3, (16, 8), edge_kernel=5),
}


class _InstanceNorm(nn.InstanceNorm2d):
    """Instance norm with a learnt scale and shift per channel.

    At inference it is computed as group norm with one channel per group, the same values:
    PyTorch's CPU instance norm copies a channels_last input to the default layout and returns
    that layout, which the next convolution copies back; group norm keeps channels_last (bf16,
    one thread: 7.1 -> 1.4 ms at 64 x 256², 63 -> 24 ms at 16 x 1024²). Training and the ONNX
    graph keep instance norm itself.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or torch.onnx.is_in_onnx_export():
            return super().forward(x)
        return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)


class ReflectionPad(nn.ReflectionPad2d):
    """``nn.ReflectionPad2d`` in the input's own dtype.

    CPU autocast runs reflection padding in float32: under bf16 each padded activation was copied to
    float32, padded, and copied back to bf16 by the next convolution. Padding only moves values, so
    it is exact in any dtype; outside autocast it stays bf16, and the outputs are the same bits. Keeping
    it there made the any-style default and the two-level cascade 5-12 % faster (bf16, one thread, 512² and
    1024²; bench/fast_inference.py, session 48).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x)


class _Conv(nn.Sequential):
    """Reflection-padded convolution, then instance norm and ReLU unless ``last``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, last: bool = False) -> None:
        layers: list[nn.Module] = [ReflectionPad(kernel // 2), nn.Conv2d(cin, cout, kernel, stride)]
        if not last:
            layers += [_InstanceNorm(cout, affine=True), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ReflectionPad(1), nn.Conv2d(channels, channels, 3), _InstanceNorm(channels, affine=True),
            nn.ReLU(inplace=True),
            ReflectionPad(1), nn.Conv2d(channels, channels, 3), _InstanceNorm(channels, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Up(nn.Sequential):
    """2x upsampling, then a convolution (no transposed convolution: no checkerboard artifacts)."""

    def __init__(self, cin: int, cout: int, mode: str) -> None:
        up = nn.Upsample(scale_factor=2, mode=mode, align_corners=False if mode == "bilinear" else None)
        super().__init__(up, _Conv(cin, cout, 3))


def is_noise_amount(value: object) -> bool:
    """A valid input-noise amount: a finite number >= 0 (not a bool)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value >= 0)


def uniform_noise(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Training noise: uniform, mean 0, variance 1 (the distribution :func:`pixel_noise` has)."""
    return (torch.rand(shape, generator=generator) - 0.5) * math.sqrt(12.0)


def pixel_noise(like: torch.Tensor) -> torch.Tensor:
    """Inference noise for images shaped like ``like``: (1, 3, H, W), uniform, mean 0, variance 1.

    Each value is an integer hash of its channel and pixel coordinates (a linear mix, squared
    twice modulo a prime, then a Lehmer step): no lattice, no state, the same on every device,
    and only integer ops that ONNX has, so exported graphs reproduce it exactly.
    """
    h, w = like.shape[-2], like.shape[-1]
    y = torch.arange(h, device=like.device).view(1, 1, h, 1)
    x = torch.arange(w, device=like.device).view(1, 1, 1, w)
    c = torch.arange(3, device=like.device).view(1, 3, 1, 1)
    k = (x * 92821 + y * 68917 + c * 1_000_003 + 12345) % _NOISE_PRIME
    for _ in range(2):
        k = (k * k + 40503) % _NOISE_PRIME
    k = (k * 48271) % _NOISE_PRIME
    # float32 whatever like's dtype: bf16 would round k (up to 2**31) to about 3 digits.
    return ((k.to(torch.float32) / _NOISE_PRIME - 0.5) * math.sqrt(12.0)).to(like.dtype)


class TransformerNet(nn.Module):
    """Image-to-image style network: [0,1] RGB in, [0,1] RGB out, any height and width."""

    def __init__(self, arch: str = "johnson", upsample: str = "nearest", noise: float = 0.0) -> None:
        super().__init__()
        if not is_noise_amount(noise):
            raise StyleforgeError(f"input noise must be a number >= 0, got {noise!r}")
        self.noise = float(noise)
        self._pattern: torch.Tensor | None = None  # pixel_noise of the last size (frames repeat it)
        if arch not in ARCHS:
            raise StyleforgeError(f"unknown architecture {arch!r}: use one of {', '.join(ARCHS)}")
        if upsample not in UPSAMPLE_MODES:
            raise StyleforgeError(f"unknown upsampling {upsample!r}: use one of {', '.join(UPSAMPLE_MODES)}")
        self.arch, self.upsample = arch, upsample
        spec = ARCHS[arch]
        c1, c2, c3 = spec.channels
        d2, d1 = spec.decoder
        k = spec.edge_kernel
        self.net = nn.Sequential(
            _Conv(3, c1, k), _Conv(c1, c2, 3, stride=2), _Conv(c2, c3, 3, stride=2),
            *[_Residual(c3) for _ in range(spec.blocks)],
            _Up(c3, d2, upsample), _Up(d2, d1, upsample), _Conv(d1, 3, k, last=True))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``noise``: the training noise for this batch (unit variance); None: :func:`pixel_noise`.

        Runs in the dtype of the weights (bf16 for a :meth:`Runtime.for_inference` copy); at
        inference the output is float32.
        """
        x = x.to(next(self.parameters()).dtype)
        if self.noise:
            x = x + self.noise * (self._fixed_noise(x) if noise is None else noise)
        h, w = x.shape[-2:]
        ph, pw = max(MIN_SIDE - h, (-h) % LATTICE), max(MIN_SIDE - w, (-w) % LATTICE)
        if ph or pw:  # replicate (not reflect) works for any size and matches the ONNX graph
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        # Departure from the published recipe: [0, 1] in and out instead of [0, 255] (the
        # first instance norm removes the input scale anyway; the last convolution then
        # starts at the right output scale). No output squashing: training sees the raw
        # values, inference clamps.
        out = self.net(x)
        if not self.training:
            # Departure from Johnson et al.: in training the lattice penalty charges texture locked
            # to the 4-px lattice; at inference what is left of it is taken off (issue 11), from the
            # picture as shown: taken off before the clamp, the lattice of the values past black or
            # white came back along those regions' edges (one photo's grid 0.86 -> 1.18; 0.12 so).
            out = without_lattice(out)
        return out[..., :h, :w]


    def _fixed_noise(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`pixel_noise` for ``x``, kept for the next call: it costs about a tenth of the
        ``light`` network's time at 1024 px, and a folder or a video repeats one size."""
        p = self._pattern
        if p is None or p.shape[-2:] != x.shape[-2:] or p.device != x.device or p.dtype != x.dtype:
            p = self._pattern = pixel_noise(x)
        return p


# Side of the cells, in lattice steps, over which lattice_part averages each phase before it
# interpolates between cells: 4 steps (16 px), which with the interpolation weighs pixels like a
# Gaussian of about 8 px. The notch that makes is about 0.02 cycle/px wide: a first form with a notch
# twice as wide left issue 11's grid measure at 5 on some photos (it compares a peak with the bins
# around it, which a wide notch darkens too).
_CELL_STEPS = 4


def _local_mean(x: torch.Tensor, cell: int) -> torch.Tensor:
    """``x`` (N, C, H, W) averaged over cells of ``cell`` px and interpolated back between the cells'
    centres: a smooth local mean that keeps ramps exactly (away from the borders)."""
    # Windows of two cells, a cell apart: without the overlap, texture of 6-30 px period aliased
    # into the coarse grid and a fifth of its amplitude came out as a false lattice.
    coarse = F.avg_pool2d(x, 2 * cell, stride=cell, padding=cell // 2, ceil_mode=True, count_include_pad=False)
    return F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)


def lattice_part(image: torch.Tensor, period: int = LATTICE) -> torch.Tensor:
    """The part of ``image`` (B, C, H, W; sides multiples of ``period``) that repeats on a
    ``period``-px lattice, locally.

    At each pixel: the local mean of the pixels a whole number of periods away (its own phase
    of the lattice), less the local mean of all the pixels (every phase alike). A pattern that
    repeats every ``period`` px comes out whole; smooth changes (shading, colour shifts, ramps)
    give 0, and texture at other periods nearly 0: a notch at 1/period cycle/px and its multiples.
    """
    h, w = image.shape[-2:]
    if h % period or w % period:
        raise ValueError(f"lattice_part needs sides that are multiples of {period}, got {w}x{h}")
    x = image.float()
    # Each phase as a picture of its own (pixel_unshuffle), averaged the same way as the whole:
    # pooling and interpolation cost a few percent of the network at 1024 px, where convolutions
    # of one channel at a time cost a third of it.
    same_phase = F.pixel_shuffle(_local_mean(F.pixel_unshuffle(x, period), _CELL_STEPS), period)
    return same_phase - _local_mean(x, _CELL_STEPS * period)


def without_lattice(output: torch.Tensor, period: int = LATTICE) -> torch.Tensor:
    """A network's raw output as shown (clamped to [0, 1]) less its :func:`lattice_part`, float32; the
    inference end of TransformerNet, of its ONNX graph, and of each any-style decoder. The clamp
    comes first: clamping after would print the lattice back where values ran past white."""
    shown = output.float().clamp(0, 1)
    return shown - lattice_part(shown, period)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(model: TransformerNet, path: str | os.PathLike, style: str, training: dict[str, Any],
               half: bool = True) -> Path:
    """Write a model file: plain tensors and metadata (loadable with ``weights_only=True``).

    ``half`` stores float16 weights (half the size; outputs differ by < 1/255 in [0, 1]).
    """
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    record = {"format": MODEL_FORMAT, "version": FORMAT_VERSION, "arch": model.arch, "upsample": model.upsample,
              "noise": model.noise, "style": style,
              "training": training, "state_dict": state}
    return save_torch(record, path)


def read_record(path: str | os.PathLike, fix: str = "re-download or re-train it") -> dict[str, Any]:
    """Read a model or checkpoint file safely (no pickled code runs), with one-line errors ending in ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise StyleforgeError(f"model file {str(path)!r} does not exist")
    return load_torch(path, "a PyTorch file", fix)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[TransformerNet, dict]:
    """Load a model file written by :func:`save_model` (or a training checkpoint)."""
    record = read_record(path)
    if not isinstance(record, dict) or record.get("format") not in (MODEL_FORMAT, CHECKPOINT_FORMAT):
        hint = ""
        if isinstance(record, dict) and any(str(k).startswith(("conv1.", "in1.", "res1.")) for k in record):
            hint = " (it looks like a pytorch/examples fast_neural_style state dict; train with styleforge)"
        raise StyleforgeError(f"{path} is not a styleforge style model{hint}")
    arch = record.get("arch")
    if arch not in ARCHS:
        raise StyleforgeError(f"{path} is for architecture {arch!r}, which this styleforge does not know "
                              f"(known: {', '.join(ARCHS)})")
    upsample = record.get("upsample", "nearest")  # files written before the choice existed: nearest
    if upsample not in UPSAMPLE_MODES:
        raise StyleforgeError(f"{path} asks for upsampling {upsample!r}, which this styleforge does not know "
                              f"(known: {', '.join(UPSAMPLE_MODES)})")
    noise = record.get("noise", 0.0)  # files written before input noise existed: none
    if not is_noise_amount(noise):
        raise StyleforgeError(f"{path} asks for input noise {noise!r}: the file is damaged or was edited")
    model = TransformerNet(arch, upsample, noise)
    key = "state_dict" if record["format"] == MODEL_FORMAT else "model"
    state = check_state_dict(record.get(key), path, key)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError:
        raise StyleforgeError(f"{path} says architecture {arch!r} but its weights do not fit that "
                              "architecture: the file is damaged or was edited") from None
    model.eval().requires_grad_(False)
    return model.to(map_location), record


def _model_folders() -> list[Path]:
    """Where named models are looked up: the backbone weights folders, in their order."""
    from ...backbone import weights_folders

    return [folder for _, folder in weights_folders()]


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A path, or the name of a model in the weights folders (``starry_night``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.suffix == "" and os.sep not in str(name_or_path):
        for d in _model_folders():
            for candidate in (d / f"{p.name}{MODEL_SUFFIX}", d / f"fast-{p.name}{MODEL_SUFFIX}"):
                if candidate.is_file():
                    return candidate
        names = sorted(available_models())
        raise StyleforgeError(f"no model named {p.name!r}: give a file path or one of "
                              f"{', '.join(names) if names else '(none found)'}")
    raise StyleforgeError(f"model file {str(p)!r} does not exist")


def available_models() -> dict[str, Path]:
    """Shipped / installed style models by name (``fast-NAME.pth`` in the weights folders)."""
    found: dict[str, Path] = {}
    for d in _model_folders():
        if d.is_dir():
            for f in sorted(d.glob(f"fast-*{MODEL_SUFFIX}")):
                found.setdefault(f.stem[len("fast-"):], f)
    return found
