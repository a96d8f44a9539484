"""Property tests of CHAIN (docs/methods.md §9.5 H1–H10, §9.6 R1–R4, state round trip).

Every expectation is an independent formula written here in float64 (or a finite difference),
never a value produced by patches/chain.py itself.
"""

from __future__ import annotations

import copy
import io
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from patches.chain import Chain, ChainContext, ChainedConv, chain_layers, draw_mask

EPS = 1e-5
F64 = torch.float64


def _ctx(p: float = 0.0, **kwargs) -> ChainContext:
    ctx = ChainContext(**kwargs)
    ctx.set_p(p)
    return ctx


def _layer(c: int, ctx: ChainContext, variant: str, dtype: torch.dtype = torch.float32) -> Chain:
    return Chain(c, ctx, variant=variant).to(dtype).train()


def _features(b: int = 4, c: int = 4, h: int = 3, w: int = 3, seed: int = 0, dtype=F64,
              scales=(0.5, 1.0, 2.0, 3.0), offset: float = 0.3) -> torch.Tensor:
    """Channels with clearly distinct RMS (channel 0 the smallest) and non-zero means."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn([b, c, h, w], generator=gen, dtype=F64) + offset
    y = y * torch.tensor(scales[:c], dtype=F64).view(1, c, 1, 1)
    return y.to(dtype)


def _psi(y: torch.Tensor) -> torch.Tensor:
    """ψ_c = sqrt(mean_{b,h,w} Y² + ε), [C] float64 (docs/methods.md §5.1)."""
    return (y.double().square().mean(dim=(0, 2, 3)) + EPS).sqrt()


def _batch_ref(y: torch.Tensor, m: torch.Tensor, c_const: float) -> torch.Tensor:
    """Independent batch ARMS with ψ_min given as a constant: (1−M)Y + M·Y·c/ψ(Y)."""
    psi = (y.square().mean(dim=(0, 2, 3), keepdim=True) + EPS).sqrt()
    return (1 - m) * y + m * y * c_const / psi


VARIANTS = ['chain', 'chain_batch']


# ---------------------------------------------------------------------------------------------
# H1 — p = 0 is the identity

@pytest.mark.parametrize('variant', VARIANTS)
def test_h1_p_zero_is_identity(variant):
    ctx = _ctx(0.0)
    layer = _layer(4, ctx, variant)
    y = _features(dtype=torch.float32)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    rng = torch.get_rng_state()
    with ctx.pass_('dreal'):
        out = layer(y)
    assert torch.equal(out, y)
    assert torch.equal(torch.get_rng_state(), rng)  # no mask drawn
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert len(ctx._terms) == 1  # 0MR still computed (docs/methods.md §9.5 step 1)


# ---------------------------------------------------------------------------------------------
# H2 — p = 1, batch variant: every channel's RMS becomes ψ_min·sqrt(1 − ε/ψ_c²)

def test_h2_batch_p_one_equalises_rms():
    ctx = _ctx(1.0)
    layer = _layer(4, ctx, 'chain_batch', F64)
    y = _features()
    with ctx.pass_('dfake'):
        out = layer(y)
    psi = _psi(y)
    expected = psi.min() * (1 - EPS / psi.square()).sqrt()
    rms = out.square().mean(dim=(0, 2, 3)).sqrt()
    torch.testing.assert_close(rms, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(rms, psi.min().expand(4), rtol=1e-4, atol=0)
    assert bool((rms <= psi.min() * (1 + 1e-12)).all())


# ---------------------------------------------------------------------------------------------
# H3 — non-expansive for any mask: per-(b,c) gain is 1 or ψ_min/ψ_c (batch), s/sqrt(v_c+ε) (cumulative)

@pytest.mark.parametrize('variant', VARIANTS)
def test_h3_non_expansive(variant):
    ctx = _ctx(0.5)
    layer = _layer(4, ctx, variant, F64)
    torch.manual_seed(1)
    strictly_smaller = 0
    for seed in range(5):
        y = _features(b=6, seed=seed)
        with ctx.pass_('dreal'):
            out = layer(y)
        assert bool((out.abs() <= y.abs() * (1 + 1e-12)).all())
        gain = out / y
        if variant == 'chain_batch':
            allowed = _psi(y).min() / _psi(y)
        else:
            v = layer.running_var_real.double().view(-1)
            allowed = v.min().sqrt() / (v + EPS).sqrt()
        g = gain.view(6, 4, -1)
        assert bool((g.std(dim=2) < 1e-12).all())  # one gain per (b, c): mask is [B, C, 1, 1]
        g = g[:, :, 0]
        is_one = (g - 1).abs() < 1e-12
        is_scaled = (g - allowed.view(1, 4)).abs() < 1e-12
        assert bool((is_one | is_scaled).all())
        strictly_smaller += int((g < 1 - 1e-6).sum())
    assert strictly_smaller > 0


# ---------------------------------------------------------------------------------------------
# H4 — homogeneity with a fixed mask (batch ARMS)

def test_h4_homogeneity_fixed_mask():
    ctx = _ctx(0.5)
    layer = _layer(4, ctx, 'chain_batch', F64)
    y = _features(b=3)
    mask = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 1]], dtype=torch.bool).view(3, 4, 1, 1)
    with ctx.pass_('dreal'):
        base = layer(y, mask=mask)
    m = mask.double()
    torch.testing.assert_close(base, _batch_ref(y, m, float(_psi(y).min())), rtol=1e-12, atol=1e-14)
    for a in (0.5, 3.0, 10.0):
        with ctx.pass_('dreal'):
            scaled = layer(a * y, mask=mask)
        torch.testing.assert_close(scaled, _batch_ref(a * y, m, float(_psi(a * y).min())), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(scaled, a * base, rtol=1e-4, atol=0)


# ---------------------------------------------------------------------------------------------
# H5 — mask shape, mean and freshness

def test_h5_mask_shape_mean_fresh():
    torch.manual_seed(2)
    m = draw_mask(7, 5, 0.3, torch.device('cpu'))
    assert m.shape == (7, 5, 1, 1) and m.dtype == torch.bool
    big = draw_mask(400, 500, 0.3, torch.device('cpu')).double()
    sigma = (0.3 * 0.7 / big.numel()) ** 0.5
    assert abs(float(big.mean()) - 0.3) < 5 * sigma
    assert bool(draw_mask(50, 50, 1.0, torch.device('cpu')).all())

    ctx = _ctx(0.5)
    layer = _layer(4, ctx, 'chain_batch', F64)
    y = _features(b=16, scales=(0.5, 1.0, 2.0, 3.0))
    masks = []
    for _ in range(2):
        with ctx.pass_('dreal'):
            out = layer(y)
        diff = (out - y).abs().amax(dim=(2, 3))[:, 1:] > 1e-9  # channel 0 has gain 1 either way
        masks.append(diff)
    assert not torch.equal(masks[0], masks[1])                  # fresh mask per forward
    assert bool(masks[0].any(dim=0).all()) and not bool(masks[0].all(dim=0).any())  # varies over samples
    assert bool((masks[0].any(dim=1) & ~masks[0].all(dim=1)).any())                # and over channels


# ---------------------------------------------------------------------------------------------
# H6 — no gradient through ψ_min

def test_h6_no_gradient_through_psi_min():
    ctx = _ctx(1.0)
    layer = _layer(4, ctx, 'chain_batch', F64)
    y = _features().requires_grad_(True)
    assert int(_psi(y.detach()).argmin()) == 0
    for j in (1, 2, 3):
        with ctx.pass_('dreal'):
            out = layer(y)
        w = torch.randn_like(out[:, j])
        grad, = torch.autograd.grad((out[:, j] * w).sum(), y)
        assert bool((grad[:, 0] == 0).all())                    # min channel reaches others only via ψ_min
        assert float(grad[:, j].abs().max()) > 0

    # The forward does depend on channel 0's scale (so the zero above is the stop-gradient).
    y0 = y.detach()
    y1 = y0.clone()
    y1[:, 0] *= 1.01
    with ctx.pass_('dreal'):
        d = layer(y1)[:, 1:] - layer(y0)[:, 1:]
    assert float(d.abs().max()) > 1e-4
    # A version without the stop-gradient would have a non-zero cross derivative.
    yy = y0.clone().requires_grad_(True)
    psi = (yy.square().mean(dim=(0, 2, 3), keepdim=True) + EPS).sqrt()
    alt = yy * psi.min() / psi
    grad_alt, = torch.autograd.grad(alt[:, 1].sum(), yy)
    assert float(grad_alt[:, 0].abs().max()) > 1e-6


# ---------------------------------------------------------------------------------------------
# H7 — cumulative buffers per label

@pytest.mark.parametrize('label', ['dreal', 'dfake', 'gfake'])
def test_h7_buffer_updates_per_label(label):
    ctx = _ctx(0.5)
    layer = _layer(4, ctx, 'chain')
    y = _features(dtype=torch.float32).requires_grad_(True)
    with ctx.pass_(label):
        out = layer(y)
    (out * torch.randn_like(out)).sum().backward()
    ms = y.detach().double().square().mean(dim=(0, 2, 3)).view(1, 4, 1, 1)
    updated_v = 'running_var_real' if label == 'dreal' else 'running_var_fake'
    for name in ('running_var_real', 'running_var_fake'):
        expected = 0.9 + 0.1 * ms if name == updated_v else torch.ones_like(ms)
        torch.testing.assert_close(getattr(layer, name).double(), expected, rtol=1e-6, atol=0)
    for other in ('dreal', 'dfake', 'gfake'):
        buf = getattr(layer, f'grad_var_{other}')
        assert bool((buf != 0).any()) == (other == label), other

    layer.eval()  # C5: no buffer updates in eval mode
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    y2 = _features(seed=5, dtype=torch.float32).requires_grad_(True)
    with ctx.pass_(label):
        out = layer(y2)
    out.sum().backward()
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k


# ---------------------------------------------------------------------------------------------
# H8 — cumulative backward formula; batch variant against finite differences

def _cumulative_reference(y, g, m, v_old, u_old, decay=0.9):
    """Independent float64 model of docs/methods.md §5.2: returns (out, dY, v_new, u_new)."""
    v = decay * v_old + (1 - decay) * y.square().mean(dim=(0, 2, 3), keepdim=True)
    s = v.min().sqrt()
    y_hat = y / (v + EPS).sqrt()
    out = (1 - m) * y + m * y_hat * s
    g_z = m * g                                       # gradient reaching Z through the mix
    g1 = g_z * s
    phi = (y_hat * g1).mean(dim=(0, 2, 3), keepdim=True)
    u = decay * u_old + (1 - decay) * phi
    dy = (1 - m) * g + (g1 - u * y_hat) / (v + EPS).sqrt()
    return out, dy, v, u


@pytest.mark.parametrize('full_mask', [True, False])
def test_h8_cumulative_backward_formula(full_mask):
    ctx = _ctx(1.0 if full_mask else 0.5)
    layer = _layer(4, ctx, 'chain', F64)
    v_ref = torch.ones([1, 4, 1, 1], dtype=F64)
    u_ref = torch.zeros([1, 4, 1, 1], dtype=F64)
    gen = torch.Generator().manual_seed(3)
    for step in range(3):  # u is the *updated* EMA and carries over between steps
        y = _features(seed=10 + step).requires_grad_(True)
        g = torch.randn(y.shape, generator=gen, dtype=F64)
        if full_mask:
            mask = torch.ones([4, 4, 1, 1], dtype=torch.bool)
        else:
            mask = torch.rand([4, 4, 1, 1], generator=gen) < 0.5
        with ctx.pass_('dreal'):
            out = layer(y) if full_mask else layer(y, mask=mask)
        out.backward(g)
        ref_out, ref_dy, v_ref, u_ref = _cumulative_reference(y.detach(), g, mask.double(), v_ref, u_ref)
        torch.testing.assert_close(out.detach(), ref_out, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(y.grad, ref_dy, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(layer.running_var_real, v_ref, rtol=1e-12, atol=0)
        torch.testing.assert_close(layer.grad_var_dreal, u_ref, rtol=1e-10, atol=1e-14)
    assert float(u_ref.abs().max()) > 1e-3  # the projection term is really exercised


def test_h8_batch_gradient_finite_difference():
    ctx = _ctx(0.5)
    layer = _layer(3, ctx, 'chain_batch', F64)
    y0 = _features(b=2, c=3, h=2, w=2, scales=(0.7, 1.3, 2.0))
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool).view(2, 3, 1, 1)
    w = torch.randn(y0.shape, generator=torch.Generator().manual_seed(4), dtype=F64)
    y = y0.clone().requires_grad_(True)
    with ctx.pass_('dreal'):
        (layer(y, mask=mask) * w).sum().backward()
    c_const = float(_psi(y0).min())  # ψ_min is a constant (stop-gradient)
    numeric = torch.zeros_like(y0)
    h = 1e-6
    for idx in range(y0.numel()):
        e = torch.zeros(y0.numel(), dtype=F64)
        e[idx] = h
        e = e.view_as(y0)
        fp = (_batch_ref(y0 + e, mask.double(), c_const) * w).sum()
        fm = (_batch_ref(y0 - e, mask.double(), c_const) * w).sum()
        numeric.view(-1)[idx] = (fp - fm) / (2 * h)
    torch.testing.assert_close(y.grad, numeric, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# H9 — double backward (R1 with create_graph) through conv → CHAIN → lrelu → sum

def _act(z: torch.Tensor, act: str) -> torch.Tensor:
    return F.leaky_relu(z, 0.2) if act == 'lrelu' else F.softplus(z)


def _act_grad(z: torch.Tensor, act: str) -> torch.Tensor:
    """d act / dz, differentiable in z (softplus' = sigmoid; lrelu' is piecewise constant)."""
    if act == 'lrelu':
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, 0.2))
    return torch.sigmoid(z)


def _r1_penalty_reference(conv_w, conv_b, x, mask, variant, consts, act):
    """R1 penalty |∇_x F|² from explicit formulas with CHAIN's statistics frozen (C4)."""
    xx = x.detach().requires_grad_(True)
    y = F.conv2d(xx, conv_w, conv_b, padding=1)
    m = mask.double()
    if variant == 'chain_batch':
        z = _batch_ref(y, m, consts['c'])
        out = _act(z, act).sum()
        grad_x, = torch.autograd.grad(out, xx, create_graph=True)
    else:
        v, u = consts['v'], consts['u']
        s = v.min().sqrt()
        inv = (v + EPS).rsqrt()
        z = (1 - m) * y + m * y * inv * s                    # forward: v, s constants
        g = _act_grad(z, act)
        dy = (1 - m) * g + (m * g * s - u * y * inv) * inv   # the custom backward, v/s/u constant
        grad_x, = torch.autograd.grad(y, xx, grad_outputs=dy, create_graph=True)
    return grad_x.square().sum()


@pytest.mark.parametrize('act', ['lrelu', 'softplus'])
@pytest.mark.parametrize('variant', VARIANTS)
def test_h9_double_backward(variant, act):
    torch.manual_seed(6)
    ctx = _ctx(0.5)
    layer = _layer(3, ctx, variant, F64)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1).double()
    x = torch.randn([2, 2, 4, 4], dtype=F64).requires_grad_(True)
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool).view(2, 3, 1, 1)
    with ctx.pass_('dreal', r1=True):
        y = conv(x)
        out = _act(layer(y, mask=mask), act).sum()
    assert float(ctx.zero_mean_loss()) == 0.0  # the R1 pass contributes no 0MR (C4)
    grad_x, = torch.autograd.grad(out, x, create_graph=True)
    consts = {'c': float(_psi(y.detach()).min())}
    if variant == 'chain':
        consts.update(v=layer.running_var_real.clone(), u=layer.grad_var_dreal.clone())
        assert float(consts['u'].abs().max()) > 0
    penalty = grad_x.square().sum()
    penalty.backward()
    assert torch.isfinite(penalty) and torch.isfinite(conv.weight.grad).all()
    assert float(conv.weight.grad.abs().max()) > 0
    if variant == 'chain':  # u updated once (first backward), not again by the re-entry
        assert torch.equal(layer.grad_var_dreal, consts['u'])

    # Finite differences of the explicit penalty in the conv weights.
    w0, b0 = conv.weight.detach().clone(), conv.bias.detach().clone()
    ref = _r1_penalty_reference(w0, b0, x, mask, variant, consts, act)
    torch.testing.assert_close(penalty.detach(), ref.detach(), rtol=1e-10, atol=1e-12)
    h = 1e-6
    numeric = torch.zeros_like(w0)
    for idx in range(w0.numel()):
        e = torch.zeros(w0.numel(), dtype=F64)
        e[idx] = h
        e = e.view_as(w0)
        fp = _r1_penalty_reference(w0 + e, b0, x, mask, variant, consts, act)
        fm = _r1_penalty_reference(w0 - e, b0, x, mask, variant, consts, act)
        numeric.view(-1)[idx] = (fp - fm).detach() / (2 * h)
    torch.testing.assert_close(conv.weight.grad, numeric, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# H10 — FP16 input: FP32 statistics, FP16 output, finite

@pytest.mark.parametrize('variant', VARIANTS)
def test_h10_fp16(variant):
    torch.manual_seed(7)
    ctx = _ctx(0.5)
    layer = _layer(4, ctx, variant)  # buffers stay FP32
    y = (_features(b=4, offset=0.5) * 300).half().requires_grad_(True)
    assert not torch.isfinite(y.detach().square().mean())  # FP16 statistics would overflow
    with ctx.pass_('dreal'):
        out = layer(y)
    assert out.dtype == torch.float16 and bool(torch.isfinite(out).all())
    term = ctx._terms[0]
    assert term.dtype == torch.float32
    mu = y.detach().double().mean(dim=(0, 2, 3))
    torch.testing.assert_close(term.double(), mu.square().sum(), rtol=1e-5, atol=0)
    loss = ctx.zero_mean_loss()
    assert loss.dtype == torch.float32 and bool(torch.isfinite(loss))
    if variant == 'chain':
        assert layer.running_var_real.dtype == torch.float32
        ms = y.detach().double().square().mean(dim=(0, 2, 3)).view(1, 4, 1, 1)
        torch.testing.assert_close(layer.running_var_real.double(), 0.9 + 0.1 * ms, rtol=1e-5, atol=0)
    (out.float() * 1e-3).sum().backward()
    assert y.grad.dtype == torch.float16 and bool(torch.isfinite(y.grad).all())
    layer.eval()
    with ctx.pass_('dreal'):
        out_eval = layer(y.detach())
    assert out_eval.dtype == torch.float16 and bool(torch.isfinite(out_eval).all())


# ---------------------------------------------------------------------------------------------
# C5 — eval mode and unlabelled forwards: deterministic expectation, no buffer change

@pytest.mark.parametrize('variant', VARIANTS)
def test_c5_eval_expected_interpolation(variant):
    ctx = _ctx(0.3)
    layer = _layer(4, ctx, variant, F64)
    with ctx.pass_('dreal'):  # give the running variance a non-trivial value
        layer(_features(seed=8) * 2)
    y = _features(seed=9)
    if variant == 'chain_batch':
        z = y * _psi(y).min() / _psi(y).view(1, 4, 1, 1)
    else:
        v = layer.running_var_real.clone()
        z = y * v.min().sqrt() / (v + EPS).sqrt()
    expected = 0.7 * y + 0.3 * z
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    rng = torch.get_rng_state()
    layer.eval()
    with ctx.pass_('dreal'):
        a = layer(y)
    layer.train()
    b = layer(y)  # training mode, but outside any labelled pass
    torch.testing.assert_close(a, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(b, expected, rtol=1e-12, atol=1e-14)
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k


# ---------------------------------------------------------------------------------------------
# R1–R3 — the p controller

def _logits(n_pos: int, n_neg: int) -> torch.Tensor:
    return torch.cat([torch.full([n_pos, 1], 1.7), torch.full([n_neg, 1], -0.4)])


def test_r1_bounds_and_start():
    ctx = ChainContext(start_iter=10, tau=0.5, dp=0.01)
    for it in range(10):
        assert ctx.update_p(_logits(8, 0), it) == 0.0
    assert float(ctx.p) == 0.0 and float(ctx.ema_sign) == 0.0
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for it in range(10, 1500):
        lo, hi = (6, 9) if (it // 300) % 2 == 0 else (0, 3)  # long runs above / below τ
        n_pos = int(torch.randint(lo, hi, [1], generator=gen))
        p = ctx.update_p(_logits(n_pos, 8 - n_pos), it)
        assert 0.0 <= p <= 1.0 and p == float(ctx.p) == ctx.p_value
        seen.add(p)
    assert {0.0, 1.0} <= seen  # both clamps were exercised
    assert ctx.update_p(None, 2000) == ctx.p_value


def test_r2_exact_steps_zero_to_one():
    ctx = ChainContext(start_iter=0, tau=0.5, dp=0.001)
    n_cross = next(n for n in range(1, 100) if 1 - 0.9 ** n > 0.5)  # EMA of s = 1 crosses τ
    prev = 0.0
    for n in range(1, n_cross + 999):  # n_cross .. n_cross+998: 999 steps of +Δp
        p = ctx.update_p(_logits(4, 0), n)
        if n < n_cross:
            assert p == 0.0
        else:
            assert abs((p - prev) - 0.001) < 1e-12
        prev = p
    assert p < 1.0
    assert ctx.update_p(_logits(4, 0), 10_000) == 1.0  # the 1000th step reaches 1 exactly
    assert ctx.update_p(_logits(4, 0), 10_001) == 1.0  # and stays clamped
    ctx2 = ChainContext(start_iter=0, tau=0.5, dp=0.001)
    ctx2.set_p(0.01)
    ps = [ctx2.update_p(_logits(0, 4), n) for n in range(12)]  # s = −1 < τ: decrease, clamp at 0
    assert all(abs((a - b) - 0.001) < 1e-12 for a, b in zip([0.01] + ps[:9], ps[:10]))
    assert ps[-1] == 0.0


@pytest.mark.parametrize('n_pos,n_neg', [(5, 0), (0, 5), (6, 4)])
def test_r3_ema_recursion(n_pos, n_neg):
    s = (n_pos - n_neg) / (n_pos + n_neg)
    ctx = ChainContext(start_iter=0)
    for n in range(1, 40):
        ctx.update_p(_logits(n_pos, n_neg), n)
        assert abs(float(ctx.ema_sign) - s * (1 - 0.9 ** n)) < 1e-12


def _dist_worker(rank: int, world: int, init_file: str, queue) -> None:
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    try:
        ctx = ChainContext(start_iter=0)
        logits = _logits(3, 0) if rank == 0 else _logits(0, 1)  # different counts per rank
        ctx.update_p(logits, 0)
        queue.put((rank, float(ctx.ema_sign)))
    finally:
        dist.destroy_process_group()


def test_update_p_all_reduces_sum_and_count():
    ctx_mp = mp.get_context('spawn')
    queue = ctx_mp.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, 'init')
        mp.start_processes(_dist_worker, args=(2, init_file, queue), nprocs=2, join=True, start_method='spawn')
        results = dict(queue.get(timeout=30) for _ in range(2))
    expected = 0.1 * ((3 - 1) / 4)  # global mean over all 4 logits, not the mean of rank means
    assert abs(results[0] - expected) < 1e-15 and abs(results[1] - expected) < 1e-15


# ---------------------------------------------------------------------------------------------
# R4 — 0MR value and gradient

def test_r4_zero_mean_regulariser():
    lam, p, p0 = 20.0, 0.3, 0.1
    ctx = _ctx(p, lambda_=lam, p0=p0)
    l1, l2 = _layer(4, ctx, 'chain', F64), _layer(3, ctx, 'chain_batch', F64)
    y1 = _features(b=2, h=3, w=4).requires_grad_(True)
    y2 = _features(b=2, c=3, h=2, w=2, seed=1).requires_grad_(True)
    with ctx.pass_('dreal'):
        l1(y1)
        l2(y2)
    loss = ctx.zero_mean_loss()
    mu1, mu2 = y1.detach().mean(dim=(0, 2, 3)), y2.detach().mean(dim=(0, 2, 3))
    expected = lam * (p + p0) * (mu1.square().sum() + mu2.square().sum())
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-12, atol=0)
    g1, g2 = torch.autograd.grad(loss, [y1, y2])
    torch.testing.assert_close(g1, (2 * lam * (p + p0) * mu1 / (2 * 3 * 4)).view(1, 4, 1, 1).expand_as(y1),
                               rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(g2, (2 * lam * (p + p0) * mu2 / (2 * 2 * 2)).view(1, 3, 1, 1).expand_as(y2),
                               rtol=1e-12, atol=1e-15)

    # Zero for channel-wise zero-mean features.
    yc = y1.detach() - y1.detach().mean(dim=(0, 2, 3), keepdim=True)
    with ctx.pass_('dfake'):
        l1(yc)
    assert abs(float(ctx.zero_mean_loss())) < 1e-25
    # Zero for the G pass and for an R1 pass.
    for label, r1 in (('gfake', False), ('dreal', True)):
        with ctx.pass_(label, r1=r1):
            l1(y1)
        assert float(ctx.zero_mean_loss()) == 0.0
    # Computed but zero when p = p0 = 0.
    ctx0 = _ctx(0.0, lambda_=lam, p0=0.0)
    l0 = _layer(4, ctx0, 'chain', F64)
    y = y1.detach().clone().requires_grad_(True)
    with ctx0.pass_('dreal'):
        l0(y)
    loss0 = ctx0.zero_mean_loss()
    assert loss0.requires_grad and float(loss0.detach()) == 0.0
    g, = torch.autograd.grad(loss0, y)
    assert bool((g == 0).all())
    # Each pass starts a fresh list.
    with ctx.pass_('dreal'):
        l2(y2)
    torch.testing.assert_close(ctx.zero_mean_loss().detach(), lam * (p + p0) * mu2.square().sum(), rtol=1e-12, atol=0)


def test_pass_labels_are_checked():
    ctx = _ctx(0.0)
    with pytest.raises(ValueError):
        with ctx.pass_('mixed'):
            pass
    with ctx.pass_('dreal'):
        assert ctx.label == 'dreal'
        with pytest.raises(RuntimeError):
            with ctx.pass_('dfake'):
                pass
    assert ctx.label is None
    with pytest.raises(ValueError):
        Chain(4, ctx, variant='bn')


# ---------------------------------------------------------------------------------------------
# State: one context per D, buffers only, round trip through a weights-only snapshot

class _TinyD(torch.nn.Module):
    def __init__(self, variant: str) -> None:
        super().__init__()
        self.chain_ctx = ChainContext(start_iter=0, dp=0.05)
        self.b1 = ChainedConv(torch.nn.Conv2d(3, 4, 3, padding=1), Chain(4, self.chain_ctx, variant))
        self.b2 = ChainedConv(torch.nn.Conv2d(4, 5, 3, padding=1, stride=2), Chain(5, self.chain_ctx, variant))
        self.out = torch.nn.Linear(5 * 4 * 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.b1(x), 0.2)
        x = F.leaky_relu(self.b2(x), 0.2)
        return self.out(x.flatten(1))


def _train_step(D: _TinyD, it: int) -> torch.Tensor:
    ctx = D.chain_ctx
    real, fake = torch.randn([4, 3, 8, 8]), torch.randn([4, 3, 8, 8]) * 0.5
    with ctx.pass_('dreal'):
        lr = D(real)
    loss = F.softplus(-lr).mean() + ctx.zero_mean_loss()
    with ctx.pass_('dfake'):
        lf = D(fake)
    loss = loss + F.softplus(lf).mean() + ctx.zero_mean_loss()
    loss.backward()
    fake.requires_grad_(True)
    with ctx.pass_('gfake'):
        F.softplus(-D(fake)).mean().backward()
    ctx.update_p(lr.detach() + 5, it)  # "overfitting" reals: p grows
    return torch.cat([lr.detach(), lf.detach()])


@pytest.mark.parametrize('variant', VARIANTS)
def test_state_round_trip(variant):
    torch.manual_seed(0)
    D = _TinyD(variant)
    for it in range(12):
        _train_step(D, it)
    assert D.chain_ctx.p_value > 0
    sd = D.state_dict()
    assert [k for k in sd if k.startswith('chain_ctx')] == ['chain_ctx.p', 'chain_ctx.ema_sign']
    assert all(not k.startswith('chain_ctx') for k in sd if 'chain.' in k)
    assert {n for n, _ in D.named_parameters()} == {'b1.conv.weight', 'b1.conv.bias', 'b2.conv.weight',
                                                     'b2.conv.bias', 'out.weight', 'out.bias'}
    chain_keys = sorted(k.split('.')[-1] for k in sd if k.startswith('b1.chain.'))
    if variant == 'chain':
        assert chain_keys == sorted(['running_var_real', 'running_var_fake', 'grad_var_dreal',
                                     'grad_var_dfake', 'grad_var_gfake'])
        assert float(D.b1.chain.grad_var_gfake.abs().max()) > 0
    else:
        assert chain_keys == []

    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    D2 = _TinyD(variant)
    D2.load_state_dict(loaded)
    assert D2.chain_ctx.p_value == D.chain_ctx.p_value and D2.chain_ctx.ema_value == D.chain_ctx.ema_value
    assert all(layer.context is D2.chain_ctx for layer in chain_layers(D2))

    D3 = copy.deepcopy(D)
    assert all(layer.context is D3.chain_ctx for layer in chain_layers(D3))

    outs = []
    for model in (D, D2, D3):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        outs.append(torch.cat([_train_step(model, 100 + k) for k in range(3)]))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    for other in (D2, D3):
        for (k, a), (_, b) in zip(D.state_dict().items(), other.state_dict().items()):
            assert torch.equal(a, b), k
        for a, b in zip(D.parameters(), other.parameters()):
            assert torch.equal(a.grad, b.grad)


def test_p_cache_follows_buffer_writes():
    ctx = _ctx(0.0)
    assert ctx.p_value == 0.0
    with torch.no_grad():
        ctx.p.fill_(0.25)
    assert ctx.p_value == 0.25
    ctx.load_state_dict({'p': torch.tensor(0.5, dtype=F64), 'ema_sign': torch.tensor(0.1, dtype=F64)})
    assert ctx.p_value == 0.5 and ctx.ema_value == 0.1
    ctx.set_p(2.0)
    assert ctx.p_value == 1.0


# ---------------------------------------------------------------------------------------------
# CUDA: FP16 activations, and no host synchronisation inside a labelled D pass

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('variant', VARIANTS)
def test_cuda_fp16_no_sync(variant):
    dev = torch.device('cuda')
    torch.manual_seed(0)
    D = _TinyD(variant).to(dev)
    D.chain_ctx.set_p(0.5)
    assert D.chain_ctx.p_value == 0.5  # fills the cache (one read)
    x = torch.randn([4, 3, 8, 8], device=dev)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        with D.chain_ctx.pass_('dreal'):
            y = F.conv2d(x.half(), D.b1.conv.weight.half(), D.b1.conv.bias.half(), padding=1).requires_grad_(True)
            out = D.b1.chain(y)
        loss = out.float().square().mean() + D.chain_ctx.zero_mean_loss()
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert out.dtype == torch.float16 and bool(torch.isfinite(out).all())
    assert bool(torch.isfinite(y.grad).all())
