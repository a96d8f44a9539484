"""StyleGAN2 loss terms against hand-computed values (stylegan2-arithmetic.md §10).

Tiny stub networks with closed-form gradients keep these tests exact and independent of the
real G/D: the mapping and synthesis are linear/tanh maps, D is linear in the image.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from torch_utils import misc, training_stats
from patches.overfit import RealSignCollector
from training.loss import StyleGAN2Loss

N, Z, W, NUM_WS, C, R = 4, 3, 5, 4, 1, 2


class StubMapping(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.A = torch.nn.Parameter(torch.randn(Z, W, dtype=torch.float64))

    def forward(self, z, c, skip_w_avg_update=False):
        return (z @ self.A)[:, None, :].repeat(1, NUM_WS, 1)


class StubSynthesis(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.B = torch.nn.Parameter(torch.randn(NUM_WS * W, C * R * R, dtype=torch.float64))

    def forward(self, ws):
        return torch.tanh(ws.flatten(1) @ self.B).view(-1, C, R, R)


class StubG(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mapping = StubMapping()
        self.synthesis = StubSynthesis()


class LinearD(torch.nn.Module):
    def __init__(self, nan: bool = False):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(C * R * R, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
        self.nan = nan
        self.calls: list[int] = []

    def forward(self, img, c):
        self.calls.append(img.shape[0])
        out = (img.flatten(1) @ self.w + self.b)[:, None]
        return out * float('nan') if self.nan else out


def make(style_mixing_prob=0.0, r1_gamma=10.0, pl_weight=2.0, nan=False):
    torch.manual_seed(0)
    G, D = StubG(), LinearD(nan=nan)
    loss = StyleGAN2Loss(torch.device('cpu'), G, D, style_mixing_prob=style_mixing_prob, r1_gamma=r1_gamma,
                         pl_weight=pl_weight)
    loss.pl_mean = loss.pl_mean.double()
    return G, D, loss


def inputs():
    g = torch.Generator().manual_seed(1)
    real = torch.rand(N, C, R, R, generator=g, dtype=torch.float64) * 2 - 1
    z = torch.randn(N, Z, generator=g, dtype=torch.float64)
    c = torch.zeros(N, 0, dtype=torch.float64)
    return real, c, z, c


def grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_gmain_is_mean_softplus_of_negative_logits_and_reports_per_sample_values():
    G, D, loss = make()
    real, real_c, z, c = inputs()
    training_stats.reset()
    G.requires_grad_(True)
    loss.accumulate_gradients('Gmain', real, real_c, z, c, gain=1)
    with torch.no_grad():
        logits = G.synthesis(G.mapping(z, c)).flatten(1) @ D.w + D.b
    # d/dB mean(softplus(-l)) with l = w·tanh(u B) + b: explicit chain rule in float64.
    u = G.mapping(z, c).flatten(1).detach()
    pre = u @ G.synthesis.B.detach()
    dl_dpre = (1 - torch.tanh(pre) ** 2) * D.w.detach()
    coef = -torch.sigmoid(-logits) / N
    expected_B = u.T @ (coef[:, None] * dl_dpre)
    assert torch.allclose(G.synthesis.B.grad, expected_B, rtol=1e-10, atol=1e-12)
    collector = training_stats.Collector('Loss/G/loss')
    collector.update()
    hand = sum(math.log1p(math.exp(-float(v))) for v in logits) / N
    assert collector.mean('Loss/G/loss') == pytest.approx(hand, rel=1e-12)
    assert collector.num('Loss/G/loss') == N


def test_dmain_gradient_matches_closed_form():
    G, D, loss = make()
    real, real_c, z, c = inputs()
    D.requires_grad_(True)
    loss.accumulate_gradients('Dmain', real, real_c, z, c, gain=1)
    with torch.no_grad():
        fake = G.synthesis(G.mapping(z, c)).flatten(1)
        l_f = fake @ D.w + D.b
        l_r = real.flatten(1) @ D.w + D.b
    # L = mean softplus(l_f) + mean softplus(-l_r); dL/dw = mean σ(l_f) x_f − mean σ(−l_r) x_r.
    exp_w = (torch.sigmoid(l_f)[:, None] * fake).mean(0) - (torch.sigmoid(-l_r)[:, None] * real.flatten(1)).mean(0)
    exp_b = torch.sigmoid(l_f).mean() - torch.sigmoid(-l_r).mean()
    assert torch.allclose(D.w.grad, exp_w, rtol=1e-10, atol=1e-12)
    assert torch.allclose(D.b.grad, exp_b, rtol=1e-10, atol=1e-12)
    assert D.calls == [N, N], 'D must see the fake batch and the real batch separately'


def test_r1_on_linear_d_is_gamma_w_times_gain():
    G, D, loss = make(r1_gamma=3.0)
    real, real_c, z, c = inputs()
    D.requires_grad_(True)
    loss.accumulate_gradients('Dreg', real, real_c, z, c, gain=16)
    # ∇_x D = w for every sample → R1 = |w|², loss = γ/2 |w|², dL/dw = γ w; × gain 16.
    assert torch.allclose(D.w.grad, 16 * 3.0 * D.w.detach(), rtol=1e-12)
    assert D.b.grad is None or float(D.b.grad.abs()) < 1e-12
    assert D.calls == [N], 'the R1-only phase runs no fake pass'


def _pl_loss_value(G, z, c, pl_mean0, seed):
    """The path-length penalty written out independently (explicit Jacobian-vector product)."""
    torch.manual_seed(seed)
    ws = G.mapping(z[:N // 2], c[:N // 2])
    img = G.synthesis(ws)
    noise = torch.randn_like(img) / math.sqrt(R * R)
    g, = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
    lengths = g.square().sum(2).mean(1).sqrt()
    mean = pl_mean0 + 0.01 * (lengths.mean() - pl_mean0)
    return ((lengths - mean).square() * 2.0).mean()


def test_path_length_gradient_matches_finite_differences():
    G, D, loss = make(pl_weight=2.0)
    real, real_c, z, c = inputs()
    pl_mean0 = torch.tensor(0.7, dtype=torch.float64)
    loss.pl_mean = pl_mean0.clone()
    G.requires_grad_(True)
    torch.manual_seed(123)
    loss.accumulate_gradients('Greg', real, real_c, z, c, gain=1)
    assert torch.isfinite(G.synthesis.B.grad).all()
    # pl_mean moved by the EMA rule: lerp(pl_mean, mean(len), 0.01).
    assert float(loss.pl_mean) != pytest.approx(0.7)
    eps = 1e-6
    for param, idx in ((G.synthesis.B, (0, 1)), (G.synthesis.B, (7, 2)), (G.mapping.A, (1, 3))):
        with torch.no_grad():
            param[idx] += eps
        plus = float(_pl_loss_value(G, z, c, pl_mean0, 123).detach())
        with torch.no_grad():
            param[idx] -= 2 * eps
        minus = float(_pl_loss_value(G, z, c, pl_mean0, 123).detach())
        with torch.no_grad():
            param[idx] += eps
        fd = (plus - minus) / (2 * eps)
        assert float(param.grad[idx]) == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_style_mixing_replaces_ws_from_a_random_cutoff():
    G, D, loss = make(style_mixing_prob=1.0)
    _, _, z, c = inputs()
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        _, ws = loss.run_G(z, c)
        base = G.mapping(z, c)
        same = [(torch.equal(ws[:, i], base[:, i])) for i in range(NUM_WS)]
        cutoff = same.index(False)
        assert 1 <= cutoff <= NUM_WS - 1
        assert all(same[:cutoff]) and not any(same[cutoff:])
        seen.add(cutoff)
    assert seen == set(range(1, NUM_WS)), 'every cutoff in [1, num_ws - 1] must occur'


def test_nan_loss_stops_with_the_phase_named():
    G, D, loss = make(nan=True)
    real, real_c, z, c = inputs()
    with pytest.raises(misc.NonFiniteError, match='Gmain'):
        loss.accumulate_gradients('Gmain', real, real_c, z, c, gain=1)
    with pytest.raises(misc.NonFiniteError, match='Dmain'):
        loss.accumulate_gradients('Dmain', real, real_c, z, c, gain=1)


def test_generator_reducer_hook_is_the_single_reduction_point():
    G, D, loss = make()
    real, real_c, z, c = inputs()
    seen = {}

    def first_only(per_sample, scores):
        seen['shape'] = (tuple(per_sample.shape), tuple(scores.shape))
        return per_sample[0]

    loss.generator_loss_reducer = first_only
    G.requires_grad_(True)
    loss.accumulate_gradients('Gmain', real, real_c, z, c, gain=1)
    assert seen['shape'] == ((N,), (N, 1))
    # Only sample 0 contributes: its closed-form gradient w.r.t. B.
    u = G.mapping(z, c).flatten(1).detach()
    pre = u @ G.synthesis.B.detach()
    l0 = (torch.tanh(pre[0]) @ D.w + D.b).detach()
    expected = u[0][:, None] * (-torch.sigmoid(-l0) * (1 - torch.tanh(pre[0]) ** 2) * D.w.detach())[None, :]
    assert torch.allclose(G.synthesis.B.grad, expected, rtol=1e-10, atol=1e-12)


def test_discriminator_pass_labels_and_extra_loss_hook():
    G, D, loss = make()
    real, real_c, z, c = inputs()
    labels = []

    class Ctx:
        import contextlib

        @contextlib.contextmanager
        def pass_(self, label, r1=False):
            labels.append(label)
            yield

        def extra_loss(self):
            return D.w.sum() * 0 + (1.5 if labels[-1] == 'dreal' else 0.0)

    loss.d_pass_context = Ctx()
    collector = RealSignCollector()
    loss.real_logit_listeners.append(collector)
    D.requires_grad_(True)
    loss.accumulate_gradients('Dmain', real, real_c, z, c, gain=1)
    loss.accumulate_gradients('Dreg', real, real_c, z, c, gain=16)
    G.requires_grad_(True)
    loss.accumulate_gradients('Gmain', real, real_c, z, c, gain=1)
    assert labels == ['dfake', 'dreal', 'dreal', 'gfake']
    signs_all, signs_main = collector.take()  # the Dmain real logits reach the per-iteration controllers once
    assert signs_main[0].item() == N and signs_all[0].item() == 2 * N  # Dmain and Dreg passes, N logits each
    assert collector.take() == (None, None)
