"""Optimization-based style transfer (Gatys, Ecker & Bethge, 2016).

:func:`stylize` optimizes the pixels of an image so that its VGG content features match
the content image and its Gram matrices match the style image(s). By default it works
coarse to fine (as crowsonkb's style-transfer-pytorch and jcjohnson's multi-resolution
recipe do): a short half-size stage, then the full size starting from its upsampled result.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from PIL import Image

from ..backbone import VGGFeatures
from ..runtime import guard
from ..runtime.device import Runtime, seed_everything
from ..runtime.device import runtime as make_runtime
from ..runtime.errors import StyleforgeError
from ..runtime.io import load_image, open_rgb, pil_to_tensor, resize_long_side, tensor_to_pil
from .color import original_colors as apply_original_colors
from .perceptual import PerceptualLoss, loss_weights, normalized_blend

DEFAULT_CONTENT_LAYERS: dict[str, float] = {"relu4_2": 1.0}
DEFAULT_STYLE_LAYERS: dict[str, float] = {f"relu{i}_1": 1.0 for i in range(1, 6)}
OPTIMIZERS = ("lbfgs", "adam")
# Per optimizer: the learning rate, and the steps of the coarse scales and of the full-size
# scale (a short coarse stage, then most of the work at full size).
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}
DEFAULT_STEPS = {"lbfgs": (60, 200), "adam": (300, 500)}
MIN_COARSE_SIZE = 128
RANGE_PENALTY = 1.0
LBFGS_HISTORY_BYTES = 1 << 30
# Weight of pyramid level k is PYRAMID_GAIN**k: a gradient step then moves the lowest
# frequencies about 2**k times further than plain pixels would (1.0 gave 4**k and
# converged slower; 0.6-0.7 were equal in bench/stylize_speed.py).
PYRAMID_GAIN = 0.5 ** 0.5

ImageLike = Union[str, os.PathLike, torch.Tensor]


@dataclass
class StylizeConfig:
    """Everything that defines a stylize run. ``None`` means "the documented default"."""

    size: int = 512
    # W in [0, 1]: content weight 1 - W, style weight W * perceptual.STYLE_GAIN (see perceptual.loss_weights).
    style_strength: float | None = None
    content_weight: float | None = None
    style_weight: float | None = None
    tv_weight: float = 1.0
    content_layers: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_CONTENT_LAYERS))
    style_layers: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_STYLE_LAYERS))
    style_blend: Sequence[float] | None = None
    style_scale: float = 1.0
    init: str = "content"
    optimizer: str = "lbfgs"
    steps: int | Sequence[int] | None = None
    lr: float | None = None
    multiscale: bool = True
    pyramid_levels: int = 4
    scales: Sequence[int] | None = None
    original_colors: bool = False
    pooling: str = "max"
    backbone: str = "vgg19"            # the VGG variant (backbone.VGGFeatures' arch)
    weights: str | None = None
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0

    def validate(self) -> None:
        """One-line errors for settings no run can use (the style images are checked by :func:`stylize`)."""
        if self.optimizer not in OPTIMIZERS:
            raise StyleforgeError(f"unknown optimizer {self.optimizer!r}: use {' or '.join(OPTIMIZERS)}")
        guard.check_numbers([("--style-scale", self.style_scale, guard.POSITIVE), ("--lr", self.lr, guard.POSITIVE),
                             ("--tv-weight", self.tv_weight, guard.NON_NEGATIVE), ("--seed", self.seed, guard.SEED),
                             ("--size", self.size, guard.COUNT)])
        self.weights_pair()
        self.steps_per_scale(len(self.scale_sizes()))

    def weights_pair(self) -> tuple[float, float]:
        """(content_weight, style_weight) after applying style_strength and defaults."""
        return loss_weights(self.style_strength, self.content_weight, self.style_weight)

    def scale_sizes(self) -> list[int]:
        """Long-side sizes, coarse to fine, ending at ``size``."""
        if self.size < 1:
            raise StyleforgeError(f"--size must be positive, got {self.size}")
        if self.scales:
            sizes = sorted(int(s) for s in self.scales)
            if sizes[-1] > self.size:
                raise StyleforgeError(f"--scales {sizes[-1]} is larger than --size {self.size}: the scales run "
                                      "coarse to fine up to --size; give smaller scales or a larger --size")
            if len(set(sizes)) < len(sizes):
                raise StyleforgeError(f"--scales {','.join(map(str, self.scales))} repeats a size: give each once")
            return sizes if sizes[-1] == self.size else sizes + [self.size]
        if not self.multiscale:
            return [self.size]
        # One coarse scale at half size: in bench/stylize_speed.py a 256 px stage before 512 px
        # paid for itself, a further 128 px stage did not (its optimum is too far from the
        # full-size one for this loss).
        return [self.size // 2, self.size] if self.size // 2 >= MIN_COARSE_SIZE else [self.size]

    def _named(self, n_scales: int) -> str:
        """The scales, where --scales was given and --size added one to them."""
        if not self.scales or n_scales == len(self.scales):
            return ""
        return f" ({', '.join(map(str, self.scale_sizes()))}: --scales, then --size {self.size})"

    def steps_per_scale(self, n_scales: int) -> list[int]:
        steps = self.steps
        if steps is None:
            coarse, final = DEFAULT_STEPS[self.optimizer]
            steps = [coarse] * (n_scales - 1) + [final]
        if isinstance(steps, int):
            steps = [steps] * n_scales
        steps = [int(s) for s in steps]
        if len(steps) != n_scales:
            there = "is 1 scale" if n_scales == 1 else f"are {n_scales} scales"
            why = (f" (without --scales, sizes under {2 * MIN_COARSE_SIZE} px run at one scale)"
                   if n_scales == 1 and self.multiscale and not self.scales else "")
            raise StyleforgeError(f"--steps lists {len(steps)} values but there {there}{why}{self._named(n_scales)}: "
                                  "give one value per scale, or one for all")
        if any(s < 0 for s in steps):
            raise StyleforgeError("--steps must not be negative")
        if steps[-1] == 0:  # the picture would never be optimized at its own size (the photo, or a coarse result)
            raise StyleforgeError("--steps: the last scale (the picture's size) needs at least 1 step")
        return steps


@dataclass
class Progress:
    """What the progress callback receives after each optimizer step."""

    scale: int              # 0-based index of the current scale
    n_scales: int
    step: int               # 1-based step within the scale
    steps: int
    size: tuple[int, int]   # (H, W) at this scale
    losses: dict[str, float]
    image: torch.Tensor     # current image (a view; copy it to keep it)


@dataclass
class StylizeResult:
    image: torch.Tensor                 # (1, 3, H, W) in [0, 1], on the CPU
    history: list[dict[str, float]]
    config: dict
    seconds: float


def _as_pil_source(x: ImageLike) -> Image.Image:
    """Keep images at full resolution (PIL) so each scale resizes from the original."""
    if isinstance(x, torch.Tensor):
        return tensor_to_pil(x)
    return open_rgb(x)


def _resize_to(image: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == hw:
        return image
    return F.interpolate(image, size=hw, mode="bicubic", align_corners=False).clamp_(0, 1)


# How far --init's width/height may be from the content's: a picture stylize wrote for this content (its
# OUT.partial.png) differs by pixel rounding alone; anything further would be stretched.
INIT_ASPECT_SLACK = 0.05


def _initial_image(init: str, content: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if init == "content":
        return content.clone()
    if init == "noise":
        return torch.rand(content.shape, generator=generator)
    if not os.path.exists(init):
        raise StyleforgeError(f"--init {init!r} is neither 'content', 'noise' nor an existing image file")
    image = load_image(init)
    (h, w), (ch, cw) = _hw(image), _hw(content)
    if abs(math.log((w / h) / (cw / ch))) > math.log(1 + INIT_ASPECT_SLACK):
        raise StyleforgeError(f"--init {init} is {w}x{h} and the content {cw}x{ch}: it would be stretched to the "
                              "content's shape; give an image of that shape (such as OUT.partial.png)")
    return _resize_to(image, (ch, cw))


def _hw(image: torch.Tensor) -> tuple[int, int]:
    return image.shape[-2], image.shape[-1]


def stylize(content: ImageLike, styles: ImageLike | Sequence[ImageLike],
            config: StylizeConfig | None = None,
            callback: Callable[[Progress], None] | None = None,
            extractor: VGGFeatures | None = None) -> StylizeResult:
    """Stylize ``content`` with one or more ``styles``; returns the image and loss history.

    Images are file paths or (1, 3, H, W) tensors in [0, 1]. ``callback`` is called after
    every optimizer step with a :class:`Progress`. A prebuilt ``extractor`` (covering the
    configured layers) skips loading the backbone again.
    """
    cfg = config or StylizeConfig()
    start = time.perf_counter()
    styles = [styles] if isinstance(styles, (str, os.PathLike, torch.Tensor)) else list(styles)
    if not styles:
        raise StyleforgeError("give at least one style image")
    blend = normalized_blend(cfg.style_blend or None, len(styles))
    cfg.validate()
    content_w, style_w = cfg.weights_pair()
    sizes = cfg.scale_sizes()
    steps = cfg.steps_per_scale(len(sizes))

    content_src = _as_pil_source(content)
    style_srcs = [_as_pil_source(s) for s in styles]
    rt = make_runtime(cfg.device, cfg.precision)
    guard.check_memory(guard.scaled_pixels(content_src.size, sizes[-1])
                       * (guard.VGG_BYTES_PER_PIXEL + guard.LBFGS_BYTES_PER_PIXEL)
                       + max(guard.scaled_pixels(s.size, sizes[-1] * cfg.style_scale) for s in style_srcs)
                       * guard.VGG_BYTES_PER_PIXEL,
                       f"stylize at --size {sizes[-1]} (--style-scale {cfg.style_scale:g})",
                       "use a smaller --size or --style-scale", rt.device)
    generator = seed_everything(cfg.seed)
    if extractor is None:
        extractor = VGGFeatures(list(cfg.content_layers) + list(cfg.style_layers), arch=cfg.backbone,
                                pooling=cfg.pooling, weights=cfg.weights)
    extractor = rt.to(extractor)
    _check_min_size(content_src, style_srcs, sizes, cfg.style_scale, extractor)

    history: list[dict[str, float]] = []
    image: torch.Tensor | None = None
    for k, (size, n_steps) in enumerate(zip(sizes, steps)):
        content_k = pil_to_tensor(resize_long_side(content_src, size))
        hw = _hw(content_k)
        style_k = [pil_to_tensor(resize_long_side(s, max(1, round(size * cfg.style_scale)))) for s in style_srcs]
        objective = PerceptualLoss(extractor, style_k, cfg.content_layers, cfg.style_layers, blend=blend,
                                   content=content_k, content_weight=content_w, style_weight=style_w,
                                   tv_weight=cfg.tv_weight, rt=rt)
        image = _initial_image(cfg.init, content_k, generator) if image is None else _resize_to(image, hw)
        image = _optimize(objective, rt.to(image), n_steps, cfg, rt,
                          lambda step, parts, x: _report(callback, history, k, len(sizes), step,
                                                         n_steps, hw, parts, x, start))
    assert image is not None  # there is always at least one scale
    result = image.detach().float().cpu().clamp(0, 1).contiguous()
    if cfg.original_colors:
        result = apply_original_colors(result, pil_to_tensor(resize_long_side(content_src, sizes[-1])))
    return StylizeResult(result, history, _config_record(cfg, content_w, style_w, sizes, steps, rt,
                                                         extractor), time.perf_counter() - start)


def _check_min_size(content_src: Image.Image, style_srcs: list[Image.Image], sizes: list[int], style_scale: float,
                    extractor: VGGFeatures) -> None:
    need = extractor.min_size
    smallest = sizes[0]
    for label, src, s in [("content", content_src, smallest)] + \
            [("style", x, max(1, round(smallest * style_scale))) for x in style_srcs]:
        w, h = resize_long_side(src, s).size
        if min(w, h) < need:
            deepest = extractor.layers[-1] if len(extractor.layers) == 1 else "the chosen layers"
            raise StyleforgeError(
                f"the {label} image is {w}x{h} px at size {s}, too small for {deepest} "
                f"(needs at least {need} px per side): use a larger --size/--style-scale or shallower layers"
            )


def _report(callback: Callable[[Progress], None] | None, history: list[dict[str, float]], k: int, n_scales: int,
            step: int, n_steps: int, hw: tuple[int, int], parts: Mapping[str, torch.Tensor], image: torch.Tensor,
            start: float) -> None:
    values = {name: float(v) for name, v in parts.items()}
    history.append({"scale": k, "height": hw[0], "width": hw[1], "step": step,
                    "seconds": round(time.perf_counter() - start, 3), **values})
    if callback is not None:
        callback(Progress(k, n_scales, step, n_steps, hw, values, image))


class _PixelPyramid:
    """The image as a sum of a full-resolution layer and ``levels`` coarser layers,
    ``x = p0 + sum_k gain**k * upsample(p_k)`` (p_k at 1/2**k resolution, starting at 0).

    Departure from the papers, which optimize pixels directly: the same image, but a
    gradient step now moves low frequencies much further, which is where plain pixel
    L-BFGS converges slowly (the large-scale content/style trade-off). The layers stay in
    plain NCHW layout because L-BFGS flattens gradients with ``.view``.
    """

    def __init__(self, image: torch.Tensor, levels: int, gain: float) -> None:
        h, w = image.shape[-2:]
        self.hw, self.gain = (h, w), gain
        self.layers = [image.detach().contiguous().clone().requires_grad_(True)]
        for k in range(1, levels + 1):
            if min(h, w) >> k < 2:
                break
            self.layers.append(torch.zeros(1, 3, -(-h // 2**k), -(-w // 2**k), device=image.device,
                                           requires_grad=True))

    def image(self) -> torch.Tensor:
        x = self.layers[0]
        for k, layer in enumerate(self.layers[1:], start=1):
            x = x + (self.gain ** k) * F.interpolate(layer, size=self.hw, mode="bilinear", align_corners=False)
        return x


def _lbfgs_history(n_params: int) -> int:
    """L-BFGS keeps 2 vectors per remembered step; cap their memory at LBFGS_HISTORY_BYTES
    (100 steps up to ~600 px, fewer above, at least 20) so 1024 px stays within a few GB."""
    return max(20, min(100, LBFGS_HISTORY_BYTES // (8 * n_params)))


def _optimize(objective: PerceptualLoss, image: torch.Tensor, steps: int, cfg: StylizeConfig,
              rt: Runtime, report: Callable) -> torch.Tensor:
    """Run ``steps`` optimizer iterations on the image, starting from ``image``."""
    if cfg.pyramid_levels < 0:
        raise StyleforgeError(f"--pyramid-levels must be 0 or more, got {cfg.pyramid_levels}")
    pyramid = _PixelPyramid(image, cfg.pyramid_levels, PYRAMID_GAIN)
    if steps == 0:
        return image.detach()
    last_parts: dict[str, torch.Tensor] = {}

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        x = pyramid.image()
        # Departure from the classic recipe: the loss is taken on the clamped image, so the
        # optimizer minimizes the loss of what is finally saved (unconstrained L-BFGS
        # drifts out of [0, 1] and the final clamp then undoes much of its progress). A
        # penalty, zero for any in-range image, pulls stray pixels back where the loss has
        # a gradient again.
        inside = x.clamp(0, 1)
        parts = objective(inside)
        total = parts["total"]
        penalized = total + RANGE_PENALTY * (x - inside).pow(2).mean()
        if not torch.isfinite(penalized):
            raise StyleforgeError(
                "the loss became NaN/inf: lower --style-weight/--tv-weight or --lr, or use --precision fp32"
            )
        penalized.backward()
        last_parts.clear()
        last_parts.update({n: v.detach() for n, v in parts.items()})
        return total

    opt: torch.optim.Optimizer
    if cfg.optimizer == "lbfgs":
        # One iteration per step() call: torch's L-BFGS keeps its history in the optimizer
        # state across calls, so this equals one long run while letting us report progress.
        # Tolerances off: the relative losses have small gradients that would trip them.
        opt = torch.optim.LBFGS(pyramid.layers, lr=cfg.lr or DEFAULT_LR["lbfgs"], max_iter=1,
                                history_size=_lbfgs_history(sum(p.numel() for p in pyramid.layers)),
                                tolerance_grad=0.0, tolerance_change=0.0)
    else:
        opt = torch.optim.Adam(pyramid.layers, lr=cfg.lr or DEFAULT_LR["adam"])
    for step in range(1, steps + 1):
        opt.step(closure)
        with torch.no_grad():
            current = pyramid.image().clamp_(0, 1)
        report(step, last_parts, current)
    return current


def _config_record(cfg: StylizeConfig, content_w: float, style_w: float, sizes: list[int], steps: list[int],
                   rt: Runtime, extractor: VGGFeatures) -> dict:
    record = asdict(cfg)
    record.update(content_layers=dict(cfg.content_layers), style_layers=dict(cfg.style_layers),
                  resolved={"content_weight": content_w, "style_weight": style_w, "scales": sizes,
                            "steps": steps, "device": str(rt.device), "precision": rt.precision,
                            "weights": extractor.source})
    if rt.peak_memory_mb() is not None:
        record["resolved"]["peak_gpu_mb"] = rt.peak_memory_mb()
    return record
