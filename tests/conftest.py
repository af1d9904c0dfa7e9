"""Shared fixtures: where ../shared is, and small deterministic stand-ins for real weights."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from styleforge.backbone import build_vgg_features

ROOT = Path(__file__).resolve().parent.parent


def default_sigint() -> None:
    """``preexec_fn`` for a child that a test stops with SIGINT: Ctrl-C as in a terminal.

    A shell without job control starts background commands with SIGINT ignored, and children
    inherit that; Python then installs no KeyboardInterrupt handler, so the test would measure
    how the test runner was launched instead of what styleforge does on Ctrl-C.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
SHARED = Path(os.environ.get("STYLEFORGE_SHARED", ROOT.parent / "shared"))
SHARED_WEIGHTS = SHARED / "weights" / "vgg19-features.pth"


@pytest.fixture(autouse=True)
def _isolated_weights_lookup(monkeypatch, tmp_path_factory):
    """No test sees the user's $STYLEFORGE_WEIGHTS or torch hub cache, or downloads."""
    monkeypatch.delenv("STYLEFORGE_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, tmp_path_factory):
    """Decoded-dataset caches go to a fresh folder; no test sees the user's $STYLEFORGE_DATA."""
    monkeypatch.setenv("STYLEFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("STYLEFORGE_DATA", raising=False)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models run fastest on one thread, and stay fast when other jobs share the CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED_WEIGHTS.is_file():
        pytest.skip(f"needs the real weights and data in {SHARED} (absent on this machine)")
    return SHARED


@pytest.fixture
def real_weights(shared, monkeypatch) -> Path:
    """Point the lookup at ../shared/weights (the original Caffe VGG19)."""
    monkeypatch.setenv("STYLEFORGE_WEIGHTS", str(shared / "weights"))
    return shared / "weights"


@pytest.fixture(scope="session")
def random_vgg19_file(tmp_path_factory) -> Path:
    """A VGG19 features file with seeded random weights, in the shared file's key layout."""
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in build_vgg_features("vgg19").state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "vgg19-random.pth"
    torch.save(state, path)
    return path


def synthetic_image(h: int = 64, w: int = 64, phase: float = 0.0) -> torch.Tensor:
    """A deterministic smooth colour image in [0, 1], shape (1, 3, h, w)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([xx, yy, (xx * 6.283 + phase).sin() * 0.5 + 0.5])[None]


def striped_image(h: int = 64, w: int = 64, period: int = 6) -> torch.Tensor:
    """A high-contrast diagonal-stripes 'style' image in [0, 1]."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    s = (((xx + yy) // period) % 2).float()
    return torch.stack([s, 1 - s, 0.5 * s + 0.25])[None]


def planes_image(w: int, h: int):
    """A PIL 'painting' of flat rectangles of colour with hard straight edges between them."""
    from PIL import Image

    img = Image.new("RGB", (w, h), (200, 60, 40))
    img.paste((30, 90, 160), (w // 3, 0, w, h // 2))
    img.paste((240, 230, 200), (0, h // 2, w // 2, h))
    return img


@pytest.fixture(scope="session")
def folder(tmp_path_factory) -> Path:
    """An image folder of 3 classes (red, green, blue) x 16 noisy 16x16 images, told apart by colour."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["red", "green", "blue"]):
        (root / name).mkdir()
        for i in range(16):
            img = np.zeros((16, 16, 3), np.uint8)
            img[..., c] = 180
            Image.fromarray(img + rng.integers(0, 70, img.shape, dtype=np.uint8)).save(root / name / f"{i}.png")
    return root
