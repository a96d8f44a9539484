"""Tests for training/diffaugment.py (DiffAugment, docs/methods.md §4)."""

from __future__ import annotations

import pytest
import torch

from torch_utils import persistence
from training import diffaugment as da


def positive_images(n: int, c: int = 3, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    """Strictly positive, pixel-distinct images so shifts and zero regions are identifiable."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g) + 0.5


def test_formulas():
    assert da.translation_shift(32) == 4 and da.translation_shift(256) == 32 and da.translation_shift(12) == 2
    assert da.cutout_side(32) == 16 and da.cutout_side(256) == 128 and da.cutout_side(15) == 8


# ---------------------------------------------------------------------------------------------
# Colour.

def test_brightness_constant_per_sample():
    torch.manual_seed(1)
    x = torch.rand(2000, 3, 4, 4) * 2 - 1
    d = da.rand_brightness(x) - x
    per_sample = d.flatten(1)
    assert (per_sample - per_sample[:, :1]).abs().max() < 1e-6  # same shift for every pixel/channel
    b = per_sample[:, 0]
    assert b.min() >= -0.5 - 1e-6 and b.max() < 0.5 + 1e-6
    assert abs(float(b.mean())) < 0.03 and float(b.var()) == pytest.approx(1 / 12, rel=0.1)  # U(−½, ½)
    assert float(b.std()) > 0.2  # per-sample draws, not one per batch


def _factor(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The per-image f with a = f·b (least squares), after checking the fit is exact."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    f = (a * b).sum(dim=1) / (b * b).sum(dim=1)
    assert (a - f[:, None] * b).abs().max() < 1e-5
    return f


def test_saturation_keeps_channel_mean():
    torch.manual_seed(2)
    x = torch.rand(500, 3, 4, 4) * 2 - 1
    out = da.rand_saturation(x)
    mean = x.mean(dim=1, keepdim=True)
    torch.testing.assert_close(out.mean(dim=1, keepdim=True), mean, atol=1e-6, rtol=0)
    f = _factor(out - mean, x - mean)  # one factor per image
    assert f.min() >= 0 and f.max() < 2 and float(f.mean()) == pytest.approx(1, abs=0.1)  # 2u, u ~ U(0, 1)


def test_contrast_keeps_image_mean():
    torch.manual_seed(3)
    x = torch.rand(500, 3, 4, 4) * 2 - 1
    out = da.rand_contrast(x)
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    torch.testing.assert_close(out.mean(dim=[1, 2, 3], keepdim=True), mean, atol=1e-6, rtol=0)
    f = _factor(out - mean, x - mean)
    assert f.min() >= 0.5 - 1e-6 and f.max() < 1.5 + 1e-6 and float(f.mean()) == pytest.approx(1, abs=0.05)


# ---------------------------------------------------------------------------------------------
# Translation.

def _find_shift(src: torch.Tensor, out: torch.Tensor, s_max: int) -> tuple[int, int]:
    """The unique (ty, tx) with out[i, j] = src[i + ty, j + tx] inside, 0 outside."""
    _, h, w = src.shape
    found = []
    for ty in range(-s_max, s_max + 1):
        for tx in range(-s_max, s_max + 1):
            expected = torch.zeros_like(src)
            ys, ye = max(0, -ty), min(h, h - ty)
            xs, xe = max(0, -tx), min(w, w - tx)
            expected[:, ys:ye, xs:xe] = src[:, ys + ty:ye + ty, xs + tx:xe + tx]
            if torch.equal(expected, out):
                found.append((ty, tx))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize('h, w', [(16, 16), (12, 20)])
def test_translation_zero_filled_and_bounded(h, w):
    torch.manual_seed(4)
    x = positive_images(300, h=h, w=w)
    out = da.rand_translation(x)
    sy, sx = da.translation_shift(h), da.translation_shift(w)
    shifts = [_find_shift(x[i], out[i], max(sy, sx) + 1) for i in range(x.shape[0])]
    tys = {t[0] for t in shifts}
    txs = {t[1] for t in shifts}
    assert tys == set(range(-sy, sy + 1)) and txs == set(range(-sx, sx + 1))  # full range, never beyond


# ---------------------------------------------------------------------------------------------
# Cutout.

@pytest.mark.parametrize('size', [16, 15])
def test_cutout_square(size):
    torch.manual_seed(5)
    side = da.cutout_side(size)
    x = positive_images(400, h=size, w=size)
    out = da.rand_cutout(x)
    zero = out[:, 0] == 0
    assert torch.equal((out == 0), zero[:, None].expand_as(out))  # same region in every channel
    inside = 0
    for i in range(x.shape[0]):
        rows = zero[i].any(dim=1).nonzero().flatten()
        cols = zero[i].any(dim=0).nonzero().flatten()
        assert rows.numel() > 0 and cols.numel() > 0  # always overlaps the image
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        assert zero[i, r0:r1, c0:c1].all() and int(zero[i].sum()) == (r1 - r0) * (c1 - c0)  # a rectangle
        assert r1 - r0 <= side and c1 - c0 <= side
        if 0 < r0 and r1 < size and 0 < c0 and c1 < size:
            inside += 1
            assert (r1 - r0, c1 - c0) == (side, side)
        else:  # clipped by a border: the full square would reach beyond it
            assert (r1 - r0 == side or r0 == 0 or r1 == size) and (c1 - c0 == side or c0 == 0 or c1 == size)
    assert inside > 20
    # Untouched pixels are unchanged.
    assert torch.equal(out[~zero[:, None].expand_as(out)], x[~zero[:, None].expand_as(x)])


def test_cutout_centre_range():
    """Start row = oy − ⌊side/2⌋, oy uniform in {0, …, H − (side mod 2)} (even side 8 at 16: 0…16)."""
    torch.manual_seed(6)
    size, side = 16, 8
    x = torch.ones(3000, 1, size, size)
    zero = da.rand_cutout(x)[:, 0] == 0
    first = zero.any(dim=2).float().argmax(dim=1)  # first zero row
    last = size - 1 - zero.any(dim=2).flip(1).float().argmax(dim=1)
    # Recover oy: if the square is not clipped at the top, oy = first + side/2; else oy = last + 1 − side/2.
    oy = torch.where(first > 0, first + side // 2, last + 1 - side // 2)
    counts = torch.bincount(oy, minlength=size + 1)
    assert counts.numel() == size + 1 and (counts > 0).all()
    expected = x.shape[0] / (size + 1)
    assert (counts.float() - expected).abs().max() < 5 * expected ** 0.5


# ---------------------------------------------------------------------------------------------
# Policy, determinism, layout, gradients.

def test_policy_parsing():
    assert da.parse_policy('color,translation,cutout') == ['color', 'translation', 'cutout']
    assert da.parse_policy(' color , cutout') == ['color', 'cutout']
    assert da.parse_policy('') == []
    for bad in ('colour', 'color,flip', 'color,,cutout', 'translation,'):
        with pytest.raises(ValueError, match='unknown DiffAugment op'):
            da.parse_policy(bad)
    with pytest.raises(ValueError):
        da.DiffAugmentPipe('color,zoom')
    x = torch.rand(2, 3, 8, 8)
    assert da.DiffAugment(x, '') is x


def test_policy_order_color_then_translation_then_cutout():
    """With a fixed seed the pipe equals the ops applied by hand in policy order."""
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    torch.manual_seed(7)
    out = da.DiffAugment(x)
    torch.manual_seed(7)
    y = da.rand_cutout(da.rand_translation(da.rand_contrast(da.rand_saturation(da.rand_brightness(x)))))
    assert torch.equal(out, y)


def test_deterministic_under_seed():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    torch.manual_seed(8)
    a = da.DiffAugment(x)
    torch.manual_seed(8)
    b = da.DiffAugment(x)
    c = da.DiffAugment(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_channels_last_layout():
    x = torch.rand(3, 3, 12, 12)
    torch.manual_seed(9)
    a = da.DiffAugment(x)
    torch.manual_seed(9)
    b = da.DiffAugment(x.permute(0, 2, 3, 1), channels_first=False)
    assert torch.equal(b.permute(0, 3, 1, 2), a)


def test_gradients_first_and_second_order():
    x = (torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1).requires_grad_(True)

    def fn(t: torch.Tensor) -> torch.Tensor:
        with torch.random.fork_rng():
            torch.manual_seed(10)  # the same draws on every call
            return da.DiffAugment(t)

    assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


def test_module_wrapper():
    pipe = da.DiffAugmentPipe('color,translation')
    assert not hasattr(pipe, 'p')  # no ADA probability: the training loop must not drive it
    assert len(list(pipe.parameters())) == 0 and len(list(pipe.buffers())) == 0
    clone = persistence.module_from_record(persistence.module_to_record(pipe))
    assert isinstance(clone, da.DiffAugmentPipe) and clone.policy == 'color,translation'
    x = torch.rand(2, 3, 8, 8)
    torch.manual_seed(11)
    a = pipe(x)
    torch.manual_seed(11)
    assert torch.equal(a, da.DiffAugment(x, 'color,translation'))


def test_cutout_ratio_is_configurable_projected_gans_0_2():
    """Projected GAN's D: one zero square of side round(0.2·size), possibly clipped at the border."""
    from training.diffaugment import DiffAugmentPipe, cutout_side
    torch.manual_seed(0)
    x = torch.ones(64, 3, 40, 40)
    out = DiffAugmentPipe('cutout', cutout_ratio=0.2)(x)
    side = cutout_side(40, 0.2)
    assert side == 8
    full = 0
    for img in out:
        zero = img[0] == 0
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert len(rows) <= side and len(cols) <= side
        assert int(zero.sum()) == len(rows) * len(cols)  # one rectangle, clipped at most
        assert torch.equal(img[0] == 0, img[2] == 0)     # the same square in every channel
        full += int(zero.sum()) == side * side
    assert full > 32  # most squares lie inside the image
    with pytest.raises(ValueError, match='cutout_ratio'):
        DiffAugmentPipe('cutout', cutout_ratio=0)
