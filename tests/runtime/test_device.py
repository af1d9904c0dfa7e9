import platform
import subprocess
import sys

import pytest
import torch

from styleforge.runtime import device
from styleforge.runtime.errors import StyleforgeError


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


def test_for_inference_runs_a_bf16_copy_without_autocast_on_a_bf16_cpu_and_a_channels_last_copy_in_fp32():
    conv = torch.nn.Conv2d(3, 4, 3)
    bf16 = device.Runtime(torch.device("cpu"), torch.bfloat16, channels_last=True)
    copy = bf16.for_inference(conv)
    assert copy is not conv and copy.weight.dtype is torch.bfloat16 and conv.weight.dtype is torch.float32
    assert copy.weight.is_contiguous(memory_format=torch.channels_last)
    with bf16.inference(copy):
        assert not torch.is_autocast_enabled("cpu")
    with bf16.inference(conv):  # fp32 weights (an any-style styler): autocast as before
        assert torch.is_autocast_enabled("cpu")
    fp32 = device.Runtime(torch.device("cpu"))
    copy = fp32.for_inference(conv)
    assert copy is not conv and copy.weight.dtype is torch.float32
    assert copy.weight.is_contiguous(memory_format=torch.channels_last)  # faster on CPUs, fp32 too
    assert not conv.weight.is_contiguous(memory_format=torch.channels_last)
    with fp32.inference(conv):
        assert not torch.is_autocast_enabled("cpu")


KEPT = """
import resource, sys, torch
from styleforge.runtime.device import keep_freed_memory
from styleforge.style.fast.model import TransformerNet
took = keep_freed_memory()
torch.set_num_threads(1)
net, x = TransformerNet("light", "bilinear").eval(), torch.rand(1, 3, 512, 512)
faults = []
with torch.inference_mode():
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        net(x)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(took, *faults)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_keep_freed_memory_lets_later_passes_reuse_pages_instead_of_faulting_fresh_ones():
    # In a process of its own: the setting is process-wide. Without it glibc maps each large map of
    # the network fresh, every pass (measured: the later passes fault half as much as the first);
    # with it the heap grows over the first passes and then serves them from memory already faulted
    # in (the later passes: 0-11 % of the first).
    out = subprocess.run([sys.executable, "-c", KEPT], capture_output=True, text=True, check=True).stdout.split()
    took, first, *later = [out[0], *map(int, out[1:])]
    assert took == "True" and first > 5000, out
    assert sum(later) < 0.2 * len(later) * first, out


def test_seed_everything_repeats():
    g1 = device.seed_everything(3)
    a = torch.rand(2, generator=g1), torch.rand(2)
    g2 = device.seed_everything(3)
    b = torch.rand(2, generator=g2), torch.rand(2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _one_step(scaler):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    device.backward_step(net(torch.ones(3, 4)).pow(2).mean(), opt, scaler)
    return [p.detach().clone() for p in net.parameters()]


def test_backward_step_with_the_scaler_fp16_needs_equals_the_plain_step():
    cpu = torch.device("cpu")
    assert device.Runtime(cpu).grad_scaler() is None and device.Runtime(cpu, torch.bfloat16).grad_scaler() is None
    scaler = device.Runtime(cpu, torch.float16).grad_scaler()
    assert scaler is not None and scaler.get_scale() > 1
    for a, b in zip(_one_step(None), _one_step(scaler)):
        torch.testing.assert_close(a, b)


def test_device_choices_live_in_the_runtime():
    cpu = device.Runtime(torch.device("cpu"))
    assert cpu.on_cpu and cpu.loader_workers == 1 and cpu.peak_memory_mb() is None
    assert not cpu.holds(torch.zeros(4))


def test_derived_seeds_of_different_runs_epochs_and_ranks_never_collide():
    seeds = {device.derived_seed(s, e * device.STREAM_GAP, r) for s in range(4) for e in range(100) for r in range(8)}
    crops = {device.derived_seed(s, p, device.STREAM_GAP) for s in range(4) for p in range(10_000)}
    assert len(seeds) == 4 * 100 * 8 and len(crops) == 4 * 10_000
