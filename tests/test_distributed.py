"""Multi-process training under torchrun (gloo on CPU), against single-process runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from styleforge.io import save_image

from conftest import ROOT, striped_image, synthetic_image


def _torchrun(args, tmp_path, nproc=2, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STYLEFORGE_DIST_TIMEOUT_MIN": "2"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "styleforge", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):  # 5 images: epochs do not divide evenly over 2 processes
        save_image(synthetic_image(40, 44 + 4 * i, phase=i), folder / f"p{i}.png")
    save_image(striped_image(40, 40), tmp_path / "style.png")
    return folder, tmp_path / "style.png"


def test_fast_train_two_processes_match_one(photos, tmp_path, random_vgg19_file):
    folder, style = photos
    def common(steps):
        return ["fast", "train", style, "--data", folder, "--weights", random_vgg19_file, "--arch", "light",
                "--image-size", "32", "--style-size", "32", "--steps", str(steps), "--checkpoint-every", "5",
                "--device", "cpu", "--precision", "fp32", "--workers", "0", "-q"]

    def single(*args):
        return subprocess.run([sys.executable, "-m", "styleforge", *map(str, args)], cwd=ROOT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=300)

    two = _torchrun([*common(1), "--batch-size", "1", "-o", tmp_path / "two.pth"], tmp_path)
    assert two.returncode == 0, two.stderr[-2000:]
    one = single(*common(1), "--batch-size", "2", "-o", tmp_path / "one.pth")
    assert one.returncode == 0, one.stderr[-2000:]
    a = torch.load(tmp_path / "one.pth.ckpt", weights_only=True)
    b = torch.load(tmp_path / "two.pth.ckpt", weights_only=True)
    # Same samples in every global batch and a loss that is the mean of per-image losses, so
    # the gradient DDP averages over 2 processes is the 1-process gradient of the global
    # batch: Adam's first moment after step 1 (0.1 * gradient) agrees to float precision.
    # The weights themselves cannot be compared exactly: Adam's first steps are lr*sign(g),
    # so any weight whose gradient is near zero (all convolution biases in front of
    # instance norm, whose true gradient is exactly 0) moves +-lr depending on rounding.
    # (Tolerance relative to the largest gradient: the pre-instance-norm biases' gradients
    # are rounding noise around 0.)
    scale = max(st["exp_avg"].abs().max().item() for st in a["optimizer"]["state"].values())
    for k, sa in a["optimizer"]["state"].items():
        ga, gb = sa["exp_avg"], b["optimizer"]["state"][k]["exp_avg"]
        assert torch.allclose(ga, gb, rtol=1e-3, atol=1e-4 * scale), k
    la = [r["total"] for r in a["history"]]
    lb = [r["total"] for r in b["history"]]
    assert abs(la[0] - lb[0]) <= 1e-5 * la[0]
    assert b["config"]["world_size"] == 2 and b["config"]["global_batch"] == 2
    # Rank 0 alone wrote: one model, one checkpoint, one loss history with one row per step.
    assert sorted(p.name for p in tmp_path.glob("two*")) == ["two.losses.csv", "two.losses.png", "two.pth",
                                                            "two.pth.ckpt"]
    assert len((tmp_path / "two.losses.csv").read_text().strip().splitlines()) == 1 + 1
    # The distributed checkpoint resumes in one process (same format, same global batch).
    more = single(*common(3), "--batch-size", "2", "-o", tmp_path / "two.pth", "--resume")
    assert more.returncode == 0, more.stderr[-2000:]
    assert torch.load(tmp_path / "two.pth.ckpt", weights_only=True)["step"] == 3
