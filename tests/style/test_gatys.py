import math

import pytest
import torch
from conftest import striped_image, synthetic_image

from styleforge import StylizeConfig, stylize
from styleforge.backbone import VGGFeatures
from styleforge.runtime.errors import StyleforgeError
from styleforge.runtime.io import save_image
from styleforge.style.color import _RGB2YIQ, original_colors
from styleforge.style.gatys import DEFAULT_STYLE_LAYERS
from styleforge.style.perceptual import STYLE_GAIN

LAYERS = ["relu4_2", *DEFAULT_STYLE_LAYERS]


@pytest.fixture(scope="module")
def random_extractor(random_vgg19_file):
    return VGGFeatures(LAYERS, weights=random_vgg19_file)


def _cfg(**kw):
    base = dict(size=32, device="cpu", precision="fp32", multiscale=False, steps=8)
    base.update(kw)
    return StylizeConfig(**base)


def test_weights_from_strength_and_defaults():
    assert StylizeConfig(style_strength=0.25).weights_pair() == (0.75, 0.25 * STYLE_GAIN)
    assert StylizeConfig(style_strength=0.0).weights_pair() == (1.0, 0.0)
    assert StylizeConfig(content_weight=2.0).weights_pair()[0] == 2.0
    with pytest.raises(StyleforgeError, match="between 0 and 1"):
        StylizeConfig(style_strength=1.5).weights_pair()
    with pytest.raises(StyleforgeError, match="not both"):
        StylizeConfig(style_strength=0.5, style_weight=3.0).weights_pair()


def test_scales_and_steps():
    assert StylizeConfig(size=512).scale_sizes() == [256, 512]
    assert StylizeConfig(size=1024).scale_sizes() == [512, 1024]
    assert StylizeConfig(size=200).scale_sizes() == [200]
    assert StylizeConfig().steps_per_scale(2) == [60, 200]
    assert StylizeConfig(optimizer="adam").steps_per_scale(1) == [500]
    assert StylizeConfig(size=512, multiscale=False).scale_sizes() == [512]
    assert StylizeConfig(size=300, scales=[100, 200]).scale_sizes() == [100, 200, 300]
    assert StylizeConfig(size=300, scales=[300, 100]).scale_sizes() == [100, 300]
    with pytest.raises(StyleforgeError, match="--scales 64 is larger than --size 32: .* a larger --size"):
        StylizeConfig(size=32, scales=[64, 32]).scale_sizes()
    with pytest.raises(StyleforgeError, match="--scales 64,64 repeats a size"):
        StylizeConfig(size=128, scales=[64, 64]).scale_sizes()
    assert StylizeConfig(steps=[5, 6]).steps_per_scale(2) == [5, 6]
    with pytest.raises(StyleforgeError, match="lists 2 values but there are 3 scales"):
        StylizeConfig(steps=[5, 6]).steps_per_scale(3)
    with pytest.raises(StyleforgeError, match=r"there is 1 scale \(without --scales, sizes under 256 px run at one"):
        StylizeConfig(size=128, steps=[10, 20]).validate()
    with pytest.raises(StyleforgeError, match=r"lists 2 values but there are 3 scales \(96, 192, 512: --scales, "
                                              r"then --size 512\)"):  # the scale --size adds is named
        StylizeConfig(scales=[96, 192], steps=[5, 10]).validate()
    assert StylizeConfig(steps=[0, 5]).steps_per_scale(2) == [0, 5]  # no coarse steps: the photo, at full size
    for steps in (0, [5, 0]):  # never optimized at the picture's size: the photo, or a coarse result, resized
        with pytest.raises(StyleforgeError, match=r"the last scale \(the picture's size\) needs at least 1 step"):
            StylizeConfig(steps=steps).validate()


def test_tiny_run_lowers_the_loss_and_reports_progress(random_extractor):
    seen = []
    r = stylize(synthetic_image(), striped_image(), _cfg(steps=10), callback=seen.append,
                extractor=random_extractor)
    assert r.image.shape == (1, 3, 32, 32) and 0 <= r.image.min() and r.image.max() <= 1
    assert [p.step for p in seen] == list(range(1, 11)) and seen[-1].steps == 10
    assert r.history[-1]["total"] < 0.75 * r.history[0]["total"]
    assert all(math.isfinite(h["total"]) for h in r.history)


def test_multiscale_runs_each_scale(random_extractor):
    r = stylize(synthetic_image(48, 64), striped_image(), _cfg(size=64, scales=[32, 64], steps=[3, 2]),
                extractor=random_extractor)
    assert [(h["scale"], h["width"]) for h in r.history] == [(0, 32)] * 3 + [(1, 64)] * 2
    assert r.image.shape == (1, 3, 48, 64)
    assert r.config["resolved"]["scales"] == [32, 64]


def test_pixel_pyramid_starts_at_the_image_and_moves_every_level():
    from styleforge.style.gatys import _PixelPyramid

    image = synthetic_image(20, 28)
    pyr = _PixelPyramid(image, levels=3, gain=0.7)
    assert [tuple(p.shape[-2:]) for p in pyr.layers] == [(20, 28), (10, 14), (5, 7), (3, 4)]
    torch.testing.assert_close(pyr.image(), image)
    pyr.image().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pyr.layers)
    # a constant gradient moves coarse layers more per unit step: low frequencies get bigger steps
    assert pyr.layers[3].grad.abs().mean() > pyr.layers[0].grad.abs().mean()


def test_lbfgs_history_memory_is_capped():
    from styleforge.style.gatys import LBFGS_HISTORY_BYTES, _lbfgs_history

    assert _lbfgs_history(10_000) == 100
    n = 3_142_656  # a 1024x768 image and its pyramid
    assert 20 <= _lbfgs_history(n) < 100 and 8 * n * _lbfgs_history(n) <= LBFGS_HISTORY_BYTES
    assert _lbfgs_history(10**9) == 20


def test_plain_pixels_option(random_extractor):
    r = stylize(synthetic_image(), striped_image(), _cfg(pyramid_levels=0, steps=5), extractor=random_extractor)
    assert r.history[-1]["total"] < r.history[0]["total"]


def test_adam_and_noise_init_lower_the_loss(random_extractor):
    r = stylize(synthetic_image(), striped_image(), _cfg(optimizer="adam", init="noise", steps=15, lr=0.05),
                extractor=random_extractor)
    assert r.history[-1]["total"] < r.history[0]["total"]


def test_same_seed_same_result_and_blend_with_zero_weight(random_extractor):
    cfg = _cfg(init="noise", steps=3, seed=7)
    a = stylize(synthetic_image(), striped_image(), cfg, extractor=random_extractor)
    b = stylize(synthetic_image(), [striped_image(), synthetic_image(phase=1.0)],
                _cfg(init="noise", steps=3, seed=7, style_blend=[1.0, 0.0]), extractor=random_extractor)
    torch.testing.assert_close(a.image, b.image)


def test_blend_mismatch_and_bad_options(random_extractor):
    with pytest.raises(StyleforgeError, match="2 weights but there is 1 style image"):
        stylize(synthetic_image(), striped_image(), _cfg(style_blend=[1, 2]), extractor=random_extractor)
    with pytest.raises(StyleforgeError, match="neither 'content', 'noise' nor an existing image"):
        stylize(synthetic_image(), striped_image(), _cfg(init="missing.png"), extractor=random_extractor)
    with pytest.raises(StyleforgeError, match="unknown optimizer"):
        stylize(synthetic_image(), striped_image(), _cfg(optimizer="sgd"), extractor=random_extractor)


def test_init_image_of_another_shape_is_refused_not_stretched(random_extractor, tmp_path):
    content = synthetic_image(48, 64)
    for (h, w), ok in (((96, 128), True), ((95, 128), True), ((64, 64), False), ((1, 400), False)):
        path = tmp_path / f"init-{h}x{w}.png"
        save_image(synthetic_image(h, w), path)
        if ok:  # the same shape at another size (OUT.partial.png of a larger run), up to pixel rounding
            stylize(content, striped_image(), _cfg(init=str(path), steps=1), extractor=random_extractor)
        else:
            with pytest.raises(StyleforgeError, match=f"--init .* is {w}x{h} and the content 32x24: it would be "
                                                      "stretched"):
                stylize(content, striped_image(), _cfg(init=str(path), steps=1), extractor=random_extractor)


def test_image_too_small_for_the_layers(random_extractor):
    with pytest.raises(StyleforgeError, match=r"too small .*needs at least 16 px"):
        stylize(synthetic_image(), striped_image(), _cfg(size=8), extractor=random_extractor)


def test_nan_loss_stops_with_a_clear_error(random_extractor, monkeypatch):
    from styleforge.style import losses

    calls = []
    real_tv = losses.tv_loss

    def tv_that_breaks(image):
        calls.append(1)
        return real_tv(image) * (float("nan") if len(calls) >= 3 else 1.0)

    monkeypatch.setattr(losses, "tv_loss", tv_that_breaks)
    with pytest.raises(StyleforgeError, match="loss became NaN"):
        stylize(synthetic_image(), striped_image(), _cfg(), extractor=random_extractor)
    assert len(calls) == 3


def test_original_colors_keeps_content_chrominance():
    content, stylized = synthetic_image(), striped_image()
    out = original_colors(stylized, content)
    yiq = lambda x: torch.einsum("ij,bjhw->bihw", _RGB2YIQ, x)
    inside = ((out > 0.001) & (out < 0.999)).all(dim=1)  # pixels where no channel was clamped
    assert inside.float().mean() > 0.3
    torch.testing.assert_close(yiq(out)[:, 0][inside], yiq(stylized)[:, 0][inside], atol=1e-4, rtol=0)
    for ch in (1, 2):
        torch.testing.assert_close(yiq(out)[:, ch][inside], yiq(content)[:, ch][inside], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_real_weights_stylize_lowers_style_loss_on_real_images(real_weights, shared):
    content = shared / "data/content/tubingen.jpg"
    style = shared / "data/styles/starry_night.jpg"
    r = stylize(str(content), str(style), StylizeConfig(size=96, steps=[15, 10], scales=[48, 96], device="cpu"))
    final = [h for h in r.history if h["scale"] == 1]
    assert final[-1]["total"] < final[0]["total"]
    first = r.history[0]
    assert first["content"] < 1e-3 < first["style"]  # content init: only style is off at first
    assert r.history[-1]["style"] < 0.5 * first["style"]
    assert r.image.shape == (1, 3, 72, 96)
