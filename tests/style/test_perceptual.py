"""The one perceptual loss: targets, named parts, and what --style-strength means."""

import math

import pytest
import torch
from click.testing import CliRunner
from conftest import striped_image, synthetic_image

from styleforge.backbone import VGGFeatures
from styleforge.cli import main_group
from styleforge.runtime.device import Runtime
from styleforge.runtime.errors import StyleforgeError
from styleforge.style.perceptual import PARTS, STYLE_GAIN, PerceptualLoss, loss_weights, normalized, normalized_blend

CONTENT, STYLE = {"relu2_2": 1.0}, {"relu1_1": 1.0, "relu2_1": 1.0}
RT = Runtime(torch.device("cpu"))


@pytest.fixture(scope="module")
def extractor(random_vgg19_file):
    return VGGFeatures([*CONTENT, *STYLE], weights=random_vgg19_file)


def _loss(extractor, **kw):
    return PerceptualLoss(extractor, kw.pop("styles", striped_image(32, 32)), CONTENT, STYLE, content_weight=0.5,
                          style_weight=50.0, tv_weight=1.0, rt=RT, **kw)


def test_parts_are_named_and_sum_to_the_total(extractor):
    content, image = synthetic_image(32, 32), synthetic_image(32, 32, phase=1.0)
    parts = _loss(extractor, content=content)(image)
    assert tuple(parts) == PARTS
    torch.testing.assert_close(parts["total"], parts["content"] + parts["style"] + parts["tv"])
    assert parts["content"] > 0 and parts["style"] > 0 and parts["tv"] > 0
    assert _loss(extractor, content=content)(content)["content"].item() == 0.0


def test_scored_gives_the_parts_and_each_style_layer_from_one_pass(extractor):
    style, content, image = striped_image(32, 32), synthetic_image(32, 32), synthetic_image(32, 32, phase=1.0)
    loss = _loss(extractor, styles=style, content=content)
    parts, by_layer = loss.scored(image)
    assert list(by_layer) == list(STYLE) and all(v > 0 for v in by_layer.values())
    assert parts == {n: pytest.approx(float(v)) for n, v in loss(image).items()}
    # Equal layer weights: the style part is the style weight (50) times the layers' mean.
    assert parts["style"] == pytest.approx(50.0 * sum(by_layer.values()) / len(STYLE), rel=1e-5)
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in loss.scored(style)[1].values())


def test_fixed_and_per_call_content_targets_agree_for_one_image(extractor):
    content, image = synthetic_image(32, 32), synthetic_image(32, 32, phase=2.0)
    fixed = _loss(extractor, content=content)(image)
    per_call = _loss(extractor)(image, content=content)
    for name in PARTS:
        torch.testing.assert_close(fixed[name], per_call[name], rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="no content targets"):
        _loss(extractor)(image)


def test_blended_style_targets_are_the_weighted_mean_of_grams(extractor):
    a, b = striped_image(32, 32), synthetic_image(32, 32)
    blended = _loss(extractor, styles=[a, b], blend=[0.25, 0.75]).style_targets
    ga, gb = _loss(extractor, styles=a).style_targets, _loss(extractor, styles=b).style_targets
    for n in STYLE:
        torch.testing.assert_close(blended[n], 0.25 * ga[n] + 0.75 * gb[n])


def test_style_strength_help_says_what_the_code_does():
    assert loss_weights(0.3, None, None, 0.5) == pytest.approx((0.7, 0.3 * STYLE_GAIN))
    assert loss_weights(None, None, None, 0.5) == pytest.approx((0.5, 0.5 * STYLE_GAIN))
    for command in (["stylize"], ["fast", "train"]):
        out = CliRunner().invoke(main_group, [*command, "--help"], terminal_width=400).output
        assert f"content weight 1-W, style weight {STYLE_GAIN:g}*W" in " ".join(out.split()), command


def test_the_style_blend_is_checked_and_scaled_to_sum_to_one():
    assert normalized_blend(None, 3) == [1 / 3] * 3
    assert normalized_blend([1, 3], 2) == [0.25, 0.75]
    assert normalized_blend([0, 2], 2) == [0.0, 1.0]
    for blend, n, message in (([1, 1], 3, "has 2 weights but there are 3 style images: give one weight per"),
                              ([0.5], 2, "has 1 weight but there are 2 style images"),
                              ([1, 2], 1, "has 2 weights but there is 1 style image"),
                              ([1, -1], 2, "non-negative and not all zero"),
                              ([0, 0], 2, "non-negative and not all zero"),
                              ([1, math.nan], 2, "must be finite"), ([1, math.inf], 2, "must be finite")):
        with pytest.raises(StyleforgeError, match=message):
            normalized_blend(blend, n)


def test_layer_weights_are_checked_and_scaled_to_sum_to_one():
    assert normalized({"relu1_1": 1, "relu2_1": 3}) == {"relu1_1": 0.25, "relu2_1": 0.75}
    for bad in ({"relu1_1": -1, "relu2_1": 2}, {"relu1_1": 0}, {"relu1_1": math.nan}, {"relu1_1": 1, "r": math.inf}):
        with pytest.raises(StyleforgeError, match="layer weights must be finite, non-negative and not all zero"):
            normalized(bad)
