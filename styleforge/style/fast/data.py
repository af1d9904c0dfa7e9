"""Training photos for fast style networks: a folder of images, random crops, exact replay.

Every sample is addressed by its global position ``p`` in the training stream (step
``s`` of a run with global batch ``B`` reads positions ``s*B ... s*B+B-1``). Position ``p``
maps to an image through a per-epoch permutation seeded by ``(seed, epoch)`` and to a crop
through a generator seeded by ``(seed, p)``. So a resumed run reads exactly what an
uninterrupted one would, and a run split over N processes (each takes its slice of every
global batch) reads exactly what one process with the same global batch reads, which is
what makes resume and multi-process runs reproduce single-process weights.

Departure from PyTorch's ``DistributedSampler``: it shards the epoch permutation
round-robin, so the samples inside a global batch depend on the number of processes;
here they do not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ...runtime.device import STREAM_GAP, derived_seed
from ...runtime.errors import StyleforgeError
from ...runtime.io import IMAGE_SUFFIXES, header_size, open_rgb, pil_to_tensor


def list_images(folder: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """Image files under ``folder`` (recursively, sorted) and those that are not readable images.

    Only headers are read here (fast on large folders); files that fail to decode later
    are skipped and counted by the dataset.
    """
    root = Path(folder)
    if not root.is_dir():
        raise StyleforgeError(f"--data {str(root)!r} is not a folder: give a folder of photos")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    good: list[Path] = []
    bad: list[Path] = []
    for p in files:
        (good if header_size(p) is not None else bad).append(p)
    if not good:
        what = f" ({len(bad)} unreadable)" if bad else ""
        raise StyleforgeError(f"--data {str(root)!r} holds no readable images{what}: "
                              f"give a folder with photos ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
    return good, bad


class RandomCrops(Dataset):
    """Item ``(index, seed)`` -> a random ``size`` x ``size`` crop in [0, 1] and the bad files met.

    The image is scaled so its short side is ``size * U(1, max_zoom)`` (each crop then holds
    most of the photo), or with ``photo_size`` so its long side is ``photo_size * U(1, max_zoom)``
    (the scale the network will paint at; at least ``size`` on the short side), then cropped at a
    random place and flipped at random. A file that fails to decode is recorded and the next file is used instead.
    """

    def __init__(self, files: list[Path], size: int, max_zoom: float = 1.25, photo_size: int | None = None) -> None:
        self.files, self.size, self.max_zoom, self.photo_size = files, size, max_zoom, photo_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, list[str]]:
        index, seed = item
        g = torch.Generator().manual_seed(seed)
        bad: list[str] = []
        for k in range(len(self.files)):
            path = self.files[(index + k) % len(self.files)]
            try:
                img = open_rgb(path)
                break
            except StyleforgeError:
                bad.append(str(path))
        else:
            raise StyleforgeError("none of the training images can be decoded")
        w, h = img.size
        zoom = 1.0 + (self.max_zoom - 1.0) * torch.rand((), generator=g).item()
        if self.photo_size is None:
            scale = self.size * zoom / min(w, h)
        else:
            scale = max(self.photo_size * zoom / max(w, h), self.size / min(w, h))
        if abs(scale - 1.0) > 1e-3:
            nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
            img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
            w, h = nw, nh
        x0 = int(torch.randint(0, w - self.size + 1, (), generator=g))
        y0 = int(torch.randint(0, h - self.size + 1, (), generator=g))
        crop = pil_to_tensor(img.crop((x0, y0, x0 + self.size, y0 + self.size)))[0]
        if torch.rand((), generator=g).item() < 0.5:
            crop = crop.flip(-1)
        return crop, bad


def collate(batch: list[tuple[torch.Tensor, list[str]]]) -> tuple[torch.Tensor, list[str]]:
    return torch.stack([x for x, _ in batch]), [p for _, bad in batch for p in bad]


class StreamSampler(Sampler):
    """Yields this process's slice of each global batch, from ``start_step`` to ``steps``."""

    def __init__(self, n: int, global_batch: int, steps: int, seed: int, start_step: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if global_batch % world_size:
            raise StyleforgeError(f"global batch {global_batch} does not divide over {world_size} processes")
        self.n, self.global_batch, self.steps, self.seed = n, global_batch, steps, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self._perms: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(
                self.n, generator=torch.Generator().manual_seed(derived_seed(self.seed, epoch)))}
        return self._perms[epoch]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_rank = self.global_batch // self.world_size
        for step in range(self.start_step, self.steps):
            first = step * self.global_batch + self.rank * per_rank
            yield [(int(self._perm(p // self.n)[p % self.n]), derived_seed(self.seed, p, STREAM_GAP))
                   for p in range(first, first + per_rank)]
