"""Tests for training/augment.py (ADA pipeline; docs/methods.md §3.2, docs/stylegan2-ada.md §2).

Expected values come from independent formulas: numpy index maps for the pixel ops, float64
forward maps for the geometry (centroid/covariance of a Gaussian blob), closed-form quantiles for
the debug_percentile draws, and binomial tolerances for the application rates.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torch_utils import persistence
from training import augment
from training.augment import AUGPIPE_SPECS, AugmentPipe


def make_pipe(p: float = 1.0, **kwargs) -> AugmentPipe:
    pipe = AugmentPipe(**kwargs)
    pipe.p.fill_(p)
    return pipe


def normal_quantile(q: float, std: float) -> float:
    from scipy.special import erfinv
    return std * math.sqrt(2) * float(erfinv(2 * q - 1))


def blob(size: int = 48, cx: float = 4.0, cy: float = -3.0, sigma: float = 2.0, channels: int = 3,
         height: int | None = None) -> torch.Tensor:
    """Gaussian blob at (cx, cy) in centre-origin pixel coordinates (x right, y down).

    48 px keeps the reflected copies that rotations pull into the corners negligible.
    """
    height = size if height is None else height
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float64) - (height - 1) / 2,
                          torch.arange(size, dtype=torch.float64) - (size - 1) / 2, indexing='ij')
    img = torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2))
    return img[None, None].repeat(1, channels, 1, 1).float()


def moments(img: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (x, y) and covariance of channel 0 of a [1, C, H, W] non-negative image."""
    w = img[0, 0].double().clamp(min=0)
    height, width = w.shape
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float64) - (height - 1) / 2,
                          torch.arange(width, dtype=torch.float64) - (width - 1) / 2, indexing='ij')
    m = w.sum()
    mx, my = float((w * x).sum() / m), float((w * y).sum() / m)
    dx, dy = x - mx, y - my
    cov = np.array([[float((w * dx * dx).sum() / m), float((w * dx * dy).sum() / m)],
                    [float((w * dx * dy).sum() / m), float((w * dy * dy).sum() / m)]])
    return np.array([mx, my]), cov


# ---------------------------------------------------------------------------------------------
# Presets, construction, persistence.

def test_augpipe_specs_match_spec():
    blit = {'xflip', 'rotate90', 'xint'}
    geom = {'scale', 'rotate', 'aniso', 'xfrac'}
    color = {'brightness', 'contrast', 'lumaflip', 'hue', 'saturation'}
    expected = {
        'blit': blit, 'geom': geom, 'color': color, 'filter': {'imgfilter'}, 'noise': {'noise'},
        'cutout': {'cutout'}, 'bg': blit | geom, 'bgc': blit | geom | color,
        'bgcf': blit | geom | color | {'imgfilter'}, 'bgcfn': blit | geom | color | {'imgfilter', 'noise'},
        'bgcfnc': blit | geom | color | {'imgfilter', 'noise', 'cutout'},
    }
    assert set(AUGPIPE_SPECS) == set(expected)
    for name, ops in expected.items():
        assert set(AUGPIPE_SPECS[name]) == ops, name
        assert all(v == 1 for v in AUGPIPE_SPECS[name].values()), name
        AugmentPipe(**AUGPIPE_SPECS[name])  # every preset constructs


def test_defaults_and_buffer():
    pipe = AugmentPipe()
    assert pipe.p.dtype == torch.float32 and pipe.p.ndim == 0 and float(pipe.p) == 0
    assert (pipe.xint_max, pipe.scale_std, pipe.rotate_max, pipe.aniso_std, pipe.xfrac_std) == (0.125, 0.2, 1, 0.2, 0.125)
    assert (pipe.brightness_std, pipe.contrast_std, pipe.hue_max, pipe.saturation_std) == (0.2, 0.5, 1, 1)
    assert (pipe.imgfilter_bands, pipe.imgfilter_std, pipe.noise_std, pipe.cutout_size) == ([1, 1, 1, 1], 1, 0.1, 0.5)


def test_persistence_roundtrip_keeps_p():
    pipe = make_pipe(0.37, **AUGPIPE_SPECS['bgc'])
    rec = persistence.module_to_record(pipe)
    clone = persistence.module_from_record(rec)
    assert isinstance(clone, AugmentPipe)
    assert float(clone.p) == pytest.approx(0.37)
    assert clone.init_kwargs == pipe.init_kwargs and clone.rotate == 1


def test_rejects_bad_channels():
    with pytest.raises(ValueError):
        make_pipe(1, xflip=1)(torch.zeros(2, 2, 8, 8))


def test_sym_taps_are_orthonormal_wavelets():
    """Published taps: Σh = √2, unit energy, orthogonal to even shifts, N/2 vanishing moments."""
    for taps, moments_ in ((augment.SYM2, 2), (augment.SYM6, 6)):
        h = np.asarray(taps)
        n = np.arange(h.size)
        assert h.sum() == pytest.approx(math.sqrt(2), abs=1e-12)
        assert (h * h).sum() == pytest.approx(1, abs=1e-9)
        for k in range(1, h.size // 2):
            assert abs((h[:-2 * k] * h[2 * k:]).sum()) < 1e-9
        for m in range(moments_):
            assert abs(((-1.0) ** n * n ** m * h).sum()) < 1e-8


# ---------------------------------------------------------------------------------------------
# p = 0 and the per-sample application.

def test_p_zero_is_identity():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    pipe = AugmentPipe(**AUGPIPE_SPECS['bgcfnc'])
    out = pipe(x)
    assert torch.equal(out, x)
    assert torch.equal(pipe(x, debug_percentile=0.3), x)


def test_unaugmented_samples_bitwise_unchanged():
    torch.manual_seed(1)
    x = torch.rand(64, 3, 8, 8) * 2 - 1
    out = make_pipe(0.05, **AUGPIPE_SPECS['bgcfnc'])(x)  # P(untouched) = 0.95^14·(1 − 0.05) ≈ 0.46
    same = (out == x).flatten(1).all(dim=1)
    assert 10 < int(same.sum()) < 54  # some untouched (bit-exact), some augmented


@pytest.mark.parametrize('op, expected_rate', [('xflip', 0.15), ('brightness', 0.3), ('rotate', 0.3), ('scale', 0.3),
                                               ('noise', 0.3)])
def test_application_rate(op, expected_rate):
    """P(image changed) at p = 0.3: xflip flips half the applied images; rotate = 1 − (1 − p_rot)²."""
    torch.manual_seed(2)
    n = 4000
    x = torch.rand(n, 1, 8, 8) * 2 - 1
    out = make_pipe(0.3, **{op: 1})(x)
    rate = float((out != x).flatten(1).any(dim=1).double().mean())
    tol = 4 * math.sqrt(expected_rate * (1 - expected_rate) / n)  # ≈ 0.03 for 0.3
    assert abs(rate - expected_rate) < tol, rate


def test_multiplier_scales_probability():
    torch.manual_seed(3)
    x = torch.rand(4000, 1, 4, 4)
    out = make_pipe(0.4, brightness=0.5)(x)
    rate = float((out != x).flatten(1).any(dim=1).double().mean())
    assert abs(rate - 0.2) < 0.03


# ---------------------------------------------------------------------------------------------
# Pixel blitting: exact.

def test_xflip_exact():
    torch.manual_seed(4)
    x = torch.rand(3, 3, 8, 8)
    pipe = make_pipe(1, xflip=1)
    assert torch.equal(pipe(x, debug_percentile=0.75), x.flip(3))
    assert torch.equal(pipe(x, debug_percentile=0.25), x)


@pytest.mark.parametrize('q, k', [(0.1, 0), (0.3, 1), (0.6, 2), (0.9, 3)])
def test_rotate90_exact(q, k):
    """k quarter turns, each mapping pixel (r, c) to (W−1−c, r) (upstream's direction: right → up)."""
    torch.manual_seed(5)
    x = torch.rand(2, 3, 6, 6)
    expected = x.numpy().copy()
    for _ in range(k):
        turned = np.empty_like(expected)
        size = expected.shape[-1]
        for r in range(size):
            for c in range(size):
                turned[..., size - 1 - c, r] = expected[..., r, c]
        expected = turned
    out = make_pipe(1, rotate90=1)(x, debug_percentile=q)
    assert np.array_equal(out.numpy(), expected)


def test_xint_exact_with_reflection():
    """q = 0.9: t = (2q − 1)·0.125 = 0.1 of the size → round(1.6) = 2 px right and down."""
    torch.manual_seed(6)
    x = torch.rand(2, 3, 16, 16)
    out = make_pipe(1, xint=1)(x, debug_percentile=0.9)
    shift = round(0.1 * 16)
    padded = np.pad(x.numpy(), [(0, 0), (0, 0), (shift, 0), (shift, 0)], mode='reflect')
    expected = padded[:, :, :16, :16]
    assert np.array_equal(out.numpy(), expected)
    assert torch.equal(out[:, :, shift:, shift:], x[:, :, :-shift, :-shift])


# ---------------------------------------------------------------------------------------------
# General geometry: compare the blob's centroid / covariance with the forward affine map.

def _check_affine(out: torch.Tensor, A: np.ndarray, t: np.ndarray, src=(4.0, -3.0), sigma=2.0, tol=0.01):
    """Blob N(src, σ²I) → N(A·src + t, σ²·AAᵀ). Bilinear sampling on the 2× grid adds ≈ 0.04 px²."""
    centroid, cov = moments(out)
    exp_centroid = A @ np.asarray(src) + t
    exp_cov = sigma ** 2 * A @ A.T
    np.testing.assert_allclose(centroid, exp_centroid, atol=tol)
    np.testing.assert_allclose(cov, exp_cov, atol=0.02 * sigma ** 2 + 0.06)


def test_identity_resample_reproduces_input():
    x = torch.rand(2, 3, 12, 12)
    eye = torch.eye(3)[None].repeat(2, 1, 1)
    out = augment.geometric_resample(x, eye, AugmentPipe().Hz_geom)
    assert (out - x).abs().max() < 1e-5


def test_scale_geometry():
    q = 0.8
    s = 2 ** normal_quantile(q, 0.2)
    out = make_pipe(1, scale=1)(blob(), debug_percentile=q)
    _check_affine(out, np.diag([s, s]), np.zeros(2))


def test_rotate_geometry():
    q = 0.6
    theta = (2 * q - 1) * math.pi  # content at r moves to R(−θ)·r (y down; upstream's direction)
    R = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
    out = make_pipe(1, rotate=1)(blob(), debug_percentile=q)
    _check_affine(out, R, np.zeros(2))


def test_aniso_geometry():
    q = 0.85
    s = 2 ** normal_quantile(q, 0.2)
    out = make_pipe(1, aniso=1)(blob(), debug_percentile=q)
    _check_affine(out, np.diag([s, 1 / s]), np.zeros(2))


def test_xfrac_geometry():
    q = 0.7
    t = normal_quantile(q, 0.125) * 48
    out = make_pipe(1, xfrac=1)(blob(), debug_percentile=q)
    _check_affine(out, np.eye(2), np.array([t, t]))


def test_bg_composition_order():
    """xflip → rotate90 → xint → scale → rotate → aniso → xfrac, applied in that order."""
    q = 0.6
    flip = np.diag([-1.0, 1.0])  # i = floor(1.2) = 1
    rot90 = np.array([[-1.0, 0], [0, -1.0]])  # i = floor(2.4) = 2 quarter turns
    shift = round((2 * q - 1) * 0.125 * 48)  # round(1.2) = 1
    s = 2 ** normal_quantile(q, 0.2)
    theta = (2 * q - 1) * math.pi
    R = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])  # R(−θ)
    a = 2 ** normal_quantile(q, 0.2)
    tf = normal_quantile(q, 0.125) * 48
    A = np.eye(2)
    t = np.zeros(2)
    for M, d in ((flip, 0), (rot90, 0), (np.eye(2), shift), (np.diag([s, s]), 0), (R, 0),
                 (np.diag([a, 1 / a]), 0), (np.eye(2), tf)):
        A, t = M @ A, M @ t + d
    out = make_pipe(1, **AUGPIPE_SPECS['bg'])(blob(cx=3.0, cy=-2.0, sigma=1.5), debug_percentile=q)
    _check_affine(out, A, t, src=(3.0, -2.0), sigma=1.5, tol=0.02)


def test_non_square_images_resampled():
    """12 wide × 16 high: the blit ops go through grid_sample; the flip pivots on the centre."""
    x = blob(12, cx=1.0, cy=-1.0, sigma=1.5, height=16)
    out = make_pipe(1, xflip=1)(x, debug_percentile=0.75)
    centroid, _ = moments(out)
    np.testing.assert_allclose(centroid, [-1.0, -1.0], atol=0.01)
    assert (out - x.flip(3)).abs().max() < 0.03


def test_upsample_offset_zero_for_symmetric_filter():
    assert augment.upsample_offset(torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8) == pytest.approx(0)
    assert augment.upsample_offset(torch.tensor([0.0, 1.0, 0.0, 0.0])) == pytest.approx(-0.5)


# ---------------------------------------------------------------------------------------------
# Colour.

def rgb_test_image(seed: int = 7) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.rand(2, 3, 5, 5) * 2 - 1


def test_brightness_adds_constant():
    q = 0.8
    x = rgb_test_image()
    out = make_pipe(1, brightness=1)(x, debug_percentile=q)
    torch.testing.assert_close(out, x + normal_quantile(q, 0.2), atol=1e-6, rtol=0)


def test_contrast_scales_about_zero():
    q = 0.2
    x = rgb_test_image()
    x = x - x.mean(dim=[1, 2, 3], keepdim=True)
    out = make_pipe(1, contrast=1)(x, debug_percentile=q)
    c = 2 ** normal_quantile(q, 0.5)
    torch.testing.assert_close(out, x * c, atol=1e-6, rtol=0)
    assert out.mean(dim=[1, 2, 3]).abs().max() < 1e-6  # a zero-mean image keeps its mean


def test_lumaflip_negates_luma_keeps_chroma():
    x = rgb_test_image()
    out = make_pipe(1, lumaflip=1)(x, debug_percentile=0.7)
    luma = x.mean(dim=1, keepdim=True)
    torch.testing.assert_close(out, x - 2 * luma, atol=1e-6, rtol=0)
    assert torch.equal(make_pipe(1, lumaflip=1)(x, debug_percentile=0.3), x)  # i = 0: no flip


def test_hue_rotation_by_120_degrees_permutes_channels():
    x = rgb_test_image()
    out = make_pipe(1, hue=1)(x, debug_percentile=5 / 6)  # θ = (2q − 1)π = 2π/3: r → g → b → r
    torch.testing.assert_close(out, x[:, [2, 0, 1]], atol=1e-6, rtol=0)


def test_hue_preserves_luma_and_chroma_norm():
    x = rgb_test_image()
    out = make_pipe(1, hue=1)(x, debug_percentile=0.37)
    luma_in, luma_out = x.mean(dim=1), out.mean(dim=1)
    torch.testing.assert_close(luma_out, luma_in, atol=1e-6, rtol=0)
    chroma_in = (x - luma_in[:, None]).norm(dim=1)
    chroma_out = (out - luma_out[:, None]).norm(dim=1)
    torch.testing.assert_close(chroma_out, chroma_in, atol=1e-5, rtol=0)
    assert (out - x).abs().max() > 0.1


def test_saturation_scales_chroma_keeps_luma():
    q = 0.75
    x = rgb_test_image()
    out = make_pipe(1, saturation=1)(x, debug_percentile=q)
    s = 2 ** normal_quantile(q, 1.0)
    luma = x.mean(dim=1, keepdim=True)
    torch.testing.assert_close(out, luma + s * (x - luma), atol=1e-5, rtol=0)


def test_colour_composition_order():
    """brightness, then contrast, then lumaflip: ((x + b)·c) with its luma flipped."""
    q = 0.8
    x = rgb_test_image()
    out = make_pipe(1, brightness=1, contrast=1, lumaflip=1)(x, debug_percentile=q)
    y = (x + normal_quantile(q, 0.2)) * 2 ** normal_quantile(q, 0.5)
    y = y - 2 * y.mean(dim=1, keepdim=True)
    torch.testing.assert_close(out, y, atol=1e-5, rtol=0)


def test_grey_images_luma_only():
    q = 0.8
    torch.manual_seed(8)
    x = torch.rand(2, 1, 6, 6) * 2 - 1
    b, c = normal_quantile(q, 0.2), 2 ** normal_quantile(q, 0.5)
    out = make_pipe(1, brightness=1, contrast=1)(x, debug_percentile=q)
    torch.testing.assert_close(out, (x + b) * c, atol=1e-6, rtol=0)
    torch.testing.assert_close(make_pipe(1, lumaflip=1)(x, debug_percentile=0.7), -x, atol=1e-6, rtol=0)
    assert torch.equal(make_pipe(1, hue=1, saturation=1)(x, debug_percentile=0.9), x)  # no chroma in grey


# ---------------------------------------------------------------------------------------------
# Image-space filtering.

def _response(row: np.ndarray, omega: float) -> float:
    n = np.arange(row.size) - (row.size - 1) / 2
    return float(np.real((row * np.exp(-1j * omega * n)).sum()))


def test_imgfilter_bank_properties():
    bank = augment.imgfilter_bank()
    assert bank.shape[0] == 4 and bank.shape[1] % 2 == 1
    delta = np.zeros(bank.shape[1])
    delta[bank.shape[1] // 2] = 1
    np.testing.assert_allclose(bank.sum(axis=0), delta, atol=1e-12)  # bands sum to identity
    np.testing.assert_allclose(bank, bank[:, ::-1], atol=1e-12)  # zero phase
    np.testing.assert_allclose([_response(r, 0) for r in bank], [1, 0, 0, 0], atol=1e-12)
    np.testing.assert_allclose([_response(r, math.pi) for r in bank], [0, 0, 0, 1], atol=1e-12)
    centres = [math.pi / 12, math.pi * 3 / 16, math.pi * 3 / 8, math.pi * 3 / 4]  # one octave each
    for k, omega in enumerate(centres):
        responses = [abs(_response(r, omega)) for r in bank]
        assert int(np.argmax(responses)) == k


def test_imgfilter_zero_std_is_identity():
    torch.manual_seed(9)
    x = torch.rand(2, 3, 8, 8) * 2 - 1  # smaller than the 43-tap filter: reflect padding wraps
    out = make_pipe(1, imgfilter=1, imgfilter_std=0)(x)
    assert (out - x).abs().max() < 1e-5


def test_imgfilter_band_gain_power_normalised():
    """Only the top band drawn: gains (1, 1, 1, T)/n with n² = (10 + 1 + 1 + T²)/13."""
    q = 0.8
    T = 2 ** normal_quantile(q, 1.0)
    n = math.sqrt((12 + T * T) / 13)
    pipe = make_pipe(1, imgfilter=1, imgfilter_bands=[0, 0, 0, 1])
    const = torch.full([1, 3, 16, 16], 0.5)
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2 - 1).float()[None, None].repeat(1, 3, 1, 1)
    torch.testing.assert_close(pipe(const, debug_percentile=q), const / n ** 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(pipe(checker, debug_percentile=q), checker * (T / n) ** 2, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Corruptions.

def test_noise_std_debug():
    q = 0.5
    torch.manual_seed(10)
    x = torch.zeros(4, 3, 32, 32)
    out = make_pipe(1, noise=1)(x, debug_percentile=q)
    sigma = 0.1 * math.sqrt(2) * 0.4769362762044699  # σ√2·erfinv(q), erfinv(0.5) = 0.47694
    assert float(out.std()) == pytest.approx(sigma, rel=0.03)


def test_noise_std_distribution():
    """Per-image σ ~ |N(0, 0.1²)|: E[σ] = 0.1·√(2/π), E[σ²] = 0.01."""
    torch.manual_seed(11)
    x = torch.zeros(3000, 1, 16, 16)
    out = make_pipe(1, noise=1)(x)
    sig = out.flatten(1).std(dim=1)
    assert float(sig.mean()) == pytest.approx(0.1 * math.sqrt(2 / math.pi), rel=0.04)
    assert float(sig.square().mean()) == pytest.approx(0.01, rel=0.08)


def test_cutout_centred_area():
    x = torch.ones(2, 3, 16, 16)
    out = make_pipe(1, cutout=1)(x, debug_percentile=0.5)
    zero = out[0, 0] == 0
    assert float(zero.double().mean()) == 0.25
    assert zero[4:12, 4:12].all()
    assert torch.equal(out[:, 0:1].expand_as(out), out)  # same mask in all channels


def test_cutout_random_area_fraction():
    """Side ½ centred uniformly: E[covered length] per axis = 0.5 − 2·∫₀^¼(¼ − c)dc = 0.4375."""
    torch.manual_seed(12)
    x = torch.ones(3000, 1, 16, 16)
    out = make_pipe(1, cutout=1)(x)
    frac = (out == 0).double().mean()
    assert float(frac) == pytest.approx(0.4375 ** 2, abs=0.006)


# ---------------------------------------------------------------------------------------------
# Differentiability (R1 differentiates through the pipe, create_graph=True).

def test_gradcheck_bgc_debug():
    pipe = make_pipe(1, **AUGPIPE_SPECS['bgcf'])
    x = (torch.rand(1, 3, 8, 8, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    fn = lambda t: pipe(t, debug_percentile=0.6)  # noqa: E731 - deterministic: every draw fixed
    assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


def test_double_backward_random_bgc():
    torch.manual_seed(13)
    pipe = make_pipe(1, **AUGPIPE_SPECS['bgc'])
    x = torch.rand(4, 3, 8, 8, requires_grad=True)
    w = torch.randn(3, 3, 3, 3, requires_grad=True)  # a tiny "discriminator"
    logits = torch.nn.functional.conv2d(pipe(x), w).square().sum(dim=[1, 2, 3])
    (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    penalty = g.square().sum()
    penalty.backward()
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_gradient_is_adjoint_of_flip():
    """For a pure flip, d(Σ y·w)/dx = flip(w): the gradient goes through the pixel gather."""
    x = torch.rand(1, 3, 6, 6, requires_grad=True)
    w = torch.rand(1, 3, 6, 6)
    (make_pipe(1, xflip=1)(x, debug_percentile=0.9) * w).sum().backward()
    assert torch.equal(x.grad, w.flip(3))


# ---------------------------------------------------------------------------------------------
# Upstream's random draws (module docstring, "Random draws"). Each expected value below is made
# here with plain torch calls in upstream's order — the op's value first, then its "is it
# applied" uniform (cutout: gate, then centre) — from the same seed, and the transform is
# computed independently; the pipe must give the same images and leave the RNG where the
# expected draws left it. p = 0.5 with 8 images, so every test sees both open and closed gates.

DRAW_SEED, DRAW_P, DRAW_B = 21, 0.5, 8


def _rand(*shape):
    return torch.rand([DRAW_B, *shape])


def _randn(*shape):
    return torch.randn([DRAW_B, *shape])


def _gate(*shape, prob=DRAW_P):
    return torch.rand([DRAW_B, *shape]) < prob


def _mixed(gate: torch.Tensor) -> torch.Tensor:
    assert 0 < int(gate.sum()) < gate.numel(), 'the seed should give open and closed gates'
    return gate


def _reflect_shift(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Content moved by (dx, dy) pixels, reflection (edge not repeated) filling the gap."""
    pad = max(abs(dx), abs(dy), 1)
    padded = np.pad(img, [(0, 0), (pad, pad), (pad, pad)], mode='reflect')
    h, w = img.shape[1:]
    return padded[:, pad - dy:pad - dy + h, pad - dx:pad - dx + w]


def _luma_rotation(theta: float) -> torch.Tensor:
    """3×3 rotation by θ about (1, 1, 1)/√3 (Rodrigues), float64."""
    v = torch.full([3], 1 / math.sqrt(3), dtype=torch.float64)
    K = torch.tensor([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]], dtype=torch.float64)
    return math.cos(theta) * torch.eye(3, dtype=torch.float64) + math.sin(theta) * K + \
        (1 - math.cos(theta)) * torch.outer(v, v)


def _expected_xflip(x):
    i = torch.floor(_rand() * 2) * _mixed(_gate())
    return torch.where(i[:, None, None, None] > 0, x.flip(3), x)


def _expected_rotate90(x):
    k = torch.floor(_rand() * 4) * _mixed(_gate())
    return torch.stack([torch.rot90(img, int(n), dims=(1, 2)) for img, n in zip(x, k)])  # counter-clockwise


def _expected_xint(x):
    t = (_rand(2) * 2 - 1) * 0.125 * _mixed(_gate(1))
    shifts = torch.round(t * torch.tensor([x.shape[3], x.shape[2]])).int().tolist()
    return torch.stack([torch.from_numpy(_reflect_shift(img.numpy(), dx, dy)) for img, (dx, dy) in zip(x, shifts)])


def _expected_brightness(x):
    b = _randn() * 0.2 * _mixed(_gate())
    return x + b[:, None, None, None]


def _expected_contrast(x):
    c = torch.exp2(_randn() * 0.5)
    c = torch.where(_mixed(_gate()), c, torch.ones([]))
    return x * c[:, None, None, None]


def _expected_lumaflip(x):
    i = torch.floor(_rand() * 2) * _mixed(_gate())
    return x - 2 * i[:, None, None, None] * x.mean(dim=1, keepdim=True)


def _expected_hue(x):
    theta = (_rand() * 2 - 1) * math.pi * _mixed(_gate())
    return torch.stack([torch.einsum('ij,jhw->ihw', _luma_rotation(float(a)), img.double()).float()
                        for img, a in zip(x, theta)])


def _expected_saturation(x):
    s = torch.exp2(_randn() * 1.0)
    s = torch.where(_mixed(_gate()), s, torch.ones([]))[:, None, None, None]
    luma = x.mean(dim=1, keepdim=True)
    return luma + s * (x - luma)


def _expected_noise(x):
    sigma = _randn(1, 1, 1).abs() * 0.1 * _mixed(_gate(1, 1, 1))
    return x + torch.randn(x.shape) * sigma


def _expected_cutout(x):
    gate = _mixed(_gate())
    centre = _rand(2)
    xs = (torch.arange(x.shape[3]) + 0.5) / x.shape[3]
    ys = (torch.arange(x.shape[2]) + 0.5) / x.shape[2]
    half = torch.where(gate, 0.25, 0.0)[:, None]
    inside = ((xs - centre[:, :1]).abs() < half)[:, None, :] & ((ys - centre[:, 1:]).abs() < half)[:, :, None]
    return x * (~inside)[:, None].float()


EXPECTED_DRAWS = {'xflip': _expected_xflip, 'rotate90': _expected_rotate90, 'xint': _expected_xint,
                  'brightness': _expected_brightness, 'contrast': _expected_contrast,
                  'lumaflip': _expected_lumaflip, 'hue': _expected_hue, 'saturation': _expected_saturation,
                  'noise': _expected_noise, 'cutout': _expected_cutout}


@pytest.mark.parametrize('op', list(EXPECTED_DRAWS))
def test_same_seed_gives_upstreams_draws(op):
    torch.manual_seed(0)
    x = torch.rand(DRAW_B, 3, 16, 16) * 2 - 1
    torch.manual_seed(DRAW_SEED)
    expected = EXPECTED_DRAWS[op](x)
    rng_after = torch.rand(4)
    torch.manual_seed(DRAW_SEED)
    out = make_pipe(DRAW_P, **{op: 1})(x)
    assert torch.equal(torch.rand(4), rng_after), 'the pipe consumed other draws'
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=0)
    if op in ('xflip', 'rotate90', 'xint', 'cutout'):
        assert torch.equal(out, expected)


def _homogeneous(M2x3: torch.Tensor) -> torch.Tensor:
    """[B, 2, 3] → [B, 3, 3] with the row (0, 0, 1)."""
    last = torch.tensor([[[0, 0, 1.0]]]).expand(M2x3.shape[0], 1, 3)
    return torch.cat([M2x3, last], dim=1)


def _inv_rotation(theta: torch.Tensor) -> torch.Tensor:
    """Inverse matrix of a drawn angle θ: R(θ) = [[cos, −sin], [sin, cos]] (the content turns by −θ)."""
    c, s, z = torch.cos(theta), torch.sin(theta), torch.zeros_like(theta)
    return _homogeneous(torch.stack([torch.stack([c, -s, z], 1), torch.stack([s, c, z], 1)], 1))


def _inv_affine(a, b, tx, c, d, ty) -> torch.Tensor:
    entries = [torch.as_tensor(e, dtype=torch.float32).expand(DRAW_B) for e in (a, b, tx, c, d, ty)]
    return _homogeneous(torch.stack(entries, 1).reshape(DRAW_B, 2, 3))


def test_geometric_matrices_follow_upstreams_draws():
    """All seven geometric ops at once: inverse matrices from draws in upstream's order."""
    size = 16
    p_rot = 1 - math.sqrt(1 - DRAW_P)
    torch.manual_seed(DRAW_SEED)
    flip = torch.floor(_rand() * 2) * _mixed(_gate())
    quarter = torch.floor(_rand() * 4) * _mixed(_gate())
    shift = torch.round((_rand(2) * 2 - 1) * 0.125 * _mixed(_gate(1)) * size)
    scale = torch.exp2(_randn() * 0.2)
    scale = torch.where(_mixed(_gate()), scale, torch.ones([]))
    theta1 = (_rand() * 2 - 1) * math.pi * _mixed(_gate(prob=p_rot))
    aniso = torch.exp2(_randn() * 0.2)
    aniso = torch.where(_mixed(_gate()), aniso, torch.ones([]))
    theta2 = (_rand() * 2 - 1) * math.pi * _mixed(_gate(prob=p_rot))
    frac = _randn(2) * 0.125 * _mixed(_gate(1)) * size
    rng_after = torch.rand(4)
    expected = torch.eye(3).expand(DRAW_B, 3, 3)
    for M in (_inv_affine(1 - 2 * flip, 0, 0, 0, 1, 0), _inv_rotation(math.pi / 2 * quarter),
              _inv_affine(1, 0, -shift[:, 0], 0, 1, -shift[:, 1]), _inv_affine(1 / scale, 0, 0, 0, 1 / scale, 0),
              _inv_rotation(theta1), _inv_affine(1 / aniso, 0, 0, 0, aniso, 0), _inv_rotation(theta2),
              _inv_affine(1, 0, -frac[:, 0], 0, 1, -frac[:, 1])):
        expected = expected @ M

    pipe = make_pipe(DRAW_P, **AUGPIPE_SPECS['bg'])
    torch.manual_seed(DRAW_SEED)
    draws = augment._Draws(DRAW_B, torch.device('cpu'), None)
    blit, general = pipe._geometric_matrices(draws, pipe.p, size, size, torch.float32)
    assert torch.equal(torch.rand(4), rng_after), 'the pipe consumed other draws'
    torch.testing.assert_close(augment._product(blit + general), expected, atol=1e-5, rtol=0)


def test_imgfilter_draws_every_band_value_then_gate():
    """Bands 0…3 each draw N (the log2 gain), then the gate — a zero-strength band too."""
    bands = (1, 0, 0.5, 1)
    torch.manual_seed(0)
    x = torch.rand(DRAW_B, 3, 16, 16) * 2 - 1
    torch.manual_seed(DRAW_SEED)
    expected_power = torch.tensor([10, 1, 1, 1]) / 13
    g = torch.ones(DRAW_B, 4)
    any_gate = torch.zeros(DRAW_B, dtype=torch.bool)
    for i, strength in enumerate(bands):
        t_i = torch.exp2(_randn() * 1.0)
        gate = _gate(prob=DRAW_P * strength)
        t = torch.ones(DRAW_B, 4)
        t[:, i] = torch.where(gate, t_i, torch.ones([]))
        g = g * t / (expected_power * t.square()).sum(dim=1, keepdim=True).sqrt()
        any_gate |= gate
    _mixed(any_gate)
    rng_after = torch.rand(4)
    pipe = make_pipe(DRAW_P, imgfilter=1, imgfilter_bands=bands)
    torch.manual_seed(DRAW_SEED)
    gains, drawn = pipe._imgfilter_gains(augment._Draws(DRAW_B, torch.device('cpu'), None), pipe.p, torch.float32)
    assert torch.equal(torch.rand(4), rng_after)
    assert torch.equal(drawn, any_gate)
    torch.testing.assert_close(gains, g, atol=1e-6, rtol=0)
    torch.manual_seed(DRAW_SEED)
    out = pipe(x)
    assert torch.equal(torch.rand(4), rng_after)
    assert torch.equal((out != x).flatten(1).any(dim=1), any_gate)


def _upstream_stream(batch: int, channels: int, size: int) -> None:
    """Every draw of the full bgcfnc pipe, in upstream's order (values before gates)."""
    for shape in ([], [], [], [], [2], [1]):  # xflip, rotate90 (value, gate), xint (value, gate)
        torch.rand([batch, *shape])
    torch.randn([batch]); torch.rand([batch])  # scale
    torch.rand([batch]); torch.rand([batch])  # pre-rotation
    torch.randn([batch]); torch.rand([batch])  # aniso
    torch.rand([batch]); torch.rand([batch])  # post-rotation
    torch.randn([batch, 2]); torch.rand([batch, 1])  # xfrac
    torch.randn([batch]); torch.rand([batch])  # brightness
    torch.randn([batch]); torch.rand([batch])  # contrast
    torch.rand([batch]); torch.rand([batch])  # lumaflip
    torch.rand([batch]); torch.rand([batch])  # hue
    torch.randn([batch]); torch.rand([batch])  # saturation
    for _ in range(4):  # imgfilter bands
        torch.randn([batch]); torch.rand([batch])
    torch.randn([batch]); torch.rand([batch]); torch.randn([batch, channels, size, size])  # noise
    torch.rand([batch]); torch.rand([batch, 2])  # cutout: gate, then centre


@pytest.mark.parametrize('p', [0.5, 1.0])
def test_full_pipe_consumes_upstreams_stream(p):
    torch.manual_seed(DRAW_SEED)
    _upstream_stream(DRAW_B, 3, 16)
    rng_after = torch.rand(4)
    x = torch.linspace(-1, 1, DRAW_B * 3 * 16 * 16).reshape(DRAW_B, 3, 16, 16)
    torch.manual_seed(DRAW_SEED)
    make_pipe(p, **AUGPIPE_SPECS['bgcfnc'], imgfilter_bands=(1, 1, 0, 1))(x)
    assert torch.equal(torch.rand(4), rng_after)


def test_rotate90_turns_counter_clockwise():
    """Upstream's direction: the quarter turn i = 1 takes the top-right pixel to the top-left."""
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 0, 7] = 1  # top right (row 0, last column)
    out = make_pipe(1, rotate90=1)(x, debug_percentile=0.3)  # i = ⌊0.3·4⌋ = 1
    assert torch.equal(out, torch.rot90(x, 1, dims=(2, 3)))
    assert out[0, 0, 0, 0] == 1 and out.sum() == 1


def test_rotate_turns_counter_clockwise():
    """θ = +90° (q = 0.75): a blob right of the centre ends up above it (y points down)."""
    out = make_pipe(1, rotate=1)(blob(cx=6.0, cy=0.0), debug_percentile=0.75)
    centroid, _ = moments(out)
    np.testing.assert_allclose(centroid, [0.0, -6.0], atol=0.02)


# ---------------------------------------------------------------------------------------------
# Reference mode: upstream's resampling arithmetic (checked bitwise against the official pipe
# outside the repository; here its properties).

def test_reference_mode_switch():
    assert augment.set_reference_mode(True) is False
    assert augment.set_reference_mode(False) is True
    with augment.reference_mode():
        assert bool(augment._REFERENCE_MODE)
        with augment.reference_mode(False):
            assert not bool(augment._REFERENCE_MODE)
        assert bool(augment._REFERENCE_MODE)
    assert not bool(augment._REFERENCE_MODE)


def test_reference_mode_p_zero_draws_and_resamples():
    """At p = 0 upstream still draws everything and resamples the batch (identity up to rounding)."""
    torch.manual_seed(0)
    x = torch.rand(DRAW_B, 3, 16, 16) * 2 - 1
    torch.manual_seed(DRAW_SEED)
    _upstream_stream(DRAW_B, 3, 16)
    rng_after = torch.rand(4)
    pipe = make_pipe(0, **AUGPIPE_SPECS['bgcfnc'])
    torch.manual_seed(DRAW_SEED)
    with augment.reference_mode():
        out = pipe(x)
    assert torch.equal(torch.rand(4), rng_after)
    assert not torch.equal(out, x) and (out - x).abs().max() < 1e-4
    torch.manual_seed(DRAW_SEED)
    assert pipe(x) is x  # default mode: p = 0 returns the input and draws nothing
    assert not torch.equal(torch.rand(4), rng_after)


def test_reference_mode_same_draws_as_default_mode():
    """Both modes use the same draws: the colour ops (one shared path) agree bitwise, the blit ops
    (exact gather vs upstream's resampling) agree on smooth images to the resampling's accuracy."""
    torch.manual_seed(0)
    x = torch.rand(DRAW_B, 3, 12, 12) * 2 - 1
    outs = []
    for ref in (False, True):
        torch.manual_seed(DRAW_SEED)
        with augment.reference_mode(ref):
            outs.append(make_pipe(DRAW_P, **AUGPIPE_SPECS['color'])(x))
    assert torch.equal(outs[0], outs[1])
    smooth = blob(size=32, cx=3.0, cy=-5.0, sigma=3.0).repeat(DRAW_B, 1, 1, 1)
    outs = []
    for ref in (False, True):
        torch.manual_seed(DRAW_SEED)
        with augment.reference_mode(ref):
            outs.append(make_pipe(DRAW_P, xflip=1, rotate90=1)(smooth))
    assert (outs[0] - outs[1]).abs().max() < 0.05
    assert (outs[0] - smooth).abs().max() > 0.5  # some images did move
