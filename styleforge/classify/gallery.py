"""Labelled image grids: a run's ``predictions.png`` and ``classify preview``'s data preview."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from . import report


def image_grid(images: torch.Tensor, titles: Sequence[str], colors: Sequence[str] | None = None,
               suptitle: str = "", columns: int = 8):
    """A grid of images (uint8 or [0, 1] float, ``(N, C, H, W)``) with a title above each;
    ``colors`` colours the titles (and frames) per image. Returns the Figure."""
    n = len(images)
    cols = max(1, min(columns, n))
    rows = max(1, math.ceil(n / cols))
    h, w = images.shape[-2:]
    tile = 1.6
    fig = report.new_figure((tile * cols * max(1.0, w / h), (tile + 0.35) * rows / min(1.0, w / h) + 0.5),
                            layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        pic = x[i].permute(1, 2, 0).clamp(0, 1).numpy()
        gray = pic.shape[-1] == 1
        ax.imshow(pic[..., 0] if gray else pic, cmap="gray" if gray else None, vmin=0, vmax=1,
                  interpolation="nearest" if max(h, w) <= 64 else "antialiased")
        color = colors[i] if colors else "black"
        ax.set_title(titles[i], fontsize=7, color=color)
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(2.5 if color != "black" else 0.5)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def predictions_figure(images: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor, classes: Sequence[str],
                       title: str = ""):
    """Test images with the predicted class and its probability above the true class;
    mistakes in red. ``probs``: ``(N, K)`` softmax outputs."""
    conf, pred = probs.max(1)
    titles, colors = [], []
    for p, c, y in zip(pred.tolist(), conf.tolist(), labels.tolist()):
        right = p == y
        titles.append(f"{classes[p]} {c:.0%}" + ("" if right else f"\n(true: {classes[y]})"))
        colors.append("tab:green" if right else "tab:red")
    wrong = sum(c == "tab:red" for c in colors)
    head = f"{title}: " if title else ""
    return image_grid(images, titles, colors, f"{head}predicted (probability); {wrong} of {len(titles)} wrong, "
                                              "in red with the true class")


def pick_per_class(labels: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """Up to ``count`` indices, spread over the classes in turn (seeded), in class order."""
    g = torch.Generator().manual_seed(seed)
    k = int(labels.max()) + 1 if len(labels) else 0
    pools = [torch.nonzero(labels == c).flatten() for c in range(k)]
    pools = [p[torch.randperm(len(p), generator=g)] for p in pools]
    picked: list[int] = []
    depth = 0
    while len(picked) < count and any(depth < len(p) for p in pools):
        picked += [int(p[depth]) for p in pools if depth < len(p)][:count - len(picked)]
        depth += 1
    return torch.tensor(sorted(picked, key=lambda i: (int(labels[i]), i)), dtype=torch.long)


@torch.no_grad()
def model_predictions_figure(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                             classes: Sequence[str], prepare: Callable[[torch.Tensor], torch.Tensor], count: int = 24,
                             seed: int = 0, title: str = ""):
    """:func:`predictions_figure` for ``count`` images (spread over the classes) under
    ``model``; ``prepare`` turns a uint8 batch into the model's input."""
    index = pick_per_class(labels, count, seed)
    was = model.training
    model.eval()
    try:
        probs = torch.softmax(model(prepare(images[index])).float(), 1).cpu()
    finally:
        model.train(was)
    return predictions_figure(images[index], labels[index], probs, classes, title)
