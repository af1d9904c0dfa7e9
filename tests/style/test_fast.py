"""Fast style networks: model shapes, training, checkpoint/resume, apply, ONNX, CLI, bad input."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import planes_image, striped_image, synthetic_image
from PIL import Image

from styleforge.cli import main_group
from styleforge.runtime.errors import StyleforgeError
from styleforge.runtime.io import save_image
from styleforge.style.fast import ARCHS, FastTrainConfig, TransformerNet, load_model, save_model, train_style
from styleforge.style.fast.apply import stylize_files
from styleforge.style.fast.data import RandomCrops, StreamSampler, list_images
from styleforge.style.fast.model import UPSAMPLE_MODES, lattice_part, parameter_count
from styleforge.style.fast.planes import FLAT_SHARE, flat_share
from styleforge.style.fast.train import (
    DEFAULT_LR,
    FLAT_HATCHING_WEIGHT,
    HATCHING_WEIGHT,
    LR_FLOOR,
    default_hatching_weight,
    lr_at,
)
from styleforge.style.fast.universal import WorkSized
from styleforge.style.perceptual import STYLE_GAIN, loss_weights


def run(*args):
    return CliRunner().invoke(main_group, [str(a) for a in args])


def _fails(result, text):
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(6):
        sub = folder / "sub" if i % 2 else folder
        save_image(synthetic_image(40 + 4 * i, 52, phase=i), sub / f"p{i}.{'png' if i % 3 else 'jpg'}")
    style = tmp_path / "style.png"
    save_image(striped_image(48, 48), style)
    return folder, style


def _cfg(photos, tmp_path, vgg, **kw):
    folder, style = photos
    base = dict(style=str(style), data=str(folder), output=str(tmp_path / "m.pth"), arch="light", image_size=32,
                style_size=48, batch_size=2, steps=6, checkpoint_every=3, weights=str(vgg), device="cpu",
                precision="fp32", workers=0, half=False)
    base.update(kw)
    return FastTrainConfig(**base)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("upsample", UPSAMPLE_MODES)
@pytest.mark.parametrize("hw", [(32, 32), (33, 47), (17, 6)])
def test_model_any_size_finite(arch, upsample, hw):
    torch.manual_seed(0)
    net = TransformerNet(arch, upsample).eval()
    with torch.no_grad():
        y = net(torch.rand(2, 3, *hw))
    assert y.shape == (2, 3, *hw) and torch.isfinite(y).all()


def test_lattice_part_is_what_repeats_on_the_4px_lattice_and_nothing_else():
    h, w = 96, 128
    y, x = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    ramp = (0.3 + 0.004 * x + 0.002 * y).expand(1, 3, h, w)
    torch.manual_seed(0)
    tile = torch.rand(3, 4, 4) - 0.5
    lattice = (tile - tile.mean(dim=(1, 2), keepdim=True)).repeat(1, h // 4, w // 4)[None]
    inner = (..., slice(24, -24), slice(24, -24))  # the averaging windows reach 24 px
    assert lattice_part(ramp)[inner].abs().max() < 1e-5
    assert (lattice_part(ramp + lattice) - lattice)[inner].abs().max() < 1e-5
    # within 24 px of the borders a ramp leaves up to 1.5x its slope (per px, summed over the axes)
    assert lattice_part(ramp).abs().max() < 1.5 * (0.004 + 0.002) + 1e-4
    for period, most in [(6.5, 0.004), (12.0, 0.01), (30.0, 0.006), (4.4, 0.04)]:  # off the lattice: little
        wave = 0.1 * torch.sin(2 * torch.pi * x / period).expand(1, 3, h, w)
        assert lattice_part(wave)[inner].abs().max() < most, period
    # a lattice alone comes out whole up to the borders, and other sides must be multiples of 4
    assert (lattice_part(lattice) - lattice).abs().max() < 1e-5
    with pytest.raises(ValueError, match="multiples of 4"):
        lattice_part(torch.zeros(1, 3, 30, 32))


def test_inference_takes_the_lattice_part_off_and_training_sees_the_raw_output():
    torch.manual_seed(0)
    net, x = TransformerNet("light", "bilinear"), torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(net.train()(x), net.net(x))
        raw = net.eval().net(x)
        shown = raw.clamp(0, 1)
        assert torch.allclose(net(x), shown - lattice_part(shown), atol=1e-6)


def test_a_bf16_copy_stylizes_like_fp32_and_returns_float32():
    from styleforge.runtime.device import Runtime
    from styleforge.style.fast.apply import apply_to_tensor

    torch.manual_seed(0)
    net, x = TransformerNet("light", "bilinear", noise=0.2).eval(), torch.rand(2, 3, 48, 60)
    fp32 = Runtime(torch.device("cpu"))
    bf16 = Runtime(torch.device("cpu"), torch.bfloat16, channels_last=True)
    copy = bf16.for_inference(net)
    assert next(copy.parameters()).dtype is torch.bfloat16
    ref, out = apply_to_tensor(net, x, fp32), apply_to_tensor(copy, x, bf16)
    assert out.dtype is torch.float32 and out.shape == ref.shape
    assert (out - ref).abs().mean() < 0.01 and (out - ref).abs().max() < 0.1
    assert (ref - apply_to_tensor(net, x.flip(-1), fp32)).abs().mean() > 0.05  # the bound above means something


@pytest.mark.parametrize("batch", [1, 3])
def test_inference_instance_norm_is_group_norm_of_one_channel_per_group_and_keeps_channels_last(batch):
    from styleforge.style.fast.model import _InstanceNorm

    torch.manual_seed(0)
    norm = _InstanceNorm(5, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    x = (torch.randn(batch, 5, 9, 7) * torch.arange(1, 6).view(1, 5, 1, 1)).contiguous(
        memory_format=torch.channels_last)
    trained = norm.train()(x)  # torch's instance norm, as training uses it
    shown = norm.eval()(x)
    assert torch.allclose(shown, trained, atol=1e-5)
    assert shown.is_contiguous(memory_format=torch.channels_last)
    per_channel = shown.flatten(2)
    assert torch.allclose(per_channel.mean(-1), norm.bias.expand(batch, 5), atol=1e-5)


def test_reflection_padding_stays_bf16_under_autocast_and_pads_as_torch_does():
    from styleforge.style.fast.model import ReflectionPad

    x = torch.rand(1, 6, 9, 7).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch_pad = torch.nn.ReflectionPad2d(2)(x)
        ours = ReflectionPad(2)(x)
    assert torch_pad.dtype is torch.float32  # autocast's CPU policy: the copy the class avoids
    assert ours.dtype is torch.bfloat16 and ours.shape == (1, 6, 13, 11)
    assert torch.equal(ours.float(), torch_pad)
    # Every reflection pad of the networks is this one (the shipped files' keys are the tests loading them).
    from styleforge.style.fast.decoders import Decoder, HourglassDecoder

    for net in (TransformerNet("johnson"), Decoder("relu3_1"), HourglassDecoder()):
        pads = [m for m in net.modules() if isinstance(m, torch.nn.ReflectionPad2d)]
        assert pads and all(isinstance(m, ReflectionPad) for m in pads)


def test_parameter_counts():
    assert parameter_count(TransformerNet("johnson")) == 1_679_235  # the published network's size
    assert parameter_count(TransformerNet("light")) < parameter_count(TransformerNet("johnson")) / 5


def test_model_file_round_trip_fp16(tmp_path):
    net = TransformerNet("light").eval()
    path = save_model(net, tmp_path / "m.pth", "stripes", {"steps": 1})
    loaded, record = load_model(path)
    assert record["style"] == "stripes" and record["arch"] == "light"
    assert all(v.dtype == torch.float16 for v in torch.load(path, weights_only=True)["state_dict"].values()
               if v.is_floating_point())
    x = torch.rand(1, 3, 40, 44)
    with torch.no_grad():
        assert (net(x).clamp(0, 1) - loaded(x).clamp(0, 1)).abs().max() < 2e-2


def test_upsampling_is_kept_in_the_model_file_and_old_files_read_as_nearest(tmp_path):
    torch.manual_seed(0)
    net = TransformerNet("light", "bilinear").eval()
    path = save_model(net, tmp_path / "m.pth", "x", {}, half=False)
    loaded, record = load_model(path)
    x = torch.rand(1, 3, 24, 28)
    with torch.no_grad():
        assert record["upsample"] == "bilinear" and torch.equal(loaded(x), net(x))
    old = torch.load(path, weights_only=True)
    del old["upsample"]
    torch.save(old, tmp_path / "old.pth")
    assert load_model(tmp_path / "old.pth")[0].upsample == "nearest"
    old["upsample"] = "bicubic-ish"
    torch.save(old, tmp_path / "odd.pth")
    with pytest.raises(StyleforgeError, match="upsampling 'bicubic-ish'"):
        load_model(tmp_path / "odd.pth")


def test_stream_sampler_is_independent_of_world_size_and_resume():
    one = [b for b in StreamSampler(10, 4, 6, seed=3)]
    two = [StreamSampler(10, 4, 6, seed=3, rank=r, world_size=2) for r in range(2)]
    merged = [a + b for a, b in zip(*two)]
    assert merged == one
    resumed = list(StreamSampler(10, 4, 6, seed=3, start_step=2))
    assert resumed == one[2:]
    # Each epoch (10 positions) visits every image exactly once.
    flat = [i for batch in one for i, _ in batch]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))


def test_crops_are_deterministic_and_sized(photos):
    files, bad = list_images(photos[0])
    assert len(files) == 6 and not bad
    ds = RandomCrops(files, 32)
    a, _ = ds[(2, 99)]
    b, _ = ds[(2, 99)]
    assert a.shape == (3, 32, 32) and torch.equal(a, b)


def test_photo_size_sets_the_scale_crops_are_cut_at(tmp_path):
    # A 200x100 horizontal ramp from 0 to 1: the step between neighbouring pixels of a crop is
    # 1/(photo width after scaling), so it tells the scale the crop was cut at.
    ramp = np.tile(np.linspace(0, 255, 200), (100, 1))
    Image.fromarray(np.stack([ramp] * 3, -1).round().astype(np.uint8)).save(tmp_path / "ramp.png")
    files = [tmp_path / "ramp.png"]

    def width_after_scaling(ds):
        steps = []
        for seed in range(8):
            crop, _ = ds[(0, seed)]
            row = crop[0, 10, 2:-2]
            steps.append(float((row[-1] - row[0]).abs()) / (len(row) - 1))
        return [1 / s for s in steps]

    # Default: short side (100) to the crop size (32) times up to 1.25: width 64-80.
    assert all(60 < w < 84 for w in width_after_scaling(RandomCrops(files, 32)))
    # --photo-size 400: long side (200) to 400-500.
    assert all(380 < w < 520 for w in width_after_scaling(RandomCrops(files, 32, photo_size=400)))
    # A photo size that would leave the short side under the crop: the crop still fits (width >= 64).
    crop, _ = RandomCrops(files, 32, photo_size=40)[(0, 1)]
    assert crop.shape == (3, 32, 32)


def test_corrupt_files_are_skipped_and_counted(photos, tmp_path):
    folder = photos[0]
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    noise = (np.random.default_rng(0).random((200, 200, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(tmp_path / "big.jpg", quality=95)
    data = (tmp_path / "big.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])  # header intact, pixels cut
    files, bad = list_images(folder)
    assert [p.name for p in bad] == ["broken.jpg"]
    ds = RandomCrops(files, 32)
    idx = [p.name for p in files].index("truncated.jpg")
    x, skipped = ds[(idx, 1)]
    assert x.shape == (3, 32, 32) and [s.split("/")[-1] for s in skipped] == ["truncated.jpg"]


def test_no_images_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StyleforgeError, match="no readable images"):
        list_images(tmp_path / "empty")


def test_training_lowers_the_loss_and_writes_outputs(photos, tmp_path, random_vgg19_file):
    cfg = _cfg(photos, tmp_path, random_vgg19_file, steps=25, checkpoint_every=10, lr=5e-3)
    result = train_style(cfg)
    totals = [r["total"] for r in result.history]
    assert np.mean(totals[-5:]) < 0.7 * np.mean(totals[:5])
    assert (tmp_path / "m.pth").is_file() and (tmp_path / "m.pth.ckpt").is_file()
    header = (tmp_path / "m.losses.csv").read_text().split("\n", 1)[0]
    assert header.startswith("step,content,style,tv,lattice,laplacian,hatching,detail,palette,tone,gradient,chroma,"
                             "total")
    assert (tmp_path / "m.losses.png").stat().st_size > 1000
    _, record = load_model(tmp_path / "m.pth")
    assert record["training"]["steps"] == 25 and record["training"]["image_size"] == 32
    # the default strength is written out, not left as null (given weights would be recorded as given)
    assert record["training"]["style_strength"] == FastTrainConfig.default_style_strength


def test_resume_gives_the_same_weights(photos, tmp_path, random_vgg19_file):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # nearest: the model file and the checkpoint carry it; every loss term and the input noise on
    kw = dict(upsample="nearest", input_noise=0.2, laplacian_weight=1.0, palette_weight=1.0, tone_weight=1.0,
              detail_weight=1.0, gradient_weight=1.0, chroma_weight=1.0)
    full = train_style(_cfg(photos, tmp_path / "a", random_vgg19_file, **kw))
    assert all(r["palette"] > 0 and r["tone"] > 0 and r["detail"] > 0 and r["gradient"] > 0
               and r["chroma"] > 0 for r in full.history)
    part = _cfg(photos, tmp_path / "b", random_vgg19_file, stop_at=3, **kw)
    assert train_style(part).model_path.name == "m.pth.ckpt" and not (tmp_path / "b" / "m.pth").exists()
    resumed = train_style(_cfg(photos, tmp_path / "b", random_vgg19_file, resume=True, **kw))
    a = torch.load(tmp_path / "a" / "m.pth", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "m.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["total"] for r in full.history] == [r["total"] for r in resumed.history]
    # the reported final losses (running averages) are the uninterrupted run's, not the resumed part's
    fa = torch.load(tmp_path / "a" / "m.pth", weights_only=True)["training"]["final_losses"]
    fb = torch.load(tmp_path / "b" / "m.pth", weights_only=True)["training"]["final_losses"]
    assert fa.keys() == fb.keys() and all(fa[k] == pytest.approx(fb[k], rel=1e-6) for k in fa)


def test_constant_schedule_resumes_to_more_steps(photos, tmp_path, random_vgg19_file):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    train_style(_cfg(photos, tmp_path / "a", random_vgg19_file, lr_schedule="constant"))
    train_style(_cfg(photos, tmp_path / "b", random_vgg19_file, lr_schedule="constant", steps=3))
    train_style(_cfg(photos, tmp_path / "b", random_vgg19_file, lr_schedule="constant", resume=True))
    a = torch.load(tmp_path / "a" / "m.pth", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "m.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cosine_schedule_refuses_resume_with_other_steps(photos, tmp_path, random_vgg19_file):
    train_style(_cfg(photos, tmp_path, random_vgg19_file, steps=3))
    with pytest.raises(StyleforgeError, match="steps.*--stop-at"):
        train_style(_cfg(photos, tmp_path, random_vgg19_file, resume=True, steps=6))


def test_lr_schedule_values():
    assert lr_at(1, 10, 0.1, "cosine") == pytest.approx(0.1)
    assert lr_at(10, 10, 0.1, "cosine") == pytest.approx(0.1 * LR_FLOOR)
    mid = lr_at(5, 9, 0.1, "cosine")  # halfway: the mean of start and floor
    assert mid == pytest.approx(0.1 * (1 + LR_FLOOR) / 2)
    assert all(lr_at(s, 10, 0.1, "constant") == 0.1 for s in range(1, 11))
    rates = [lr_at(s, 50, 1.0, "cosine") for s in range(1, 51)]
    assert all(a > b for a, b in zip(rates, rates[1:]))


def test_warmup_rises_linearly_then_follows_the_schedule():
    assert [lr_at(s, 100, 0.1, "constant", warmup=4) for s in (1, 2, 3, 4, 5)] == pytest.approx(
        [0.025, 0.05, 0.075, 0.1, 0.1])
    assert lr_at(2, 100, 0.1, "cosine", warmup=4) == pytest.approx(0.5 * lr_at(2, 100, 0.1, "cosine"))
    assert [lr_at(s, 100, 0.1, "cosine", warmup=4) for s in range(4, 101)] == pytest.approx(
        [lr_at(s, 100, 0.1, "cosine") for s in range(4, 101)])


def test_resume_refuses_changed_settings(photos, tmp_path, random_vgg19_file):
    train_style(_cfg(photos, tmp_path, random_vgg19_file, steps=3))
    with pytest.raises(StyleforgeError, match="lr"):
        train_style(_cfg(photos, tmp_path, random_vgg19_file, resume=True, steps=3, lr=0.5))
    with pytest.raises(StyleforgeError, match="--lattice-weight 3e5 -> 7"):
        train_style(_cfg(photos, tmp_path, random_vgg19_file, resume=True, steps=3, lattice_weight=7.0))
    with pytest.raises(StyleforgeError, match="--photo-size unset -> 96"):
        train_style(_cfg(photos, tmp_path, random_vgg19_file, resume=True, steps=3, photo_size=96))
    with pytest.raises(StyleforgeError, match="--tone-weight 10 -> 0"):
        train_style(_cfg(photos, tmp_path, random_vgg19_file, resume=True, steps=3, tone_weight=0.0))
    with pytest.raises(StyleforgeError, match="--crop-size 32 -> 48"):  # named as the options are
        train_style(_cfg(photos, tmp_path, random_vgg19_file, resume=True, steps=3, image_size=48))
    with pytest.raises(StyleforgeError, match=r"other settings \(--network light -> johnson\): "):
        train_style(_cfg(photos, tmp_path, random_vgg19_file, resume=True, steps=3, arch="johnson"))  # lr follows
    with pytest.raises(StyleforgeError, match=r"other settings \(--network light -> johnson; --lr 0.01 -> 0.1\)"):
        train_style(_cfg(photos, tmp_path, random_vgg19_file, resume=True, steps=3, arch="johnson", lr=0.1))
    folder, style = photos
    swapped = tmp_path / "style-copy.png"  # the same path, another painting
    shutil.copy(style, swapped)
    (tmp_path / "s").mkdir()
    train_style(_cfg(photos, tmp_path / "s", random_vgg19_file, style=str(swapped), steps=3, stop_at=1,
                     lr_schedule="constant", hatching_weight=1.0))
    shutil.copy(folder / "p0.jpg", swapped)
    with pytest.raises(StyleforgeError, match="style-copy.png is not the one .* was trained on"):
        train_style(_cfg(photos, tmp_path / "s", random_vgg19_file, style=str(swapped), steps=3, resume=True,
                         lr_schedule="constant", hatching_weight=1.0))


def test_defaults_udnies_recipe_and_a_learning_rate_per_network(photos, tmp_path, random_vgg19_file):
    cfg = FastTrainConfig(style="s.jpg", data="d", output="o.pth")
    assert (cfg.arch, cfg.image_size, cfg.lr) == ("light", 128, None)
    # --style-strength keeps stylize's meaning; only its default differs
    assert cfg.weights_pair() == pytest.approx((0.4, 0.6 * STYLE_GAIN))
    assert (dict(cfg.content_layers), cfg.palette_weight, cfg.tone_weight, cfg.lattice_weight, cfg.laplacian_weight,
            cfg.hatching_weight, cfg.detail_weight, cfg.gradient_weight, cfg.chroma_weight, cfg.warmup_steps) == (
        {"relu4_2": 1.0}, 30.0, 10.0, 3e5, 0.0, None, 60.0, 60.0, 10.0, 100)
    assert FastTrainConfig("s.jpg", "d", "o.pth", style_strength=0.5).weights_pair() == pytest.approx(
        loss_weights(None, None, None))
    for arch, lr in DEFAULT_LR.items():
        (tmp_path / arch).mkdir()
        cfg = _cfg(photos, tmp_path / arch, random_vgg19_file, arch=arch, steps=1, lr=None)
        _, record = load_model(train_style(cfg).model_path)
        assert record["training"]["lr"] == lr
        # the hatching weight chosen from the painting (the stripes are flat between their edges)
        assert record["training"]["hatching_weight"] == FLAT_HATCHING_WEIGHT
    given = _cfg(photos, tmp_path / "given", random_vgg19_file, steps=1, lr=2e-3, hatching_weight=5.0,
                 output=str(tmp_path / "g.pth"))
    training = load_model(train_style(given).model_path)[1]["training"]
    assert (training["lr"], training["hatching_weight"]) == (2e-3, 5.0)


def test_the_hatching_weight_is_lower_for_a_painting_of_flat_planes():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    assert default_hatching_weight(flat_share(planes_image(96, 64))) == FLAT_HATCHING_WEIGHT == 20.0
    assert default_hatching_weight(flat_share(noise)) == HATCHING_WEIGHT == 120.0
    assert default_hatching_weight(FLAT_SHARE) == 20.0 and default_hatching_weight(FLAT_SHARE - 0.01) == 120.0


def test_the_hatching_weight_of_the_shipped_paintings(shared):
    styles = shared / "data" / "styles"
    chosen = {p: default_hatching_weight(flat_share(Image.open(styles / f"{p}.jpg").convert("RGB"))) for p in
              ("starry_night", "great_wave", "the_scream", "composition_vii", "shipwreck_minotaur_turner", "udnie")}
    assert chosen.pop("udnie") == FLAT_HATCHING_WEIGHT  # Picabia's planes; the five others are textured
    assert set(chosen.values()) == {HATCHING_WEIGHT}


def test_lattice_penalty_adds_to_the_loss_and_only_there(photos, tmp_path, random_vgg19_file):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    off = train_style(_cfg(photos, tmp_path / "a", random_vgg19_file, steps=1, lattice_weight=0.0, input_noise=0.0))
    on = train_style(_cfg(photos, tmp_path / "b", random_vgg19_file, steps=1, lattice_weight=50.0, input_noise=0.0))
    assert off.history[0]["lattice"] == 0.0
    # the same first batch and the same initial network: only the lattice term differs
    assert on.history[0]["content"] == off.history[0]["content"] and on.history[0]["style"] == off.history[0]["style"]
    assert on.history[0]["lattice"] > 0
    assert on.history[0]["total"] == pytest.approx(off.history[0]["total"] + on.history[0]["lattice"], rel=1e-6)


def test_apply_odd_sizes_folders_and_colors(tmp_path):
    model = save_model(TransformerNet("light").eval(), tmp_path / "m.pth", "x", {})
    src = tmp_path / "in"
    (src / "deep").mkdir(parents=True)
    save_image(synthetic_image(31, 45), src / "a.png")
    save_image(synthetic_image(50, 21), src / "deep" / "b.jpg")
    result = run("fast", "apply", model, src, "-o", tmp_path / "out", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "in" / "a.png").size == (45, 31)
    assert Image.open(tmp_path / "out" / "in" / "deep" / "b.jpg").size == (21, 50)
    result = run("fast", "apply", model, src / "a.png", "-o", tmp_path / "one.png", "--size", "64",
                 "--original-colors", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "one.png").size == (64, 44)


def test_apply_skips_an_unreadable_image_writes_the_others_and_says_so(tmp_path):
    model = save_model(TransformerNet("light").eval(), tmp_path / "m.pth", "x", {})
    src = tmp_path / "in"
    (src / "bad").mkdir(parents=True)
    save_image(synthetic_image(24, 32), src / "a.png")
    save_image(synthetic_image(24, 32), src / "c.jpg")
    data = (src / "c.jpg").read_bytes()
    (src / "bad" / "cut.jpg").write_bytes(data[: len(data) // 2])
    result = run("fast", "apply", model, src, "-o", tmp_path / "out", "--device", "cpu", "-q")
    _fails(result, "skipped 1 of 3 images that could not be read (2 outputs written); ")
    assert "cut.jpg is truncated or corrupt" in result.output
    assert sorted(p.name for p in (tmp_path / "out" / "in").iterdir()) == ["a.png", "c.jpg"]  # no empty bad/
    # The progress counts the skipped image as done, so a bar ends at 3 of 3 even where it comes last.
    (src / "z.jpg").write_bytes(data[: len(data) // 2])
    seen: list = []
    with pytest.raises(StyleforgeError, match="skipped 1 of 3 images"):
        stylize_files(model, [src / "a.png", src / "c.jpg", src / "z.jpg"], tmp_path / "out2", device="cpu",
                      callback=seen.append)
    assert [(p.done, p.total) for p in seen][-1] == (3, 3)
    (src / "z.jpg").unlink()
    # Nothing readable: the error of the one image, and no output folder left behind.
    result = run("fast", "apply", model, src / "bad", "-o", tmp_path / "none", "--device", "cpu", "-q")
    _fails(result, "cut.jpg is truncated or corrupt")
    assert not (tmp_path / "none").exists()


def test_apply_refuses_a_file_name_as_the_folder_of_several_outputs(tmp_path):
    model = save_model(TransformerNet("light").eval(), tmp_path / "m.pth", "x", {})
    for name in ("a.png", "b.png"):
        save_image(synthetic_image(16, 16), tmp_path / name)
    result = run("fast", "apply", model, tmp_path / "a.png", tmp_path / "b.png", "-o", tmp_path / "out.png",
                 "--device", "cpu", "-q")
    _fails(result, "names a file, but 2 inputs need an output folder")
    assert not (tmp_path / "out.png").exists()
    # A mirrored folder that cannot be made (a file in its place) is refused before anything is stylized.
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    save_image(synthetic_image(16, 16), src / "a.png")
    save_image(synthetic_image(16, 16), src / "sub" / "b.png")
    (tmp_path / "out" / "in").mkdir(parents=True)
    (tmp_path / "out" / "in" / "sub").write_text("a file")
    _fails(run("fast", "apply", model, src, "-o", tmp_path / "out", "--device", "cpu", "-q"), "is a file")
    assert not (tmp_path / "out" / "in" / "a.png").exists()


def test_work_size_runs_a_trained_net_at_that_long_side_and_keeps_the_photo_size(tmp_path):
    torch.manual_seed(0)
    net = TransformerNet("light").eval()
    seen = []
    hook = net.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    photo = synthetic_image(60, 90)
    with torch.no_grad():
        out = WorkSized(net, 30)(photo)
        assert out.shape == photo.shape and seen == [(20, 30)]
        # A photo within the working size is stylized as without one.
        torch.testing.assert_close(WorkSized(net, 90)(photo), net(photo))
    hook.remove()
    with pytest.raises(StyleforgeError, match="--work-size must be at least 16 px, got 8"):
        WorkSized(net, 8)
    model = save_model(net, tmp_path / "m.pth", "x", {})
    save_image(photo, tmp_path / "in.png")
    result = run("fast", "apply", model, tmp_path / "in.png", "-o", tmp_path / "o.png", "--work-size", "32",
                 "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "o.png").size == (90, 60)
    # Stylized at 32 px and scaled up: not what the full-size pass gives.
    full = tmp_path / "full.png"
    assert run("fast", "apply", model, tmp_path / "in.png", "-o", full, "--device", "cpu", "-q").exit_code == 0
    small, big = (np.asarray(Image.open(p), dtype=np.float32) for p in (tmp_path / "o.png", full))
    assert np.abs(small - big).mean() > 1.0


@pytest.mark.parametrize("upsample, noise", [(m, 0.0) for m in UPSAMPLE_MODES] + [("bilinear", 0.2)])
def test_onnx_matches_pytorch(tmp_path, upsample, noise):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = save_model(TransformerNet("light", upsample, noise).eval(), tmp_path / "m.pth", "x", {}, half=False)
    assert run("fast", "export", model, "-o", tmp_path / "m.onnx").exit_code == 0
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    assert [o.shape for o in session.get_outputs()] == [["batch", 3, "height", "width"]]  # as the input's
    net, _ = load_model(model)
    for hw in [(36, 52), (29, 41)]:
        x = torch.rand(2, 3, *hw)
        got = session.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            want = net(x).clamp(0, 1).numpy()
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-4


def write_clip(av, path, frames: int = 5):
    """A 48x32 MPEG-4 clip of synthetic frames at 10 frames/s."""
    with av.open(str(path), "w") as f:
        s = f.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
        for i in range(frames):
            arr = (synthetic_image(32, 48, phase=i)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                f.mux(p)
        for p in s.encode():
            f.mux(p)
    return path


def test_video_round_trip(tmp_path):
    av = pytest.importorskip("av")
    src = write_clip(av, tmp_path / "clip.mp4")
    model = save_model(TransformerNet("light").eval(), tmp_path / "m.pth", "x", {})
    result = run("fast", "apply", model, src, "-o", tmp_path / "out.mp4", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    with av.open(str(tmp_path / "out.mp4")) as f:
        frames = list(f.decode(video=0))
    assert len(frames) == 5 and (frames[0].width, frames[0].height) == (48, 32)
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    bad = run("fast", "apply", model, tmp_path / "bad.mp4", "-o", tmp_path / "o2.mp4", "--device", "cpu")
    _fails(bad, "cannot read video")
    assert "Errno" not in bad.output and bad.output.count(str(tmp_path / "bad.mp4")) == 1, bad.output
    assert not (tmp_path / "o2.mp4").exists()
    _fails(run("fast", "apply", model, src, "-o", tmp_path / "o3.mkv", "--device", "cpu"),  # written as MP4
           "a video input needs a video (.mp4) output")


def test_cli_train_and_bad_inputs(photos, tmp_path, random_vgg19_file):
    folder, style = photos
    common = ["--weights", random_vgg19_file, "--network", "light", "--crop-size", "32", "--style-size", "32",
              "--batch-size", "2", "--device", "cpu", "--precision", "fp32", "--workers", "0", "-q"]
    result = run("fast", "train", style, "--data", folder, "-o", tmp_path / "m.pth", "--steps", "2",
                 *[a for a in common if a != "-q"])
    assert result.exit_code == 0, result.output
    # the first line names what the painting chose (the striped style is flat between its stripes)
    assert result.output.startswith("batch 2, lr 0.01, hatching weight 20 (the painting is "), result.output
    (tmp_path / "empty").mkdir()
    _fails(run("fast", "train", style, "--data", tmp_path / "empty", "-o", tmp_path / "x.pth", *common),
           "no readable images")
    _fails(run("fast", "train", style, "--data", folder, "-o", tmp_path / "nope" / "x.pth", *common),
           "does not exist")
    # Model files that are not usable.
    (tmp_path / "junk.pth").write_bytes(b"junk")
    _fails(run("fast", "apply", tmp_path / "junk.pth", style, "-o", tmp_path / "o.png"), "not a PyTorch file")
    data = (tmp_path / "m.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    _fails(run("fast", "apply", tmp_path / "cut.pth", style, "-o", tmp_path / "o.png"), "truncated")
    torch.save({"conv1.conv2d.weight": torch.zeros(1)}, tmp_path / "plain.pth")
    _fails(run("fast", "apply", tmp_path / "plain.pth", style, "-o", tmp_path / "o.png"), "not a styleforge")
    record = torch.load(tmp_path / "m.pth", weights_only=True)
    record["arch"] = "johnson"
    torch.save(record, tmp_path / "other.pth")
    _fails(run("fast", "apply", tmp_path / "other.pth", style, "-o", tmp_path / "o.png"), "do not fit")
    _fails(run("fast", "apply", "no_such_style", style, "-o", tmp_path / "o.png"), "no model named")
    assert not (tmp_path / "o.png").exists()


def test_interrupt_keeps_a_valid_checkpoint_and_resume_continues(photos, tmp_path, random_vgg19_file):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    train_style(_cfg(photos, tmp_path / "a", random_vgg19_file))

    def ctrl_c(p):
        if p.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(StyleforgeError, match=r"interrupted: at step 5, .*step 3\) is valid.*--resume"):
        train_style(_cfg(photos, tmp_path / "b", random_vgg19_file), callback=ctrl_c)
    assert not (tmp_path / "b" / "m.pth").exists()
    train_style(_cfg(photos, tmp_path / "b", random_vgg19_file, resume=True))
    a = torch.load(tmp_path / "a" / "m.pth", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "m.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("change, text", [
    ({"style_size": 6}, "too small for the loss layers"),
    ({"batch_size": 7}, "fewer than one batch of 7"),
    ({"image_size": 160}, "larger than every photo in --data (the largest short side is 52 px)"),
])
def test_inputs_that_cannot_train_fail_before_training(photos, tmp_path, random_vgg19_file, change, text):
    with pytest.raises(StyleforgeError, match=re.escape(text)):
        train_style(_cfg(photos, tmp_path, random_vgg19_file, **change))
    assert not list(tmp_path.glob("m.pth*"))


def test_a_truncated_photo_does_not_count_toward_the_first_batch(photos, tmp_path, random_vgg19_file):
    folder, style = photos
    small = tmp_path / "small"
    small.mkdir()
    (small / "good.jpg").write_bytes((folder / "p0.jpg").read_bytes())
    data = (folder / "sub" / "p3.jpg").read_bytes()
    (small / "cut.jpg").write_bytes(data[: len(data) // 2])  # its header reads, its pixels do not
    with pytest.raises(StyleforgeError, match=re.escape("--data holds 1 usable photo(s), fewer than one batch of 2")):
        train_style(_cfg((small, style), tmp_path, random_vgg19_file, batch_size=2))
    for k in range(2):  # two batches' worth of files, three of them truncated
        (small / f"cut{k}.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(StyleforgeError, match=re.escape("--data holds 1 usable photo(s), fewer than one batch of 2")):
        train_style(_cfg((small, style), tmp_path, random_vgg19_file, batch_size=2))


def test_pixel_noise_is_fixed_white_unit_noise_without_a_lattice():
    from styleforge.style.fast.model import pixel_noise
    from styleforge.style.fast.quality import grid_peaks

    n = pixel_noise(torch.zeros(2, 3, 256, 320))
    assert n.shape == (1, 3, 256, 320) and torch.equal(n, pixel_noise(torch.ones(1, 3, 256, 320)))
    assert abs(float(n.mean())) < 0.01 and abs(float(n.std()) - 1) < 0.01
    assert float(n.abs().max()) <= 3 ** 0.5 + 1e-6
    # no correlation between neighbours, rows or channels, and a part of a larger pattern is the pattern
    assert max(abs(float((n[..., 1:] * n[..., :-1]).mean())), abs(float((n[..., 1:, :] * n[..., :-1, :]).mean())),
               abs(float((n[:, 0] * n[:, 1]).mean()))) < 0.02
    assert torch.equal(pixel_noise(torch.zeros(1, 3, 300, 400))[..., :256, :320], n)
    # white noise scores about 3 on the grid measure (a 3x3 peak against a median); a lattice scores far more
    assert grid_peaks((0.5 + 0.1 * n[0]).clamp(0, 1)) < 5


def test_input_noise_changes_flat_regions_and_is_recorded(tmp_path):
    from styleforge.style.fast.model import pixel_noise

    torch.manual_seed(0)
    flat = torch.full((1, 3, 32, 32), 0.5)
    plain, noisy = TransformerNet("light", "bilinear").eval(), TransformerNet("light", "bilinear", 0.2).eval()
    noisy.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert not torch.allclose(plain(flat), noisy(flat)) and torch.equal(noisy(flat), noisy(flat))
        first = noisy(flat)
        noisy(torch.full((1, 3, 20, 28), 0.5))              # another size replaces the kept pattern
        assert torch.equal(noisy(flat), first)
        assert torch.equal(first, plain(flat + 0.2 * pixel_noise(flat)))
    net, record = load_model(save_model(noisy, tmp_path / "m.pth", "x", {}, half=False))
    assert record["noise"] == net.noise == 0.2
    with pytest.raises(StyleforgeError, match="input noise must be a number >= 0"):
        TransformerNet("light", "bilinear", -1.0)
