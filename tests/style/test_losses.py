import math

import pytest
import torch

from styleforge.style import losses
from styleforge.style.color import chrominance


def test_gram_of_hand_built_tensor():
    # Two channels over 2x2 positions: f0 = [1,2,3,4], f1 = [0,1,0,1].
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    g = losses.gram_matrix(f)
    expected = torch.tensor([[30.0, 6.0], [6.0, 2.0]]) / 4  # dot products / (H*W)
    assert g.shape == (1, 2, 2)
    torch.testing.assert_close(g[0], expected)


def test_content_loss_of_identical_features_is_zero_and_positive_otherwise():
    t = torch.randn(1, 8, 5, 5)
    assert losses.content_loss(t, t).item() == 0.0
    assert losses.content_loss(t + 0.1, t).item() > 0.0


def test_content_loss_is_relative_error():
    t = torch.full((1, 2, 3, 3), 2.0)
    # mean((3 - 2)^2) / mean(2^2) = 1/4
    torch.testing.assert_close(losses.content_loss(t + 1, t), torch.tensor(0.25))


def test_tv_of_constant_image_is_zero_and_of_stripes_is_not():
    assert losses.tv_loss(torch.full((1, 3, 8, 8), 0.3)).item() == 0.0
    stripes = torch.zeros(1, 3, 8, 8)
    stripes[..., ::2] = 1.0
    # every horizontal neighbour pair differs by 1, vertical pairs are equal
    torch.testing.assert_close(losses.tv_loss(stripes), torch.tensor(1.0))


def test_lattice_energy_counts_a_pattern_locked_to_the_lattice_whole():
    cell = torch.tensor([[1.0, -1.0, 0.5, -0.5], [0.0, 2.0, -2.0, 0.0], [1.0, 1.0, -1.0, -1.0], [0.3, -0.3, 0.0, 0.0]])
    cell = cell - cell.mean()
    pattern = cell.repeat(16, 20)[None, None].expand(2, 3, 64, 80)
    torch.testing.assert_close(losses.lattice_energy(pattern + 0.7), cell.pow(2).mean())  # offsets do not count
    assert losses.lattice_energy(torch.full((1, 3, 64, 64), 0.4)).item() == 0.0


def test_lattice_energy_leaves_shading_and_texture_off_the_lattice_nearly_alone():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(8, 3, 128, 128, generator=g)
    # white noise keeps about 15 bins x 2.25 / (H*W) of its energy (the Hann window's gain)
    assert abs(losses.lattice_energy(noise).item() * 128 * 128 / (15 * 2.25) - 1.0) < 0.15
    y = torch.arange(96.0).view(96, 1)
    stripes = torch.sin(2 * math.pi * y / 6).expand(96, 96)[None, None]  # a 6-px period is no lattice
    assert losses.lattice_energy(stripes).item() < 1e-3 * stripes.pow(2).mean().item()
    ramp = (y / 96).expand(96, 96)[None, None]  # a smooth colour change across the crop
    assert losses.lattice_energy(ramp).item() < 1e-5 * ramp.pow(2).mean().item()


def test_lattice_energy_refuses_sides_off_the_lattice():
    with pytest.raises(ValueError, match="multiples of 4"):
        losses.lattice_energy(torch.zeros(1, 3, 16, 42))


def test_style_loss_unchanged_by_permuting_pixel_positions():
    torch.manual_seed(0)
    f = torch.randn(1, 6, 7, 9)
    target = losses.gram_matrix(torch.randn(1, 6, 7, 9))
    perm = torch.randperm(7 * 9)
    shuffled = f.reshape(1, 6, -1)[:, :, perm].reshape(1, 6, 7, 9)
    a = losses.style_loss(losses.gram_matrix(f), target)
    b = losses.style_loss(losses.gram_matrix(shuffled), target)
    torch.testing.assert_close(a, b)
    assert a.item() > 0


def test_losses_do_not_depend_on_activation_scale():
    """Why the losses are relative: a backbone whose activations are 100x larger
    (the Caffe VGG19 against torchvision's) must give the same loss values."""
    torch.manual_seed(0)
    f, t = torch.rand(1, 4, 6, 6), torch.rand(1, 4, 6, 6)
    for c in (0.2, 40.0, 270.0):
        torch.testing.assert_close(losses.content_loss(c * f, c * t), losses.content_loss(f, t))
        torch.testing.assert_close(
            losses.style_loss(losses.gram_matrix(c * f), losses.gram_matrix(c * t)),
            losses.style_loss(losses.gram_matrix(f), losses.gram_matrix(t)))


def test_weighted_sum():
    parts = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}
    assert losses.weighted_sum(parts, {"a": 0.5, "b": 2.0}).item() == 7.0


def test_gram_backward_matches_autograd_in_both_layouts():
    torch.manual_seed(0)
    f = torch.randn(2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(losses.gram_matrix, (f,))
    cl = f.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert torch.autograd.gradcheck(losses.gram_matrix, (cl,))
    plain = lambda x: torch.bmm(x.reshape(2, 5, 12), x.reshape(2, 5, 12).transpose(1, 2)) / 12
    torch.testing.assert_close(losses.gram_matrix(cl), plain(f.detach()))


def test_gram_of_bf16_features_is_fp32_and_close():
    torch.manual_seed(0)
    f = torch.rand(1, 8, 16, 16)
    g16 = losses.gram_matrix(f.bfloat16())
    assert g16.dtype == torch.float32
    torch.testing.assert_close(g16, losses.gram_matrix(f), rtol=2e-2, atol=1e-3)


def _stripes(h: int, w: int, period: float) -> torch.Tensor:
    xx = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    return 0.5 + 0.2 * torch.sin(2 * math.pi * xx / period)


def test_gaussian_blur_by_matrices_equals_the_convolution():
    """Small pictures are blurred by two matrix products, large ones by convolution: the same blur."""
    x = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    for sigma in (1.0, 2.5, 6.0):
        k = 2 * int(3 * sigma) + 1
        assert max(x.shape[-2:]) <= losses.BLUR_MATRIX_SIDE * k  # the matrix path
        assert torch.allclose(losses.gaussian_blur(x, sigma), losses.blur_by_convolution(x, sigma), atol=1e-12)
    # A long strip takes the convolution; its rows blur as the matrix path blurs a short piece of it.
    strip = torch.rand(1, 1, 12, 40 * 32, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.allclose(losses.gaussian_blur(strip, 1.0)[..., 100:200],
                          losses.gaussian_blur(strip[..., 90:210], 1.0)[..., 10:110], atol=1e-12)


def test_gaussian_blur_reflects_again_where_it_reaches_past_a_short_side():
    """A side no longer than the blur's reach (3 sigma) is reflected again and again, as numpy's reflect
    padding does; padding by convolution could not, and the tone step's 8 px blur reaches 24 px."""
    import numpy as np

    x = torch.rand(1, 2, 5, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sigma = 8.0
    g = losses._gaussian(sigma, torch.float64, x.device).numpy()
    r = len(g) // 2
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (r, r), (r, r)), mode="reflect")
    rows = np.apply_along_axis(lambda v: np.convolve(v, g, mode="valid"), 3, padded)
    want = np.apply_along_axis(lambda v: np.convolve(v, g, mode="valid"), 2, rows)
    torch.testing.assert_close(losses.gaussian_blur(x, sigma), torch.from_numpy(want))
    # A side of one pixel stays as it is along that side; a constant stays constant.
    line = torch.rand(1, 1, 1, 30, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    three = losses.gaussian_blur(line.expand(1, 1, 3, 30), 8.0)
    torch.testing.assert_close(losses.gaussian_blur(line, 8.0), three[..., :1, :])
    torch.testing.assert_close(losses.gaussian_blur(torch.full((1, 1, 2, 3), 0.7), 8.0), torch.full((1, 1, 2, 3), 0.7))


def test_sort_rows_gives_torch_sorts_values_and_gradient():
    x = torch.randn(2, 3, 700, generator=torch.Generator().manual_seed(9)).requires_grad_()
    values, order = losses.sort_rows(x)
    want = x.detach().sort(dim=-1)
    assert torch.equal(values, want.values) and torch.equal(order, want.indices)  # no ties: one order
    weights = torch.linspace(-1, 1, 700)
    (values * weights).sum().backward()
    # the gradient of a sorted row is the weights put back where each value came from
    assert torch.equal(x.grad, torch.zeros_like(x).scatter_(-1, want.indices, weights.expand(2, 3, -1)))
    ties = torch.tensor([[2.0, 1.0, 2.0, 1.0, 0.5]])
    assert losses.sort_rows(ties)[0].tolist() == [[0.5, 1.0, 1.0, 2.0, 2.0]]
    assert losses.sort_rows(ties.to(torch.bfloat16))[0].tolist() == [[0.5, 1.0, 1.0, 2.0, 2.0]]  # torch.sort


def test_mid_ranks_share_a_rank_between_ties():
    rows = torch.tensor([[3.0, 1.0, 1.0, 2.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    # smaller + no larger, halved: the two 1s are 0 + 2, the 2 is 2 + 3, the three 3s are 3 + 6
    assert losses.mid_ranks(rows).tolist() == [[4.5, 1.0, 1.0, 2.5, 4.5, 4.5], [3.0] * 6]
    noise = torch.rand(3, 500, generator=torch.Generator().manual_seed(8))
    assert torch.equal(losses.mid_ranks(noise), noise.argsort(dim=1).argsort(dim=1).float() + 0.5)


def test_gaussian_blur_keeps_a_constant_and_the_mean():
    x = torch.rand(2, 3, 20, 30, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(losses.gaussian_blur(torch.full((1, 2, 9, 9), 0.3), 1.5), torch.full((1, 2, 9, 9), 0.3))
    blurred = losses.gaussian_blur(x, 2.0)
    assert blurred.shape == x.shape and blurred.std() < x.std() / 2


def test_repetition_of_stripes_is_high_and_of_noise_low_and_it_is_differentiable():
    g = torch.Generator().manual_seed(1)
    stripes = torch.stack([_stripes(64, 96, 5.0), _stripes(64, 96, 8.0)])[:, None]
    noise = (0.5 + 0.1 * torch.randn(2, 1, 64, 96, generator=g))
    assert (losses.repetition(stripes) > 0.8).all() and (losses.repetition(noise) < 0.3).all()
    # Dabs: random blobs about 4 px wide decorrelate within the lags looked at.
    dabs = torch.nn.functional.interpolate(torch.randn(1, 1, 16, 24, generator=g), size=(64, 96), mode="bicubic")
    assert losses.repetition(0.5 + 0.1 * dabs) < 0.45
    with pytest.raises(ValueError, match="at least 32x32"):
        losses.repetition(torch.rand(1, 1, 16, 64))


def test_repetition_loss_charges_added_hatching_only():
    g = torch.Generator().manual_seed(2)
    photo = (0.5 + 0.1 * torch.randn(2, 3, 64, 64, generator=g)).clamp(0, 1)
    assert losses.repetition_loss(photo, photo).item() == 0.0
    hatched = (photo + 0.3 * (_stripes(64, 64, 5.0) - 0.5)).clamp(0, 1).requires_grad_(True)
    loss = losses.repetition_loss(hatched, photo)
    assert loss.item() > 0.1
    loss.backward()
    assert torch.isfinite(hatched.grad).all() and hatched.grad.abs().sum() > 0
    # Less repetition than the photo costs nothing (the penalty is one-sided).
    assert losses.repetition_loss(photo, hatched.detach()).item() == 0.0


def test_detail_loss_is_zero_for_the_photo_one_for_a_flat_picture_and_pulls_towards_its_detail():
    g = torch.Generator().manual_seed(3)
    blobs = torch.nn.functional.interpolate(torch.randn(2, 3, 16, 16, generator=g), size=(64, 64), mode="bicubic")
    photo = (0.5 + 0.1 * blobs).clamp(0, 1)
    assert losses.detail_loss(photo, photo).item() == pytest.approx(0.0, abs=1e-4)
    flat = torch.full_like(photo, 0.5).requires_grad_(True)
    loss = losses.detail_loss(flat, photo)
    assert loss.item() == pytest.approx(1.0, abs=1e-3)
    loss.backward()  # finite where the picture has no detail at all (the square roots are guarded)
    assert torch.isfinite(flat.grad).all()
    # one gradient step from a washed-out picture brings back some of the photo's detail
    washed = torch.nn.functional.avg_pool2d(photo, 9, 1, 4, count_include_pad=False).requires_grad_(True)
    before = losses.detail_loss(washed, photo)
    before.backward()
    after = losses.detail_loss(washed.detach() - 0.05 * washed.grad / washed.grad.abs().max(), photo)
    assert after.item() < before.item()


def test_quantiles_of_a_sorted_row_interpolate_between_its_values():
    row = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    torch.testing.assert_close(losses.quantiles(row, 4), row)  # same size: the values themselves
    torch.testing.assert_close(losses.quantiles(row, 2), torch.tensor([[0.5, 2.5]]))
    torch.testing.assert_close(losses.quantiles(row, 1), torch.tensor([[1.5]]))


def test_sliced_wasserstein_is_blind_to_where_values_sit_and_counts_a_flat_mean_as_one():
    torch.manual_seed(0)
    target = torch.rand(1, 3, 16, 20)
    directions = losses.sphere_directions(32)
    want = losses.sorted_projections(target, directions)
    shuffled = target.flatten(2)[..., torch.randperm(320)].view(1, 3, 16, 20)
    assert losses.sliced_wasserstein(shuffled, want, directions).item() < 1e-10
    flat = target.mean((2, 3), keepdim=True).expand(2, 3, 8, 8).contiguous()
    assert losses.sliced_wasserstein(flat, want, directions).item() == pytest.approx(1.0, abs=1e-2)
    # Half the target's values, each twice (its subsample in proportion) is still near 0; half of
    # them all at one end of the range (a shifted palette) is not.
    sorted_lum = target.flatten(2)[..., target.flatten(2).sum(1)[0].argsort()]
    evens = sorted_lum[..., ::2].reshape(1, 3, 16, 10)
    darkest = sorted_lum[..., :160].reshape(1, 3, 16, 10)
    assert losses.sliced_wasserstein(evens, want, directions).item() < 0.01
    assert losses.sliced_wasserstein(darkest, want, directions).item() > 0.2


def test_sliced_wasserstein_in_one_dimension_is_the_exact_transport_cost():
    # One channel, one direction: sorted values against sorted values; a shift by s costs s^2 / var.
    target = torch.linspace(0, 1, 101).view(1, 1, 1, 101)
    directions = torch.ones(1, 1)
    want = losses.sorted_projections(target, directions)
    moved = (target + 0.1).flip(-1)
    expected = 0.01 / target.var().item()
    assert losses.sliced_wasserstein(moved, want, directions).item() == pytest.approx(expected, rel=1e-4)


def test_quantile_at_reads_fractions_between_a_sorted_rows_values():
    row = torch.tensor([0.0, 1.0, 2.0, 3.0])
    got = losses.quantile_at(row, torch.tensor([0.0, 0.125, 0.25, 0.5, 1.0]))
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, 0.5, 1.5, 3.0]))


def test_tone_target_keeps_the_photos_order_and_takes_the_targets_tones():
    torch.manual_seed(0)
    tones = torch.rand(64).sort().values
    # A photo holding exactly the target's tones, shuffled: its own values come back; any
    # monotone change of the photo's tones (darker, more contrast) gives the same target.
    luma = tones[torch.randperm(64)].view(1, 1, 8, 8)
    torch.testing.assert_close(losses.tone_target(luma, tones), luma)
    torch.testing.assert_close(losses.tone_target(luma.pow(3) * 0.2, tones), luma)
    # Ties share one value (a clipped white sky stays flat): the mean of the tones they span.
    tied = torch.tensor([0.0, 1.0, 1.0, 1.0]).view(1, 1, 2, 2)
    got = losses.tone_target(tied, torch.tensor([0.0, 0.2, 0.6, 1.0])).flatten()
    torch.testing.assert_close(got, torch.tensor([0.0, 0.6, 0.6, 0.6]))


def test_tone_loss_is_zero_for_the_photos_order_and_charges_inverted_light_and_dark():
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32)  # grey: luminance = value
    tones = ramp[0, 0].flatten().sort().values
    assert losses.tone_loss(ramp, ramp, tones).item() < 1e-10
    # Darker or brighter photos of the same scene get the painting's tones: the photo's own scale is free.
    assert losses.tone_loss(ramp, ramp * 0.3, tones).item() < 1e-10
    flat = losses.tone_loss(torch.full_like(ramp, 0.5), ramp, tones).item()
    inverted = losses.tone_loss(ramp.flip(-1), ramp, tones).item()
    assert 0.8 < flat < 1.0  # the blur takes a little of the target's variance away
    assert inverted == pytest.approx(4 * flat, rel=0.05)  # (2 (v - mean))^2 = 4 (v - mean)^2
    picture = ramp.clone().requires_grad_()
    losses.tone_loss(picture.flip(-1), ramp, tones).backward()
    assert torch.isfinite(picture.grad).all() and picture.grad.abs().sum() > 0


def test_palette_directions_are_unit_and_cover_the_colour_space():
    d = losses.sphere_directions(32)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(32))
    assert (d[:, 2] > 0).all()  # the upper half sphere: no direction twice with opposite signs
    probe = torch.nn.functional.normalize(torch.randn(5000, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    worst = (probe @ d.T).abs().amax(1).min().item()
    assert math.degrees(math.acos(worst)) < 22  # every colour axis within 22 degrees of one of them


def test_gradient_magnitudes_of_a_ramp_are_its_slope_and_of_a_step_one_edge():
    ramp = torch.linspace(0, 1, 11).view(1, 1, 1, 11).expand(1, 1, 5, 11)
    torch.testing.assert_close(losses.gradient_magnitudes(ramp), torch.full((1, 40), 0.1), atol=1e-4, rtol=0)
    step = torch.zeros(1, 1, 5, 11)
    step[..., 6:] = 1.0
    got = losses.gradient_magnitudes(step)
    assert (got[0, :-4] < 1e-3).all() and torch.allclose(got[0, -4:], torch.ones(4), atol=1e-4)


def test_gradient_loss_is_zero_for_the_targets_planes_and_one_for_a_flat_picture():
    # A picture of flat planes with hard edges: any picture with the same share of flat pixels and
    # edges of the same height scores 0, wherever they sit; a flat picture scores 1; the photo's
    # fine grain (every pixel a small gradient) scores in between, and its gradient points away from it.
    torch.manual_seed(0)
    planes = torch.zeros(1, 3, 32, 32)
    planes[..., 16:, :] = 0.8
    planes[..., :, 20:] += 0.2
    want = losses.gradient_magnitudes(planes.mean(1, keepdim=True))[0]
    assert losses.gradient_loss(planes.flip(-1).flip(-2), want).item() < 1e-8
    assert losses.gradient_loss(torch.full_like(planes, 0.4), want).item() == pytest.approx(1.0, abs=1e-3)
    grain = (planes + 0.05 * torch.randn(1, 1, 32, 32)).requires_grad_()
    loss = losses.gradient_loss(grain, want)
    assert 0.01 < loss.item() < 1.0
    loss.backward()
    stepped = (grain - 0.5 * grain.grad / grain.grad.abs().max() * 0.05).detach()
    assert losses.gradient_loss(stepped, want).item() < loss.item()


def _two_hue_pictures():
    """A painting mostly grey with a blue band and an orange band (20% of the pixels each), and a photo,
    near grey, with a paler blue band at the bottom and a paler orange band at the top."""
    g = torch.Generator().manual_seed(5)
    painting = torch.full((1, 3, 20, 20), 0.5)
    painting[:, :, :4] = torch.tensor([0.2, 0.3, 0.9]).view(1, 3, 1, 1)
    painting[:, :, -4:] = torch.tensor([0.9, 0.5, 0.1]).view(1, 3, 1, 1)
    photo = 0.5 + 0.02 * torch.rand(1, 3, 20, 20, generator=g)
    photo[:, :, :4] = torch.tensor([0.7, 0.45, 0.3]).view(1, 3, 1, 1)
    photo[:, :, -4:] = torch.tensor([0.35, 0.45, 0.65]).view(1, 3, 1, 1)
    return painting, photo


def test_transported_points_take_the_targets_distribution_in_their_own_order():
    painting, photo = _two_hue_pictures()
    d = losses.plane_directions(losses.HUE_DIRECTIONS)
    want = losses.sorted_chrominance(painting, d)[0]
    moved = losses.transported(chrominance(photo), want, d)
    # every projection of the moved points is the painting's (the 1-D distances near 0) ...
    got = losses.sorted_projections(moved, d)[0]
    assert (got - want).abs().max().item() < 0.02
    # ... and the photo's orange band took the painting's orange, its blue band the painting's blue
    assert torch.allclose(moved[0, :, :4].mean((1, 2)), chrominance(painting)[0, :, -4:].mean((1, 2)), atol=0.02)
    assert torch.allclose(moved[0, :, -4:].mean((1, 2)), chrominance(painting)[0, :, :4].mean((1, 2)), atol=0.02)


def test_chroma_loss_puts_each_of_the_paintings_hues_where_the_photo_has_the_nearest():
    # The painting's orange where the photo's orange is and its blue where the photo's blue is scores
    # near 0; the two swapped (the same chroma, the wrong hues) scores far worse, and so does an all-grey
    # picture (1 unblurred; the blur takes a quarter of these narrow bands' variance); one gradient
    # step from a washed picture brings the colours back.
    painting, photo = _two_hue_pictures()
    d = losses.plane_directions(losses.HUE_DIRECTIONS)
    want = losses.sorted_chrominance(painting, d)[0]
    placed = painting.flip(-2)
    assert losses.chroma_loss(placed, photo, want, d).item() < 0.02
    assert losses.chroma_loss(painting, photo, want, d).item() > 1.0
    grey = painting.mean(1, keepdim=True).expand_as(painting)
    assert losses.chroma_loss(grey, photo, want, d, sigma=0.01).item() == pytest.approx(1.0, abs=0.05)
    assert 0.6 < losses.chroma_loss(grey, photo, want, d).item() < 0.8
    washed = (0.9 * grey + 0.1 * placed).requires_grad_()
    loss = losses.chroma_loss(washed, photo, want, d)
    loss.backward()
    stepped = (washed - 0.05 * washed.grad / washed.grad.abs().max()).detach()
    assert losses.chroma_loss(stepped, photo, want, d).item() < loss.item()


def test_chrominance_of_a_grey_is_zero_and_of_red_its_i_and_q():
    grey = torch.full((1, 3, 2, 2), 0.3)
    assert chrominance(grey).abs().max().item() < 1e-6
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert chrominance(red).flatten().tolist() == pytest.approx([0.595716, 0.211456], abs=1e-5)


def test_sliced_and_chroma_losses_take_the_targets_spread_computed_once():
    g = torch.Generator().manual_seed(9)
    image, photo, painting = (torch.rand(2, 3, 24, 24, generator=g) for _ in range(3))
    colours = losses.sorted_projections(painting[:1], losses.sphere_directions(8))
    assert torch.equal(losses.sliced_wasserstein(image, colours, losses.sphere_directions(8)),
                       losses.sliced_wasserstein(image, colours, losses.sphere_directions(8),
                                                 losses.sorted_spread(colours[0])))
    hues = losses.plane_directions(4)
    chromas = losses.sorted_chrominance(painting[:1], hues)[0]
    assert torch.equal(losses.chroma_loss(image, photo, chromas, hues),
                       losses.chroma_loss(image, photo, chromas, hues, spread=losses.sorted_spread(chromas)))
