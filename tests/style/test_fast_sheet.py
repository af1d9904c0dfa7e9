"""The grid-artifact, hatching and edge measures (synthetic pictures) and the style contact sheet (library and CLI)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import synthetic_image
from PIL import Image

from styleforge.cli import main_group
from styleforge.runtime.errors import StyleforgeError
from styleforge.runtime.io import save_image
from styleforge.style.fast import TransformerNet, save_model
from styleforge.style.fast.quality import (
    colour_distance,
    detail_kept,
    edge_agreement,
    gradient_distance,
    grid_artifact,
    grid_peaks,
    hatching,
    hatching_artifact,
    pan_flicker,
)
from styleforge.style.fast.sheet import GAP, LABEL_HEIGHT, style_sheet


def _scene(h=200, w=300) -> torch.Tensor:
    """A photo-like picture: smooth shading plus non-periodic detail (blobs of every size)."""
    g = torch.Generator().manual_seed(0)
    base = synthetic_image(h, w)[0]
    noise = torch.randn(1, 1, h // 8, w // 8, generator=g)
    detail = torch.nn.functional.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)[0]
    return (0.7 * base + 0.15 * detail + 0.02 * torch.randn(3, h, w, generator=g)).clamp(0, 1)


def _grid(h, w, period, amplitude=0.04) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return amplitude * ((((xx % period) < period // 2) ^ ((yy % period) < period // 2)).float() - 0.5)


def test_a_picture_without_a_grid_scores_about_one():
    assert 0.5 < grid_peaks(_scene()) < 2.5


@pytest.mark.parametrize("period", [2, 4])
def test_a_faint_periodic_grid_is_caught(period):
    scene = _scene()
    gridded = (scene + _grid(*scene.shape[-2:], period)).clamp(0, 1)
    assert grid_artifact(gridded, scene) > 5.0


def test_texture_without_a_period_is_not_charged():
    scene = _scene()
    g = torch.Generator().manual_seed(1)
    textured = (scene + 0.08 * torch.randn(scene.shape, generator=g)).clamp(0, 1)  # far stronger than the grid
    assert grid_artifact(textured, scene) < 1.5


def _hatch(h, w, period, angle, amplitude=0.15) -> torch.Tensor:
    """Stripes ``period`` px apart at ``angle`` degrees, gently wavy: a woven hatching."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    a = torch.deg2rad(torch.tensor(float(angle)))
    across = xx * torch.cos(a) + yy * torch.sin(a) + 1.5 * torch.sin(yy / 9.0)
    return amplitude * torch.sin(2 * torch.pi * across / period)


def _blobs(h=200, w=300) -> torch.Tensor:
    """A photo-like picture with no period at all: blobs of two sizes and a little grain."""
    g = torch.Generator().manual_seed(4)

    def blobs(cell: int) -> torch.Tensor:
        noise = torch.randn(1, 3, h // cell, w // cell, generator=g)
        return torch.nn.functional.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)[0]

    return (0.5 + 0.2 * blobs(16) + 0.08 * blobs(4) + 0.02 * torch.randn(3, h, w, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("period, angle", [(3.5, 0), (5, 30), (8, 75)])
def test_a_hatching_at_any_period_and_angle_is_caught_where_the_grid_measure_is_blind(period, angle):
    scene = _blobs()
    hatched = (scene + _hatch(*scene.shape[-2:], period, angle)).clamp(0, 1)
    assert hatching(hatched) > 0.7 and hatching_artifact(hatched, scene) > 3.0
    if period not in (2, 4):
        assert grid_artifact(hatched, scene) < 2.0


def test_hatching_leaves_dabs_and_photo_detail_alone():
    scene = _blobs()
    assert hatching(scene) < 0.4
    g = torch.Generator().manual_seed(3)
    # dabs: random blobs a few px wide, far stronger than the scene's own detail
    dabs = torch.nn.functional.interpolate(torch.randn(1, 3, 50, 75, generator=g), size=(200, 300), mode="bicubic",
                                           align_corners=False)[0]
    painted = (scene + 0.15 * dabs).clamp(0, 1)
    assert hatching_artifact(painted, scene) < 1.5
    assert hatching(torch.full((3, 40, 40), 0.5)) == 0.0  # nothing textured
    with pytest.raises(ValueError, match="at least 32x32"):
        hatching(torch.rand(3, 20, 60))


def test_edge_agreement_keeps_outlines_and_loses_them():
    scene = _scene()
    assert edge_agreement(scene, scene) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(2)
    # outlines kept under new colours and fine texture: high; the same texture with the outlines
    # washed out (a heavy blur) or moved (the picture flipped): low
    recoloured = (scene.flip(0) * 0.8 + 0.03 * torch.randn(scene.shape, generator=g)).clamp(0, 1)
    washed = torch.nn.functional.avg_pool2d(scene[None], 25, 1, 12, count_include_pad=False)[0]
    washed = (washed + 0.03 * torch.randn(scene.shape, generator=g)).clamp(0, 1)
    assert edge_agreement(recoloured, scene) > 0.8
    assert edge_agreement(washed, scene) < 0.6
    assert abs(edge_agreement(scene.flip(-1), scene)) < 0.3


def test_pan_flicker_sees_strokes_anchored_to_the_frame():
    wide = _scene(120, 200)
    frames = [wide[..., s:s + 160] for s in (0, 1, 2, 4)]
    # a method that moves with the scene (pointwise, so shift-equivariant): no flicker at any shift
    moving = [f.pow(2) for f in frames]
    assert all(pan_flicker(moving[0], m, s) < 1e-7 for m, s in zip(moving[1:], (1, 2, 4)))
    # a period-4 checker printed at the frame's own pixels (amplitude 0.04): it flips sign under a
    # 2 px shift (the whole amplitude), comes back under 4, and moves half of its pixels under 1
    printed = [f + _grid(120, 160, 4) for f in frames]
    assert pan_flicker(printed[0], printed[2], 2) == pytest.approx(0.04, abs=1e-6)
    assert pan_flicker(printed[0], printed[3], 4) < 1e-6
    assert pan_flicker(printed[0], printed[1], 1) == pytest.approx(0.02, abs=3e-4)  # 63 of 127 columns
    # comparing frames without the shift sees the scene's own motion instead
    assert pan_flicker(moving[0], moving[2], 0) > 0.005
    with pytest.raises(ValueError, match="same-size"):
        pan_flicker(frames[0], wide, 1)
    with pytest.raises(ValueError, match="wider"):
        pan_flicker(frames[0], frames[1], 140)


def test_detail_kept_sees_detail_lost_inside_the_outlines():
    scene = _blobs()
    assert detail_kept(scene, scene) == pytest.approx(1.0, abs=1e-4)
    g = torch.Generator().manual_seed(5)
    # new colours and painted dabs over the same detail: most of it kept
    dabs = torch.nn.functional.interpolate(torch.randn(1, 3, 50, 75, generator=g), size=(200, 300), mode="bicubic",
                                           align_corners=False)[0]
    painted = (scene.flip(0) + 0.05 * dabs).clamp(0, 1)
    # the same outlines with the inside washed out (a silhouette), darkened to a third, or flat
    silhouette = torch.nn.functional.avg_pool2d(scene[None], 15, 1, 7, count_include_pad=False)[0]
    assert detail_kept(painted, scene) > 0.7
    assert detail_kept(silhouette, scene) < 0.3
    assert detail_kept(scene * 0.3, scene) == pytest.approx(0.3, abs=0.02)
    assert detail_kept(torch.full_like(scene, 0.5), scene) == pytest.approx(0.0, abs=1e-3)
    assert detail_kept(scene.flip(-1), scene) < 0.3


def test_gradient_distance_sees_a_photos_grain_inside_a_paintings_planes():
    # A "painting" of flat planes with hard edges; a picture with the same planes scores 0; the same
    # planes with fine grain inside them score worse, a photo-like scene worse still; a flat picture 1.
    g = torch.Generator().manual_seed(6)
    painting = torch.zeros(3, 120, 160)
    painting[:, 40:, :] = 0.5
    painting[:, :, 100:] += 0.4
    grained = (painting + 0.03 * torch.randn(1, 120, 160, generator=g)).clamp(0, 1)
    assert gradient_distance(painting.flip(-1), painting) < 1e-6
    assert gradient_distance(torch.full_like(painting, 0.3), painting) == pytest.approx(1.0, abs=1e-3)
    assert 0.05 < gradient_distance(grained, painting) < gradient_distance(_scene(120, 160), painting)


def test_colour_distance_sees_a_picture_washed_grey_or_in_one_hue():
    # A grey "painting" with a fifth of its area in strong blue and a fifth in orange: its colours moved
    # around score 0, in a batch or not; an all-grey picture about 1; the same painting washed nearly
    # grey in between; both bands blue (the painting's share of colour, in one of its two hues)
    # as far as the grey picture; too much colour counts too (all orange, above 1).
    painting = torch.full((3, 100, 100), 0.5)
    painting[:, :20] = torch.tensor([0.2, 0.3, 0.9]).view(3, 1, 1)
    painting[:, -20:] = torch.tensor([0.9, 0.5, 0.1]).view(3, 1, 1)
    grey = painting.mean(0, keepdim=True).expand(3, -1, -1)
    assert colour_distance(painting.flip(-2)[None], painting) < 1e-6
    assert colour_distance(grey, painting) == pytest.approx(1.0, abs=0.1)
    washed = 0.8 * grey + 0.2 * painting
    assert 0.3 < colour_distance(washed, painting) < 1.0
    one_hue = painting.clone()
    one_hue[:, -20:] = painting[:, :20]
    assert colour_distance(one_hue, painting) > 0.9
    orange = painting[:, -1:, -1:].expand(3, 100, 100)
    assert colour_distance(orange, painting) > 1.0


def test_laplacian_loss_sees_outlines_not_offsets():
    from styleforge.style import losses

    scene = _scene(64, 96)[None]
    assert losses.laplacian_loss(scene, scene).item() == 0.0
    assert losses.laplacian_loss(scene + 0.1, scene).item() < 1e-10   # a brightness change keeps the outlines
    flat = torch.full_like(scene, 0.5)
    assert losses.laplacian_loss(flat, scene).item() == pytest.approx(1.0)  # relative: all of the outlines gone
    # 4x4 average pooling first: a 2-px checkerboard (finer than the pooling) is invisible to it
    assert losses.laplacian_loss(scene + _grid(64, 96, 2), scene).item() < 1e-10
    # on luminance: new colours with new outlines of their own, at the same luminance, cost nothing
    chroma = torch.tensor([0.587, -0.299, 0.0]).view(1, 3, 1, 1) * _scene(64, 96)[None, :1].flip(-1)
    assert losses.laplacian_loss(scene + chroma, scene).item() < 1e-10


def test_too_small_for_a_spectrum():
    with pytest.raises(ValueError, match="at least 32"):
        grid_peaks(torch.rand(3, 20, 40))


@pytest.fixture
def two_styles(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    for i, name in enumerate(("alpha", "beta")):
        torch.manual_seed(i)
        save_model(TransformerNet("light").eval(), folder / f"fast-{name}.pth", name, {})
    monkeypatch.setenv("STYLEFORGE_WEIGHTS", str(folder))
    photo = tmp_path / "photo.png"
    save_image(synthetic_image(60, 90), photo)
    return photo


def test_sheet_has_the_photo_then_every_style(two_styles):
    sheet = style_sheet(two_styles, ["alpha", "beta"], tile=48, columns=2, device="cpu", precision="fp32")
    w, h = 48, 32                                   # 90x60 at a 48 px long side
    assert sheet.size == (2 * (w + GAP) + GAP, 2 * (h + LABEL_HEIGHT + GAP) + GAP)
    first = sheet.crop((GAP, GAP + LABEL_HEIGHT, GAP + w, GAP + LABEL_HEIGHT + h))
    expected = Image.open(two_styles).convert("RGB").resize((w, h), Image.Resampling.LANCZOS)
    assert first.tobytes() == expected.tobytes()
    second = sheet.crop((2 * GAP + w, GAP + LABEL_HEIGHT, 2 * (GAP + w), GAP + LABEL_HEIGHT + h))
    assert second.tobytes() != first.tobytes()   # the style network changed it
    empty = sheet.crop((2 * GAP + w, 2 * GAP + 2 * LABEL_HEIGHT + h, 2 * (GAP + w), sheet.height - GAP))
    assert set(empty.tobytes()) == {255}         # 3 tiles in a 2x2 grid


def test_sheet_cli_writes_and_refuses_bad_requests(two_styles, tmp_path):
    runner = CliRunner()
    out = tmp_path / "sheet.png"
    result = runner.invoke(main_group, ["fast", "sheet", str(two_styles), "-o", str(out), "--size", "48", "-q",
                                        "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size[0] > 3 * 48
    before = two_styles.read_bytes()
    for args, text in ((["-o", str(two_styles)], "is the input photo"),
                       (["-o", str(tmp_path / "s.xyz")], "xyz"),
                       (["-o", str(tmp_path / "s2.png"), "--styles", "alpha,nope"], "no model named 'nope'")):
        result = runner.invoke(main_group, ["fast", "sheet", str(two_styles), *args, "-q"])
        assert result.exit_code != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr
    assert two_styles.read_bytes() == before and not (tmp_path / "s2.png").exists()


def test_apply_and_sheet_keep_freed_memory_the_way_bench_fast_inference_times_them(two_styles, tmp_path,
                                                                                    monkeypatch):
    import styleforge.cli.fast as cli_fast

    calls = []
    monkeypatch.setattr(cli_fast, "keep_freed_memory", lambda: calls.append(1) or True)
    runner = CliRunner()
    for args in (["sheet", str(two_styles), "-o", str(tmp_path / "sheet.png"), "--size", "48"],
                 ["apply", "alpha", str(two_styles), "-o", str(tmp_path / "out.png")]):
        result = runner.invoke(main_group, ["fast", *args, "-q", "--device", "cpu"])
        assert result.exit_code == 0, result.output
    assert len(calls) == 2


def test_sheet_needs_a_usable_tile():
    with pytest.raises(StyleforgeError, match="at least 32"):
        style_sheet(Image.new("RGB", (64, 64)), ["x"], tile=8)


def test_models_lists_every_style_with_its_path_in_one_column(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    names = ("a", "a_name_longer_than_any_shipped_style")
    for name in names:
        save_model(TransformerNet("light").eval(), folder / f"fast-{name}.pth", name, {})
    monkeypatch.setenv("STYLEFORGE_WEIGHTS", str(folder))
    result = CliRunner().invoke(main_group, ["fast", "models"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    assert set(names) <= set(lines)
    columns = {line.index(line.split()[1]) for line in lines.values()}
    assert len(columns) == 1 and min(columns) > len(names[1])   # paths aligned, after the longest name
    assert lines["a"].split()[1] == str(folder / "fast-a.pth")
