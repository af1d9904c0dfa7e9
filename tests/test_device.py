import pytest
import torch

from styleforge import device
from styleforge.errors import StyleforgeError


def test_auto_device_is_an_available_device():
    dev = device.resolve_device("auto")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if device._mps_available() else "cpu")
    assert dev.type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_missing_cuda_is_a_clear_error():
    with pytest.raises(StyleforgeError, match="CUDA is not available"):
        device.resolve_device("cuda:0")


def test_unknown_device_and_precision():
    with pytest.raises(StyleforgeError, match="unknown device"):
        device.resolve_device("tpu")
    with pytest.raises(StyleforgeError, match="unknown precision"):
        device.resolve_precision("fp8", torch.device("cpu"))


def test_precision_mapping_on_cpu():
    cpu = torch.device("cpu")
    assert device.resolve_precision("fp32", cpu) is None
    assert device.resolve_precision("bf16", cpu) is torch.bfloat16
    assert device.resolve_precision("auto", cpu) is (torch.bfloat16 if device.cpu_has_fast_bf16() else None)
    with pytest.raises(StyleforgeError, match="fp16 autocast is not supported on CPU"):
        device.resolve_precision("fp16", cpu)


def test_runtime_moves_to_channels_last_and_autocasts():
    rt = device.Runtime(torch.device("cpu"), torch.bfloat16, channels_last=True)
    x = rt.to(torch.rand(1, 3, 8, 8))
    assert x.is_contiguous(memory_format=torch.channels_last)
    conv = rt.to(torch.nn.Conv2d(3, 4, 3))
    with rt.autocast():
        assert conv(x).dtype is torch.bfloat16
    assert rt.precision == "bf16"
    assert not rt.pin_memory


def test_seed_everything_repeats():
    g1 = device.seed_everything(3)
    a = torch.rand(2, generator=g1), torch.rand(2)
    g2 = device.seed_everything(3)
    b = torch.rand(2, generator=g2), torch.rand(2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
