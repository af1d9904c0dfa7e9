"""The frozen-trunk cache: run a frozen trunk over a dataset once, train the head on the result.

When no trunk parameter trains and there is no augmentation, every epoch would feed the
trunk the same images and get the same outputs, so :func:`extract_features` computes
them once (batched, ``no_grad``, under the runtime's autocast) and the training loop
feeds the head from the cache. The trunk is in eval mode either way (frozen batch norm
keeps its running statistics), so cached and uncached training compute the same thing.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from ..backbone import int8_copy
from ..runtime.device import Runtime
from .models import Classifier

CALIBRATION_IMAGES = 256


def extraction_trunk(model: Classifier, rt: Runtime, prepare: Callable[[torch.Tensor], torch.Tensor],
                     int8_from: torch.Tensor | None = None, seed: int = 0) -> nn.Module:
    """What the cache runs: ``input_norm`` + ``trunk``, in the fastest form for the device.

    On the CPU, a channels_last copy (oneDNN's fp32 convolutions: VGG19 to relu4_4 at
    64 px runs 1.3x faster than in the default layout on an AVX2 CPU), or with
    ``int8_from`` (uint8 training images) an int8 copy calibrated on
    ``CALIBRATION_IMAGES`` of them, drawn with ``seed``. Elsewhere the model itself.
    """
    body = nn.Sequential(model.input_norm, model.trunk)
    if int8_from is not None:
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(int8_from), generator=g)[:CALIBRATION_IMAGES]
        batches = (prepare(int8_from[pick[i:i + 64]]) for i in range(0, len(pick), 64))
        return int8_copy(body, batches)
    if rt.on_cpu and not rt.channels_last:
        return copy.deepcopy(body).to(memory_format=torch.channels_last)
    return body


@torch.no_grad()
def extract_features(trunk: nn.Module, images: torch.Tensor,
                     prepare: Callable[[torch.Tensor], torch.Tensor], rt: Runtime, batch_size: int = 256,
                     progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """``trunk`` (from :func:`extraction_trunk`) over every image (uint8 ``(N, C, H, W)``), as float32.

    ``prepare`` turns a uint8 batch into the model's input on the device (scaling,
    resizing). The result stays on the device where it is CUDA (features are small next
    to images), otherwise on the CPU.
    """
    was_training = trunk.training
    trunk.eval()
    chunks = []
    n = len(images)
    try:
        for start in range(0, n, batch_size):
            x = prepare(images[start:start + batch_size])
            if rt.on_cpu and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with rt.autocast():
                f = trunk(x)
            chunks.append(f.float().flatten(1) if f.dim() > 2 else f.float())
            if progress is not None:
                progress(min(start + batch_size, n), n)
    finally:
        trunk.train(was_training)
    if not chunks:
        return torch.zeros(0, 0)
    return torch.cat(chunks)
