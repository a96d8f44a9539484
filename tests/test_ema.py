"""EMA rules (training/ema.py) against their closed forms, and optimisers built from their class."""

from __future__ import annotations

import pytest
import torch

from training import ema, phases


class Net(torch.nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.w = torch.nn.Parameter(torch.full([3], value, dtype=torch.float64))
        self.register_buffer('b', torch.full([2], value, dtype=torch.float64))


def test_half_life_ema_matches_its_closed_form_with_ramp_up():
    rule = ema.HalfLifeEMA(ema_kimg=10, ema_rampup=0.05)
    G, G_ema = Net(1.0), Net(0.0)
    rule.update(G, G_ema, cur_nimg=400, batch_idx=99, batch_size=4)
    beta = 0.5 ** (4 / (400 * 0.05))  # ramp-up: ema_nimg = min(10000, 400 · 0.05) = 20
    assert torch.allclose(G_ema.w, torch.full([3], 1 - beta, dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.equal(G_ema.b, G.b), 'StyleGAN2 copies buffers'
    assert ema.HalfLifeEMA(10, None).beta(400, 4) == 0.5 ** (4 / 10000)


def test_half_life_ema_halves_the_distance_every_ema_kimg():
    rule = ema.HalfLifeEMA(ema_kimg=0.008, ema_rampup=None)  # half-life of 8 images = 2 steps of 4
    G, G_ema = Net(1.0), Net(0.0)
    for step in range(4):
        rule.update(G, G_ema, cur_nimg=4 * step, batch_idx=step, batch_size=4)
    assert G_ema.w[0].item() == pytest.approx(1 - 0.25, rel=1e-12)


def test_constant_ema_is_a_fixed_beta_on_parameters_only():
    rule = ema.ConstantEMA(beta=0.999)
    G, G_ema = Net(2.0), Net(0.0)
    for step in range(3):
        rule.update(G, G_ema, cur_nimg=0, batch_idx=step, batch_size=8)
    assert G_ema.w[0].item() == pytest.approx(2.0 * (1 - 0.999 ** 3), rel=1e-12)
    assert torch.equal(G_ema.b, torch.zeros(2, dtype=torch.float64)), 'FastGAN keeps G_ema buffers'


def test_start_iteration_ema_copies_until_the_start_then_decays():
    rule = ema.StartIterationEMA(decay=0.9, start_iter=3)
    G, G_ema = Net(1.0), Net(5.0)
    rule.update(G, G_ema, cur_nimg=0, batch_idx=0, batch_size=1)  # iteration 1 < 3: copy
    assert torch.equal(G_ema.w, G.w) and torch.equal(G_ema.b, G.b)
    with torch.no_grad():
        G.w.fill_(2.0)
        G.b.fill_(2.0)
    rule.update(G, G_ema, cur_nimg=0, batch_idx=1, batch_size=1)  # iteration 2: still a copy
    assert G_ema.w[0].item() == 2.0
    with torch.no_grad():
        G.w.fill_(3.0)
        G.b.fill_(3.0)
    rule.update(G, G_ema, cur_nimg=0, batch_idx=2, batch_size=1)  # iteration 3: decay 0.9
    assert G_ema.w[0].item() == pytest.approx(0.9 * 2 + 0.1 * 3, rel=1e-12)
    assert G_ema.b[0].item() == pytest.approx(0.9 * 2 + 0.1 * 3, rel=1e-12), 'BigGAN averages buffers too'


def test_build_ema_constructs_the_named_rule():
    rule = ema.build_ema(dict(class_name='training.ema.ConstantEMA', beta=0.5))
    assert isinstance(rule, ema.ConstantEMA) and rule.beta == 0.5


def test_optimiser_is_built_from_its_configured_class():
    net = Net(1.0)
    opt = phases.build_optimizer(net.parameters(), dict(class_name='torch.optim.SGD', lr=0.1, momentum=0.5))
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]['momentum'] == 0.5


def test_lazy_regularization_rescales_lr_and_betas_and_shares_one_optimiser():
    net = Net(1.0)
    main, reg = phases.lazy_regularization_phases('D', net, dict(class_name='torch.optim.Adam', lr=0.002,
                                                                 betas=[0, 0.99], eps=1e-8), reg_interval=16)
    c = 16 / 17
    assert (main.name, reg.name, reg.interval, main.opt is reg.opt, main.opt_name) == ('Dmain', 'Dreg', 16, True, 'D')
    group = main.opt.param_groups[0]
    assert group['lr'] == pytest.approx(0.002 * c) and group['betas'] == pytest.approx((0, 0.99 ** c))
    both, = phases.lazy_regularization_phases('G', net, dict(class_name='torch.optim.RMSprop', lr=0.01), None)
    assert both.name == 'Gboth' and type(both.opt) is torch.optim.RMSprop and both.opt.param_groups[0]['lr'] == 0.01
