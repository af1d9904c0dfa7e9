"""A labelled grid of dataset images as training sees them (``styleforge classify preview``)."""

from __future__ import annotations

from typing import Sequence

import torch

from ..runtime.device import runtime
from ..runtime.errors import StyleforgeError
from .batches import augment_batch, check_augment, prepare_batch
from .data import DataSpec, load_splits
from .gallery import image_grid, pick_per_class


def preview(spec: DataSpec, augment: Sequence[str] = (), count: int = 32, split: str = "train", seed: int = 0,
            columns: int = 8):
    """Up to ``count`` images of ``split`` (spread over the classes), resized to
    ``spec.image_size`` and augmented as training would (``augment``: crop, flip), each
    titled with its class. Returns the Figure."""
    if count < 1:
        raise StyleforgeError(f"--count must be at least 1, not {count}")
    check_augment(augment)
    splits = load_splits(spec.validate())
    data = {"train": splits.train, "val": splits.val, "test": splits.test}.get(split)
    if data is None or len(data) == 0:
        raise StyleforgeError(f"there is no {split} split: give --val-split > 0 or another --split")
    index = pick_per_class(data.labels, count, seed)
    size = (spec.image_size, spec.image_size) if spec.image_size else None
    x = prepare_batch(data.images[index], runtime("cpu", "fp32", False), size)
    if augment and split == "train":
        x = augment_batch(x, list(augment), torch.Generator().manual_seed(seed))
    titles = [splits.classes[int(y)] for y in data.labels[index]]
    shape = "x".join(map(str, x.shape[1:]))
    aug = f", augmented: {', '.join(augment)}" if augment and split == "train" else ""
    return image_grid(x, titles, suptitle=f"{len(index)} {split} images of {spec.dataset} as the model sees them "
                                          f"({shape}{aug}; before per-channel normalization)", columns=columns)
