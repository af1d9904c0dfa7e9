"""The frozen-trunk cache: run a frozen trunk over a dataset once, train the head on the result.

When no trunk parameter trains and there is no augmentation, every epoch would feed the
trunk the same images and get the same outputs, so :func:`extract_features` computes
them once (batched, ``no_grad``, under the runtime's autocast) and the training loop
feeds the head from the cache. The trunk is in eval mode either way (frozen batch norm
keeps its running statistics), so cached and uncached training compute the same thing.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..device import Runtime
from .models import Classifier


@torch.no_grad()
def extract_features(model: Classifier, images: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor],
                     rt: Runtime, batch_size: int = 256,
                     progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """``model.features`` of every image (uint8 ``(N, C, H, W)``), as float32.

    ``prepare`` turns a uint8 batch into the model's input on the device (scaling,
    resizing). The result stays on the device where it is CUDA (features are small next
    to images), otherwise on the CPU.
    """
    was_training = model.training
    model.eval()
    chunks = []
    n = len(images)
    try:
        for start in range(0, n, batch_size):
            x = prepare(images[start:start + batch_size])
            with rt.autocast():
                f = model.features(x)
            chunks.append(f.float().flatten(1) if f.dim() > 2 else f.float())
            if progress is not None:
                progress(min(start + batch_size, n), n)
    finally:
        model.train(was_training)
    if not chunks:
        return torch.zeros(0, 0)
    return torch.cat(chunks)
