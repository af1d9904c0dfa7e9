"""Whether a painting is one of flat planes (Picabia's Udnie) or textured: the share of its pixels on
flat planes. ``fast train`` chooses its hatching penalty by it (:func:`train.default_hatching_weight`),
and any-style transfer the blur of its tone step (:func:`universal.default_tone_blur`).

The shipped paintings at 512 px: udnie 0.42; starry_night 0.02, the_scream 0.09, composition_vii 0.07,
shipwreck 0.14, great_wave 0.15, mosaic 0.18, candy 0.07 (bench/HISTORY.md).
"""

from __future__ import annotations

import torch
from PIL import Image

from ...runtime.io import pil_to_tensor, resize_long_side, tensor_to_pil
from ..color import luminance
from ..losses import gradient_magnitudes

FLAT_SHARE = 0.3        # a painting with at least this share of flat pixels is one of planes
FLAT_GRADIENT = 0.01    # flat: a luminance gradient below this per px (luminance in [0, 1])
FLAT_SIZE = 512         # long side the painting is measured at (never enlarged: enlarging flattens it)


def _measured(painting: Image.Image | torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1] at FLAT_SIZE long side (Lanczos), or the painting's own size if smaller.
    A tensor goes through 8-bit PIL, so a painting measures the same as an image file or as its tensor."""
    if isinstance(painting, torch.Tensor):
        painting = tensor_to_pil(painting.reshape(-1, *painting.shape[-3:])[:1])
    if max(painting.size) > FLAT_SIZE:
        painting = resize_long_side(painting, FLAT_SIZE)
    return pil_to_tensor(painting)


def flat_share(painting: Image.Image | torch.Tensor) -> float:
    """Share of a painting's pixels on flat planes: luminance gradient magnitude under FLAT_GRADIENT per px,
    with the painting (a PIL image, or a (3, H, W) or (1, 3, H, W) tensor in [0, 1]) at FLAT_SIZE px long
    side or its own size if smaller."""
    magnitudes = gradient_magnitudes(luminance(_measured(painting)))
    return float((magnitudes < FLAT_GRADIENT).float().mean())


def is_planes(share: float) -> bool:
    """Whether a painting whose :func:`flat_share` is ``share`` is one of flat planes."""
    return share >= FLAT_SHARE
