"""Batches for classifier training and evaluation: the data phase of :func:`~.train.fit`.

Data are uint8 tensors in memory (:mod:`.data`); a batch is cut by indexing, converted to
float and resized on the device, and augmented there as a batch (random crop with
reflection padding, horizontal flip) — a departure from per-image CPU transforms, for
speed on small datasets. A :class:`Source` serves one split, as images or as cached
frozen-trunk features (:mod:`.cache`); :func:`evaluate_source` runs a whole split.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import distributed
from ..runtime.device import Runtime
from ..runtime.errors import StyleforgeError
from .data import DataSpec, Splits, load_splits
from .recipe import classification_loss

AUGMENTS = ("crop", "flip")


def check_augment(augment: Sequence[str]) -> None:
    """A one-line error for an ``--augment`` name that is not in :data:`AUGMENTS`."""
    for a in augment:
        if a not in AUGMENTS:
            raise StyleforgeError(f"unknown --augment {a!r}: use none or a list of {', '.join(AUGMENTS)}")


def prepare_batch(x: torch.Tensor, rt: Runtime, size: tuple[int, int] | None) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` → float in [0, 1] on the device, resized to ``size``."""
    x = rt.to(x, non_blocking=True).float().div_(255)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        down = size[0] < x.shape[-2]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=down)
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
    return x


def augment_batch(x: torch.Tensor, ops: list[str], gen: torch.Generator | None) -> torch.Tensor:
    """Random crop (reflection padding of 1/8 of the side) and horizontal flip, per image."""
    b, _, h, w = x.shape
    if "crop" in ops:
        pad = max(1, round(h / 8))
        xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]   # (B, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]   # (B, 1, W)
        # Advanced indexing gives (B, H, W, C); the permute is a channels_last view.
        x = xp[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if "flip" in ops:
        flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


class Source:
    """Where a split's inputs come from: images (uint8) or cached trunk features."""

    def __init__(self, data: torch.Tensor, labels: torch.Tensor, rt: Runtime, size, features: bool) -> None:
        self.data, self.rt, self.size, self.features = data, rt, size, features
        self.labels = labels.to(rt.device)
        if not features and rt.holds(data):
            self.data = data.to(rt.device)
        elif rt.pin_memory and not features:
            self.data = data.pin_memory()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, index: torch.Tensor, augment: list[str] | None = None,
              gen: torch.Generator | None = None) -> torch.Tensor:
        x = self.data[index.to(self.data.device)]
        if self.features:
            return x.to(self.rt.device, non_blocking=True)
        x = prepare_batch(x, self.rt, self.size)
        if augment:
            x = augment_batch(x, augment, gen)
        return x


@torch.no_grad()
def evaluate_source(net: nn.Module, source: Source, rt: Runtime, ctx: distributed.Dist, batch_size: int,
                    num_classes: int, loss: str = "cross-entropy") -> dict[str, Any]:
    """Loss, accuracy and confusion matrix over a whole split, sharded ``rank::world``.

    Each process sums loss and counts over its shard; the sums are added over processes,
    so the totals are exact whatever the dataset size and world size.
    """
    was = net.training
    net.eval()
    index = torch.arange(ctx.rank, len(source), ctx.world_size)
    loss_sum = torch.zeros((), dtype=torch.float64)
    cm = torch.zeros(num_classes * num_classes, dtype=torch.float64)
    try:
        for start in range(0, len(index), batch_size):
            idx = index[start:start + batch_size]
            x, y = source.batch(idx), source.labels[idx.to(source.labels.device)]
            with rt.autocast():
                out = net(x)
            out = out.float()
            loss_sum += classification_loss(loss, out, y, reduction="sum").double().cpu()
            cm += torch.bincount((y * num_classes + out.argmax(1)).cpu(), minlength=num_classes ** 2).double()
    finally:
        net.train(was)
    total = ctx.sum(torch.cat([loss_sum.view(1), cm]))
    cm = total[1:].view(num_classes, num_classes).round().long()
    n = int(cm.sum())
    return {"loss": float(total[0]) / n if n else None, "acc": int(cm.diag().sum()) / n if n else None,
            "n": n, "confusion": cm}


def load_data(ctx: distributed.Dist, spec: DataSpec) -> Splits:
    """The splits, on every process. Rank 0 decodes first (and fills the decode cache); the others then read
    the cache."""
    if not ctx.is_main:
        ctx.barrier()
    try:
        return load_splits(spec)
    finally:
        if ctx.is_main:
            ctx.barrier()
