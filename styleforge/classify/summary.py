"""Per-layer settings, output shapes, parameter counts and multiply-adds of any model, from one dry run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, cast

import torch
from torch import nn

from ..runtime.errors import StyleforgeError
from ..runtime.io import names_a_path

DEFAULT_SHAPE = (3, 32, 32)  # what summary assumes for a model with no input shape of its own


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    trainable: int
    settings: str = ""
    macs: int = 0  # multiply-adds for one image


@dataclass
class Summary:
    rows: list[LayerRow]
    input_shape: tuple[int, ...]
    total_params: int
    trainable_params: int
    freeze: str = "none"

    @property
    def total_macs(self) -> int:
        return sum(r.macs for r in self.rows)

    def table(self) -> str:
        lines = [f"{'layer':28s} {'type':16s} {'settings':18s} {'output shape':14s} {'params':>11s} "
                 f"{'trainable':>11s} {'mult-adds':>13s}"]
        lines.append("-" * len(lines[0]))
        for r in self.rows:
            shape = "x".join(str(d) for d in r.output_shape)
            lines.append(f"{r.name:28s} {r.kind:16s} {r.settings:18s} {shape:14s} {r.params:>11,d} "
                         f"{r.trainable:>11,d} {r.macs:>13,d}")
        lines.append("-" * len(lines[0]))
        lines.append(f"input {'x'.join(map(str, self.input_shape))}; total params {self.total_params:,d}; "
                     f"trainable {self.trainable_params:,d} (freeze policy {self.freeze}); "
                     f"{self.total_macs:,d} multiply-adds per image ({self.total_macs / 1e6:.2f} M)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _pair(v) -> str:
    a, b = (v, v) if isinstance(v, int) else tuple(v)
    return f"{a}" if a == b else f"{a}x{b}"


def layer_settings(m: nn.Module) -> str:
    """Kernel, stride, padding, window, probability: what a layer was set up with."""
    if isinstance(m, nn.Conv2d):
        pad = m.padding if isinstance(m.padding, str) else _pair(m.padding)
        text = f"k{_pair(m.kernel_size)} s{_pair(m.stride)} p{pad}"
        return text + (f" g{m.groups}" if m.groups > 1 else "") + (f" d{_pair(m.dilation)}" if m.dilation != (1, 1)
                                                                   else "")
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        return f"k{_pair(m.kernel_size)} s{_pair(m.stride)} p{_pair(m.padding)}"
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return f"to {_pair(m.output_size)}"
    if isinstance(m, nn.Linear):
        return f"{m.in_features} -> {m.out_features}"
    if isinstance(m, nn.Dropout):
        return f"p={m.p:g}"
    if isinstance(m, nn.LeakyReLU):
        return f"slope {m.negative_slope:g}"
    pool = getattr(m, "pool_kind", None)  # a trunk that pools its features itself (models.VGGTrunk)
    return f"{pool} pool" if isinstance(pool, str) else ""


def layer_macs(m: nn.Module, out: torch.Tensor) -> int:
    """Multiply-adds of one image through a conv or linear layer (others count as 0)."""
    if isinstance(m, nn.Conv2d):
        per_output = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        return int(out[0].numel()) * per_output
    if isinstance(m, nn.Linear):
        return int(out[0].numel()) * m.in_features
    return 0


def summarize(model: nn.Module, input_shape: tuple[int, int, int], freeze: str = "none") -> Summary:
    """Run one zero image of ``input_shape`` (C, H, W) through ``model`` and record, for
    every module that has parameters of its own or no children (or whose own forward changes the shape
    its children gave), its settings, output
    shape (batch dimension dropped), own parameter count, the part of it that trains
    (``requires_grad``: apply the freeze policy first; ``freeze`` names it) and its
    multiply-adds."""
    rows: list[LayerRow] = []
    hooks = []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        parent = bool(list(module.children())) and not own
        if name:
            def hook(mod, inputs, output, name=name, own=own, parent=parent):
                out = output if isinstance(output, torch.Tensor) else next(
                    (v for v in (output.values() if isinstance(output, dict) else output)
                     if isinstance(v, torch.Tensor)), None)
                # A module made of layers is a row only where its own forward changed the shape after them
                # (the VGG19 trunk's pooling, a reshape): else its last layer's row says it.
                if parent and (out is None or (rows and rows[-1].output_shape == tuple(out.shape[1:]))):
                    return
                rows.append(LayerRow(name, type(mod).__name__,
                                     tuple(out.shape[1:]) if out is not None else (),
                                     sum(p.numel() for p in own),
                                     sum(p.numel() for p in own if p.requires_grad),
                                     layer_settings(mod), layer_macs(mod, out) if out is not None else 0))
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Summary(rows, tuple(input_shape), total, trainable, freeze)


def summary(model: str | nn.Module, input_shape: tuple[int, int, int] | None = None, num_classes: int = 10,
            activation: str = "relu", freeze: str = "auto", **options) -> Summary:
    """:func:`summarize` a model given by name, layer spec, ``FILE.py:CLASS``, as a module, or a trained run
    or checkpoint, after the freeze policy (``auto``: as training would choose it; a run's: its own).
    ``input_shape``: DEFAULT_SHAPE (a run's: its own) where not given. ``print(summary("simple-cnn"))``
    prints the table."""
    from .checkpoint import input_shape_for, load_checkpoint, model_from_checkpoint
    from .data import DataSpec
    from .models import Classifier, apply_freeze, build_model, check_input
    from .train import TrainConfig

    net: nn.Module
    if isinstance(model, str) and _is_trained(model):
        ckpt = load_checkpoint(model)
        shape = input_shape_for(ckpt, input_shape)
        net, name = model_from_checkpoint(ckpt), ckpt["model"]
        freeze = ckpt.get("freeze", "none") if freeze == "auto" else freeze
        own = "x".join(map(str, ckpt["input_shape"]))
        check_input(net, shape, model, f"it was trained on {own} images: leave out --input, or give that size")
    elif isinstance(model, nn.Module):
        net, name, shape = model, "python:module", _shape(input_shape or DEFAULT_SHAPE)
    else:
        _looks_like_a_run(model)
        shape = _shape(input_shape or DEFAULT_SHAPE)
        net, name = build_model(model, shape, num_classes, activation, **options), model
        check_input(net, shape, model)
    policy = TrainConfig(DataSpec(""), output="", model=name, freeze=freeze).resolved_freeze()
    if isinstance(net, Classifier):
        apply_freeze(net, policy)
    return summarize(net, shape, policy if isinstance(net, Classifier) else "none")


def _shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) as a tuple (a list is taken too)."""
    return cast("tuple[int, int, int]", tuple(shape))


def _looks_like_a_run(model: str) -> None:
    """A path that names nothing (a run folder or checkpoint mistyped): said so, not as an unknown model."""
    from .models import MODELS
    from .spec import is_file_ref

    if model not in MODELS and not is_file_ref(model) and ("/" in model or model.endswith((".pt", ".pth"))):
        raise StyleforgeError(f"{model} does not exist: give a trained run folder or checkpoint, a model name, a "
                              "layer spec or FILE.py:CLASS")


def _is_trained(model: str) -> bool:
    """Whether ``model`` names a run folder or a checkpoint file rather than a model."""
    path = Path(model)
    return names_a_path(path / "config.json", "file") or (names_a_path(path, "file")
                                                          and path.suffix.lower() in (".pt", ".pth"))
