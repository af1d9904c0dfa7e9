"""Looking inside a classifier: first-layer filters with their activation maps, and the
activation maps of any named layer, on one image.

Layers are named as ``named_modules`` names them (``trunk.0``, ``trunk.layer4``), plus
aliases: ``conv1`` (the first convolution), ``last_conv`` (the last one), VGG's own names
(``conv1_1`` ... ``relu5_4``) for ``vgg19`` and ``stem``, ``layer1`` ... ``layer4`` for
``resnet18``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import guard
from ..runtime.device import runtime
from ..runtime.errors import StyleforgeError, first_line
from ..runtime.io import header_size, load_image, names_a_path
from ..style.color import luminance
from . import report
from .checkpoint import input_shape_for, load_checkpoint, model_from_checkpoint
from .models import MODELS, Classifier, ResNetTrunk, VGGTrunk, build_model, check_input
from .spec import is_file_ref
from .spec import short_name as _short
from .summary import DEFAULT_SHAPE

# Input shape of a model given by name: ImageNet's size for the pretrained ones, else summary's DEFAULT_SHAPE.
PRETRAINED_SHAPE = (3, 224, 224)


@dataclass
class LoadedModel:
    model: Classifier
    input_shape: tuple[int, int, int]
    label: str  # what it is, for titles


def load_model(model_or_checkpoint: str, input_shape: tuple[int, int, int] | None = None, num_classes: int = 10,
               pretrained: bool = True, weights: str | None = None) -> LoadedModel:
    """A registered model name (pretrained where it has weights, unless told otherwise) or
    a checkpoint / run directory."""
    if model_or_checkpoint in MODELS and not Path(model_or_checkpoint).exists():
        spec = MODELS[model_or_checkpoint]
        shape = input_shape or (PRETRAINED_SHAPE if spec.pretrained else DEFAULT_SHAPE)
        use_weights = spec.pretrained and (pretrained or weights is not None)
        model = build_model(model_or_checkpoint, shape, num_classes, pretrained=use_weights,
                            weights=weights if spec.pretrained else None)
        if input_shape is not None:
            check_input(model, shape, model_or_checkpoint)
        what = "ImageNet weights" if use_weights else "random weights"
        return LoadedModel(model.eval(), shape, f"{model_or_checkpoint} ({what})")
    path = Path(model_or_checkpoint)
    if not names_a_path(path):
        shape = input_shape or DEFAULT_SHAPE
        try:
            model = build_model(model_or_checkpoint, shape, num_classes)
        except StyleforgeError as exc:
            if is_file_ref(model_or_checkpoint) or "(" in model_or_checkpoint:
                raise
            raise StyleforgeError(f"{model_or_checkpoint!r} is neither a model ({', '.join(MODELS)}), a layer spec, "
                                  f"FILE.py:CLASS, nor a checkpoint or run directory ({exc})") from None
        return LoadedModel(model.eval(), shape, f"{_short(model_or_checkpoint)} (random weights)")
    ckpt = load_checkpoint(path)
    return LoadedModel(model_from_checkpoint(ckpt), input_shape_for(ckpt, input_shape),
                       f"{_short(ckpt['model'])} ({Path(ckpt['path']).parent.name}/{Path(ckpt['path']).name})")


def layer_table(model: nn.Module) -> dict[str, nn.Module]:
    """Every name a layer can be called by: aliases first, then ``named_modules`` names."""
    table: dict[str, nn.Module] = {}
    convs = [m for _, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if convs:
        table["conv1"], table["last_conv"] = convs[0], convs[-1]
    trunk = getattr(model, "trunk", None)
    if isinstance(trunk, VGGTrunk):
        for name, module in zip(trunk.features.names, trunk.features.features):
            table[name] = module
    if isinstance(trunk, ResNetTrunk):
        for name in trunk.STAGES:
            table[name] = getattr(trunk, name)
    for name, module in model.named_modules():
        if name and name not in table:
            table[name] = module
    return table


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    table = layer_table(model)
    if name not in table:
        valid = [n for n, m in table.items() if not list(m.children()) or n in ("stem", "layer1", "layer2", "layer3",
                                                                                  "layer4", "trunk", "head")]
        raise StyleforgeError(f"unknown layer {name!r}: valid names are {', '.join(valid)}")
    return table[name]


# What a forward pass up to a layer holds per input pixel, at most: the image and two full-size activations of
# 64 channels (VGG19's first block; the other models are narrower there), in float32.
FORWARD_BYTES_PER_PIXEL = 4 * (3 + 2 * 64)
# The longest input side drawn: the maps of a longer one make a figure wider than matplotlib draws (a 100000 x 1
# px image at a 16 px short side is 1.6 M px long).
MAX_INPUT_SIDE = 8192


def _input_size(h: int, w: int, shape: tuple[int, int, int], size: int | None) -> tuple[int, int]:
    """(H, W) the image is resized to: its shorter side ``size`` (default the model's), or the model's own H x W
    where that is not square and no ``size`` is given."""
    if size is None and shape[1] != shape[2]:
        return shape[1], shape[2]
    s = size or shape[1]
    return (s, max(1, round(w * s / h))) if h <= w else (max(1, round(h * s / w)), s)


def load_input(image: str | os.PathLike, shape: tuple[int, int, int], size: int | None = None) -> torch.Tensor:
    """The image as (1, C, H, W) in [0, 1] (grayscale for 1-channel models), its aspect
    ratio kept: the shorter side becomes ``size`` (default: the model's input size), so a
    4:3 photo stays 4:3. A model whose input is not square gets its own H x W."""
    known = header_size(image)  # None: load_image gives the one-line error
    if known is not None:
        th, tw = _input_size(known[1], known[0], shape, size)
        guard.check_memory(th * tw * FORWARD_BYTES_PER_PIXEL, f"a {tw}x{th} px input",
                           "give a smaller --short-side, or crop the image: its long side is scaled with its short one")
        if max(th, tw) > MAX_INPUT_SIDE:
            crop = "crop it nearer a square or " if min(th, tw) <= MAX_INPUT_SIDE else ""
            raise StyleforgeError(f"{image} would be {tw}x{th} px with its short side at {min(th, tw)} px, over "
                                  f"{MAX_INPUT_SIDE} px long: {crop}give a smaller --short-side")
    x = load_image(image)
    h, w = x.shape[-2:]
    x = F.interpolate(x, size=_input_size(h, w, shape, size), mode="bilinear", align_corners=False,
                      antialias=True).clamp(0, 1)
    if shape[0] == 1:
        x = luminance(x).clamp(0, 1)
    return x


class _Reached(Exception):
    """Raised by the hook once the layer has its output: the rest of the model is not run
    (so a non-square image works even when the model's head expects a fixed size)."""


@torch.no_grad()
def layer_output(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's output for input ``x`` (a copy: later in-place ReLUs do not change it).

    The forward pass stops at the layer, so the layers after it (a linear head that fixes
    the input size) never run: any ``--short-side`` works for the convolutional layers."""
    box: list[torch.Tensor] = []

    def hook(module, inputs, output):
        out = output if isinstance(output, torch.Tensor) else output[0]
        box.append(out.detach().float().clone())
        raise _Reached

    handle = layer.register_forward_hook(hook)
    try:
        model.eval()(x)
    except _Reached:
        pass
    except RuntimeError as exc:
        raise StyleforgeError(f"the model cannot run a {x.shape[-2]}x{x.shape[-1]} input up to that layer "
                              f"({first_line(exc, 100)}): use the model's own input size (leave out --short-side) "
                              "or an earlier layer") from None
    finally:
        handle.remove()
    if not box:
        raise StyleforgeError("that layer is not used in the forward pass: choose another")
    return box[0]


def _parse_indices(indices: Sequence[int] | None, count: int, available: int, what: str) -> list[int]:
    chosen = list(indices) if indices else list(range(min(count, available)))
    bad = [i for i in chosen if not 0 <= i < available]
    if bad:
        raise StyleforgeError(f"{what} has {available} channels (0..{available - 1}); index {bad[0]} is out of range")
    return chosen


def _norm01(t: torch.Tensor) -> torch.Tensor:
    lo, hi = t.min(), t.max()
    return (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)


def _show_input(ax, x: torch.Tensor) -> None:
    ax.imshow(x[0].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if x.shape[1] == 1 else None)
    ax.set_title("input", fontsize=9)


def filters_figure(loaded: LoadedModel, image: str | os.PathLike, layer: str = "conv1",
                   indices: Sequence[int] | None = None, count: int = 8, size: int | None = None,
                   device: str = "auto"):
    """Each chosen filter of a first conv layer (as an RGB or gray picture) above its
    activation map on ``image`` (aspect ratio kept, one colour scale with a colorbar); the
    input image on the left. Returns the Figure."""
    model = loaded.model
    conv = resolve_layer(model, layer)
    if not isinstance(conv, nn.Conv2d):
        raise StyleforgeError(f"layer {layer!r} is a {type(conv).__name__}, not a convolution: give a conv layer "
                              "(e.g. conv1)")
    if conv.in_channels not in (1, 3):
        raise StyleforgeError(f"layer {layer!r} takes {conv.in_channels} channels: filters are drawn as pictures "
                              "only for a first layer (1 or 3 input channels); use 'visualize activations'")
    chosen = _parse_indices(indices, count, conv.out_channels, f"layer {layer}")
    rt = runtime(device, "fp32")
    model = rt.to(model)
    x = load_input(image, loaded.input_shape, size)
    maps = layer_output(model, conv, rt.to(x))[0].cpu()[chosen]
    weights = conv.weight.detach().float().cpu()
    n = len(chosen)
    aspect = maps.shape[-1] / maps.shape[-2]
    fig = report.new_figure((1.9 * (n + 1) * max(1.0, aspect) + 0.8, 4.6), layout="constrained")
    axes = fig.subplots(2, n + 1, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    _show_input(axes[0, 0], x)
    lo, hi = float(maps.min()), float(maps.max())
    im = None
    for j, i in enumerate(chosen, start=1):
        w = _norm01(weights[i])
        pic = w.permute(1, 2, 0).numpy() if w.shape[0] == 3 else w[0].numpy()
        axes[0, j].imshow(pic, cmap=None if w.shape[0] == 3 else "gray", interpolation="nearest")
        axes[0, j].set_title(f"filter {i}", fontsize=9)
        im = axes[1, j].imshow(maps[j - 1].numpy(), cmap="viridis", vmin=lo, vmax=hi)
        axes[1, j].set_title(f"activation {i}", fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.8, label="activation")
    fig.suptitle(f"{loaded.label}: layer {layer} ({conv.out_channels} filters "
                 f"{conv.kernel_size[0]}x{conv.kernel_size[1]}), on {Path(image).name}", fontsize=10)
    return fig


def activations_figure(loaded: LoadedModel, image: str | os.PathLike, layer: str, count: int = 10,
                       indices: Sequence[int] | None = None, size: int | None = None, device: str = "auto",
                       columns: int = 5):
    """Activation maps of the first ``count`` channels (or ``indices``) of a named layer, on
    one colour scale with a colorbar, the image's aspect ratio kept. Returns the Figure and
    the layer's output shape (C, H, W)."""
    model = loaded.model
    module = resolve_layer(model, layer)
    rt = runtime(device, "fp32")
    model = rt.to(model)
    x = load_input(image, loaded.input_shape, size)
    out = layer_output(model, module, rt.to(x))[0].cpu()
    if out.dim() == 1:
        out = out[:, None, None]
    if out.dim() != 3:
        raise StyleforgeError(f"layer {layer!r} does not output feature maps (shape {tuple(out.shape)})")
    chosen = _parse_indices(indices, count, out.shape[0], f"layer {layer}")
    cols = min(columns, len(chosen)) + 1
    rows = -(-len(chosen) // (cols - 1))
    aspect = out.shape[-1] / out.shape[-2]
    fig = report.new_figure((2.0 * cols * max(1.0, aspect) + 0.8, 2.2 * rows / min(1.0, aspect) + 0.4),
                            layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    _show_input(axes[0, 0], x)
    maps = out[chosen]
    im = None
    for j, i in enumerate(chosen):
        ax = axes[j // (cols - 1), 1 + j % (cols - 1)]
        im = ax.imshow(maps[j].numpy(), cmap="viridis", interpolation="nearest", vmin=float(maps.min()),
                       vmax=float(maps.max()))
        ax.set_title(f"channel {i}", fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes[:, 1:].flatten().tolist(), shrink=0.8, label="activation")
    shape = tuple(out.shape)
    fig.suptitle(f"{loaded.label}: {layer} output {'x'.join(map(str, shape))} on {Path(image).name}", fontsize=10)
    return fig, shape
