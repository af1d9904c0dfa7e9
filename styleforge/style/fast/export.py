"""ONNX export of a style network, with dynamic batch, height and width."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...runtime.errors import StyleforgeError
from ...runtime.guard import check_not_inputs
from ...runtime.io import atomic_path, check_writable
from .model import TransformerNet, load_model, pixel_noise, resolve_model, without_lattice

OPSET = 17


class _Deployable(nn.Module):
    """The network with the pad-to-a-multiple-of-4, the lattice notch and the clamp inside the graph."""

    def __init__(self, net: TransformerNet) -> None:
        super().__init__()
        self.net, self.noise = net.net, net.noise

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2], image.shape[-1]
        if self.noise:
            image = image + self.noise * pixel_noise(image)
        # Always pad (possibly by 0), so one graph serves every size.
        x = F.pad(image, (0, (4 - w % 4) % 4, 0, (4 - h % 4) % 4), mode="replicate")
        return without_lattice(self.net(x))[:, :, :h, :w].clamp(0, 1)


def export_onnx(model: str | os.PathLike, output: str | os.PathLike, opset: int = OPSET) -> Path:
    """Write MODEL as ONNX: input ``image`` (N, 3, H, W) in [0, 1], output ``stylized`` likewise."""
    if Path(output).suffix.lower() != ".onnx":
        raise StyleforgeError(f"-o {output}: an ONNX file ends in .onnx (e.g. -o {Path(output).with_suffix('.onnx')})")
    out = check_writable(output)
    path = resolve_model(model)
    check_not_inputs({"-o": out}, {"the model file": path})
    try:
        import onnx  # noqa: F401  (torch's exporter writes the file through it)
    except ImportError:
        raise StyleforgeError("ONNX export needs the onnx package: pip install 'styleforge[onnx]'") from None
    net, _ = load_model(path)
    wrapped = _Deployable(net.float().eval())
    example = torch.rand(1, 3, 64, 64)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (example,), str(tmp), input_names=["image"], output_names=["stylized"],
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "stylized": {0: "batch", 2: "height", 3: "width"}},
                          opset_version=opset, dynamo=False)
        _name_output_shape(tmp)
    return out


def _name_output_shape(path: Path) -> None:
    """The output's shape as the input's (batch, 3, height, width): the exporter cannot infer its channel count
    through the crop (it wrote a symbol such as ``Clipstylized_dim_1``), which viewers and runtimes show."""
    import onnx

    model = onnx.load(str(path))
    dims = model.graph.output[0].type.tensor_type.shape.dim
    for dim, name in zip(dims, ("batch", None, "height", "width")):
        if name is None:
            dim.dim_value = 3
        else:
            dim.dim_param = name
    onnx.save(model, str(path))
