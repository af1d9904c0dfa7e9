"""Colour handling shared by the style jobs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# RGB -> YIQ (NTSC). Luminance-only transfer keeps Y from the stylized image and I, Q
# from the content image (Gatys et al., "Preserving Color in Neural Artistic Style
# Transfer", 2016, the post-hoc variant).
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114],
                         [0.595716, -0.274453, -0.321263],
                         [0.211456, -0.522591, 0.311135]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def _apply(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", matrix.to(image), image)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luminance Y of a (B, 3, H, W) RGB batch (the YIQ weights above)."""
    return _apply(_RGB2YIQ[:1], image.float())


def chrominance(image: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) chrominance (I, Q) of a (B, 3, H, W) RGB batch: (0, 0) for a grey; I runs from
    blue-cyan to orange, Q from green to magenta."""
    return _apply(_RGB2YIQ[1:], image.float())


def original_colors(stylized: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The stylized image's luminance with the content image's chrominance, in [0, 1].

    ``content`` is resized to the stylized image's size if needed.
    """
    if content.shape[-2:] != stylized.shape[-2:]:
        content = F.interpolate(content, size=stylized.shape[-2:], mode="bicubic", align_corners=False)
    y = _apply(_RGB2YIQ, stylized.float())[:, :1]
    iq = _apply(_RGB2YIQ, content.float())[:, 1:]
    return _apply(_YIQ2RGB, torch.cat([y, iq], dim=1)).clamp(0, 1)
