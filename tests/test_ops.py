"""Reference ops in torch_utils/ops against independent float64 definitions.

Spec: docs/stylegan2-arithmetic.md §1 (setup_filter, upfirdn2d, wrappers), §2 (bias_act), §3
(conv2d_resample "Meaning" and execution paths (a)-(f)), docs/stylegan2-ada.md §7 (fma, impl switch).
The oracles below are written from the spec's definitions with NumPy loops over filter taps; they
share no code with the implementation.
"""

from __future__ import annotations

import itertools
import math
import types
import warnings
from typing import Any, Optional

import numpy as np
import pytest
import torch

from torch_utils.ops import _impl, bias_act, conv2d_resample, fma, upfirdn2d

# ---------------------------------------------------------------------------------------------
# Independent float64 oracles.


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _quad(p: Any) -> tuple[int, int, int, int]:
    if isinstance(p, int):
        return (p, p, p, p)
    return (p[0], p[0], p[1], p[1]) if len(p) == 2 else tuple(p)  # type: ignore[return-value]


def fir_valid(p: np.ndarray, g: np.ndarray, correlate: bool) -> np.ndarray:
    """'valid' 2-D FIR of the last two axes: correlation, or true convolution (reversed taps)."""
    fh, fw = g.shape
    oh, ow = p.shape[-2] - fh + 1, p.shape[-1] - fw + 1
    out = np.zeros(p.shape[:-2] + (oh, ow))
    for a in range(fh):
        for b in range(fw):
            ra, rb = (a, b) if correlate else (fh - 1 - a, fw - 1 - b)
            out += g[a, b] * p[..., ra:ra + oh, rb:rb + ow]
    return out


def upfirdn_np(x: np.ndarray, f: Optional[np.ndarray], up: Any = 1, down: Any = 1, padding: Any = 0,
               flip_filter: bool = False, gain: float = 1.0) -> np.ndarray:
    """docs/stylegan2-arithmetic.md §1.2 literally: zero-insert, pad then crop, FIR (true conv unless
    flip), decimate."""
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = _pair(up), _pair(down), _quad(padding)
    g = np.ones((1, 1)) if f is None else np.asarray(f, dtype=np.float64)
    g = np.outer(g, g) if g.ndim == 1 else g  # two 1-D passes == one pass with the outer product
    n, c, h, w = x.shape
    u = np.zeros((n, c, h * uy, w * ux))
    u[:, :, ::uy, ::ux] = x
    u = np.pad(u, ((0, 0), (0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))))
    u = u[:, :, max(-py0, 0): u.shape[2] - max(-py1, 0), max(-px0, 0): u.shape[3] - max(-px1, 0)]
    # f=None is a float32 [[1]] filter, so the gain it carries is rounded to float32
    # (docs/stylegan2-arithmetic.md §1.2 step 3).
    g = g * (float(np.float32(gain)) if f is None else gain)
    y = fir_valid(u, g, correlate=flip_filter)
    return y[:, :, ::dy, ::dx]


def grouped_conv_np(t: np.ndarray, w: np.ndarray, groups: int, correlate: bool) -> np.ndarray:
    """K of docs/stylegan2-arithmetic.md §3: valid, stride-1, grouped corr (or true convolution)
    with w [O, C/g, kh, kw]:
    y[n, o, i, j] = sum_{c in o's group, u, v} t[n, c, i+u, j+v] * w[o, c - c0(o), u, v] (or w reversed)."""
    o_total, cpg, kh, kw = w.shape
    n, _, h, wd = t.shape
    oh, ow = h - kh + 1, wd - kw + 1
    tg = t.reshape(n, groups, cpg, h, wd)
    wg = w.reshape(groups, o_total // groups, cpg, kh, kw)
    out = np.zeros((n, groups, o_total // groups, oh, ow))
    for u in range(kh):
        for v in range(kw):
            tap = wg[:, :, :, u, v] if correlate else wg[:, :, :, kh - 1 - u, kw - 1 - v]
            out += np.einsum('ngchw,goc->ngohw', tg[:, :, :, u:u + oh, v:v + ow], tap)
    return out.reshape(n, o_total, oh, ow)


def conv2d_resample_meaning(x: np.ndarray, w: np.ndarray, f: np.ndarray, up: int, down: int, padding: Any,
                            groups: int, flip_weight: bool, flip_filter: bool) -> np.ndarray:
    """The "Meaning" of docs/stylegan2-arithmetic.md §3: upfirdn(up, P, gain up^2) -> K -> upfirdn(down)."""
    px0, px1, py0, py1 = _quad(padding)
    fh, fw = f.shape[0], f.shape[-1]
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    t = upfirdn_np(x, f if up > 1 else None, up=up, padding=(px0, px1, py0, py1), flip_filter=flip_filter,
                   gain=up * up)
    t = grouped_conv_np(t, w, groups, correlate=flip_weight)
    if down > 1:
        t = upfirdn_np(t, f, down=down, flip_filter=flip_filter)
    return t


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True, scope='module')
def _one_thread() -> Any:
    """These tensors are tiny: one intra-op thread avoids OpenMP spin-waits on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


# ---------------------------------------------------------------------------------------------
# setup_filter (docs/stylegan2-arithmetic.md §1.1).

def test_setup_filter_rules() -> None:
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    expect = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
    assert f.dtype == torch.float32 and f.shape == (4, 4)
    assert np.array_equal(f.numpy(), expect.astype(np.float32))
    # Separable iff 1-D with >= 8 taps; a separable filter is divided by its own sum.
    taps8 = np.arange(1, 9, dtype=np.float64)
    f8 = upfirdn2d.setup_filter(taps8)
    assert f8.shape == (8,) and np.allclose(f8.numpy(), taps8 / taps8.sum())
    f7 = upfirdn2d.setup_filter(taps8[:7])
    assert f7.shape == (7, 7) and np.allclose(f7.numpy(), np.outer(taps8[:7], taps8[:7]) / taps8[:7].sum() ** 2)
    assert upfirdn2d.setup_filter(taps8, separable=False).shape == (8, 8)
    assert upfirdn2d.setup_filter([1, 2, 3], separable=True).shape == (3,)
    # normalize=False, flip and gain^(ndim/2).
    asym = np.array([[1.0, 2.0, 0.5], [0.25, 3.0, -1.0]])
    raw = upfirdn2d.setup_filter(asym, normalize=False)
    assert np.allclose(raw.numpy(), asym)
    fl = upfirdn2d.setup_filter(asym, normalize=False, flip_filter=True, gain=9)
    assert np.allclose(fl.numpy(), asym[::-1, ::-1] * 9)
    s = upfirdn2d.setup_filter(taps8, gain=9)
    assert np.allclose(s.numpy(), taps8 / taps8.sum() * 3)  # 9^(1/2)
    flipped1d = upfirdn2d.setup_filter(taps8, normalize=False, flip_filter=True)
    assert np.allclose(flipped1d.numpy(), taps8[::-1])
    # None / scalars become a [1, 1] filter; device keyword.
    assert upfirdn2d.setup_filter(None).shape == (1, 1) and float(upfirdn2d.setup_filter(None)) == 1.0
    assert upfirdn2d.setup_filter(5.0).shape == (1, 1)
    assert upfirdn2d.setup_filter([1, 1], device=torch.device('cpu')).device.type == 'cpu'


def test_setup_filter_errors() -> None:
    with pytest.raises(ValueError, match='1-D or 2-D'):
        upfirdn2d.setup_filter(np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match='empty'):
        upfirdn2d.setup_filter([])
    with pytest.raises(ValueError, match='separable'):
        upfirdn2d.setup_filter(np.ones((3, 3)), separable=True)


def test_filter_size() -> None:
    assert upfirdn2d.get_filter_size(None) == (1, 1)
    assert upfirdn2d.get_filter_size(torch.ones(3, 5)) == (5, 3)  # (fw, fh)
    assert upfirdn2d.get_filter_size(torch.ones(9)) == (9, 9)


# ---------------------------------------------------------------------------------------------
# upfirdn2d (docs/stylegan2-arithmetic.md §1.2).

def _filters() -> list[Optional[np.ndarray]]:
    r = _rng(1)
    return [None, r.uniform(0.1, 1, 4), r.uniform(-0.5, 1, 8), r.uniform(-0.5, 1, (4, 4)), r.uniform(0.1, 1, (3, 5))]


UPDOWN = [(1, 1), (2, 1), (1, 2), (2, 2), ((2, 3), (1, 2))]
PADDINGS: list[Any] = [0, 2, (1, 3), (2, -1, 0, 3), (-1, -1, 1, 0)]


def test_upfirdn2d_matches_definition_float64() -> None:
    x = _rng(0).standard_normal((2, 3, 7, 6))
    xt = torch.from_numpy(x)
    checked = empty = 0
    for i, (f, (up, down), pad, flip) in enumerate(itertools.product(_filters(), UPDOWN, PADDINGS, (False, True))):
        gain = (1, 1.7)[i % 2 ^ (i // 10) % 2]  # both gains for both flips
        ft = None if f is None else torch.from_numpy(f)
        (ux, uy), (dx, dy), (px0, px1, py0, py1) = _pair(up), _pair(down), _quad(pad)
        fh, fw = (1, 1) if f is None else (f.shape[0], f.shape[-1])
        out_h = (7 * uy + py0 + py1 - fh) // dy + 1
        out_w = (6 * ux + px0 + px1 - fw) // dx + 1
        if out_h < 1 or out_w < 1:
            with pytest.raises(ValueError, match='empty output'):
                upfirdn2d.upfirdn2d(xt, ft, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
            empty += 1
            continue
        y = upfirdn2d.upfirdn2d(xt, ft, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
        want = upfirdn_np(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
        assert y.shape == (2, 3, out_h, out_w) == want.shape, (up, down, pad)
        assert y.dtype == torch.float64
        np.testing.assert_allclose(y.numpy(), want, rtol=1e-12, atol=1e-12, err_msg=str((f, up, down, pad, flip)))
        checked += 1
    assert checked > 100 and empty > 0


def test_upfirdn2d_float32_and_list_arguments() -> None:
    x = _rng(2).standard_normal((1, 2, 5, 6)).astype(np.float32)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    y = upfirdn2d.upfirdn2d(torch.from_numpy(x), f, up=[2, 1], down=[1, 2], padding=[2, 1, 0, 3])
    want = upfirdn_np(x.astype(np.float64), f.double().numpy(), up=(2, 1), down=(1, 2), padding=(2, 1, 0, 3))
    assert y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-6)


def test_upfirdn2d_separable_equals_outer_product_and_flip() -> None:
    x = torch.from_numpy(_rng(3).standard_normal((1, 2, 9, 8)))
    taps = torch.tensor([0.1, 0.7, 0.3, -0.2, 0.05], dtype=torch.float64)
    sep = upfirdn2d.upfirdn2d(x, taps, up=2, padding=(2, 1, 3, 0), gain=2.5)
    full = upfirdn2d.upfirdn2d(x, torch.outer(taps, taps), up=2, padding=(2, 1, 3, 0), gain=2.5)
    torch.testing.assert_close(sep, full, rtol=1e-12, atol=1e-12)
    # flip_filter=True with f equals flip_filter=False with the reversed filter.
    f2 = torch.from_numpy(_rng(4).uniform(size=(3, 4)))
    a = upfirdn2d.upfirdn2d(x, f2, padding=1, flip_filter=True)
    b = upfirdn2d.upfirdn2d(x, f2.flip([0, 1]), padding=1)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(a, upfirdn2d.upfirdn2d(x, f2, padding=1))


def test_upfirdn2d_errors() -> None:
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match='1-D .* or 2-D'):
        upfirdn2d.upfirdn2d(x, torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match='4-D'):
        upfirdn2d.upfirdn2d(torch.zeros(4, 4), None)
    with pytest.raises(ValueError, match='padding'):
        upfirdn2d.upfirdn2d(x, None, padding=(1, 2, 3))
    with pytest.raises(ValueError, match='up'):
        upfirdn2d.upfirdn2d(x, None, up=0)
    with pytest.raises(ValueError, match='down'):
        upfirdn2d.upfirdn2d(x, None, down=(1, 0))


# ---------------------------------------------------------------------------------------------
# Wrappers (docs/stylegan2-arithmetic.md §1.3).

def test_wrappers_padding_and_gain() -> None:
    x = _rng(5).standard_normal((1, 2, 6, 7))
    xt = torch.from_numpy(x)
    for shape in [(4, 4), (3, 5), (8,), (5,)]:
        f = _rng(6).uniform(0.1, 1, shape)
        ft = torch.from_numpy(f)
        fh, fw = f.shape[0], f.shape[-1]
        for extra in [0, (1, 2, 0, 1)]:
            e = _quad(extra)
            y = upfirdn2d.filter2d(xt, ft, padding=extra, gain=1.5)
            p = (e[0] + fw // 2, e[1] + (fw - 1) // 2, e[2] + fh // 2, e[3] + (fh - 1) // 2)
            np.testing.assert_allclose(y.numpy(), upfirdn_np(x, f, padding=p, gain=1.5), rtol=1e-12, atol=1e-12)
            assert y.shape[2:] == (6 + e[2] + e[3], 7 + e[0] + e[1])
            for ux, uy in [(2, 2), (3, 3), (2, 3)]:
                y = upfirdn2d.upsample2d(xt, ft, up=(ux, uy), padding=extra, gain=0.5)
                p = (e[0] + (fw + ux - 1) // 2, e[1] + (fw - ux) // 2, e[2] + (fh + uy - 1) // 2,
                     e[3] + (fh - uy) // 2)
                want = upfirdn_np(x, f, up=(ux, uy), padding=p, gain=0.5 * ux * uy)
                np.testing.assert_allclose(y.numpy(), want, rtol=1e-12, atol=1e-12)
            for dx, dy in [(2, 2), (3, 2)]:
                y = upfirdn2d.downsample2d(xt, ft, down=(dx, dy), padding=extra, gain=2.0)
                p = (e[0] + (fw - dx + 1) // 2, e[1] + (fw - dx) // 2, e[2] + (fh - dy + 1) // 2,
                     e[3] + (fh - dy) // 2)
                want = upfirdn_np(x, f, down=(dx, dy), padding=p, gain=2.0)
                np.testing.assert_allclose(y.numpy(), want, rtol=1e-12, atol=1e-12)


def test_wrappers_preserve_constant_images() -> None:
    """With a normalised filter the DC level survives up/down/filtering away from the borders."""
    c = torch.full((1, 1, 8, 8), 3.25, dtype=torch.float64)
    f = upfirdn2d.setup_filter([1, 3, 3, 1]).double()
    up = upfirdn2d.upsample2d(c, f)
    assert up.shape[2:] == (16, 16)
    torch.testing.assert_close(up[:, :, 2:-2, 2:-2], torch.full_like(up[:, :, 2:-2, 2:-2], 3.25))
    assert up[0, 0, 0, 0] < 3.25  # the zero padding darkens the border
    f3 = upfirdn2d.setup_filter([1, 2, 3, 2, 1]).double()  # each of its 3 polyphase components sums to 1/3
    up3 = upfirdn2d.upsample2d(c, f3, up=3)
    assert up3.shape[2:] == (24, 24)
    torch.testing.assert_close(up3[:, :, 3:-3, 3:-3], torch.full_like(up3[:, :, 3:-3, 3:-3], 3.25))
    down = upfirdn2d.downsample2d(c, f)
    assert down.shape[2:] == (4, 4)
    torch.testing.assert_close(down[:, :, 1:-1, 1:-1], torch.full_like(down[:, :, 1:-1, 1:-1], 3.25))
    filt = upfirdn2d.filter2d(c, f)
    assert filt.shape == c.shape
    torch.testing.assert_close(filt[:, :, 2:-2, 2:-2], c[:, :, 2:-2, 2:-2])
    # The worked values of docs/stylegan2-arithmetic.md §1.3 for the 4x4 filter:
    # upsample2d = upfirdn2d(up 2, pad (2,1,2,1), gain 4).
    x = torch.from_numpy(_rng(15).standard_normal((1, 2, 5, 5)))
    want = upfirdn2d.upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), gain=4)
    torch.testing.assert_close(upfirdn2d.upsample2d(x, f), want)
    torch.testing.assert_close(upfirdn2d.downsample2d(x, f), upfirdn2d.upfirdn2d(x, f, down=2, padding=1))


# ---------------------------------------------------------------------------------------------
# bias_act (docs/stylegan2-arithmetic.md §2).

SELU_L, SELU_A = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717


def _act_np(name: str, x: np.ndarray, alpha: float) -> np.ndarray:
    sig = 1.0 / (1.0 + np.exp(-x))
    return {
        'linear': x,
        'relu': np.maximum(x, 0.0),
        'lrelu': np.where(x > 0, x, alpha * x),
        'tanh': np.tanh(x),
        'sigmoid': sig,
        'elu': np.where(x >= 0, x, np.expm1(x)),
        'selu': SELU_L * np.where(x > 0, x, SELU_A * np.expm1(x)),
        'softplus': np.log1p(np.exp(x)),
        'swish': x * sig,
    }[name]


DEFAULTS = {'linear': (0, 1), 'relu': (0, math.sqrt(2)), 'lrelu': (0.2, math.sqrt(2)), 'tanh': (0, 1),
            'sigmoid': (0, 1), 'elu': (0, 1), 'selu': (0, 1), 'softplus': (0, 1), 'swish': (0, math.sqrt(2))}


def test_activation_table() -> None:
    assert set(bias_act.activation_funcs) == set(DEFAULTS)
    for name, (alpha, gain) in DEFAULTS.items():
        spec = bias_act.activation_funcs[name]
        assert spec.def_alpha == alpha and spec.def_gain == gain
    assert bias_act.activation_funcs['swish'].ref == 'x'
    assert all(bias_act.activation_funcs[n].ref == 'y' for n in DEFAULTS if n not in ('linear', 'swish'))
    assert [n for n in DEFAULTS if bias_act.activation_funcs[n].has_2nd_grad] == \
        ['tanh', 'sigmoid', 'elu', 'selu', 'softplus', 'swish']


@pytest.mark.parametrize('act', list(DEFAULTS))
def test_bias_act_matches_definition(act: str) -> None:
    r = _rng(7)
    x = r.standard_normal((3, 4, 2, 5)) * 2
    b1 = r.standard_normal(4)
    b0 = r.standard_normal(3)
    xt = torch.from_numpy(x)
    def_alpha, def_gain = DEFAULTS[act]
    # Defaults, bias along dim 1.
    y = bias_act.bias_act(xt, torch.from_numpy(b1), act=act)
    want = _act_np(act, x + b1[None, :, None, None], def_alpha) * def_gain
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-12, atol=1e-12)
    # Bias along dim 0, custom alpha and gain.
    y = bias_act.bias_act(xt, torch.from_numpy(b0), dim=0, act=act, alpha=0.05, gain=0.7)
    alpha = 0.05 if act == 'lrelu' else def_alpha
    want = _act_np(act, x + b0[:, None, None, None], alpha) * 0.7
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-12, atol=1e-12)
    # Clamp bounds the output after the gain.
    y = bias_act.bias_act(xt, None, act=act, gain=3.0, clamp=0.5)
    want = np.clip(_act_np(act, x, def_alpha) * 3.0, -0.5, 0.5)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-12, atol=1e-12)
    # Negative dim and no bias; float32 path.
    y32 = bias_act.bias_act(xt.float(), torch.from_numpy(b1).float(), dim=-3, act=act)
    want = _act_np(act, x + b1[None, :, None, None], def_alpha) * def_gain
    np.testing.assert_allclose(y32.numpy(), want, rtol=1e-5, atol=1e-5)


def test_bias_act_gain_applied_only_if_not_exactly_one() -> None:
    x = torch.from_numpy(_rng(8).standard_normal((4, 6)) * 3)
    g = math.sqrt(2) * math.sqrt(0.5)
    assert g != 1.0
    y_one = bias_act.bias_act(x, act='relu', gain=1)
    torch.testing.assert_close(y_one, torch.relu(x), rtol=0, atol=0)
    y_g = bias_act.bias_act(x, act='relu', gain=g)
    assert torch.equal(y_g, torch.relu(x) * g) and not torch.equal(y_g, y_one)
    # In float32 the same multiply happens but rounds to x1.0.
    assert torch.equal(bias_act.bias_act(x.float(), act='relu', gain=g), torch.relu(x.float()))


def test_bias_act_errors() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match='unknown activation .*linear.*swish'):
        bias_act.bias_act(x, act='gelu')
    with pytest.raises(ValueError, match='clamp'):
        bias_act.bias_act(x, clamp=-1)
    with pytest.raises(ValueError, match='length'):
        bias_act.bias_act(x, torch.zeros(2))
    with pytest.raises(TypeError, match='dtype'):
        bias_act.bias_act(x, torch.zeros(3, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# conv2d_resample (docs/stylegan2-arithmetic.md §3).

def _record_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    original = conv2d_resample.execution_path

    def recording(*args: Any) -> str:
        path = original(*args)
        seen.append(path)
        return path
    monkeypatch.setattr(conv2d_resample, 'execution_path', recording)
    return seen


def test_conv2d_resample_matches_meaning(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _record_paths(monkeypatch)
    r = _rng(9)
    f = r.uniform(0.1, 1.0, (4, 4))  # asymmetric
    ft = torch.from_numpy(f)
    x = r.standard_normal((2, 4, 7, 6))
    xt = torch.from_numpy(x)
    count = 0
    for k, up, down, groups, flip_w, pad in itertools.product(
            (1, 3, 4), (1, 2), (1, 2), (1, 2), (True, False), (0, 1, (1, 2, 0, 1), (-1, 0, 2, -1))):
        flip_f = (count % 3 == 0)
        w = r.standard_normal((4, 4 // groups, k, k))
        want = conv2d_resample_meaning(x, w, f, up, down, pad, groups, flip_w, flip_f)
        y = conv2d_resample.conv2d_resample(xt, torch.from_numpy(w), ft, up=up, down=down, padding=pad,
                                            groups=groups, flip_weight=flip_w, flip_filter=flip_f)
        assert y.shape == want.shape, (k, up, down, groups, pad)
        np.testing.assert_allclose(y.numpy(), want, rtol=1e-11, atol=1e-11,
                                   err_msg=str((k, up, down, groups, flip_w, pad, seen[-1])))
        count += 1
    assert set(seen) == set(conv2d_resample.PATHS)


def test_conv2d_resample_float32_and_no_filter() -> None:
    r = _rng(10)
    x = r.standard_normal((1, 3, 6, 6)).astype(np.float32)
    w = r.standard_normal((2, 3, 3, 3)).astype(np.float32)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    for up, down, pad in [(2, 1, 1), (1, 2, 1), (1, 1, 1), (2, 2, 1)]:
        y = conv2d_resample.conv2d_resample(torch.from_numpy(x), torch.from_numpy(w), f, up=up, down=down,
                                            padding=pad, flip_weight=(up == 1))
        want = conv2d_resample_meaning(x.astype(np.float64), w.astype(np.float64), f.double().numpy(), up, down,
                                       pad, 1, up == 1, False)
        assert y.dtype == torch.float32
        np.testing.assert_allclose(y.numpy(), want, rtol=1e-4, atol=1e-4)
    # f=None: plain conv (up=down=1) and 1x1-filter resampling.
    xt = torch.from_numpy(x.astype(np.float64))
    wt = torch.from_numpy(w.astype(np.float64))
    y = conv2d_resample.conv2d_resample(xt, wt, None, padding=(1, 0, 2, 1))
    want = grouped_conv_np(np.pad(x.astype(np.float64), ((0, 0), (0, 0), (2, 1), (1, 0))), w.astype(np.float64), 1,
                           correlate=True)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-12, atol=1e-12)
    y = conv2d_resample.conv2d_resample(xt, wt, None, up=2, padding=1)
    want = conv2d_resample_meaning(x.astype(np.float64), w.astype(np.float64), np.ones((1, 1)), 2, 1, 1, 1, True,
                                   False)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-12, atol=1e-12)


def test_conv2d_resample_worked_paths() -> None:
    """docs/stylegan2-arithmetic.md §3's worked values for the 4x4 filter."""
    ep = conv2d_resample.execution_path
    # 3x3 up 2 padding 1: P = (3,2,3,2) -> (d); 3x3 down 2 padding 1: P = (2,2,2,2) -> (c).
    assert ep(3, 3, 2, 1, 3, 2, 3, 2) == 'd' and ep(3, 3, 1, 2, 2, 2, 2, 2) == 'c'
    assert ep(1, 1, 1, 2, 1, 1, 1, 1) == 'a' and ep(1, 1, 2, 1, 2, 1, 2, 1) == 'b'
    assert ep(3, 3, 1, 1, 1, 1, 1, 1) == 'e' and ep(3, 3, 1, 1, 1, 0, 1, 1) == 'f'
    assert ep(3, 3, 1, 1, -1, -1, -1, -1) == 'f' and ep(1, 1, 2, 2, 0, 0, 0, 0) == 'd'
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.randn(1, 2, 8, 8)
    w3 = torch.randn(3, 2, 3, 3)
    assert conv2d_resample.conv2d_resample(x, w3, f, up=2, padding=1, flip_weight=False).shape == (1, 3, 16, 16)
    assert conv2d_resample.conv2d_resample(x, w3, f, down=2, padding=1).shape == (1, 3, 4, 4)
    w1 = torch.randn(3, 2, 1, 1)
    assert conv2d_resample.conv2d_resample(x, w1, f, down=2).shape == (1, 3, 4, 4)
    assert conv2d_resample.conv2d_resample(x, w1, f, up=2).shape == (1, 3, 16, 16)


def test_conv2d_resample_flip_weight_is_true_convolution() -> None:
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    f = upfirdn2d.setup_filter([1, 3, 3, 1]).double()
    a = conv2d_resample.conv2d_resample(x, w, f, up=2, padding=1, flip_weight=False)
    b = conv2d_resample.conv2d_resample(x, w.flip([2, 3]), f, up=2, padding=1, flip_weight=True)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(a, conv2d_resample.conv2d_resample(x, w, f, up=2, padding=1, flip_weight=True))


def test_conv2d_resample_errors() -> None:
    x = torch.zeros(1, 4, 6, 6)
    with pytest.raises(ValueError, match='groups'):
        conv2d_resample.conv2d_resample(x, torch.zeros(2, 3, 3, 3))
    with pytest.raises(TypeError, match='dtype'):
        conv2d_resample.conv2d_resample(x, torch.zeros(2, 4, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match='up and down'):
        conv2d_resample.conv2d_resample(x, torch.zeros(2, 4, 3, 3), up=0)


# ---------------------------------------------------------------------------------------------
# fma.

def test_fma_forward_and_unbroadcast_grads() -> None:
    a = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y = fma.fma(a, b, c)
    torch.testing.assert_close(y, a * b + c, rtol=1e-14, atol=1e-14)
    dy = torch.randn_like(y)
    ga, gb, gc = torch.autograd.grad(y, (a, b, c), dy)
    assert ga.shape == a.shape and gb.shape == b.shape and gc.shape == c.shape
    torch.testing.assert_close(gb, (dy * a).sum(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(gc, dy.sum(dim=(0, 1)))
    torch.testing.assert_close(ga, dy * b)


# ---------------------------------------------------------------------------------------------
# First- and second-order gradients (R1 needs create_graph=True through D).

def test_gradcheck_upfirdn2d() -> None:
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    f2 = torch.rand(3, 2, dtype=torch.float64, generator=gen)
    f1 = torch.rand(3, dtype=torch.float64, generator=gen)
    for f, up, down, pad, flip in [(f2, (2, 1), (1, 2), (1, -1, 2, 0), False), (f1, 2, 2, 2, True),
                                   (None, 1, (2, 1), (0, 1), False)]:
        def fn(t: torch.Tensor) -> torch.Tensor:
            return upfirdn2d.upfirdn2d(t, f, up=up, down=down, padding=pad, flip_filter=flip, gain=1.3)
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))
    fg = f2.clone().requires_grad_(True)  # the reference path is differentiable w.r.t. the filter too
    assert torch.autograd.gradcheck(lambda t, g: upfirdn2d.upfirdn2d(t, g, up=2, padding=1), (x, fg))


@pytest.mark.parametrize('act', list(DEFAULTS))
def test_gradcheck_bias_act(act: str) -> None:
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(3, 4, dtype=torch.float64, generator=gen)
    x = (x + 0.3 * x.sign()).requires_grad_(True)  # stay away from the kinks at 0
    b = torch.tensor([0.0, 0.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    clamp = 1.1 if act in ('tanh', 'linear', 'lrelu') else None

    def fn(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return bias_act.bias_act(t, u, act=act, gain=1.5, clamp=clamp)
    if clamp is not None:  # no value at the clamp's kink either; some on each side of it
        pre = bias_act.bias_act(x, b, act=act, gain=1.5).abs()
        assert ((pre - clamp).abs() > 1e-3).all() and (pre > clamp).any() and (pre < clamp).any()
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize('k,up,down,pad', [(3, 2, 1, 1), (3, 1, 2, 1), (1, 1, 2, 0), (1, 2, 1, 0),
                                           (4, 2, 2, (1, 0, 2, 1)), (3, 1, 1, (1, 0, -1, 1))])
def test_gradcheck_conv2d_resample(k: int, up: int, down: int, pad: Any) -> None:
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(2, 2, k, k, dtype=torch.float64, generator=gen, requires_grad=True)
    f = torch.rand(4, 3, dtype=torch.float64, generator=gen)

    def fn(t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return conv2d_resample.conv2d_resample(t, v, f, up=up, down=down, padding=pad, flip_weight=(up == 1))
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


def test_gradcheck_fma() -> None:
    gen = torch.Generator().manual_seed(14)
    a = torch.randn(2, 3, 2, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(2, 3, 1, 1, dtype=torch.float64, generator=gen, requires_grad=True)
    c = torch.randn(1, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(fma.fma, (a, b, c))
    assert torch.autograd.gradgradcheck(fma.fma, (a, b, c))
    assert torch.autograd.gradcheck(fma.fma, (c, a, b))


# ---------------------------------------------------------------------------------------------
# The impl switch (_impl).

@pytest.fixture
def fresh_impl(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(_impl, '_default_impl', 'auto')
    monkeypatch.setattr(_impl, '_warned', set())
    return _impl


def test_impl_switch_on_cpu(fresh_impl: Any) -> None:
    x = torch.zeros(1, 1, 4, 4)
    assert _impl.get_default_impl() == 'auto'
    for impl in (None, 'ref', 'auto', 'cuda'):
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # CPU tensors go to 'ref' silently
            assert _impl.resolve_impl('upfirdn2d', x, impl) == 'ref'
            assert _impl.resolve_impl('bias_act', x, impl) == 'ref'
    assert _impl.set_default_impl('cuda') == 'auto' and _impl.get_default_impl() == 'cuda'
    assert _impl.resolve_impl('upfirdn2d', x) == 'ref'
    assert _impl.set_default_impl('ref') == 'cuda'
    with pytest.raises(ValueError, match="unknown ops implementation 'gpu'"):
        _impl.set_default_impl('gpu')
    with pytest.raises(ValueError, match='unknown ops implementation'):
        _impl.resolve_impl('upfirdn2d', x, 'fast')
    with pytest.raises(ValueError, match='unknown ops implementation'):
        upfirdn2d.upfirdn2d(x, None, impl='fast')
    with pytest.raises(ValueError, match='unknown ops implementation'):
        bias_act.bias_act(x, impl='fast')


def test_impl_dispatch_contract(fresh_impl: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-CPU tensor goes to the backend when it is ready, with the contract's parsed arguments;
    an explicit 'cuda' that is not ready warns once with the backend's reason and uses 'ref'."""
    calls: list[tuple[str, tuple, dict]] = []
    state = {'ready': True}
    fake = types.SimpleNamespace(
        is_ready=lambda op: state['ready'],
        why_not_ready=lambda op: f'{op} failed its self-check',
        upfirdn2d=lambda *a, **k: calls.append(('upfirdn2d', a, k)) or 'U',
        bias_act=lambda *a, **k: calls.append(('bias_act', a, k)) or 'B',
    )
    monkeypatch.setattr(_impl, '_backend', fake)
    x = torch.empty(2, 3, 8, 8, device='meta')  # not a CPU tensor
    f = torch.ones(4, 4)
    assert upfirdn2d.upsample2d(x, f) == 'U'
    assert calls[-1] == ('upfirdn2d', (x, f), dict(up=(2, 2), down=(1, 1), padding=(2, 1, 2, 1),
                                                   flip_filter=False, gain=4))
    assert bias_act.bias_act(x, None, act='lrelu', clamp=256) == 'B'
    assert calls[-1][1][1:] == (None, 1, 'lrelu', 0.2, math.sqrt(2), 256.0)
    assert bias_act.bias_act(x, None, dim=-3, act='tanh', alpha=0.5, gain=2) == 'B'
    assert calls[-1][1][1:] == (None, 1, 'tanh', 0.5, 2.0, None)
    # 'ref' never reaches the backend.
    n = len(calls)
    bias_act.bias_act(torch.zeros(2, 3), impl='ref')
    assert _impl.resolve_impl('bias_act', x, 'ref') == 'ref' and len(calls) == n
    # Not ready: 'auto' silently falls back, 'cuda' warns once per op naming the op and reason.
    state['ready'] = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert _impl.resolve_impl('upfirdn2d', x, 'auto') == 'ref'
        assert not caught
        assert _impl.resolve_impl('upfirdn2d', x, 'cuda') == 'ref'
        assert _impl.resolve_impl('upfirdn2d', x, 'cuda') == 'ref'
        assert _impl.resolve_impl('bias_act', x, 'cuda') == 'ref'
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert 'upfirdn2d' in messages[0] and 'upfirdn2d failed its self-check' in messages[0]
    assert 'bias_act failed its self-check' in messages[1]
