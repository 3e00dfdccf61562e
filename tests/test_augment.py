"""DSA: every operation against hand-computed tensors, the paper's parameter ranges, gradients, siamese mode."""
import math

import pytest
import torch

from dd.augment import dsa as D
from dd.augment import DSA, DSAParams, apply, draw, dsa_for

FAMILIES = ["color", "crop", "cutout", "flip", "scale", "rotate"]


def grid4():
    return torch.arange(16.0).view(1, 1, 4, 4)


# ---- each operation against a hand-computed expectation -------------------------------------------

def test_flip_mirrors_width_only_where_masked():
    x = torch.cat([grid4(), grid4() + 100])
    out = D.flip(x, torch.tensor([True, False]))
    expected0 = torch.tensor([[3., 2, 1, 0], [7, 6, 5, 4], [11, 10, 9, 8], [15, 14, 13, 12]])
    assert torch.equal(out[0, 0], expected0)
    assert torch.equal(out[1], x[1])


def test_rotate_90_degrees_is_anticlockwise_on_an_asymmetric_image():
    x = torch.arange(9.0).view(1, 1, 3, 3)  # 0 1 2 / 3 4 5 / 6 7 8
    out = D.rotate(x, torch.tensor([math.pi / 2]))
    expected = torch.tensor([[2., 5, 8], [1, 4, 7], [0, 3, 6]])  # the right column becomes the top row
    torch.testing.assert_close(out[0, 0], expected, atol=1e-5, rtol=0)
    out4 = D.rotate(grid4(), torch.tensor([-math.pi / 2]))  # clockwise: the left column becomes the top row
    expected4 = torch.tensor([[12., 8, 4, 0], [13, 9, 5, 1], [14, 10, 6, 2], [15, 11, 7, 3]])
    torch.testing.assert_close(out4[0, 0], expected4, atol=1e-5, rtol=0)


def test_rotate_small_angle_keeps_centre_and_zero_angle_is_identity():
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(D.rotate(x, torch.zeros(2)), x, atol=1e-6, rtol=0)
    out = D.rotate(x, torch.tensor([0.2, -0.2]))
    torch.testing.assert_close(out[:, :, 2, 2], x[:, :, 2, 2], atol=1e-6, rtol=0)  # the centre pixel is fixed


def test_rotate_and_scale_match_kornia_on_square_images():
    import kornia.geometry.transform as kt  # an independent implementation (a dd dependency)

    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    deg = torch.tensor([15.0, -11.0], dtype=torch.float64)
    torch.testing.assert_close(D.rotate(x, deg * math.pi / 180), kt.rotate(x, deg, align_corners=True))
    s = torch.tensor([[1.2, 0.9], [0.85, 1.1]], dtype=torch.float64)  # (sx, sy): sampling at s * u zooms by 1 / s
    torch.testing.assert_close(D.scale(x, s[:, 0], s[:, 1]), kt.scale(x, 1 / s, align_corners=True))


def test_scale_samples_at_scaled_coordinates():
    x = torch.arange(25.0).view(1, 1, 5, 5)  # value = 5 * row + col
    # sx = sy = 0.5: output pixel j samples input coordinate 1 + j/2 (zoom in), so out = 6 + 2.5 i + 0.5 j
    out = D.scale(x, torch.tensor([0.5]), torch.tensor([0.5]))
    i, j = torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij")
    torch.testing.assert_close(out[0, 0], 6 + 2.5 * i + 0.5 * j, atol=1e-5, rtol=0)
    # sx = 2 along the width only: columns -2, 0, 2, 4, 6 are sampled; outside is zero
    out = D.scale(x, torch.tensor([2.0]), torch.tensor([1.0]))
    expected = torch.tensor([[0., r * 5, r * 5 + 2, r * 5 + 4, 0] for r in range(5)])
    torch.testing.assert_close(out[0, 0], expected, atol=1e-5, rtol=0)


def color_input():
    # (1, 3, 1, 2): channel values per pixel (1, 3, 5) and (2, 4, 9)
    return torch.tensor([[[[1., 2]], [[3, 4]], [[5, 9]]]])


def test_brightness_saturation_contrast_by_hand():
    x = color_input()
    torch.testing.assert_close(D.brightness(x, torch.tensor([0.25])), x + 0.25)
    # channel means per pixel: 3 and 5; (x - m) * 2 + m
    sat = D.saturation(x, torch.tensor([2.0]))
    torch.testing.assert_close(sat, torch.tensor([[[[-1., -1]], [[3, 3]], [[7, 13]]]]))
    # overall mean 4; (x - 4) * 0.5 + 4
    con = D.contrast(x, torch.tensor([0.5]))
    torch.testing.assert_close(con, torch.tensor([[[[2.5, 3]], [[3.5, 4]], [[4.5, 6.5]]]]))


def test_color_family_composes_brightness_saturation_contrast():
    prm = {"brightness": torch.tensor([1.0]), "saturation": torch.tensor([2.0]), "contrast": torch.tensor([0.5])}
    out = apply("color", color_input(), prm)
    # +1 -> (2,4,6),(3,5,10); saturation x2 about 4 and 6 -> (0,4,8),(0,4,14); contrast x0.5 about 5
    torch.testing.assert_close(out, torch.tensor([[[[2.5, 2.5]], [[4.5, 4.5]], [[6.5, 9.5]]]]))


def test_translate_shifts_and_fills_with_zeros():
    out = D.translate(grid4(), torch.tensor([1]), torch.tensor([-1]))  # one down, one left
    expected = torch.tensor([[0., 0, 0, 0], [1, 2, 3, 0], [5, 6, 7, 0], [9, 10, 11, 0]])
    assert torch.equal(out[0, 0], expected)
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(D.translate(x, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)), x)


def test_cutout_zeros_the_clipped_square_in_every_channel():
    x = torch.ones(1, 2, 4, 4)
    out = D.cutout(x, torch.tensor([-1]), torch.tensor([2]), (2, 2))  # rows -1..0, cols 2..3 -> clipped to row 0
    expected = torch.ones(4, 4)
    expected[0, 2:] = 0
    assert torch.equal(out[0, 0], expected) and torch.equal(out[0, 1], expected)
    out = D.cutout(x, torch.tensor([1]), torch.tensor([1]), (2, 2))
    expected = torch.ones(4, 4)
    expected[1:3, 1:3] = 0
    assert torch.equal(out[0, 0], expected)


# ---- the paper's parameter ranges ----------------------------------------------------------------

def test_parameter_draws_stay_in_the_papers_ranges():
    p, n, g = DSAParams(), 4000, torch.Generator().manual_seed(0)
    assert (p.flip, p.scale, p.rotate, p.crop, p.cutout, p.brightness, p.saturation, p.contrast) == \
        (0.5, 1.2, 15.0, 0.125, 0.5, 1.0, 2.0, 0.5)
    c = draw("color", n, (28, 28), p, g)
    assert -0.5 <= c["brightness"].min() < -0.45 and 0.45 < c["brightness"].max() <= 0.5
    assert 0 <= c["saturation"].min() < 0.05 and 1.95 < c["saturation"].max() <= 2.0
    assert 0.5 <= c["contrast"].min() < 0.55 and 1.45 < c["contrast"].max() <= 1.5
    s = draw("scale", n, (28, 28), p, g)
    for k in ("sx", "sy"):
        assert 1 / 1.2 <= s[k].min() < 0.85 and 1.18 < s[k].max() <= 1.2
    assert not torch.equal(s["sx"], s["sy"])
    r = draw("rotate", n, (28, 28), p, g)["angle"] * 180 / math.pi
    assert -15 <= r.min() < -14.5 and 14.5 < r.max() <= 15
    for hw, shift in (((28, 28), 4), ((32, 32), 4), ((64, 64), 8)):  # int(side * 0.125 + 0.5)
        t = draw("crop", n, hw, p, g)
        assert set(t["dy"].tolist()) == set(range(-shift, shift + 1)) == set(t["dx"].tolist())
    # cutout side int(side * 0.5 + 0.5); its centre ranges over the image, so top/left run from -size//2 to the
    # last row minus size//2 (minus one more for odd sizes): the clipped square always overlaps the image
    for side, size, lo, hi in ((28, 14, -7, 21), (32, 16, -8, 24), (7, 4, -2, 5), (9, 5, -2, 6)):
        cut = draw("cutout", n, (side, side), p, g)
        assert cut["size"].tolist() == [size, size]
        for k in ("top", "left"):
            assert set(cut[k].tolist()) == set(range(lo, hi + 1))
    m = draw("flip", n, (28, 28), p, g)["mask"]
    assert m.dtype == torch.bool and 0.45 < m.float().mean() < 0.55


def test_cutout_square_always_overlaps_and_has_half_side():
    x = torch.ones(500, 1, 28, 28)
    out = DSA(DSAParams(strategy="cutout"))(x, generator=torch.Generator().manual_seed(1))
    erased = (out == 0).sum(dim=(1, 2, 3))
    assert erased.min() >= 7 * 7 and erased.max() == 14 * 14  # clipped at a corner to at least a quarter


def test_unknown_operation_is_refused_with_the_known_names():
    with pytest.raises(ValueError, match="known: color, crop, cutout, flip, scale, rotate"):
        DSA(DSAParams(strategy="color_blur"))


# ---- gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_reaches_the_input_images(family):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    prm = draw(family, 4, (8, 8), DSAParams(), g)
    if family == "flip":
        prm["mask"] = torch.tensor([True, False, True, False])
    w = torch.randn(4, 3, 8, 8)
    (apply(family, x, prm) * w).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    if family == "flip":  # the gradient of a mirror is the mirrored weight
        torch.testing.assert_close(x.grad[0], w[0].flip(2))
        torch.testing.assert_close(x.grad[1], w[1])


def test_dsa_call_is_differentiable_for_every_draw():
    dsa = DSA()
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        x = torch.randn(3, 3, 8, 8, requires_grad=True)
        dsa(x, generator=g).square().sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()


def test_rotate_and_scale_gradients_match_finite_differences():
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    angle = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: D.rotate(a, b), (x, angle), eps=1e-6, atol=1e-5)
    sx = torch.tensor([0.9, 1.1], dtype=torch.float64)
    sy = torch.tensor([1.15, 0.87], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: D.scale(a, sx, sy), (x,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda a: apply("color", a, draw("color", 2, (5, 5), DSAParams(),
                                                                     torch.Generator().manual_seed(0))), (x,))


# ---- siamese and per-sample modes ----------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_siamese_applies_one_transform_to_both_batches(family):
    dsa = DSA(DSAParams(strategy=family))
    real = torch.randn(6, 3, 12, 12)
    syn = real.flip(0).clone()  # the same images in another order, as another tensor
    for seed in range(4):
        a, b = dsa.siamese(real, syn, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(a, b.flip(0))  # the same parameters for every sample of both batches
        same = real[:1].expand(6, -1, -1, -1)
        a1, a2 = dsa.siamese(same, same.clone(), generator=torch.Generator().manual_seed(seed))
        assert torch.equal(a1, a2) and all(torch.equal(a1[0], a1[i]) for i in range(6))


@pytest.mark.parametrize("family", FAMILIES)
def test_per_sample_mode_draws_parameters_for_each_sample(family):
    dsa = DSA(DSAParams(strategy=family))
    same = torch.randn(1, 3, 12, 12).expand(16, -1, -1, -1).contiguous()
    out = dsa(same, generator=torch.Generator().manual_seed(0))
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) >= (2 if family == "flip" else 8)


def test_siamese_with_default_strategy_on_identical_inputs_is_identical():
    dsa = DSA()
    x = torch.randn(5, 3, 16, 16)
    g = torch.Generator().manual_seed(7)
    for _ in range(20):
        a, b = dsa.siamese(x, x.clone(), generator=g)
        assert torch.equal(a, b)


# ---- flip for digits, reproducibility ------------------------------------------------------------

def test_flip_is_never_chosen_when_disallowed(monkeypatch):
    calls = []
    monkeypatch.setattr(D, "flip", lambda x, mask: calls.append(1) or x)
    x = torch.randn(2, 1, 8, 8)
    no_flip = dsa_for(False)
    assert no_flip.strategy == "color_crop_cutout_scale_rotate"
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        no_flip(x, generator=g)
        no_flip.siamese(x, x, generator=g)
    assert calls == []
    with_flip = dsa_for(True)
    for _ in range(120):
        with_flip(x, generator=g)
    assert calls  # the probe does see flips when they are allowed (1/6 of calls)
    only_flip = DSA(DSAParams(strategy="flip"), allow_flip=False)
    assert torch.equal(only_flip(x), x) and only_flip.strategy == "none"


def test_seeded_generator_reproduces_the_augmentation():
    dsa, x = DSA(), torch.randn(8, 3, 16, 16)
    runs = [[dsa(x, generator=g) for _ in range(10)] for g in
            (torch.Generator().manual_seed(5), torch.Generator().manual_seed(5))]
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    other = [dsa(x, generator=torch.Generator().manual_seed(6)) for _ in range(1)]
    assert not torch.equal(other[0], runs[0][0])
