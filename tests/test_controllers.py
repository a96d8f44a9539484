"""The controller list: one real-sign collector, a fixed order, pre- and end-of-iteration hooks."""

from __future__ import annotations

import pytest
import torch

from patches.chain import ChainContext
from patches.overfit import RealSignCollector, sign_moments
from training import controllers
from training.augment import AugmentPipe
from training.loss_base import GANLoss


class Recorder(controllers.Controller):
    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def begin_iteration(self, info: controllers.IterationInfo) -> None:
        self.log.append(('begin', self.name, info.batch_idx))

    def end_iteration(self, info: controllers.IterationInfo) -> None:
        self.log.append(('end', self.name, info.batch_idx, None if info.signs_all is None else info.signs_all.tolist()))


def _build(log: list, **kwargs):
    loss = GANLoss(torch.device('cpu'), torch.nn.Identity(), torch.nn.Identity())
    pipe = AugmentPipe(xflip=1)
    ctl = controllers.build_controllers(
        loss=loss, chain_ctx=ChainContext(start_iter=0), augment_pipe=pipe, batch_size=4, ada_target=0.6,
        ada_interval=1, ada_kimg=0.004, atopk_kwargs=dict(mode='adaptive', batch_size=4, interval=1, kimg=0.004),
        backbone_controllers=[Recorder('backbone_x', log)], backbone='test', chain_enabled=True, **kwargs)
    return loss, pipe, ctl


def test_order_is_chain_ada_backbone_atopk_and_status_keeps_upstream_order():
    log: list = []
    loss, pipe, ctl = _build(log)
    assert [c.name for c in ctl] == ['chain', 'ada', 'backbone_x', 'atopk']
    assert loss.real_logit_listeners == [ctl.collector], 'one collector is the only real-logit listener'
    assert loss.d_pass_context is ctl.get('chain').chain_ctx and loss.generator_loss_reducer is ctl.get('atopk').atopk
    fields = ' '.join(ctl.status_fields())
    assert fields.index('augment') < fields.index('atopk_k') < fields.index('chain_p')


def test_one_collector_feeds_every_controller_its_statistic():
    log: list = []
    loss, pipe, ctl = _build(log)
    ctl.begin_iteration(0, 0, 100)
    loss.observe_real_logits(torch.tensor([[1.0], [2.0], [-1.0], [3.0]]), main=True)   # Dmain: Σ sign 2 of 4
    loss.observe_real_logits(torch.tensor([[1.0], [1.0], [1.0], [1.0]]), main=False)   # R1-only: Σ sign 4 of 4
    ctl.end_iteration(1, 4, 100)
    assert log == [('begin', 'backbone_x', 0), ('end', 'backbone_x', 1, [8.0, 6.0])]
    # ADA and ATop-k's own tracker read all real passes: r = 6/8 = 0.75 > 0.6 → p += B·interval/(kimg·1000) = 1
    assert float(pipe.p) == 1.0 and ctl.get('atopk').atopk.p == 1.0
    # CHAIN reads the Dmain pass only: a = 0.1 · (2/4) = 0.05 < τ → p stays 0.
    chain = ctl.get('chain').chain_ctx
    assert chain.ema_value == pytest.approx(0.1 * 0.5, rel=1e-15) and chain.p_value == 0.0
    assert ctl.collector.take() == (None, None), 'the collector starts every iteration empty'


def test_collector_moments_ignore_nans_and_split_main_from_all():
    collector = RealSignCollector()
    collector.accumulate(torch.tensor([1.0, float('nan'), -2.0, 0.0]), main=True)
    collector.accumulate(torch.tensor([5.0]), main=False)
    signs_all, signs_main = collector.take()
    assert signs_main.tolist() == [3.0, 0.0] and signs_all.tolist() == [4.0, 1.0]
    assert sign_moments(torch.tensor([[-1.0, 2.0]])).dtype == torch.float64


def test_states_are_named_by_controller():
    log: list = []
    _loss, _pipe, ctl = _build(log)
    assert set(ctl.states()) == {'ada', 'atopk'}  # CHAIN's p lives in D's buffers; the recorder has none


def test_verify_hooks_names_the_backbone_and_the_unused_hook():
    log: list = []
    loss, _pipe, ctl = _build(log)
    with pytest.raises(controllers.MethodHookError, match="backbone 'test': --chain=1 but its D never ran a labelled"):
        ctl.verify_hooks(loss, 'test')
    loss.hook_calls.update(['observe_real_logits', 'pass:dreal'])
    with pytest.raises(controllers.MethodHookError, match='no CHAIN layer ran'):
        ctl.verify_hooks(loss, 'test')
    ctl.get('chain').chain_ctx.layer_calls['dreal'] += 1
    with pytest.raises(controllers.MethodHookError, match="backbone 'test': the D augmentation pipe"):
        ctl.verify_hooks(loss, 'test')
    loss.hook_calls['augment'] += 1
    with pytest.raises(controllers.MethodHookError, match='reduce_generator_adv_loss'):
        ctl.verify_hooks(loss, 'test')
    loss.hook_calls['reduce_generator_adv_loss'] += 1
    ctl.verify_hooks(loss, 'test')  # every hook used: no error
