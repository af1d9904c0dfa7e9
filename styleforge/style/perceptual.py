"""The perceptual loss of every style job: content, style and total-variation terms on VGG features.

:class:`PerceptualLoss` is what :func:`styleforge.stylize` minimizes over pixels and what
fast-style training minimizes over a network's weights. The per-layer terms are the
relative losses of :mod:`styleforge.style.losses`; this module adds the layer and group weights,
computes the targets once, and defines what ``--style-strength`` means.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from ..backbone import VGGFeatures
from ..runtime.device import Runtime
from ..runtime.errors import StyleforgeError
from . import losses

# Relative style errors are about 100x smaller than relative content errors at a good
# balance, so style strength W maps to the weights (content, style) = (1 - W, W * STYLE_GAIN).
STYLE_GAIN = 100.0
# Style strength when neither it nor explicit weights are given (stylize, fast train).
DEFAULT_STYLE_STRENGTH = 0.5
# What --style-strength means, for every command's --help (the one definition).
STYLE_STRENGTH_HELP = (f"Style strength W in [0,1]: content weight 1-W, style weight {STYLE_GAIN:g}*W "
                       "(0 keeps the content, 1 ignores it).")
# The named parts a PerceptualLoss returns; "total" is the sum of the other three.
PARTS = ("content", "style", "tv", "total")


def loss_weights(style_strength: float | None, content_weight: float | None, style_weight: float | None,
                 default_strength: float = DEFAULT_STYLE_STRENGTH) -> tuple[float, float]:
    """(content_weight, style_weight) from style strength W or explicit weights (not both).

    W gives ``(1 - W, W * STYLE_GAIN)``; without W, each weight not given comes from
    ``default_strength`` the same way.
    """
    if style_strength is not None:
        if content_weight is not None or style_weight is not None:
            raise StyleforgeError("give either --style-strength or --content-weight/--style-weight, not both")
        w = style_strength
        if not (0.0 <= w <= 1.0) or math.isnan(w):
            raise StyleforgeError(f"--style-strength must be between 0 and 1, got {w}")
        return 1.0 - w, w * STYLE_GAIN
    c = 1.0 - default_strength if content_weight is None else content_weight
    s = default_strength * STYLE_GAIN if style_weight is None else style_weight
    if c < 0 or s < 0:
        raise StyleforgeError("--content-weight and --style-weight must not be negative")
    return c, s


def normalized(layer_weights: Mapping[str, float]) -> dict[str, float]:
    """Layer weights scaled to sum to 1, so the group weight means the same for any layer set."""
    total = sum(layer_weights.values())
    if not all(math.isfinite(w) and w >= 0 for w in layer_weights.values()) or total <= 0:
        raise StyleforgeError("layer weights must be finite, non-negative and not all zero")
    return {n: w / total for n, w in layer_weights.items()}


def normalized_blend(blend: Sequence[float] | None, n: int) -> list[float]:
    """``--style-blend``: weights for ``n`` style images (default equal), checked and scaled to sum to 1."""
    weights = [1.0] * n if blend is None else [float(b) for b in blend]
    if len(weights) != n:
        have = f"{len(weights)} weight{'s' if len(weights) != 1 else ''}"
        images = f"{n} style image{'s' if n != 1 else ''}"
        raise StyleforgeError(f"--style-blend has {have} but there {'are' if n != 1 else 'is'} {images}: give "
                              "one weight per style image")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise StyleforgeError("--style-blend weights must be finite, non-negative and not all zero")
    total = sum(weights)
    return [w / total for w in weights]


class PerceptualLoss:
    """Weighted content + style + tv loss of images, with the style Gram targets computed once.

    ``styles`` are (1, 3, H, W) images; with several, the Gram targets are blended with
    ``blend`` (default: equal). Content targets come either once from ``content`` (one
    image, as in :func:`styleforge.stylize`) or with each call (a batch of inputs, as in
    fast training). Calling returns the weighted parts named in :data:`PARTS`.
    """

    def __init__(self, extractor: VGGFeatures, styles: torch.Tensor | Sequence[torch.Tensor],
                 content_layers: Mapping[str, float], style_layers: Mapping[str, float], *,
                 content_weight: float, style_weight: float, tv_weight: float, rt: Runtime,
                 blend: Sequence[float] | None = None, content: torch.Tensor | None = None) -> None:
        self.extractor, self.rt = extractor, rt
        self.content_layers, self.style_layers = normalized(content_layers), normalized(style_layers)
        self.weights = {"content": content_weight, "style": style_weight, "tv": tv_weight}
        styles = [styles] if isinstance(styles, torch.Tensor) else list(styles)
        blend = [1.0] * len(styles) if blend is None else list(blend)
        grams: dict[str, torch.Tensor] = {}
        self.content_targets: dict[str, torch.Tensor] | None = None
        with torch.no_grad(), rt.autocast():
            for style, w in zip(styles, blend):
                feats = extractor(rt.to(style), layers=self.style_layers)
                for n in self.style_layers:
                    g = losses.gram_matrix(feats[n]) * w
                    grams[n] = grams[n] + g if n in grams else g
            if content is not None:
                feats = extractor(rt.to(content), layers=self.content_layers)
                self.content_targets = {n: feats[n].detach() for n in self.content_layers}
        self.style_targets = grams
        self.style_ms = {n: losses.mean_square(t) for n, t in grams.items()}
        if self.content_targets is not None:
            self.content_ms = {n: losses.mean_square(t) for n, t in self.content_targets.items()}

    def __call__(self, image: torch.Tensor, content: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The weighted parts for ``image`` (a batch), against the fixed content targets or,
        when given, each image's own ``content`` input (each image's relative error counts
        the same)."""
        return self._parts(image, content)[0]

    def scored(self, image: torch.Tensor) -> tuple[dict[str, float], dict[str, float]]:
        """The weighted parts of ``image`` against the fixed content targets, and the unweighted
        style loss at each style layer (where a style falls short), from one VGG pass, no grad."""
        with torch.no_grad():
            parts, by_layer = self._parts(image, None)
        return {n: float(v) for n, v in parts.items()}, {n: float(v) for n, v in by_layer.items()}

    def _parts(self, image: torch.Tensor, content: torch.Tensor | None
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if content is None and self.content_targets is None:
            raise ValueError("this PerceptualLoss has no content targets: pass content")
        with self.rt.autocast():
            if content is not None:
                with torch.no_grad():
                    # Per-call targets need VGG only up to the content layers (relu2_2 by
                    # default in fast training), not the full depth the style layers need.
                    want = self.extractor(self.rt.to(content), layers=self.content_layers)
            feats = self.extractor(self.rt.to(image))
        if content is not None:
            per_layer = {n: losses.image_content_loss(feats[n], want[n]) for n in self.content_layers}
        else:
            targets = self.content_targets
            assert targets is not None  # checked above
            per_layer = {n: losses.content_loss(feats[n], targets[n], self.content_ms[n]) for n in self.content_layers}
        content_term = losses.weighted_sum(per_layer, self.content_layers)
        by_layer = {n: losses.style_loss(losses.gram_matrix(feats[n]), self.style_targets[n], self.style_ms[n])
                    for n in self.style_layers}
        parts = {"content": self.weights["content"] * content_term,
                 "style": self.weights["style"] * losses.weighted_sum(by_layer, self.style_layers),
                 "tv": self.weights["tv"] * losses.tv_loss(image)}
        parts["total"] = parts["content"] + parts["style"] + parts["tv"]
        return parts, by_layer
