"""Loss functions for style transfer: pure functions of tensors.

Departure from Gatys et al. (2016) and Johnson et al. (2016): each layer's content and
style loss is divided by the mean square of its *target* (a relative error). The
classic formulas carry the squared activation scale of the network, so a weighting
tuned on torchvision's VGG19 turns into pure texture on the original Caffe VGG19, whose
activations are 40-270x larger. Relative errors make the weights mean the same thing for
any backbone, any layer and any image size, and targets' scales are computed once.
"""

from __future__ import annotations

from typing import Mapping

import torch

# Guards against an all-zero target only: small enough not to bias tiny but real activations.
EPS = 1e-30


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix of (B, C, H, W) features, averaged over positions: (B, C, C).

    Dividing by H*W (rather than leaving the sum) makes targets comparable across image
    sizes, which multi-scale optimization and ``--style-scale`` rely on. Computed in fp32.
    """
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w).float()
    return torch.bmm(f, f.transpose(1, 2)) / (h * w)


def mean_square(x: torch.Tensor) -> torch.Tensor:
    """Mean of squares, the normalizer of the relative losses (compute once per target)."""
    return x.float().pow(2).mean()


def content_loss(features: torch.Tensor, target: torch.Tensor,
                 target_ms: torch.Tensor | None = None) -> torch.Tensor:
    """Relative squared error: mean((F - T)^2) / mean(T^2). Zero when F == T."""
    scale = mean_square(target) if target_ms is None else target_ms
    return (features.float() - target.float()).pow(2).mean() / (scale + EPS)


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


def weighted_sum(losses: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """Sum of per-layer losses times their weights."""
    return sum(weights[name] * losses[name] for name in weights)
