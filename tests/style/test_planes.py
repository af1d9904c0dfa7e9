"""styleforge.style.fast.planes: the share of a painting on flat planes."""

from __future__ import annotations

import numpy as np
import torch
from conftest import planes_image, striped_image
from PIL import Image

from styleforge.runtime.io import pil_to_tensor, resize_long_side
from styleforge.style.fast.planes import FLAT_SHARE, FLAT_SIZE, flat_share, is_planes

PAINTINGS = ("candy", "composition_vii", "great_wave", "mosaic", "shipwreck_minotaur_turner", "starry_night",
             "the_scream", "udnie")


def test_flat_planes_count_whole_and_texture_not_at_all():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    assert flat_share(planes_image(96, 64)) > 0.9 and is_planes(flat_share(planes_image(96, 64)))
    assert flat_share(noise) < 0.05 and not is_planes(flat_share(noise))
    assert is_planes(FLAT_SHARE) and not is_planes(FLAT_SHARE - 1e-6)
    # Diagonal stripes 6 px apart along each axis: flat between their edges, one pixel in six on an edge.
    assert abs(flat_share(striped_image(60, 60)) - 5 / 6) < 0.01


def test_a_painting_is_measured_at_512_px_and_never_enlarged():
    big = planes_image(1500, 1000)
    assert FLAT_SIZE == 512 and flat_share(big) == flat_share(resize_long_side(big, 512))
    # A ramp of 4 levels per px is shading at 64 px and would be one flat plane enlarged to 512.
    ramp = Image.fromarray(np.repeat(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))[..., None], 3, axis=2))
    assert flat_share(ramp) == 0.0 and flat_share(ramp.resize((512, 384), Image.BICUBIC)) > 0.9


def test_a_tensor_measures_as_its_image():
    rng = np.random.default_rng(1)
    big = Image.fromarray(np.kron(rng.integers(0, 256, (30, 45, 3), dtype=np.uint8), np.ones((20, 20, 1),
                                                                                              dtype=np.uint8)))
    x = pil_to_tensor(big)  # 900 x 600: measured after a Lanczos resize to 512
    assert flat_share(x) == flat_share(x[0]) == flat_share(big)
    assert 0.3 < flat_share(big) < 0.99


def test_of_the_eight_paintings_only_udnie_is_of_planes(shared):
    shares = {p: flat_share(Image.open(shared / "data" / "styles" / f"{p}.jpg").convert("RGB")) for p in PAINTINGS}
    assert [p for p, s in shares.items() if is_planes(s)] == ["udnie"], shares
    assert torch.tensor(list(shares.values())).max() < 0.45
