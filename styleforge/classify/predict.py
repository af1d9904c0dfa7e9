"""Predicting the class of new images with a trained classifier (``styleforge classify predict``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..runtime.device import runtime
from ..runtime.errors import StyleforgeError
from ..runtime.io import open_rgb
from .checkpoint import load_checkpoint, model_from_checkpoint
from .data import _fit_square
from .models import Classifier


@dataclass
class Prediction:
    """The ``top`` classes of one image, best first, as (class name, probability)."""

    image: str
    top: list[tuple[str, float]]

    @property
    def label(self) -> str:
        return self.top[0][0]

    def as_dict(self) -> dict[str, Any]:
        return {"image": self.image, "top": [{"class": c, "probability": p} for c, p in self.top]}


def load_classifier(run_or_checkpoint: str | os.PathLike, model: nn.Module | None = None
                    ) -> tuple[Classifier, dict[str, Any]]:
    """(model in eval mode, checkpoint record) from a run directory (its best.pt) or a
    checkpoint file. ``model``: a fresh instance of a network passed to ``fit(model=...)``."""
    ckpt = load_checkpoint(run_or_checkpoint)
    return model_from_checkpoint(ckpt, model), ckpt


def image_tensor(image: str | os.PathLike | Image.Image, shape: tuple[int, int, int]) -> torch.Tensor:
    """An image as the model's input ``(C, H, W)`` in [0, 1]: as training decodes folders,
    the shorter side resized and the centre cropped to the model's square input (a
    non-square input size is resized to directly); gray for 1-channel models."""
    img = image if isinstance(image, Image.Image) else open_rgb(image)
    c, h, w = shape
    img = img.convert("RGB")
    img = _fit_square(img, h) if h == w else img.resize((w, h), Image.Resampling.BICUBIC)
    if c == 1:
        img = img.convert("L")
    arr = np.array(img, dtype=np.uint8).reshape(h, w, c)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255)


@torch.no_grad()
def predict(run_or_checkpoint: str | os.PathLike, images: Sequence[str | os.PathLike | Image.Image], top_k: int = 3,
            device: str = "auto", model: nn.Module | None = None, batch_size: int = 64) -> list[Prediction]:
    """The ``top_k`` most probable classes of each image (softmax of the model's outputs)."""
    if not images:
        raise StyleforgeError("give at least one image")
    if top_k < 1:
        raise StyleforgeError(f"--top-k must be at least 1, not {top_k}")
    net, ckpt = load_classifier(run_or_checkpoint, model)
    shape = tuple(ckpt["input_shape"])
    classes = list(ckpt["class_names"])
    k = min(top_k, len(classes))
    rt = runtime(device, "fp32")
    net = rt.to(net)
    out: list[Prediction] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        x = torch.stack([image_tensor(im, shape) for im in chunk])
        probs = torch.softmax(net(rt.to(x)).float(), 1).cpu()
        values, index = probs.topk(k, 1)
        for im, v, i in zip(chunk, values.tolist(), index.tolist()):
            name = str(im) if not isinstance(im, Image.Image) else getattr(im, "filename", "") or "image"
            out.append(Prediction(name, [(classes[j], p) for j, p in zip(i, v)]))
    return out


def format_predictions(preds: Sequence[Prediction]) -> str:
    """One line per image: ``cat.png: cat 91.2%, dog 6.1%, frog 1.0%``."""
    return "\n".join(f"{Path(p.image).name}: " + ", ".join(f"{c} {v:.1%}" for c, v in p.top) for p in preds)
