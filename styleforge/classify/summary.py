"""Per-layer output shapes and parameter counts of any model, from one dry run."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    trainable: int


@dataclass
class Summary:
    rows: list[LayerRow]
    input_shape: tuple[int, ...]
    total_params: int
    trainable_params: int

    def table(self) -> str:
        lines = [f"{'layer':34s} {'type':18s} {'output shape':22s} {'params':>12s}"]
        lines.append("-" * len(lines[0]))
        for r in self.rows:
            shape = "x".join(str(d) for d in r.output_shape)
            lines.append(f"{r.name:34s} {r.kind:18s} {shape:22s} {r.params:>12,d}")
        lines.append("-" * len(lines[0]))
        lines.append(f"input {'x'.join(map(str, self.input_shape))}; total params {self.total_params:,d}; "
                     f"trainable {self.trainable_params:,d}")
        return "\n".join(lines)


def summarize(model: nn.Module, input_shape: tuple[int, int, int]) -> Summary:
    """Run one zero image of ``input_shape`` (C, H, W) through ``model`` and record, for
    every module that has parameters of its own or no children, its output shape (batch
    dimension dropped) and its own parameter count."""
    rows: list[LayerRow] = []
    hooks = []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if name and (own or not list(module.children())):
            def hook(mod, inputs, output, name=name, own=own):
                out = output if isinstance(output, torch.Tensor) else next(
                    (v for v in (output.values() if isinstance(output, dict) else output)
                     if isinstance(v, torch.Tensor)), None)
                rows.append(LayerRow(name, type(mod).__name__,
                                     tuple(out.shape[1:]) if out is not None else (),
                                     sum(p.numel() for p in own),
                                     sum(p.numel() for p in own if p.requires_grad)))
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
    return Summary(rows, tuple(input_shape), total, trainable)
