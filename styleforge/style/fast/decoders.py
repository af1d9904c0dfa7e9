"""The decoders of any-style transfer: VGG19 features back to RGB, their files and where they are found.

Two kinds, both trained on photos alone (:mod:`styleforge.style.fast.decoder_train`):

* :class:`Decoder` (Li et al. 2017): one per level ``relu{k}_1``, a thinned mirror of VGG19
  up to that level; the styler runs them as a cascade, deepest first, re-encoding in between.
* :class:`HourglassDecoder`: one decoder from relu4_1 that also reads relu3_1 and relu2_1
  through skip connections, scaled by a ``detail`` weight; the styler transforms all three
  levels and decodes once.

Files are ``decoder-<name>.pth`` (``decoder-relu3_1.pth``, ``decoder-hourglass.pth``): plain
tensors and metadata, loadable with ``weights_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ...runtime.errors import StyleforgeError
from ...runtime.io import load_torch, save_torch
from .model import ReflectionPad

LEVELS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
HOURGLASS = "hourglass"
DECODER_FORMAT = "styleforge-decoder"
FORMAT_VERSION = 1
# Channels of VGG19 blocks 1..5 and its convolutions per block.
_VGG_WIDTHS = (64, 128, 256, 512, 512)
_VGG_CONVS = (2, 2, 4, 4, 4)
WHERE = "the weights folders ($STYLEFORGE_WEIGHTS, weights/)"


def level_index(level: str) -> int:
    """``relu3_1`` -> 3; one-line error for anything else."""
    if level not in LEVELS:
        raise StyleforgeError(f"unknown level {level!r}: use one of {', '.join(LEVELS)}")
    return LEVELS.index(level) + 1


class _Conv(nn.Sequential):
    def __init__(self, cin: int, cout: int, last: bool = False) -> None:
        layers: list[nn.Module] = [ReflectionPad(1), nn.Conv2d(cin, cout, 3)]
        if not last:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Decoder(nn.Module):
    """Inverts VGG19 ``relu{k}_1`` features to RGB in [0, 1] (unclamped): a thinned mirror of VGG19.

    Departure from Li et al.'s decoders (an exact mirror of VGG19 up to the level): each
    block has ``width`` times VGG's channels and at most ``max_convs`` convolutions, which
    makes the five decoders about 6x smaller and 4x cheaper per pixel. Upsampling is
    nearest-neighbour, as in the paper.
    """

    input_scale: torch.Tensor  # a buffer, registered in __init__

    def __init__(self, level: str, width: float = 0.5, max_convs: int = 2) -> None:
        super().__init__()
        k = level_index(level)
        self.level, self.width, self.max_convs = level, width, max_convs

        def w(block: int) -> int:
            return max(8, int(_VGG_WIDTHS[block - 1] * width))

        layers: list[nn.Module] = []
        if k == 1:
            layers.append(_Conv(_VGG_WIDTHS[0], 3, last=True))
        else:
            layers += [_Conv(_VGG_WIDTHS[k - 1], w(k - 1)), nn.Upsample(scale_factor=2, mode="nearest")]
            for block in range(k - 1, 0, -1):
                layers += [_Conv(w(block), w(block)) for _ in range(min(_VGG_CONVS[block - 1], max_convs) - 1)]
                if block > 1:
                    layers += [_Conv(w(block), w(block - 1)), nn.Upsample(scale_factor=2, mode="nearest")]
                else:
                    layers.append(_Conv(w(1), 3, last=True))
        self.net = nn.Sequential(*layers)
        # Departure from the paper: the features are multiplied by a fixed scale first, set
        # once before training to 1 / (their RMS on the first batch); VGG19's activations
        # (Caffe weights, 0-255 input scale) reach the hundreds, and unscaled inputs make the
        # first steps of Adam overshoot by orders of magnitude.
        self.register_buffer("input_scale", torch.ones(()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features * self.input_scale)


class HourglassDecoder(nn.Module):
    """relu4_1 features to RGB, with skips from relu3_1 and relu2_1 scaled by ``detail`` (an hourglass).

    After Avatar-Net (Sheng et al. 2018), whose decoder reads the bottleneck and, through skip
    connections, the encoder's shallower features. At ``width`` 0.5 (0.9 M parameters):
    relu4_1 -> conv to 128 -> up; + 1x1 conv of relu3_1 -> conv 128, conv 64 -> up; + 1x1 conv of
    relu2_1 -> conv 64, conv 32 -> up -> conv 32, conv to RGB (reflection-padded 3x3 convolutions,
    ReLU, nearest upsampling, as :class:`Decoder`).

    Trained with ``detail`` drawn uniformly in [0, 1] at every step, so that it paints from relu4_1
    alone as well as with the finer levels' structure. Departure from Avatar-Net: no relu1_1 skip;
    with it the picture is the photo re-coloured (session 31: a style loss of 0.49-0.53 against 0.36-0.44
    without it, bench/HISTORY.md).
    """

    level = HOURGLASS
    levels = ("relu4_1", "relu3_1", "relu2_1")  # deepest first: the bottleneck, then the skips
    max_convs = 2
    input_scales: torch.Tensor  # a buffer, registered in __init__

    def __init__(self, width: float = 0.5) -> None:
        super().__init__()
        self.width = width
        c4, c3, c2 = (max(8, int(n * width)) for n in (256, 128, 64))
        self.head = _Conv(_VGG_WIDTHS[3], c4)
        self.skip3, self.skip2 = nn.Conv2d(_VGG_WIDTHS[2], c4, 1), nn.Conv2d(_VGG_WIDTHS[1], c3, 1)
        self.block3 = nn.Sequential(_Conv(c4, c4), _Conv(c4, c3))
        self.block2 = nn.Sequential(_Conv(c3, c3), _Conv(c3, c2))
        self.block1 = nn.Sequential(_Conv(c2, c2), _Conv(c2, 3, last=True))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        # As Decoder.input_scale, per level (relu4_1, relu3_1, relu2_1).
        self.register_buffer("input_scales", torch.ones(3))

    def forward(self, features: Mapping[str, torch.Tensor], detail: float = 1.0) -> torch.Tensor:
        s = self.input_scales
        x = self.up(self.head(features["relu4_1"] * s[0]))
        x = self.up(self.block3(x + detail * self.skip3(features["relu3_1"] * s[1])))
        x = self.up(self.block2(x + detail * self.skip2(features["relu2_1"] * s[2])))
        return self.block1(x)


AnyDecoder = Decoder | HourglassDecoder


def decoder_name(level: str) -> str:
    return f"decoder-{level}.pth"


def save_decoder(decoder: AnyDecoder, path: str | os.PathLike, training: Mapping[str, Any],
                 half: bool = True) -> Path:
    """A decoder file: plain tensors and metadata (loadable with ``weights_only=True``)."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in decoder.state_dict().items()}
    return save_torch({"format": DECODER_FORMAT, "version": FORMAT_VERSION, "level": decoder.level,
                       "width": decoder.width, "max_convs": decoder.max_convs, "training": dict(training),
                       "state_dict": state}, path)


def load_decoder(path: str | os.PathLike) -> AnyDecoder:
    """Read a decoder file written by :func:`save_decoder`, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise StyleforgeError(f"decoder file {str(path)!r} does not exist")
    record = load_torch(path, "a PyTorch file", "re-train it with 'styleforge fast train-decoders'")
    if not isinstance(record, dict) or record.get("format") != DECODER_FORMAT:
        raise StyleforgeError(f"{path} is not a styleforge decoder file")
    decoder: AnyDecoder
    if record["level"] == HOURGLASS:
        decoder = HourglassDecoder(record["width"])
    else:
        decoder = Decoder(record["level"], record["width"], record["max_convs"])
    try:
        decoder.load_state_dict({k: v.float() for k, v in record["state_dict"].items()})
    except RuntimeError:
        raise StyleforgeError(f"{path}: its weights do not fit its stated layout; the file is damaged") from None
    return decoder.eval().requires_grad_(False)


def _folders(folder: str | os.PathLike | None) -> list[Path]:
    """``folder`` (checked), else the weights folders in lookup order."""
    if folder is not None:
        if not Path(folder).is_dir():
            raise StyleforgeError(f"--decoders {str(folder)!r} is not a folder")
        return [Path(folder)]
    from ...backbone import weights_folders

    return [d for _, d in weights_folders()]


def find_hourglass(folder: str | os.PathLike | None = None) -> Path | None:
    """The hourglass decoder file: in ``folder``, else the first weights folder holding one; None if none."""
    return next((d / decoder_name(HOURGLASS) for d in _folders(folder) if (d / decoder_name(HOURGLASS)).is_file()),
                None)


def find_decoders(folder: str | os.PathLike | None = None,
                  levels: Sequence[str] | None = None) -> dict[str, Path]:
    """Decoder files by level: from ``folder``, else the first weights folder holding each level.

    With ``levels``, every one must be found (one-line error naming the missing one).
    """
    folders = _folders(folder)
    found: dict[str, Path] = {}
    for level in LEVELS:
        for d in folders:
            if (d / decoder_name(level)).is_file():
                found[level] = d / decoder_name(level)
                break
    if levels is not None:
        missing = [lv for lv in levels if lv not in found]
        if missing:
            where = folder or WHERE
            raise StyleforgeError(f"no decoder for {missing[0]} in {where}: train one with 'styleforge fast "
                                  f"train-decoders --levels {missing[0]}' or choose --levels from "
                                  f"{', '.join(found) or '(none found)'}")
        found = {lv: found[lv] for lv in levels}
    elif not found:
        where = folder or WHERE
        raise StyleforgeError(f"no decoders (decoder-reluK_1.pth) in {where}: train them with "
                              "'styleforge fast train-decoders' or pass --decoders DIR")
    return found
