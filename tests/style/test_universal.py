"""Any-style transfer: WCT / AdaIN transforms, decoders, the styler, decoder training, CLI, bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import ROOT, planes_image, striped_image, synthetic_image
from PIL import Image
from test_fast import _fails, run, write_clip

from styleforge.backbone import VGGFeatures
from styleforge.runtime.errors import StyleforgeError
from styleforge.runtime.io import open_rgb, pil_to_tensor, save_image
from styleforge.style.color import chrominance, luminance
from styleforge.style.fast.decoder_train import DecoderTrainConfig, Reconstruction, train_decoders
from styleforge.style.fast.decoders import LEVELS, Decoder, HourglassDecoder, load_decoder, save_decoder
from styleforge.style.fast.model import without_lattice
from styleforge.style.fast.universal import (
    DEFAULT_LEVELS,
    EDGE_MARGIN,
    EIG_FLOOR,
    FLAT_TONE_SIGMA,
    AnyStyle,
    UniversalStyler,
    adain,
    build_styler,
    default_tone_blur,
    feature_stats,
    photo_tones,
    style_tones,
    stylize_features,
    swapped_wct,
    upscale,
    wct,
)
from styleforge.style.losses import (
    TONE_SIGMA,
    gram_matrix,
    image_content_loss,
    laplacian_loss,
    repetition_loss,
    style_loss,
)


def _cov(f: torch.Tensor) -> torch.Tensor:
    f = f.reshape(f.shape[0], -1).double()
    c = f - f.mean(1, keepdim=True)
    return c @ c.T / (f.shape[1] - 1)


def _correlated(c: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g, dtype=torch.float64)
    return (mix @ torch.randn(c, h * w, generator=g, dtype=torch.float64)).reshape(c, h, w) + 2.0


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    """a equals b to ``tol`` of b's largest entry (float32 products: relative, not absolute, accuracy)."""
    err = float((a.double() - b.double()).abs().max() / b.double().abs().max())
    assert err < tol, err


def test_wct_gives_the_style_covariance_and_mean():
    content, style = _correlated(8, 20, 25, 0), _correlated(8, 30, 30, 1) * 3 - 5
    out = wct(content, feature_stats(style))
    assert out.shape == content.shape
    _close(_cov(out), _cov(style), 1e-5)
    _close(out.mean((1, 2)), style.mean((1, 2)), 1e-5)
    # Whitening keeps the content's spatial structure: WCT to the content's own statistics is the identity.
    _close(wct(content, feature_stats(content)), content, 1e-5)


def _relu_features(c: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Like VGG ReLU features: non-negative, correlated, with a spread of eigenvalues over 6 decades."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g) * torch.logspace(0, -3, c)
    return torch.relu(mix @ torch.randn(c, h * w, generator=g) + 0.3 * torch.randn(c, 1, generator=g)).reshape(c, h, w)


def _two_step_wct(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Li et al.'s WCT as written (whiten, then colour) all in float64: the reference for the one-matrix path."""
    def flat(f):
        f = f.reshape(f.shape[0], -1).double()
        return f - f.mean(1, keepdim=True), f.mean(1, keepdim=True)

    def power(centred, p):
        vals, vecs = torch.linalg.eigh(centred @ centred.T / (centred.shape[1] - 1))
        keep = vals > EIG_FLOOR * vals.max()
        return (vecs * torch.where(keep, vals.clamp_min(1e-300).pow(p), torch.zeros_like(vals))) @ vecs.T

    (c, _), (s, s_mean) = flat(content), flat(style)
    whitened = power(c, -0.5) @ c
    return (power(s, 0.5) @ whitened + s_mean).reshape(content.shape)


def test_one_matrix_float32_wct_equals_the_float64_two_step_path_at_real_size():
    # relu3_1 of a 512 px photo: 256 channels at 128 x 128; the style at 64 x 64.
    content, style = _relu_features(256, 128, 128, 0), _relu_features(256, 64, 64, 1)
    ref = _two_step_wct(content, style)
    out = wct(content, feature_stats(style))
    assert out.dtype == torch.float32
    assert float((out.double() - ref).abs().max() / ref.std()) < 1e-3
    # The same in channels-last layout, which the output keeps.
    out_cl = wct(content[None].contiguous(memory_format=torch.channels_last)[0], feature_stats(style))
    assert out_cl.stride()[0] == 1
    # Not bit-equal: the two layouts take different float32 kernels, which sum in another order
    # (3.6e-6 on an AVX-512/AMX Xeon, under 1e-6 on an AVX2 EPYC).
    _close(out_cl, out, 1e-5)


def test_wct_leaves_out_directions_the_content_does_not_span():
    content = _correlated(8, 2, 3, 0)  # 6 positions: rank 5 after centring, so 3 directions are empty
    out = wct(content, feature_stats(_correlated(8, 20, 20, 1)))
    assert torch.isfinite(out).all() and out.abs().max() < 1e3


def test_swapped_wct_gives_each_image_the_previous_images_statistics():
    batch = torch.stack([_correlated(6, 9, 11, seed) for seed in range(3)]).float()
    out = swapped_wct(batch)
    assert out.shape == batch.shape and out.dtype == torch.float32
    for i in range(3):
        _close(_cov(out[i]), _cov(batch[i - 1]), 1e-4)
        _close(out[i].mean((1, 2)), batch[i - 1].mean((1, 2)), 1e-4)
        _close(out[i], wct(batch[i], feature_stats(batch[i - 1])), 1e-4)  # the per-image transform
    _close(swapped_wct(batch, shift=0), batch, 1e-4)


def test_adain_matches_channel_mean_and_std():
    content, style = _correlated(6, 16, 16, 2), _correlated(6, 10, 12, 3) * 0.5 + 1
    out = adain(content, feature_stats(style))
    _close(out.mean((1, 2)), style.mean((1, 2)), 1e-6)
    _close(out.std((1, 2)), style.std((1, 2)), 1e-5)


def test_strength_and_blend_mix_features_linearly():
    content = _correlated(4, 8, 8, 4)[None].float()
    s1, s2 = feature_stats(_correlated(4, 9, 9, 5)), feature_stats(_correlated(4, 9, 9, 6))
    assert stylize_features(content, [s1], [1.0], strength=0.0) is content
    full1 = stylize_features(content, [s1], [1.0])
    full2 = stylize_features(content, [s2], [1.0])
    torch.testing.assert_close(stylize_features(content, [s1, s2], [0.25, 0.75]), 0.25 * full1 + 0.75 * full2)
    torch.testing.assert_close(stylize_features(content, [s1], [1.0], strength=0.4), 0.4 * full1 + 0.6 * content)


@pytest.fixture(scope="module")
def encoder(random_vgg19_file):
    return VGGFeatures(["relu2_1", "relu3_1", "relu5_1"], weights=random_vgg19_file)


def test_decoders_invert_each_level_to_rgb_any_size():
    channels = (64, 128, 256, 512, 512)
    for k, level in enumerate(LEVELS):
        assert Decoder(level)(torch.zeros(1, channels[k], 3, 5)).shape == (1, 3, 3 * 2 ** k, 5 * 2 ** k)
    sizes = sum(sum(p.numel() for p in Decoder(lv).parameters()) for lv in LEVELS)
    assert sizes * 2 < 25e6  # all five decoders in fp16 under 25 MB


def _grey(last: torch.nn.Module) -> None:
    """Makes a random decoder's pictures vary around mid-grey (a random one's lie mostly outside [0, 1])."""
    with torch.no_grad():
        last.weight.mul_(0.01)
        last.bias.fill_(0.5)


def _grey_decoder(level: str) -> Decoder:
    dec = Decoder(level).eval()
    _grey(dec.net[-1][1])
    return dec


def test_strength_zero_is_the_reconstruction_and_sizes_are_kept(encoder):
    torch.manual_seed(0)
    dec = _grey_decoder("relu3_1")
    photo = synthetic_image(37, 23)
    # margin=0: the stride's padding alone (the margin: test_the_margin_is_the_photo_mirrored_out_and_cut_off)
    styler = UniversalStyler(encoder, {"relu3_1": dec}, [striped_image(40, 40)], strength=0.0, margin=0)
    with torch.no_grad():
        out = styler(photo)
        padded = torch.nn.functional.pad(photo, (0, 1, 0, 3), mode="reflect")
        expected = without_lattice(dec(encoder(padded, ["relu3_1"])["relu3_1"]), 4)[..., :37, :23]
    torch.testing.assert_close(out, expected)
    styled = UniversalStyler(encoder, {"relu3_1": dec}, [striped_image(40, 40)], strength=1.0, margin=0)
    with torch.no_grad():
        assert not torch.allclose(styled(photo), out)


class _LatticePainter(torch.nn.Module):
    """A stand-in relu3_1 decoder: mid-grey with a texture that repeats every 4 px."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, _, h, w = features.shape
        tile = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
        tile = tile - tile.mean((1, 2), keepdim=True)
        return 0.5 + 0.3 * tile.repeat(1, h, w).expand(b, -1, -1, -1)


def test_what_a_decoder_paints_on_its_own_lattice_is_taken_off(encoder):
    styler = UniversalStyler(encoder, {"relu3_1": _LatticePainter()}, [striped_image(40, 40)])
    with torch.no_grad():
        out = styler(synthetic_image(40, 48))
    assert out.shape == (1, 3, 40, 48)
    assert (out - 0.5).abs().max().item() < 1e-5


def test_work_size_stylizes_at_that_long_side_and_keeps_the_photo_size(encoder):
    torch.manual_seed(0)
    dec = Decoder("relu3_1").eval()
    photo, style = synthetic_image(37, 23), [striped_image(40, 40)]
    seen = []
    hook = dec.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
    small = UniversalStyler(encoder, {"relu3_1": dec}, style, strength=0.0, work_size=16, margin=0)
    with torch.no_grad():
        out = small(photo)
    hook.remove()
    assert out.shape == photo.shape
    assert seen == [(16, 12)]  # 16 x 10 at the working size, padded to relu3_1's stride of 4
    # A photo within the working size is stylized as without one.
    full = UniversalStyler(encoder, {"relu3_1": dec}, style, strength=0.0)
    fits = UniversalStyler(encoder, {"relu3_1": dec}, style, strength=0.0, work_size=37)
    with torch.no_grad():
        torch.testing.assert_close(fits(photo), full(photo))
    with pytest.raises(StyleforgeError, match="--work-size must be at least 16 px, got 8"):
        UniversalStyler(encoder, {"relu3_1": dec}, style, work_size=8)


def test_upscale_restores_the_photos_fine_luminance_and_keeps_flat_areas():
    gray = striped_image(40, 60).mean(1, keepdim=True).expand(1, 3, 40, 60)
    small = torch.nn.functional.interpolate(gray, size=(10, 15), mode="bilinear", antialias=True)
    # An identity "stylization": the photo's own detail brings back the photo (exactly, for grey).
    torch.testing.assert_close(upscale(small, small, gray, sharpen=0.0, detail=1.0), gray)
    assert (upscale(small, small, gray, sharpen=0.0, detail=0.0) - gray).abs().mean() > 0.01
    flat = torch.full((1, 3, 10, 15), 0.3)
    torch.testing.assert_close(upscale(flat, small, gray, sharpen=1.0, detail=0.0), torch.full((1, 3, 40, 60), 0.3))


def test_style_too_small_for_the_deepest_level(encoder):
    decs = {"relu5_1": Decoder("relu5_1"), "relu2_1": Decoder("relu2_1")}
    with pytest.raises(StyleforgeError, match="too small for relu5_1"):
        UniversalStyler(encoder, decs, [striped_image(12, 40)])


def test_decoder_file_round_trip_and_bad_files(tmp_path):
    dec = Decoder("relu2_1")
    dec.input_scale.fill_(0.25)
    path = save_decoder(dec, tmp_path / "decoder-relu2_1.pth", {"steps": 1})
    loaded = load_decoder(path)
    x = torch.randn(1, 128, 4, 4)
    assert (loaded(x) - dec(x)).abs().max() < 1e-2 and float(loaded.input_scale) == 0.25
    torch.save({"x": 1}, tmp_path / "bad.pth")
    with pytest.raises(StyleforgeError, match="not a styleforge decoder"):
        load_decoder(tmp_path / "bad.pth")


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        save_image(synthetic_image(36 + 4 * i, 44, phase=i), folder / f"p{i}.png")
    return folder


def _dcfg(photos, out, vgg, **kw):
    base = dict(data=str(photos), output=str(out), levels=["relu1_1", "relu2_1"], image_size=32, batch_size=2,
                steps=6, checkpoint_every=3, weights=str(vgg), device="cpu", precision="fp32", workers=0,
                half=False, warmup_steps=0)  # tiny runs: the default warmup (100 steps) would outlast them
    return DecoderTrainConfig(**{**base, **kw})


def test_decoder_training_lowers_the_loss(photos, tmp_path, random_vgg19_file):
    result = train_decoders(_dcfg(photos, tmp_path / "d", random_vgg19_file, steps=30, lr=3e-3))
    for level in ("relu1_1", "relu2_1"):
        losses = [r[level] for r in result.history]
        assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), (level, losses)
    assert [p.name for p in result.paths] == ["decoder-relu1_1.pth", "decoder-relu2_1.pth"]
    assert (tmp_path / "d" / "decoders.losses.csv").read_text().startswith("step,relu1_1,relu2_1,seconds")
    assert float(load_decoder(result.paths[0]).input_scale) != 1.0


def test_decoder_resume_gives_the_same_weights(photos, tmp_path, random_vgg19_file):
    full = train_decoders(_dcfg(photos, tmp_path / "a", random_vgg19_file))
    part = train_decoders(_dcfg(photos, tmp_path / "b", random_vgg19_file, stop_at=3))
    assert part.paths[0].name == "decoders.ckpt" and not (tmp_path / "b" / "decoder-relu1_1.pth").exists()
    resumed = train_decoders(_dcfg(photos, tmp_path / "b", random_vgg19_file, resume=True))
    for name in ("decoder-relu1_1.pth", "decoder-relu2_1.pth"):
        a = torch.load(tmp_path / "a" / name, weights_only=True)["state_dict"]
        b = torch.load(tmp_path / "b" / name, weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["relu2_1"] for r in full.history] == [r["relu2_1"] for r in resumed.history]
    with pytest.raises(StyleforgeError, match=r"other settings \(--lr 0.001 -> 0.005; --steps \d+ -> 9\)"):
        train_decoders(_dcfg(photos, tmp_path / "b", random_vgg19_file, steps=9, stop_at=None, lr=5e-3,
                             resume=True))


def test_decoder_resume_with_warmup_and_from_a_checkpoint_older_than_the_option(photos, tmp_path, random_vgg19_file):
    full = train_decoders(_dcfg(photos, tmp_path / "a", random_vgg19_file, warmup_steps=4))
    train_decoders(_dcfg(photos, tmp_path / "b", random_vgg19_file, warmup_steps=4, stop_at=3))
    resumed = train_decoders(_dcfg(photos, tmp_path / "b", random_vgg19_file, warmup_steps=4, resume=True))
    assert [r["relu2_1"] for r in full.history] == [r["relu2_1"] for r in resumed.history]
    assert full.history[0]["relu2_1"] == train_decoders(_dcfg(photos, tmp_path / "c", random_vgg19_file)).history[0][
        "relu2_1"]  # the first step's loss is measured before any update
    with pytest.raises(StyleforgeError, match=r"--warmup-steps 4 -> 0"):
        train_decoders(_dcfg(photos, tmp_path / "b", random_vgg19_file, steps=6, resume=True, overwrite=False))
    # a checkpoint written before --warmup-steps existed resumes as a run without warmup
    train_decoders(_dcfg(photos, tmp_path / "d", random_vgg19_file, stop_at=3))
    ckpt = tmp_path / "d" / "decoders.ckpt"
    record = torch.load(ckpt, weights_only=True)
    del record["config"]["warmup_steps"]
    torch.save(record, ckpt)
    assert train_decoders(_dcfg(photos, tmp_path / "d", random_vgg19_file, resume=True)).paths[0].is_file()


def test_decoder_resume_refuses_other_photos(photos, tmp_path, random_vgg19_file):
    train_decoders(_dcfg(photos, tmp_path / "b", random_vgg19_file, stop_at=3))
    ckpt = (tmp_path / "b" / "decoders.ckpt").read_bytes()
    other = tmp_path / "other"
    shutil.copytree(photos, other)
    with pytest.raises(StyleforgeError, match="other settings .--data"):
        train_decoders(_dcfg(other, tmp_path / "b", random_vgg19_file, resume=True))
    assert (tmp_path / "b" / "decoders.ckpt").read_bytes() == ckpt


def _grey_hourglass() -> HourglassDecoder:
    dec = HourglassDecoder().eval()
    _grey(dec.block1[-1][1])
    return dec


def test_hourglass_decoder_shapes_detail_and_file(tmp_path):
    torch.manual_seed(0)
    dec = HourglassDecoder()
    feats = {"relu4_1": torch.randn(1, 512, 3, 5), "relu3_1": torch.randn(1, 256, 6, 10),
             "relu2_1": torch.randn(1, 128, 12, 20)}
    out = dec(feats)
    assert out.shape == (1, 3, 24, 40)
    assert 0.8e6 < sum(p.numel() for p in dec.parameters()) < 1.0e6
    # detail 0 paints from relu4_1 alone: the finer levels change nothing
    other = {**feats, "relu3_1": torch.randn(1, 256, 6, 10), "relu2_1": torch.randn(1, 128, 12, 20)}
    torch.testing.assert_close(dec(feats, 0.0), dec(other, 0.0))
    assert not torch.allclose(dec(feats, 0.5), dec(other, 0.5))
    dec.input_scales.copy_(torch.tensor([0.5, 0.25, 0.125]))
    loaded = load_decoder(save_decoder(dec, tmp_path / "decoder-hourglass.pth", {"steps": 1}))
    assert isinstance(loaded, HourglassDecoder) and loaded.input_scales.tolist() == [0.5, 0.25, 0.125]
    assert (loaded(feats, 0.7) - dec(feats, 0.7)).abs().max() < 1e-2


@pytest.fixture
def hg_encoder(random_vgg19_file):
    return VGGFeatures(["relu2_1", "relu3_1", "relu4_1"], weights=random_vgg19_file)


def test_hourglass_styler_strength_zero_is_its_reconstruction(hg_encoder):
    torch.manual_seed(0)
    dec = _grey_hourglass()
    photo, style = synthetic_image(37, 23), [striped_image(40, 40)]
    styler = UniversalStyler(hg_encoder, dec, style, strength=0.0, detail=0.6, margin=0)
    assert styler.levels == ["relu4_1", "relu3_1", "relu2_1"]
    with torch.no_grad():
        out = styler(photo)
        padded = torch.nn.functional.pad(photo, (0, 1, 0, 3), mode="reflect")
        expected = without_lattice(dec(hg_encoder(padded, styler.levels), 0.6), 8)[..., :37, :23]
        torch.testing.assert_close(out, expected)
        assert not torch.allclose(UniversalStyler(hg_encoder, dec, style, strength=1.0, detail=0.6, margin=0)(photo),
                                  out)
        assert not torch.allclose(UniversalStyler(hg_encoder, dec, style, strength=0.0, detail=0.0, margin=0)(photo),
                                  out)
    with pytest.raises(StyleforgeError, match=r"--detail must be in \[0, 1\], got 1.5"):
        UniversalStyler(hg_encoder, dec, style, detail=1.5)


def test_hourglass_then_cascade_is_the_cascade_applied_to_the_hourglass_picture(hg_encoder):
    torch.manual_seed(0)
    hourglass, relu2 = _grey_hourglass(), Decoder("relu2_1").eval()
    photo, style = synthetic_image(32, 40), [striped_image(40, 40)]  # sides of 8 px: no padding to undo
    # margin=0: the styler mirrors the photo out once, around both passes, not around each
    both = UniversalStyler(hg_encoder, {"relu2_1": relu2}, style, strength=0.7, detail=0.6, hourglass=hourglass,
                           margin=0)
    assert both.levels == ["relu4_1", "relu3_1", "relu2_1"] and both.cascade_levels == ["relu2_1"]
    first = UniversalStyler(hg_encoder, hourglass, style, strength=0.7, detail=0.6, margin=0)
    then = UniversalStyler(hg_encoder, {"relu2_1": relu2}, style, strength=0.7, margin=0)
    assert both.tones == 1.0 and both.tone_blur == FLAT_TONE_SIGMA  # the stripes are flat between their edges
    with torch.no_grad():
        # The cascade's first (here only) level restyles the hourglass's picture with the photo's light and dark.
        toned = photo_tones(first(photo), photo, both.tone_values, 1.0, both.tone_blur)
        torch.testing.assert_close(both(photo), then(toned))
        assert not torch.allclose(both(photo), first(photo))
        assert not torch.allclose(toned, first(photo))
        untoned = UniversalStyler(hg_encoder, {"relu2_1": relu2}, style, strength=0.7, detail=0.6,
                                  hourglass=hourglass, margin=0, tones=0.0)
        torch.testing.assert_close(untoned(photo), then(first(photo)))


def test_the_cascade_tones_each_picture_it_restyles_not_the_photo(hg_encoder):
    torch.manual_seed(0)
    relu3, relu2 = Decoder("relu3_1").eval(), Decoder("relu2_1").eval()
    photo, style = synthetic_image(32, 40), [striped_image(40, 40)]
    kw = {"strength": 0.7, "margin": 0}
    one = {t: UniversalStyler(hg_encoder, {"relu2_1": relu2}, style, tones=t, **kw) for t in (0.0, 1.0)}
    two = UniversalStyler(hg_encoder, {"relu3_1": relu3, "relu2_1": relu2}, style, **kw)
    first = UniversalStyler(hg_encoder, {"relu3_1": relu3}, style, **kw)
    with torch.no_grad():
        torch.testing.assert_close(one[1.0](photo), one[0.0](photo))  # one level: only the photo is restyled
        torch.testing.assert_close(two(photo), one[1.0](photo_tones(first(photo), photo, two.tone_values, 1.0,
                                                                    two.tone_blur)))
    with pytest.raises(StyleforgeError, match=r"--tones must be in \[0, 1\], got -0.5"):
        UniversalStyler(hg_encoder, {"relu2_1": relu2}, style, tones=-0.5)


def test_the_tone_steps_blur_follows_the_painting(hg_encoder, decoders, tmp_path, random_vgg19_file):
    assert default_tone_blur([0.42], [1.0]) == FLAT_TONE_SIGMA == 8.0
    assert default_tone_blur([0.15], [1.0]) == TONE_SIGMA == 2.0
    # A blend is of planes where its weighted share is (planes.FLAT_SHARE, 0.3).
    assert default_tone_blur([0.9, 0.0], [0.5, 0.5]) == 8.0 and default_tone_blur([0.9, 0.0], [0.2, 0.8]) == 2.0
    torch.manual_seed(0)
    cascade = {"relu3_1": Decoder("relu3_1").eval(), "relu2_1": Decoder("relu2_1").eval()}
    noise, stripes = torch.rand(1, 3, 40, 40), striped_image(40, 40)
    assert UniversalStyler(hg_encoder, cascade, [noise], margin=0).tone_blur == TONE_SIGMA
    flat = UniversalStyler(hg_encoder, cascade, [stripes], margin=0)
    narrow = UniversalStyler(hg_encoder, cascade, [stripes], margin=0, tone_blur=TONE_SIGMA)
    assert (flat.tone_blur, narrow.tone_blur) == (FLAT_TONE_SIGMA, TONE_SIGMA)
    with torch.no_grad():
        photo = synthetic_image(32, 40)
        assert not torch.allclose(flat(photo), narrow(photo))
    with pytest.raises(StyleforgeError, match="the tone step's blur must be positive, got 0 px"):
        UniversalStyler(hg_encoder, cascade, [stripes], tone_blur=0.0)
    # From files, each painting is measured as fast train measures it, not enlarged to --style-size first: a
    # ramp of 4 levels per px is shading at 64 px and one flat plane at 512 (planes.flat_share).
    ramp = tmp_path / "ramp.png"
    Image.fromarray(np.repeat(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))[..., None], 3, axis=2)).save(ramp)
    plane = tmp_path / "plane.png"
    planes_image(64, 48).save(plane)
    blur = {p.name: build_styler(AnyStyle([p], decoders=decoders, weights=random_vgg19_file)).tone_blur
            for p in (ramp, plane)}
    assert blur == {"ramp.png": TONE_SIGMA, "plane.png": FLAT_TONE_SIGMA}
    enlarged = pil_to_tensor(Image.open(ramp).convert("RGB").resize((512, 384), Image.Resampling.LANCZOS))
    assert UniversalStyler(hg_encoder, cascade, [enlarged], margin=0).tone_blur == FLAT_TONE_SIGMA


def test_photo_tones_puts_the_photos_light_and_dark_in_the_given_tones():
    g = torch.Generator().manual_seed(0)
    # A textured mid-grey picture with colour, a photo dark on the left and light on the right.
    picture = (0.5 + 0.05 * torch.randn(1, 3, 24, 32, generator=g)) * torch.tensor([1.0, 0.8, 0.6])[:, None, None]
    photo = torch.full((1, 3, 24, 32), 0.1)
    photo[..., 16:] = 0.9
    tones = torch.linspace(0.3, 0.7, 1000)  # the painting's: between 0.3 and 0.7
    out = photo_tones(picture, photo, tones, 1.0, sigma=0.5)
    y = luminance(out)[0, 0]
    # Each half at the middle of its share of the tones (0.4 and 0.6), away from the blurred boundary.
    assert abs(float(y[:, :12].mean()) - 0.4) < 0.01 and abs(float(y[:, 20:].mean()) - 0.6) < 0.01
    # The same shift on every channel: the colours (chrominance) and, unblurred, the texture stay.
    torch.testing.assert_close(chrominance(out), chrominance(picture))
    shift = out - picture
    torch.testing.assert_close(shift[:, :1].expand_as(shift), shift)
    # Linear in the amount (nothing clamped here), none at 0; at 1 a picture already so toned is unchanged.
    torch.testing.assert_close(photo_tones(picture, photo, tones, 0.5, sigma=0.5) - picture, 0.5 * shift)
    torch.testing.assert_close(photo_tones(picture, photo, tones, 0.0, sigma=0.5), picture)
    flat = photo_tones(torch.full_like(photo, 0.5), photo, tones, 1.0, sigma=0.0001)
    torch.testing.assert_close(photo_tones(flat, photo, tones, 1.0, sigma=0.0001), flat, atol=1e-5, rtol=0)


def test_style_tones_blend_the_styles_luminance_in_proportion():
    dark, light = torch.full((1, 3, 8, 8), 0.2), torch.full((1, 3, 16, 4), 0.8)
    tones = style_tones([dark, light], [0.25, 0.75], samples=1000)
    assert tones.shape == (1000,) and bool((tones[1:] >= tones[:-1]).all())
    torch.testing.assert_close(tones[:250], torch.full((250,), 0.2))
    torch.testing.assert_close(tones[250:], torch.full((750,), 0.8))
    assert style_tones([dark, light], [0.0, 1.0], samples=10).eq(0.8).all()


def test_the_margin_is_the_photo_mirrored_out_and_cut_off(hg_encoder):
    torch.manual_seed(0)
    hourglass, relu2 = _grey_hourglass(), Decoder("relu2_1").eval()
    style = [striped_image(40, 40)]
    kwargs = {"strength": 0.7, "detail": 0.6, "hourglass": hourglass}
    assert UniversalStyler(hg_encoder, {"relu2_1": relu2}, style, **kwargs).margin == EDGE_MARGIN == 16
    framed = UniversalStyler(hg_encoder, {"relu2_1": relu2}, style, margin=16, **kwargs)
    plain = UniversalStyler(hg_encoder, {"relu2_1": relu2}, style, margin=0, **kwargs)
    pad = torch.nn.functional.pad
    with torch.no_grad():
        photo = synthetic_image(37, 23)  # 69 x 55 with the margin, then padded to 72 x 56 for relu4_1
        out = framed(photo)
        assert out.shape == photo.shape
        torch.testing.assert_close(out, plain(pad(photo, (16, 16, 16, 16), mode="reflect"))[..., 16:53, 16:39])
        assert not torch.allclose(out, plain(photo))
        # A side shorter than the margin is mirrored out by one pixel less than its length.
        thin = synthetic_image(5, 40)
        torch.testing.assert_close(framed(thin), plain(pad(thin, (16, 16, 4, 4), mode="reflect"))[..., 4:9, 16:56])
    with pytest.raises(StyleforgeError, match="the edge margin must be non-negative, got -1"):
        UniversalStyler(hg_encoder, {"relu2_1": relu2}, style, margin=-1, **kwargs)


def test_tiny_photos_keep_their_size(hg_encoder):
    # 1 x 1 px once failed in the hourglass decoder's reflection padding (a 1 x 1 relu4_1 map): the photo is
    # padded to at least two strides of the deepest level.
    torch.manual_seed(0)
    styler = UniversalStyler(hg_encoder, {"relu2_1": Decoder("relu2_1").eval()}, [striped_image(40, 40)],
                             hourglass=_grey_hourglass())
    with torch.no_grad():
        for h, w in ((1, 1), (2, 3), (5, 40), (9, 1)):
            out = styler(synthetic_image(h, w))
            assert out.shape == (1, 3, h, w) and torch.isfinite(out).all()


def test_strength_defaults_by_mode_and_an_explicit_one_wins(hg_encoder):
    hourglass, relu2 = _grey_hourglass(), Decoder("relu2_1").eval()
    style = [striped_image(40, 40)]
    # Full strength for each decoder alone, less for the hourglass's picture restyled by the cascade.
    assert UniversalStyler(hg_encoder, {"relu2_1": relu2}, style).strength == 1.0
    assert UniversalStyler(hg_encoder, hourglass, style).strength == 1.0
    both = UniversalStyler(hg_encoder, {"relu2_1": relu2}, style, hourglass=hourglass)
    assert (both.mode, both.strength) == ("hourglass+cascade", 0.8)
    assert UniversalStyler(hg_encoder, {"relu2_1": relu2}, style, strength=1.0, hourglass=hourglass).strength == 1.0
    assert UniversalStyler(hg_encoder, hourglass, style, strength=0.0).strength == 0.0
    assert AnyStyle(["s.png"], decoder="hourglass+cascade").resolved_strength == 0.8
    assert AnyStyle(["s.png"], decoder="hourglass+cascade", strength=0.3).resolved_strength == 0.3
    assert AnyStyle(["s.png"]).resolved_strength == 0.8  # the default decoder is hourglass+cascade
    assert AnyStyle(["s.png"], decoder="cascade").resolved_strength == 1.0
    with pytest.raises(StyleforgeError, match=r"--strength must be in \[0, 1\], got 1.5"):
        UniversalStyler(hg_encoder, {"relu2_1": relu2}, style, strength=1.5, hourglass=hourglass)


def test_hourglass_training_lowers_the_loss_and_resumes_exactly(photos, tmp_path, random_vgg19_file):
    cfg = dict(architecture="hourglass", levels=LEVELS, image_size=32, steps=30, lr=3e-3, checkpoint_every=10)
    result = train_decoders(_dcfg(photos, tmp_path / "a", random_vgg19_file, **cfg))
    losses = [r["hourglass"] for r in result.history]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    assert [p.name for p in result.paths] == ["decoder-hourglass.pth"]
    dec = load_decoder(result.paths[0])
    assert isinstance(dec, HourglassDecoder) and (dec.input_scales != 1.0).all()
    train_decoders(_dcfg(photos, tmp_path / "b", random_vgg19_file, **cfg, stop_at=10))
    resumed = train_decoders(_dcfg(photos, tmp_path / "b", random_vgg19_file, **cfg, resume=True))
    assert [r["hourglass"] for r in resumed.history] == losses
    with pytest.raises(StyleforgeError, match="--levels is for --architecture mirror"):
        train_decoders(_dcfg(photos, tmp_path / "c", random_vgg19_file, architecture="hourglass"))


@pytest.mark.parametrize("term, penalty", [("hatching_weight", repetition_loss), ("laplacian_weight", laplacian_loss)])
def test_the_stylizing_stage_adds_each_penalty_of_the_picture_against_its_photo(random_vgg19_file, term, penalty):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)  # noise: a texture that hardly repeats, and outlines everywhere
    plain = Reconstruction(["hourglass"], 0.5, style_weight=2.0)
    penalized = Reconstruction(["hourglass"], 0.5, style_weight=2.0, **{term: 5.0})
    penalized.load_state_dict(plain.state_dict())
    encoder = VGGFeatures(plain.encoder_levels, weights=str(random_vgg19_file))
    with torch.no_grad():
        decoder = plain.decoders["hourglass"]
        feats = encoder(images, decoder.levels)
        picture = decoder({lv: swapped_wct(feats[lv]) for lv in decoder.levels}, 0.5)
        expected = 5.0 * penalty(picture, images)
        added = penalized(images, encoder, 1.0, 0.5) - plain(images, encoder, 1.0, 0.5)
    assert expected > 0  # a random decoder's picture repeats itself more than noise, and loses its outlines
    assert torch.allclose(added, expected[None], rtol=1e-5, atol=1e-7)


def test_the_stylizing_stage_of_a_level_decoder_is_wct_at_its_level_then_the_style_loss(random_vgg19_file):
    torch.manual_seed(0)
    images = torch.rand(3, 3, 32, 32)
    model = Reconstruction(["relu2_1"], 0.5, style_weight=2.0)
    assert model.encoder_levels == list(LEVELS)  # the style loss reads every level
    encoder = VGGFeatures(model.encoder_levels, weights=str(random_vgg19_file))
    with torch.no_grad():
        feats = encoder(images, LEVELS)
        transformed = swapped_wct(feats["relu2_1"])
        picture = model.decoders["relu2_1"](transformed)
        out = encoder(picture, LEVELS)
        style = torch.stack([style_loss(gram_matrix(out[lv]), gram_matrix(feats[lv]).roll(1, 0))
                             for lv in LEVELS]).mean()
        expected = image_content_loss(out["relu2_1"], transformed) + 2.0 * style
        got = model(images, encoder, 1.0)
    assert got.shape == (1,) and torch.allclose(got[0], expected, rtol=1e-5)


def test_level_decoder_stylizing_stage_starts_from_its_decoder_and_lowers_its_loss(photos, tmp_path,
                                                                                  random_vgg19_file):
    init = train_decoders(_dcfg(photos, tmp_path / "a", random_vgg19_file, levels=["relu2_1"], image_size=32,
                                steps=4)).paths[0]
    cfg = dict(levels=["relu2_1"], image_size=32, style_weight=2.0, hatching_weight=1.0, init_decoder=str(init),
               steps=30, lr=3e-3)
    result = train_decoders(_dcfg(photos, tmp_path / "b", random_vgg19_file, **cfg))
    losses = [r["relu2_1"] for r in result.history]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert [p.name for p in result.paths] == ["decoder-relu2_1.pth"]
    started, tuned = load_decoder(init), load_decoder(result.paths[0])
    assert torch.equal(tuned.input_scale, started.input_scale)  # the init's scale is kept
    assert not torch.equal(tuned.net[-1][1].weight, started.net[-1][1].weight)
    for extra, text in (({"levels": ["relu2_1", "relu3_1"]}, "--init-decoder starts one decoder: with "
                                                              "--architecture mirror give one level"),
                        ({"levels": ["relu3_1"]}, "is not a relu3_1 decoder of --width 0.5"),
                        ({"architecture": "hourglass", "levels": LEVELS}, "is not an hourglass decoder"),
                        ({"image_size": 24}, r"--crop-size 24 must be a multiple of 16 and at least 32 for relu5_1 "
                                             r"\(--style-weight's style loss reads it\)")):
        with pytest.raises(StyleforgeError, match=text):
            train_decoders(_dcfg(photos, tmp_path / "c", random_vgg19_file, **{**cfg, **extra}))
    assert not (tmp_path / "c").exists()


def test_hourglass_stylizing_stage_starts_from_a_decoder_and_lowers_its_loss(photos, tmp_path, random_vgg19_file):
    base = dict(architecture="hourglass", levels=LEVELS, image_size=32)
    init = train_decoders(_dcfg(photos, tmp_path / "a", random_vgg19_file, **base, steps=4)).paths[0]
    cfg = dict(base, style_weight=2.0, init_decoder=str(init), steps=30, lr=3e-3, checkpoint_every=10)
    result = train_decoders(_dcfg(photos, tmp_path / "b", random_vgg19_file, **cfg))
    losses = [r["hourglass"] for r in result.history]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    started = load_decoder(init)
    tuned = load_decoder(result.paths[0])
    assert torch.equal(tuned.input_scales, started.input_scales)  # the init's scales are kept
    assert not torch.equal(tuned.block1[-1][1].weight, started.block1[-1][1].weight)
    train_decoders(_dcfg(photos, tmp_path / "c", random_vgg19_file, **cfg, stop_at=10))
    resumed = train_decoders(_dcfg(photos, tmp_path / "c", random_vgg19_file, **cfg, resume=True))
    assert [r["hourglass"] for r in resumed.history] == losses
    with pytest.raises(StyleforgeError, match="--init-decoder 'nope.pth' does not exist"):
        train_decoders(_dcfg(photos, tmp_path / "d", random_vgg19_file, **dict(cfg, init_decoder="nope.pth")))
    before = init.read_bytes()  # the decoder it starts from is an input, --overwrite or not
    with pytest.raises(StyleforgeError, match="the output decoder-hourglass.pth would be written over the "
                                              "--init-decoder"):
        train_decoders(_dcfg(photos, init.parent, random_vgg19_file, **cfg, overwrite=True))
    assert init.read_bytes() == before
    mirror = save_decoder(Decoder("relu2_1"), tmp_path / "decoder-relu2_1.pth", {})
    with pytest.raises(StyleforgeError, match="is not an hourglass decoder of --width 0.5"):
        train_decoders(_dcfg(photos, tmp_path / "d", random_vgg19_file, **dict(cfg, init_decoder=str(mirror))))
    assert not (tmp_path / "d").exists()  # refused before the output folder was made
    for term in ("hatching", "laplacian"):
        with pytest.raises(StyleforgeError, match=rf"other settings \(--{term}-weight 0 -> 3\)"):
            train_decoders(_dcfg(photos, tmp_path / "c", random_vgg19_file, **cfg, resume=True,
                                 **{f"{term}_weight": 3.0}))
    for extra, text in (({"batch_size": 1}, "--style-weight needs --batch-size 2 or more"),
                        ({"feature_weight": 0.5}, "--feature-weight is for reconstruction"),
                        ({"style_weight": 0.0, "hatching_weight": 1.0}, "--hatching-weight is for the stylizing"),
                        ({"style_weight": 0.0, "laplacian_weight": 1.0}, "--laplacian-weight is for the stylizing"),
                        ({"laplacian_weight": -1.0}, "--laplacian-weight")):
        with pytest.raises(StyleforgeError, match=text):
            train_decoders(_dcfg(photos, tmp_path / "d", random_vgg19_file, **{**cfg, **extra}))


@pytest.fixture
def decoders(tmp_path):
    folder = tmp_path / "decoders"
    folder.mkdir()
    torch.manual_seed(0)
    for level in ("relu1_1", "relu3_1"):
        save_decoder(Decoder(level), folder / f"decoder-{level}.pth", {})
    save_decoder(HourglassDecoder(), folder / "decoder-hourglass.pth", {})
    return folder


def test_decoder_training_replaces_only_files_a_run_wrote(photos, tmp_path, random_vgg19_file):
    out = tmp_path / "d"
    out.mkdir()
    (out / "decoder-relu2_1.pth").write_text("my notes")
    with pytest.raises(StyleforgeError, match="decoder-relu2_1.pth is already there: use --overwrite"):
        train_decoders(_dcfg(photos, out, random_vgg19_file))
    with pytest.raises(StyleforgeError, match="decoder-relu2_1.pth is not a file a styleforge run wrote"):
        train_decoders(_dcfg(photos, out, random_vgg19_file, overwrite=True))
    (out / "decoder-relu2_1.pth").unlink()
    (out / "decoders.losses.csv").write_text("name,age\n")  # the loss table's name too
    with pytest.raises(StyleforgeError, match="decoders.losses.csv is already there"):
        train_decoders(_dcfg(photos, out, random_vgg19_file))
    assert sorted(p.name for p in out.iterdir()) == ["decoders.losses.csv"]
    (out / "decoders.losses.csv").unlink()
    train_decoders(_dcfg(photos, out, random_vgg19_file, steps=2))
    train_decoders(_dcfg(photos, out, random_vgg19_file, steps=2, overwrite=True))  # its own files: replaced


def test_decoder_training_on_bad_input_leaves_no_folder(photos, tmp_path, random_vgg19_file):
    for change in ({"data": str(tmp_path / "nodir")}, {"batch_size": 500}, {"resume": True},
                   {"weights": str(photos / "p0.png")}):
        with pytest.raises(StyleforgeError):
            train_decoders(_dcfg(photos, tmp_path / "new" / "d", random_vgg19_file, **change))
        assert not (tmp_path / "new").exists(), change


def test_build_styler_finds_decoders_and_names_missing_levels(decoders, tmp_path, random_vgg19_file):
    style = tmp_path / "s.png"
    save_image(striped_image(48, 48), style)
    # The default: after the hourglass, the cascade's relu3_1 level alone (DEFAULT_LEVELS).
    styler = build_styler(AnyStyle([style], decoders=decoders, weights=random_vgg19_file))
    assert styler.mode == "hourglass+cascade" and styler.cascade_levels == ["relu3_1"] == list(DEFAULT_LEVELS)
    assert styler.levels == ["relu4_1", "relu3_1", "relu2_1"]
    # --decoder cascade: relu3_1 alone too, on the photo itself; --levels: the levels named.
    cascade = build_styler(AnyStyle([style], decoders=decoders, weights=random_vgg19_file, decoder="cascade"))
    assert cascade.mode == "cascade" and cascade.cascade_levels == ["relu3_1"] == list(DEFAULT_LEVELS)
    assert cascade.levels == ["relu3_1"] and cascade.hourglass is None
    both = build_styler(AnyStyle([style], decoders=decoders, weights=random_vgg19_file, decoder="cascade",
                                 levels=["relu1_1", "relu3_1"]))
    assert both.cascade_levels == ["relu3_1", "relu1_1"]  # coarse to fine, whatever the order given
    named = build_styler(AnyStyle([style], decoders=decoders, levels=["relu3_1", "relu1_1"], weights=random_vgg19_file))
    assert named.levels == ["relu4_1", "relu3_1", "relu2_1", "relu1_1"]
    with pytest.raises(StyleforgeError, match="no decoder for relu4_1"):
        build_styler(AnyStyle([style], decoders=decoders, levels=["relu4_1"], weights=random_vgg19_file))


def test_cli_apply_with_style_images(decoders, tmp_path, random_vgg19_file):
    for name, img in (("s1.png", striped_image(48, 48)), ("s2.jpg", synthetic_image(40, 56, phase=2.0))):
        save_image(img, tmp_path / name)
    src = tmp_path / "in"
    src.mkdir()
    save_image(synthetic_image(31, 45), src / "a.png")
    save_image(synthetic_image(50, 21), src / "b.jpg")
    common = ["--decoders", decoders, "--weights", random_vgg19_file, "--device", "cpu", "-q"]
    result = run("fast", "apply", src, "-o", tmp_path / "out", "--style-image", tmp_path / "s1.png",
                 "--style-image", tmp_path / "s2.jpg", "--style-blend", "0.7,0.3", "--strength", "0.8", *common)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "in" / "a.png").size == (45, 31)
    assert Image.open(tmp_path / "out" / "in" / "b.jpg").size == (21, 50)
    result = run("fast", "apply", src / "a.png", "-o", tmp_path / "one.png", "--style-image", tmp_path / "s1.png",
                 "--size", "64", "--original-colors", "--method", "adain", "--levels", "relu3_1", *common)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "one.png").size == (64, 44)
    result = run("fast", "apply", src / "a.png", "-o", tmp_path / "work.png", "--style-image", tmp_path / "s1.png",
                 "--size", "64", "--work-size", "32", *common)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "work.png").size == (64, 44)


def test_decoder_is_chosen_by_name_and_hourglass_cascade_is_the_default(decoders, tmp_path, random_vgg19_file):
    save_image(striped_image(48, 48), tmp_path / "s.png")
    save_image(synthetic_image(31, 45), tmp_path / "a.png")
    style = [tmp_path / "s.png"]
    (decoders / "decoder-hourglass.pth").unlink()  # a folder of per-level decoders only
    missing = "no decoder-hourglass.pth in .* for --decoder hourglass: train one with .*train-decoders --architecture"
    with pytest.raises(StyleforgeError, match=missing + " hourglass'$"):
        build_styler(AnyStyle(style, decoders=decoders, weights=random_vgg19_file, decoder="hourglass"))
    with pytest.raises(StyleforgeError, match="for --decoder hourglass.cascade: train one .* or use --decoder cascade"):
        build_styler(AnyStyle(style, decoders=decoders, weights=random_vgg19_file))
    _fails(run("fast", "apply", tmp_path / "a.png", "-o", tmp_path / "x.png", "--style-image", tmp_path / "s.png",
               "--decoders", decoders, "--weights", random_vgg19_file, "--device", "cpu", "-q"),
           "hourglass' or use --decoder cascade (the per-level decoders alone)")
    assert not (tmp_path / "x.png").exists()
    save_decoder(_grey_hourglass(), decoders / "decoder-hourglass.pth", {})
    assert build_styler(AnyStyle(style, decoders=decoders, weights=random_vgg19_file)).mode == "hourglass+cascade"
    cascade = build_styler(AnyStyle(style, decoders=decoders, weights=random_vgg19_file, decoder="cascade"))
    assert cascade.hourglass is None and cascade.levels == ["relu3_1"]
    styler = build_styler(AnyStyle(style, decoders=decoders, weights=random_vgg19_file, decoder="hourglass",
                                   detail=0.25))
    assert styler.hourglass is not None and styler.detail == 0.25 and styler.levels == ["relu4_1", "relu3_1", "relu2_1"]
    common = ["--style-image", tmp_path / "s.png", "--decoders", decoders, "--weights", random_vgg19_file,
              "--device", "cpu", "-q"]
    result = run("fast", "apply", tmp_path / "a.png", "-o", tmp_path / "d.png", "--decoder", "hourglass",
                 "--detail", "0.5", *common)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "d.png").size == (45, 31)
    both = build_styler(AnyStyle(style, decoders=decoders, weights=random_vgg19_file, decoder="hourglass+cascade",
                                 levels=["relu3_1"], detail=0.5))
    assert both.hourglass is not None and both.detail == 0.5 and both.cascade_levels == ["relu3_1"]
    assert (cascade.strength, styler.strength, both.strength) == (1.0, 1.0, 0.8)
    assert both.levels == ["relu4_1", "relu3_1", "relu2_1"]
    result = run("fast", "apply", tmp_path / "a.png", "-o", tmp_path / "both.png", "--decoder", "hourglass+cascade",
                 *common)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "both.png").size == (45, 31)
    for extra, text in ((["--detail", "1.5", "--decoder", "hourglass"], "--detail"),
                        (["--detail", "0.5", "--decoder", "cascade"], "--detail is for the hourglass decoder"),
                        (["--detail", "1", "--decoder", "cascade"], "--detail is for the hourglass decoder"),  # default
                        (["--decoder", "hourglass", "--levels", "relu3_1"], "--levels is for the cascade")):
        _fails(run("fast", "apply", tmp_path / "a.png", "-o", tmp_path / "x.png", *extra, *common), text)
    assert not (tmp_path / "x.png").exists()


def test_cli_apply_style_image_to_video(decoders, tmp_path, random_vgg19_file):
    av = pytest.importorskip("av")
    save_image(striped_image(48, 48), tmp_path / "s.png")
    result = run("fast", "apply", write_clip(av, tmp_path / "clip.mp4", frames=3), "-o", tmp_path / "out.mp4",
                 "--style-image", tmp_path / "s.png", "--decoders", decoders, "--weights", random_vgg19_file,
                 "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    with av.open(str(tmp_path / "out.mp4")) as f:
        frames = list(f.decode(video=0))
    assert len(frames) == 3 and (frames[0].width, frames[0].height) == (48, 32)


def test_work_size_lowers_the_memory_estimate(decoders, tmp_path, random_vgg19_file, monkeypatch):
    from styleforge.runtime import guard

    save_image(synthetic_image(30, 45), tmp_path / "in.png")
    save_image(striped_image(48, 48), tmp_path / "s.png")
    monkeypatch.setattr(guard, "available_memory", lambda device: 1e9)  # 1.3 GB needed at full size
    common = ["--style-image", tmp_path / "s.png", "--size", "1200", "--decoders", decoders,
              "--weights", random_vgg19_file, "--device", "cpu", "-q"]
    _fails(run("fast", "apply", tmp_path / "in.png", "-o", tmp_path / "o.png", *common),
           "(or --batch-size), or --work-size")
    result = run("fast", "apply", tmp_path / "in.png", "-o", tmp_path / "o.png", *common, "--work-size", "64")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "o.png").size == (1200, 800)


@pytest.mark.parametrize("extra, text", [
    (["m.pth", "in.png", "--style-image", "s.png"], "not both"),
    (["in.png"], "give a MODEL"),
    (["in.png", "--style-image", "s.png", "--strength", "1.5"], "'--strength': must be in [0, 1], got 1.5"),
    (["in.png", "--style-image", "s.png", "--style-blend", "1,2"], "2 weights but there is 1"),
    (["in.png", "--style-image", "s.png", "--levels", "relu9_1"], "unknown level 'relu9_1'"),
    (["in.png", "--style-image", "s.png", "--levels", "relu5_1"], "no decoder for relu5_1"),
    (["in.png", "--style-image", "s.png", "--style-size", "3"], "too small for relu4_1"),
    (["in.png", "--style-image", "s.png", "--work-size", "8"], "--work-size must be at least 16 px, got 8"),
    (["in.png", "--style-image", "s.png", "--tones", "1.5"], "'--tones': must be in [0, 1], got 1.5"),
    (["in.png", "--style-image", "s.png", "--decoder", "hourglass", "--tones", "0.5"], "--tones is for the cascade"),
    (["in.png", "--style-image", "missing.png"], "missing.png"),
])
def test_cli_apply_bad_input_is_one_line(decoders, tmp_path, random_vgg19_file, monkeypatch, extra, text):
    monkeypatch.chdir(tmp_path)
    save_image(synthetic_image(32, 32), tmp_path / "in.png")
    save_image(striped_image(48, 48), tmp_path / "s.png")
    torch.save({"x": 1}, tmp_path / "m.pth")
    result = run("fast", "apply", *extra, "-o", tmp_path / "o.png", "--decoders", decoders,
                 "--weights", random_vgg19_file, "--device", "cpu", "-q")
    _fails(result, text)
    assert not (tmp_path / "o.png").exists()


def test_cli_train_decoders_and_bad_input(photos, tmp_path, random_vgg19_file):
    common = ["--data", photos, "--weights", random_vgg19_file, "--crop-size", "32", "--batch-size", "2",
              "--device", "cpu", "-q", "--workers", "0"]
    result = run("fast", "train-decoders", "-o", tmp_path / "d", "--levels", "relu2_1", "--steps", "2",
                 "--warmup-steps", "5", *common)
    assert result.exit_code == 0, result.output
    decoder_file = torch.load(tmp_path / "d" / "decoder-relu2_1.pth", weights_only=True)
    assert decoder_file["level"] == "relu2_1" and decoder_file["training"]["warmup_steps"] == 5
    _fails(run("fast", "train-decoders", "-o", tmp_path / "e", "--warmup-steps", "-1", *common),
           "--warmup-steps")
    _fails(run("fast", "train-decoders", "-o", tmp_path / "e", "--levels", "relu5_1", *common, "--crop-size", "24"),
           "--crop-size 24 must be a multiple of 16 and at least 32")
    _fails(run("fast", "train-decoders", "-o", tmp_path / "e", "--levels", "relu6_1", *common), "unknown level")
    _fails(run("fast", "train-decoders", "-o", tmp_path / "e", "--resume", *common), "no checkpoint")


def test_no_dark_line_at_odd_edges_with_the_shipped_decoders(shared, real_weights):
    # BSDS photos are 481 x 321: odd sides, padded to a multiple of 8 for relu4_1 and cropped back.
    # A dark line at the right/bottom of the outputs was the photos' own border (100007.jpg's last
    # two columns are 60-90 levels darker than the next ones); this photo has cleaner edges, so the
    # stylized one must too, whatever the padding does. Its right edge is 7 levels darker than the columns
    # 4-8 px in; since session 47 (the cascade after the hourglass at relu3_1 alone) the picture follows it
    # to within a grey level, with --tones or without, where the relu2_1 level lightened it (-5); the zero
    # padding of session 36 made it -9 with the decoders of then.
    photo = open_rgb(shared / "data" / "bsds500" / "test" / "10081.jpg").resize((241, 161), Image.BICUBIC)

    def steps(image: torch.Tensor) -> list[float]:  # edge less inner luminance, right and bottom, grey levels
        grey = image.clamp(0, 1).mean(0) * 255
        return [float((grey[:, -2:].mean(1) - grey[:, -8:-4].mean(1)).mean()),
                float((grey[-2:].mean(0) - grey[-8:-4].mean(0)).mean())]

    own = steps(pil_to_tensor(photo)[0])
    assert own[0] < -7
    for tones, floors in ((0.0, own), (None, own)):
        floors = [f - 1.5 for f in floors]  # at most 1.5 grey levels darker than the photo's own edge
        styler = build_styler(AnyStyle([shared / "data" / "styles" / "starry_night.jpg"], style_size=256,
                                       decoders=ROOT / "weights", tones=tones))
        with torch.inference_mode():
            out = styler(pil_to_tensor(photo))[0]
        assert out.shape == (3, 161, 241)
        assert all(step > floor for step, floor in zip(steps(out), floors)), (tones, steps(out))


def test_the_margin_keeps_the_zero_padding_frame_off_the_picture(random_vgg19_file):
    # The convolutions' zero padding paints a frame along a picture's edges (session 36: 20-30 grey levels on
    # the jet's sky with the decoders of then; the shipped decoders, trained to stylize since sessions 43-44,
    # paint texture everywhere, so the frame is no longer measurable against their own error). With one
    # level, relu1_1 (one padded convolution each way), the frame is 2 px wide: on a flat photo the margin
    # leaves the picture flat to its edges, and without it the outer pixels differ.
    torch.manual_seed(0)
    encoder = VGGFeatures(["relu1_1"], weights=str(random_vgg19_file))
    decoder = Decoder("relu1_1").eval()
    photo, style = torch.full((1, 3, 40, 56), 0.6), striped_image(40, 40)

    def spread(margin: int) -> tuple[float, float]:
        """(the outer 2 px's largest step from the middle, the middle's own spread), grey levels."""
        styler = UniversalStyler(encoder, {"relu1_1": decoder}, [style], strength=0.0, margin=margin)
        with torch.inference_mode():
            out = styler(photo)[0] * 255
        middle = out[:, 8:-8, 8:-8]
        centre = middle.mean((1, 2), keepdim=True)
        edge = torch.cat([out[:, :2].flatten(1), out[:, -2:].flatten(1), out[:, :, :2].flatten(1),
                          out[:, :, -2:].flatten(1)], 1)
        return float((edge - centre.flatten(1)).abs().max()), float((middle - centre).abs().max())

    (edge, middle), (bare_edge, _) = spread(EDGE_MARGIN), spread(0)
    assert middle < 1e-3 and edge < 1e-3 and bare_edge > 0.5, (edge, middle, bare_edge)


def test_transform_stays_float32_under_bf16_autocast(encoder):
    # Where the CPU has native bf16, Runtime's auto precision runs the styler under bf16 autocast:
    # the convolutions go bf16, the statistics and the C x C transform must not (eigenvalues down
    # to 1e-5 of the largest).
    feats = _relu_features(64, 32, 32, 0).bfloat16()
    stats = feature_stats(_relu_features(64, 24, 24, 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = wct(feats, stats)
        assert stylize_features(feats[None], [stats], [1.0]).dtype == torch.bfloat16
    _close(low, wct(feats.float(), stats), 1e-5)
    torch.manual_seed(0)
    styler = UniversalStyler(encoder, {"relu3_1": Decoder("relu3_1").eval()}, [striped_image(40, 40)])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert styler(synthetic_image(37, 23)).shape == (1, 3, 37, 23)


def test_each_level_encodes_only_up_to_its_own_layer(encoder):
    # Li et al.'s coarse-to-fine WCT re-encodes each level's output for the next, finer level; each
    # pass must stop at that level's layer although the encoder is configured up to relu5_1.
    decs = {"relu3_1": Decoder("relu3_1").eval(), "relu2_1": Decoder("relu2_1").eval()}
    styler = UniversalStyler(encoder, decs, [striped_image(40, 40)])
    convs = [m for m in encoder.features if isinstance(m, torch.nn.Conv2d)]
    calls = [0] * len(convs)
    hooks = [m.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1)) for i, m in enumerate(convs)]
    with torch.no_grad():
        styler(synthetic_image(32, 32))
    for h in hooks:
        h.remove()
    # conv1_1, conv1_2, conv2_1 in both passes; conv2_2 and conv3_1 only in the relu3_1 pass; nothing deeper.
    assert calls == [2, 2, 2, 1, 1] + [0] * (len(convs) - 5)


def test_a_decoder_file_of_the_other_kind_is_a_one_line_error(decoders, tmp_path, random_vgg19_file):
    save_image(striped_image(48, 48), tmp_path / "s.png")
    style = [tmp_path / "s.png"]
    save_decoder(Decoder("relu3_1"), decoders / "decoder-hourglass.pth", {})  # a per-level decoder, misnamed
    with pytest.raises(StyleforgeError, match="decoder-hourglass.pth holds a per-level decoder"):
        build_styler(AnyStyle(style, decoders=decoders, weights=random_vgg19_file, decoder="hourglass"))
    save_decoder(_grey_hourglass(), decoders / "decoder-relu1_1.pth", {})  # and the hourglass, misnamed
    with pytest.raises(StyleforgeError, match="decoder-relu1_1.pth holds the hourglass decoder"):
        build_styler(AnyStyle(style, decoders=decoders, weights=random_vgg19_file, decoder="cascade",
                               levels=["relu1_1"]))
    save_decoder(Decoder("relu3_1"), decoders / "decoder-relu1_1.pth", {})  # another level's decoder, misnamed
    with pytest.raises(StyleforgeError, match="decoder-relu1_1.pth holds the relu3_1 decoder; its name says relu1_1: "
                                              "rename it decoder-relu3_1.pth"):
        build_styler(AnyStyle(style, decoders=decoders, weights=random_vgg19_file, decoder="cascade",
                               levels=["relu1_1"]))
