"""Multi-process training under torchrun (gloo on CPU), against single-process runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, default_sigint, striped_image, synthetic_image

from styleforge.runtime.errors import StyleforgeError
from styleforge.runtime.io import save_image


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
        return ["fast", "train", style, "--data", folder, "--weights", random_vgg19_file, "--network", "light",
                "--crop-size", "32", "--style-size", "32", "--steps", str(steps), "--checkpoint-steps", "5",
                "--lr-schedule", "constant", "--input-noise", "0.2", "--laplacian-weight", "1",
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
    # (float32 rounding: the total sums terms weighted up to 1e6, the lattice penalty's default, and
    # the two ways of averaging round differently, 1.1e-5 of the total here)
    assert abs(la[0] - lb[0]) <= 5e-5 * la[0]
    assert b["config"]["world_size"] == 2 and b["config"]["global_batch"] == 2
    # Rank 0 alone wrote: one model, one checkpoint, one loss history with one row per step.
    assert sorted(p.name for p in tmp_path.glob("two*")) == ["two.losses.csv", "two.losses.png", "two.pth",
                                                            "two.pth.ckpt"]
    assert len((tmp_path / "two.losses.csv").read_text().strip().splitlines()) == 1 + 1
    # The distributed checkpoint resumes in one process (same format, same global batch).
    more = single(*common(3), "--batch-size", "2", "-o", tmp_path / "two.pth", "--resume")
    assert more.returncode == 0, more.stderr[-2000:]
    assert torch.load(tmp_path / "two.pth.ckpt", weights_only=True)["step"] == 3


# --------------------------------------------------------------------------- classifier

@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """3 classes x 30 grey 12x12 patterns (stripes across, stripes down, a square)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:12, :12]
    for c in range(3):
        (root / f"k{c}").mkdir()
        for i in range(30):
            p = rng.integers(0, 4)
            img = [((yy + p) // 2) % 2, ((xx + p) // 2) % 2, (abs(yy - 6) < 3) & (abs(xx - 6) < 3 + p % 2)][c]
            img = img * 170 + rng.integers(0, 60, (12, 12))
            Image.fromarray(np.repeat(img[..., None], 3, axis=2).astype(np.uint8)).save(root / f"k{c}" / f"{i}.png")
    return root


def _classify_args(data, out, *extra):
    # convnet2: no batch norm, no dropout, and no augmentation, so nothing depends on which
    # process saw an image; SGD with momentum and weight decay, a one-cycle schedule.
    return ["classify", "train", "--dataset", data, "--model", "convnet2", "--test-split", "0.2",
            "--val-split", "0.25", "--optimizer", "sgd", "--lr", "0.05", "--device", "cpu", "--precision", "fp32",
            "--no-plots", "-q", "-o", out, *extra]


def _single(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "styleforge", *map(str, args)], cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=timeout)


def test_classify_train_two_processes_match_one(shapes, tmp_path):
    # 90 images: 18 test, 54 train, 18 validation. Per process 27 train images in batches
    # of 8 (the last batch 3), against 1 process with batches of 16 (the last 6): DDP's
    # DistributedSampler gives rank r the positions r, r+2, ... of one shuffled order, so
    # the two step-s batches together are exactly the 1-process step-s batch, and the
    # gradient DDP averages (each rank's mean over equal-sized batches) is its gradient.
    two = _torchrun([a for a in _classify_args(shapes, tmp_path / "two", "--epochs", "3", "--batch-size", "8",
                                               "--checkpoint-seconds", "0") if a != "-q"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes x batch 8 = effective batch 16, lr 0.05" in two.stdout
    one = _single(*_classify_args(shapes, tmp_path / "one", "--epochs", "3", "--batch-size", "16",
                                  "--checkpoint-seconds", "0"))
    assert one.returncode == 0, one.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    for k, va in a["state_dict"].items():
        assert torch.allclose(va, b["state_dict"][k], rtol=1e-4, atol=1e-6), k
    # Epoch metrics are over the whole epoch (summed over ranks), not rank 0's shard.
    for ra, rb in zip(a["rows"], b["rows"]):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), key
    sa = json.loads((tmp_path / "one" / "summary.json").read_text())
    sb = json.loads((tmp_path / "two" / "summary.json").read_text())
    # 18 test images over 2 ranks, 54 training images: every image counted once.
    assert sb["num_test"] == 18 and sb["test_acc"] == pytest.approx(sa["test_acc"])
    assert sb["train_acc"] == pytest.approx(sa["train_acc"]) and sb["train_loss"] == pytest.approx(sa["train_loss"],
                                                                                                   rel=1e-4)
    assert sb["world_size"] == 2 and sb["effective_batch_size"] == 16
    # Rank 0 alone wrote the run: the same files as the 1-process run, metrics once per epoch.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len((tmp_path / "two" / "metrics.csv").read_text().strip().splitlines()) == 1 + 3
    # The 2-process checkpoint resumes in one process (same settings, same effective batch;
    # --resume refuses other --epochs: the schedule would jump back up). The run is complete,
    # so resuming re-evaluates its best checkpoint and rewrites the same summary.
    more = _single(*_classify_args(shapes, tmp_path / "two", "--epochs", "3", "--batch-size", "16", "--resume"))
    assert more.returncode == 0, more.stderr[-3000:]
    assert torch.load(tmp_path / "two" / "last.pt", weights_only=True)["epoch"] == 3
    again = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert again["test_acc"] == pytest.approx(sb["test_acc"]) and again["world_size"] == 1


def test_classify_grid_runs_under_torchrun_and_matches_one_process(shapes, tmp_path):
    def grid_args(out, batch):
        args = _classify_args(shapes, out, "--epochs", "2", "--batch-size", batch, "--lr", "0.02,0.05")
        return ["classify", "grid", *args[2:]]

    two = _torchrun(grid_args(tmp_path / "two", "8"), tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("| rank | run |") == 1  # rank 0 alone prints (and writes) the table
    one = _single(*grid_args(tmp_path / "one", "16"))
    assert one.returncode == 0, one.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "grid.json").read_text())
    b = json.loads((tmp_path / "two" / "grid.json").read_text())
    assert [r["run"] for r in b["runs"]] == [r["run"] for r in a["runs"]]
    for ra, rb in zip(a["runs"], b["runs"]):
        assert rb["val_acc"] == pytest.approx(ra["val_acc"]) and rb["val_loss"] == pytest.approx(ra["val_loss"],
                                                                                                  rel=1e-4)
    assert b["test"]["test_acc"] == pytest.approx(a["test"]["test_acc"]) and b["test"]["n"] == a["test"]["n"]
    stamps = [p.stat().st_mtime_ns for p in sorted((tmp_path / "two").glob("*/last.pt"))]
    again = _torchrun([*grid_args(tmp_path / "two", "8"), "--resume"], tmp_path)  # a finished search: kept
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "two").glob("*/last.pt"))] == stamps  # nothing retrained
    assert json.loads((tmp_path / "two" / "grid.json").read_text())["runs"] == b["runs"]
    refused = _torchrun([*grid_args(tmp_path / "two", "8")[:-1], "0.02,0.1", "--resume"], tmp_path)
    assert refused.returncode != 0 and "holds a search over --lr 0.02,0.05, not --lr 0.02,0.1" in refused.stderr


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=rank under ``parent`` (Linux /proc)."""
    for child in Path("/proc").glob("[0-9]*"):
        try:
            stat = (child / "stat").read_text()
            env = (child / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(child.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker processes through /proc")
def test_killing_one_rank_fails_cleanly_and_the_checkpoint_resumes(shapes, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STYLEFORGE_DIST_TIMEOUT_MIN": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "styleforge",
           *map(str, _classify_args(shapes, out, "--epochs", "500", "--batch-size", "8", "--checkpoint-seconds", "0"))]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "last.pt").is_file() and (out / "metrics.csv").is_file() and \
                    len((out / "metrics.csv").read_text().splitlines()) > 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    # Rank 0 says, in one line, what happened and what to resume from (torchrun adds its own report).
    ours = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert ours and "--resume" in ours[0] and ("another process failed" in ours[0] or "lost contact" in ours[0]), \
        stderr[-3000:]
    assert "last.pt" in ours[0] and "is valid" in ours[0]
    # no traceback of ours
    assert "styleforge/classify/" not in stderr and "styleforge/runtime/distributed" not in stderr
    epoch = torch.load(out / "last.pt", weights_only=True)["epoch"]  # intact, loadable
    assert epoch >= 3
    # Resume in one process with the same settings (--resume refuses other --epochs), and stop
    # it with Ctrl-C once it has written a further epoch.
    more = subprocess.Popen([sys.executable, "-m", "styleforge", *map(str, _classify_args(
        shapes, out, "--epochs", "500", "--batch-size", "16", "--checkpoint-seconds", "0", "--resume"))],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and more.poll() is None and \
                len((out / "metrics.csv").read_text().strip().splitlines()) < 1 + epoch + 1:
            time.sleep(0.2)
        assert more.poll() is None, more.communicate()[1][-3000:]
        time.sleep(0.5)
        more.send_signal(signal.SIGINT)
        _, stderr = more.communicate(timeout=60)
    finally:
        if more.poll() is None:
            more.kill()
    assert "error: interrupted: the checkpoint" in stderr, stderr[-3000:]
    resumed = torch.load(out / "last.pt", weights_only=True)["epoch"]
    assert resumed > epoch
    assert len((out / "metrics.csv").read_text().strip().splitlines()) >= 1 + resumed


# --------------------------------------------------------------------------- the session owns the group

_SESSION_SCRIPT = """
import os, signal, sys
import torch.distributed as dist
from styleforge.runtime import distributed
from styleforge.classify import DataSpec, TrainConfig, fit
from styleforge.runtime.errors import StyleforgeError

def mine(signum, frame):
    pass

signal.signal(signal.SIGTERM, mine)
cfg = TrainConfig(DataSpec(sys.argv[1]), sys.argv[2], model="convnet2", epochs=1, batch_size=8, device="cpu",
                  precision="fp32", plots=False)
try:
    fit(cfg)  # under torchrun, outside a session: refused, nothing joined
except StyleforgeError as exc:
    assert "distributed.session()" in str(exc), exc
assert not dist.is_initialized() and signal.getsignal(signal.SIGTERM) is mine
with distributed.session() as ctx:
    assert dist.is_initialized() and ctx.world_size == 2 and distributed.current() is ctx
    assert signal.getsignal(signal.SIGTERM) is not mine  # SIGTERM stops the run cleanly meanwhile
    fit(cfg)
assert not dist.is_initialized() and signal.getsignal(signal.SIGTERM) is mine
# and gloo's threads are gone with the group (left running, they aborted the process at exit now and then)
gloo = [n for n in (open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
        if "gloo" in n]
assert not gloo, gloo
# one write per rank: under PYTHONUNBUFFERED print() writes its pieces apart and two ranks'
# lines could interleave on the shared pipe ("session ok session ok 1", "0")
sys.stdout.write(f"session ok {ctx.rank}\\n")
"""


def test_a_session_under_torchrun_leaves_no_group_and_the_sigterm_handler_as_it_was(shapes, tmp_path):
    script = tmp_path / "lib.py"
    script.write_text(_SESSION_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STYLEFORGE_DIST_TIMEOUT_MIN": "2", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(shapes), str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(run.stdout.split("\n")[:-1]) == ["session ok 0", "session ok 1"], run.stdout
    assert (tmp_path / "run" / "summary.json").is_file()


def test_without_torchrun_the_library_needs_no_session_and_changes_no_handler(monkeypatch):
    import torch.distributed as dist

    from styleforge.runtime import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    before = signal.getsignal(signal.SIGTERM)
    assert distributed.current() == distributed.Dist()
    with distributed.session() as ctx:
        assert not ctx.enabled and ctx.is_main and distributed.current() is ctx
        with distributed.session() as inner:  # nested: the same context
            assert inner is ctx
    assert signal.getsignal(signal.SIGTERM) is before and not dist.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's variables without a session: refused, with what to do
    with pytest.raises(StyleforgeError, match=r"distributed\.session\(\)"):
        distributed.current()


def test_a_session_that_fails_still_leaves_the_group_and_restores_the_handler(monkeypatch):
    """The failure path in-process: a 1-process gloo group stands in for torchrun's."""
    import torch.distributed as dist

    from styleforge.runtime import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(distributed, "_join",
                        lambda ctx: dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(StyleforgeError, match="inside"):
        with distributed.session() as ctx:
            assert ctx.enabled and dist.is_initialized() and distributed.current() is ctx
            assert signal.getsignal(signal.SIGTERM) is not before
            raise StyleforgeError("a failure inside the session")
    assert not dist.is_initialized() and signal.getsignal(signal.SIGTERM) is before


def _gloo_threads() -> list[str]:
    names = (Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task"))
    return [n for n in names if "gloo" in n]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the thread names in /proc (Linux)")
def test_a_ddp_model_left_in_a_reference_cycle_does_not_keep_gloo_running(monkeypatch):
    """Garbage that holds the group (here a DDP model in a cycle) is freed before the group is destroyed,
    so gloo's threads end with it: left running at exit, they aborted the process now and then."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from styleforge.runtime import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(distributed, "_join",
                        lambda ctx: dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1))
    assert not _gloo_threads()
    with distributed.session():
        cycle: list = [DistributedDataParallel(torch.nn.Linear(3, 2))]
        cycle.append(cycle)
        assert _gloo_threads()
        del cycle
    assert not dist.is_initialized() and not _gloo_threads()


RESUME, AGAIN = "run the same command with --resume to continue", "run the same command again to start over"


@pytest.mark.parametrize("hint, saved, advice", [
    ("at step 600, the checkpoint m.pth.ckpt (step 500) is valid", True, RESUME),
    ("at step 151, no checkpoint was written yet", False, AGAIN),
    ("rank 0 keeps the checkpoint m.pth.ckpt", True, RESUME),   # another rank: the advice follows rank 0's state
    ("rank 0 keeps the checkpoint m.pth.ckpt", False, AGAIN),
])
def test_a_stop_says_resume_only_where_there_is_a_checkpoint(hint, saved, advice):
    from styleforge.runtime import distributed
    from styleforge.runtime.guard import Terminated

    for stop, what in ((Terminated(), "stopped by SIGTERM"), (KeyboardInterrupt(), "interrupted")):
        with pytest.raises(StyleforgeError) as caught:
            with distributed.stop_cleanly(distributed.Dist(), lambda: distributed.ResumeHint(hint, saved)):
                raise stop
        assert str(caught.value) == f"{what}: {hint}; {advice}"
