"""Projected GAN's networks and loss, and Diffusion-ProjectedGAN's diffusion (docs/projected.md §2–§7).

The properties of the spec's list (backbones.md §7, "Projected GAN" and "Diffusion-ProjectedGAN"),
on random-weight EfficientNet-Lite0 where the weights do not matter (the package weights are
tested in tests/test_efficientnet_lite0.py) and tiny inputs where the sizes do not matter.
"""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch

from backbones.projected import ProjectedBackbone, ProjectedSampler
from backbones.projected.diffusion import (DiffusionController, FeatureDiffusion, alpha_bar, draw_bank,
                                           linear_betas, noisy_slots, priority_weights, q_sample, timesteps_for)
from backbones.projected.discriminator import ProjectedDiscriminator, SingleDisc, feature_sizes
from backbones.projected.generator import Generator, normalize_second_moment
from backbones.projected.loss import ProjectedGANLoss
from backbones.projected.projector import FeatureProjector, ccm_channels, csm_channels
from patches.overfit import sign_moments
from training.controllers import IterationInfo
from training.phases import build_optimizer


def tiny_D(seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = dict(dict(feature_net='random', interp_size=64, disc_start='actual'), **kwargs)
    return ProjectedDiscriminator(0, 32, 3, **kwargs)


# ---------------------------------------------------------------------------------------------
# Generator (docs/projected.md §4)


def test_z_is_normalised_to_unit_second_moment():
    z = torch.randn(6, 256) * 7.3 + 2
    assert torch.allclose(normalize_second_moment(z).square().mean(1), torch.ones(6), atol=1e-5)


@pytest.mark.parametrize('cfg, params', [('fastgan', 105_684_175), ('fastgan_lite', 79_354_307)])
def test_parameter_counts_at_ngf_128_match_the_reference(cfg, params):
    """Spec: 105.68 M and 79.35 M at 256 px — a guard for name and shape fidelity."""
    with torch.device('meta'):
        G = Generator(0, 256, 3, ngf=128, cfg=cfg)
    assert sum(p.numel() for p in G.parameters()) == params


def test_fastgan_uses_big_blocks_everywhere_and_lite_small_ones():
    big, lite = Generator(0, 256, 3, ngf=8, cfg='fastgan'), Generator(0, 256, 3, ngf=8, cfg='fastgan_lite')
    for res in (8, 16, 32, 64, 128, 256):
        names_big = [type(m).__name__ for m in getattr(big.synthesis, f'feat_{res}')]
        names_lite = [type(m).__name__ for m in getattr(lite.synthesis, f'feat_{res}')]
        assert names_big.count('NoiseInjection') == 2 and names_big.count('BatchNorm2d') == 2, res
        assert names_lite.count('NoiseInjection') == 0 and names_lite.count('BatchNorm2d') == 1, res


@pytest.mark.parametrize('res', [32, 64, 128, 256])
def test_output_shape_early_exits_and_no_tanh(res):
    torch.manual_seed(0)
    G = Generator(0, res, 3, ngf=4, cfg='fastgan_lite').eval()
    with torch.no_grad():
        G.synthesis.to_big.weight_orig.mul_(50)
        img = G(torch.randn(3, 256), None)
    assert img.shape == (3, 3, res, res)
    assert img.abs().max() > 1  # no tanh


def test_the_stylegan_api_mapping_is_parameter_free():
    G = Generator(0, 32, 3, ngf=4)
    z = torch.randn(2, 256)
    assert list(G.mapping.parameters()) == [] and torch.equal(G.mapping(z, None), z[:, None])
    assert 'synthesis.init.init.0.weight_orig' in G.state_dict() and 'synthesis.to_big.bias' in G.state_dict()


# ---------------------------------------------------------------------------------------------
# Projector and mini-discriminators (docs/projected.md §2–§3)


def test_ccm_and_csm_channels_and_csm_doubles_resolution():
    assert ccm_channels() == [64, 128, 256, 512] and csm_channels() == [64, 64, 128, 256]
    torch.manual_seed(0)
    proj = FeatureProjector('random')
    x = torch.randn(1, 3, 64, 64)
    levels = proj.levels(x)
    out = proj(x)
    for i, (level, channels) in enumerate(zip(levels, [64, 64, 128, 256])):
        assert out[str(i)].shape[1] == channels
        assert out[str(i)].shape[2:] == (2 * level.shape[2], 2 * level.shape[3])


def test_csm_is_deterministic_given_the_seed_and_survives_a_state_dict_round_trip():
    a, b, c = tiny_D(seed=3), tiny_D(seed=3), tiny_D(seed=4)
    ccm = 'feature_network.scratch.layer2_ccm.weight'
    csm = 'feature_network.scratch.layer3_csm.out_conv.weight'
    for key in (ccm, csm):
        assert torch.equal(a.state_dict()[key], b.state_dict()[key])
        assert not torch.equal(a.state_dict()[key], c.state_dict()[key])
    c.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    a.eval(), c.eval()
    assert torch.equal(a(x), c(x))


def test_frozen_parts_get_no_gradient_and_no_update_but_g_gets_a_gradient():
    D = tiny_D().train()
    D.requires_grad_(True)  # what the loop does in the D phase
    frozen = {k: v.clone() for k, v in D.feature_network.state_dict().items()}
    assert not any(p.requires_grad for p in D.feature_network.parameters())
    assert not D.feature_network.training and D.discriminator.training  # BN of the projector in eval mode
    opt = build_optimizer(D.trainable_parameters(), dict(class_name='torch.optim.Adam', lr=1e-2, betas=[0.0, 0.99]))
    mini = {k: v.clone() for k, v in D.discriminator.state_dict().items() if 'weight_orig' in k}
    D(torch.randn(4, 3, 32, 32)).mean().backward()
    opt.step()
    assert all(p.grad is None for p in D.feature_network.parameters())
    for k, v in D.feature_network.state_dict().items():
        assert torch.equal(v, frozen[k]), k  # no parameter or BN-statistics change
    assert any(not torch.equal(v, D.discriminator.state_dict()[k]) for k, v in mini.items())
    # G receives a gradient through the frozen network.
    D.requires_grad_(False)
    G = Generator(0, 32, 3, ngf=4).requires_grad_(True)
    D(G(torch.randn(2, 256))).mean().backward()
    assert all(p.grad is not None for p in G.synthesis.to_big.parameters())
    assert float(G.synthesis.to_big.weight_orig.grad.abs().sum()) > 0


@pytest.mark.parametrize('res, interp, logits', [(256, None, 100), (128, 224, 64)])
def test_logit_shapes_and_the_interp224_rule(res, interp, logits):
    torch.manual_seed(0)
    D = ProjectedDiscriminator(0, res, 3, feature_net='random').eval()
    assert D.interp_size == interp
    with torch.no_grad():
        assert D(torch.randn(1, 3, res, res)).shape == (1, logits)


def test_reference_layout_is_laid_out_for_256_px_and_actual_sizes_are_the_test_knob():
    assert [d.start_size for d in tiny_D(disc_start='reference', interp_size=256).discriminator.mini_discs.values()] \
        == [128, 64, 32, 16]
    assert feature_sizes(64) == [32, 16, 8, 4] and feature_sizes(224) == [112, 56, 28, 14]
    assert [d.start_size for d in tiny_D().discriminator.mini_discs.values()] == [32, 16, 8, 4]
    with torch.no_grad():
        assert tiny_D().eval()(torch.randn(1, 3, 32, 32)).shape == (1, 25 + 25 + 25 + 1)


def test_separable_down_blocks():
    disc = SingleDisc(64, 32, separable=True)
    kinds = [type(m).__name__ for m in disc.main[0].main]
    assert kinds == ['SeparableConv2d', 'BatchNorm2d', 'LeakyReLU', 'AvgPool2d']
    assert disc.main[0].main[0].depthwise.weight_orig.shape == (64, 1, 3, 3)
    assert disc(torch.randn(2, 64, 32, 32)).shape == (2, 1, 5, 5)


# ---------------------------------------------------------------------------------------------
# Loss and optimisers (docs/projected.md §5)


class _KnownD(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones([]))
        self.logits = logits

    def forward(self, img, c=None):
        return self.logits * self.scale + 0 * img.sum()


class _ConstG(torch.nn.Module):
    z_dim = 4

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones([]))

    def forward(self, z, c=None):
        return self.w * torch.ones(z.shape[0], 3, 8, 8)


def test_hinge_losses_on_known_logits():
    logits = torch.tensor([[2.0, -0.5, 0.0], [0.5, -3.0, 1.0]])
    D, G = _KnownD(logits), _ConstG()
    loss = ProjectedGANLoss(torch.device('cpu'), G, D)
    seen = []
    loss.generator_loss_reducer = lambda per_sample, scores: seen.append((per_sample, scores)) or per_sample.mean()
    D.requires_grad_(True)
    loss.accumulate_gradients('Dmain', torch.zeros(2, 3, 8, 8), None, torch.zeros(2, 4), None, gain=1)
    # d/dscale of mean relu(1 + l·s) + mean relu(1 − l·s) at s = 1
    fake_grad = (logits * (1 + logits > 0)).mean()
    real_grad = (-logits * (1 - logits > 0)).mean()
    assert float(D.scale.grad) == pytest.approx(float(fake_grad + real_grad))
    D.requires_grad_(False)
    loss.accumulate_gradients('Gmain', None, None, torch.zeros(2, 4), None, gain=1)
    per_sample, scores = seen[0]
    assert torch.allclose(per_sample, -logits.mean(1))  # ATop-k's score: the mean of the image's logits
    assert torch.equal(scores, logits)


def test_discriminator_optimizer_reproduces_the_lazy_regularisation_quirk():
    quirk = ProjectedBackbone._discriminator_optimizer(2e-4, 16)
    assert quirk.lr == pytest.approx(2e-4 * 16 / 17) and quirk.betas == [0.0, pytest.approx(0.99 ** (16 / 17))]
    plain = ProjectedBackbone._discriminator_optimizer(2e-4, 0)
    assert plain.lr == 2e-4 and plain.betas == [0.0, 0.99]


def test_sampler_uses_eval_mode_and_restores_it():
    torch.manual_seed(0)
    G = Generator(0, 32, 3, ngf=4).train()
    sampler = ProjectedSampler(G)
    modes = []
    G.register_forward_pre_hook(lambda m, _inp: modes.append(m.training))
    img = sampler(torch.randn(2, 256, dtype=torch.float64))
    assert modes == [False] and G.training and img.dtype == torch.float32 and img.shape == (2, 3, 32, 32)


# ---------------------------------------------------------------------------------------------
# Diffusion-ProjectedGAN (docs/projected.md §6)


def test_schedule_is_linear_and_alpha_bar_matches_the_table():
    T = 500
    assert torch.allclose(linear_betas(T), torch.linspace(1e-4, 1e-2, T, dtype=torch.float64))
    ab = alpha_bar(T)
    assert ab[0] == 1 and bool((ab[1:] < ab[:-1]).all())
    assert float(ab[T]) == pytest.approx(0.0794, abs=5e-4)
    for t, expected in [(5, 0.975), (50, 0.776), (100, 0.603), (250, 0.282)]:
        assert float(alpha_bar(t)[t]) == pytest.approx(expected, abs=1e-3), t


def test_q_sample_at_t0_is_the_identity_and_the_gradient_is_sqrt_alpha_bar():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    ab = alpha_bar(100)
    assert torch.equal(q_sample(x, torch.zeros(6, dtype=torch.long), ab, 0.5), x)
    t = torch.tensor([0, 10, 50, 100, 3, 70])
    q_sample(x, t, ab, 0.5).sum().backward()
    expected = ab[t].sqrt().view(2, 3, 1, 1).expand_as(x)
    assert torch.allclose(x.grad, expected)


def test_q_sample_statistics_per_sample_and_channel():
    torch.manual_seed(0)
    ab, sigma = alpha_bar(500), 0.5
    x = torch.full([4000, 2, 1, 1], 1.5)
    t = torch.tensor([400, 20] * 4000)  # channel 0 at t = 400, channel 1 at t = 20 in every sample
    xt = q_sample(x, t, ab, sigma)
    for ch, step in ((0, 400), (1, 20)):
        values = xt[:, ch].flatten()
        mean, var = float(ab[step].sqrt() * 1.5), float(sigma ** 2 * (1 - ab[step]))
        assert float(values.mean()) == pytest.approx(mean, abs=4 * math.sqrt(var / 4000))
        assert float(values.var()) == pytest.approx(var, rel=0.1)


def test_T_of_p_and_the_number_of_noisy_slots():
    assert [timesteps_for(p) for p in (0, 0.001, 0.5, 1, 1.7)] == [5, 5, 5 + round(247.5), 500, 500]
    assert [noisy_slots(p) for p in (0, 0.1, 0.5, 0.75, 1)] == [0, 6, 32, 48, 48]


def test_p_zero_gives_a_zero_bank_and_the_identity():
    diffusion = FeatureDiffusion()
    assert int(diffusion.T) == 5 and not bool(diffusion.bank.any())
    x = torch.randn(2, 24, 8, 8)
    assert torch.equal(diffusion(x), x)


def test_priority_bank_never_draws_one_and_follows_k_minus_one():
    T = 12
    weights = priority_weights(T)
    assert weights[0] == 0 and torch.allclose(weights[1:] / weights[1], torch.arange(1, T, dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    draws = torch.cat([draw_bank(T, 1.0, generator)[:48] for _ in range(400)])
    assert int(draws.min()) >= 2 and int(draws.max()) <= T
    counts = torch.bincount(draws, minlength=T + 1)[2:].double()
    expected = weights[1:] * counts.sum()
    _, p_value = scipy.stats.chisquare(counts.numpy(), expected.numpy())
    assert p_value > 1e-3
    uniform = torch.full_like(counts, float(counts.sum()) / (T - 1))
    assert scipy.stats.chisquare(counts.numpy(), uniform.numpy())[1] < 1e-6  # and it is not uniform


def test_bank_has_the_noisy_fraction_and_forward_draws_per_sample_and_channel():
    diffusion = FeatureDiffusion(seed=1)
    diffusion.p.fill_(0.5)
    diffusion.update_T()
    assert int(diffusion.T) == timesteps_for(0.5)
    assert int((diffusion.bank > 0).sum()) <= 32 and not bool(diffusion.bank[32:].any())
    assert int((diffusion.bank[:32] > 0).sum()) == 32
    torch.manual_seed(0)
    t = diffusion.draw_t(64 * 40, torch.device('cpu')).view(64, 40)
    assert len(set(t[0].tolist())) > 1 and len(set(t[:, 0].tolist())) > 1  # channels and samples differ
    assert float((t == 0).double().mean()) == pytest.approx(0.5, abs=0.05)


def test_bank_depends_only_on_seed_and_update_count():
    a, b, c = FeatureDiffusion(seed=7), FeatureDiffusion(seed=7), FeatureDiffusion(seed=8)
    for module in (a, b, c):
        module.p.fill_(0.6)
        module.update_T()
    assert torch.equal(a.bank, b.bank) and not torch.equal(a.bank, c.bank)
    state = a.state_dict()
    assert {'p', 'T', 'bank', 'updates'} <= set(state) and 'alphas_bar' not in state
    d = FeatureDiffusion(seed=7)
    d.load_state_dict(state)
    assert int(d.T) == int(a.T) and torch.equal(d.alphas_bar, a.alphas_bar)


def _controller(batch=64, target=0.6):
    diffusion = FeatureDiffusion()
    return diffusion, DiffusionController(diffusion, batch_size=batch, target=target, interval=4, ada_kimg=100)


def test_p_update_arithmetic_every_four_iterations():
    diffusion, ctl = _controller()
    step = 64 * 4 / 100_000
    history = []
    for batch_idx in range(1, 13):
        logits = torch.ones(64, 100) if batch_idx <= 8 else -torch.ones(64, 100)  # r = +1 then −1
        ctl.end_iteration(IterationInfo(batch_idx, batch_idx * 64, 100, signs_all=sign_moments(logits)))
        history.append(float(diffusion.p))
    assert history[:3] == [0, 0, 0]  # only every 4 iterations
    assert history[3] == pytest.approx(step) and history[7] == pytest.approx(2 * step)
    assert history[11] == pytest.approx(step)  # r < target: down by one step
    assert int(diffusion.T) == timesteps_for(step)
    assert diffusion.p.dtype == torch.float64


def test_p_is_clipped_to_the_unit_interval():
    diffusion, ctl = _controller(batch=100_000)  # one step = 4
    ctl.end_iteration(IterationInfo(4, 0, 100, signs_all=sign_moments(-torch.ones(3))))
    assert float(diffusion.p) == 0
    ctl.end_iteration(IterationInfo(8, 0, 100, signs_all=sign_moments(torch.ones(3))))
    assert float(diffusion.p) == 1 and int(diffusion.T) == 500 and noisy_slots(1.0) == int((diffusion.bank > 0).sum())


@pytest.mark.parametrize('d_pos, channels', [('first', [24, 40, 112, 320]), ('last', [64, 64, 128, 256])])
def test_d_pos_puts_the_noise_before_ccm_or_after_csm(d_pos, channels, monkeypatch):
    torch.manual_seed(0)
    proj = FeatureProjector('random', diffusion=dict(), d_pos=d_pos)
    seen = []
    monkeypatch.setattr(proj.diffusion, 'forward', lambda x: seen.append(x.shape[1]) or x)
    proj(torch.randn(1, 3, 64, 64))
    assert seen == channels
