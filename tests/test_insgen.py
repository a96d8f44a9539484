"""InsGen (docs/insgen.md): the contrastive head, queues, momentum updates, the loss terms and their
weights, the head optimisers, ``--ada-linear``, D_ema, the key gather over 2 gloo processes, and
tiny CPU runs (``--atopk=1``, ``--chain=1``) that snapshot and resume exactly.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from backbones.insgen import (AdaLinearController, DEmaController, InsGenBackbone, feature_channels,
                              head_optimizer_kwargs, queue_size)
from backbones.insgen.heads import KEY_DIM, ContrastiveHead, gather_keys, info_nce
from backbones.insgen.loss import GENERATOR_WEIGHT, Z_PERTURBATION, InsGenLoss
from dnnlib.util import UserError
from tests.test_training_loop import assert_same_training_state, loop_args, run, straight_and_resumed
from torch_utils import distributed
from training import config, snapshot_io
from training.controllers import IterationInfo


def _head(inplanes=8, size=5, seed=0):
    torch.manual_seed(seed)
    return ContrastiveHead(inplanes, size)


# ---------------------------------------------------------------------------------------------
# The head (docs/insgen.md §2)


def test_closed_form_loss_with_identical_query_and_key_and_an_orthogonal_queue():
    head = _head(size=7)
    features = torch.randn(1, 8)
    q = head.query(features)
    other = torch.randn(KEY_DIM)
    other = F.normalize(other - (other @ q[0]) * q[0], dim=0)  # unit, orthogonal to q
    head.queue.copy_(other[:, None].expand(KEY_DIM, 7))
    loss = head(features, features, loss_only=True)  # same MLP weights → q = k
    assert float(loss.detach()) == pytest.approx(math.log(1 + 7 * math.exp(-5)), rel=1e-5)


def test_queries_and_keys_are_unit_vectors_and_the_loss_is_cross_entropy_at_label_0():
    head = _head()
    x = torch.randn(6, 8, 4, 4)
    q, k = head.query(x), head.key(x.flip(0))
    assert torch.allclose(q.norm(dim=1), torch.ones(6)) and torch.allclose(k.norm(dim=1), torch.ones(6))
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ head.queue], 1) / 0.2
    assert torch.allclose(info_nce(q, k, head.queue, 0.2), F.cross_entropy(logits, torch.zeros(6, dtype=torch.long)))
    assert torch.allclose(head.queue.norm(dim=0), torch.ones(5))  # random unit columns at init


def test_momentum_mlp_moves_at_every_forward():
    head = _head()
    with torch.no_grad():
        for p in head.momentum_mlp.parameters():
            p.add_(1.0)
    old = [p.clone() for p in head.momentum_mlp.parameters()]
    new = [p.clone() for p in head.mlp.parameters()]
    head(torch.randn(2, 8), torch.randn(2, 8), loss_only=True)
    for k, k0, q in zip(head.momentum_mlp.parameters(), old, new):
        assert torch.allclose(k, 0.999 * k0 + 0.001 * q, atol=1e-7)
    assert not any(p.requires_grad for p in head.momentum_mlp.parameters())


def test_queue_ring_buffer_wrap_around_and_batch_larger_than_the_queue():
    head = _head(size=5)
    keys = F.normalize(torch.randn(9, KEY_DIM), dim=1)
    head.enqueue(keys[:3])
    assert int(head.queue_ptr) == 3 and torch.equal(head.queue[:, :3], keys[:3].T)
    head.enqueue(keys[3:6])  # wraps: columns 3, 4 then 0
    assert int(head.queue_ptr) == 1
    assert torch.equal(head.queue[:, 3:5], keys[3:5].T) and torch.equal(head.queue[:, 0], keys[5])
    head.enqueue(keys[6:8])  # ends exactly at K: the pointer becomes K (the reference's value) …
    assert int(head.queue_ptr) == 3
    head.enqueue(keys[:2])
    assert int(head.queue_ptr) == 5
    head.enqueue(keys[2:3])  # … and the next write starts at 0
    assert int(head.queue_ptr) == 1 and torch.equal(head.queue[:, 0], keys[2])
    head.enqueue(keys[:7])  # more keys than K: the first K, pointer unchanged
    assert torch.equal(head.queue, keys[:5].T) and int(head.queue_ptr) == 1


def test_real_fake_and_generator_calls_enqueue_keys_query_momenta_or_nothing():
    head = _head(size=8)
    q_feat, k_feat = torch.randn(2, 8), torch.randn(2, 8)
    before = head.queue.clone()
    head(q_feat, k_feat, loss_only=True)
    assert torch.equal(head.queue, before) and int(head.queue_ptr) == 0
    head(q_feat, k_feat)
    assert torch.allclose(head.queue[:, :2], head.key(k_feat).T)
    head(q_feat, k_feat, enqueue_query=True)
    assert torch.allclose(head.queue[:, 2:4], head.key(q_feat).T)


def test_queue_size_rule():
    assert queue_size(100, False, None) == 5 and queue_size(100, True, None) == 10
    assert queue_size(5000, True, None) == 500 and queue_size(100, True, 64) == 64
    assert queue_size(10, False, None) == 1  # never empty


# ---------------------------------------------------------------------------------------------
# Networks, optimisers, controllers (docs/insgen.md §1, §4, §5)


def test_d_returns_the_features_entering_the_epilogue():
    from training.networks import Discriminator
    torch.manual_seed(0)
    D = Discriminator(0, 16, 3, channel_base=256, channel_max=16)
    img = torch.randn(2, 3, 16, 16)
    logits, feats = D(img, None, return_feats=True)
    assert feats.shape == (2, 16, 4, 4) and torch.equal(logits, D(img, None))
    assert feature_channels(dict(channel_base=256, channel_max=16)) == 16
    assert feature_channels(dict(channel_base=32768, channel_max=512)) == 512


def test_head_optimisers_use_the_lazy_regularisation_ratios():
    d = head_optimizer_kwargs(dict(class_name='torch.optim.Adam', lr=0.0025, betas=[0, 0.99], eps=1e-8), 16 / 17)
    g = head_optimizer_kwargs(dict(class_name='torch.optim.Adam', lr=0.0025, betas=[0, 0.99], eps=1e-8), 4 / 5)
    assert d.lr == pytest.approx(0.0025 * 16 / 17) and d.betas == [0.0, pytest.approx(0.99 ** (16 / 17))]
    assert g.lr == pytest.approx(0.0025 * 4 / 5) and g.betas == [0.0, pytest.approx(0.99 ** 0.8)]


def test_d_ema_moves_once_per_iteration_by_0_999():
    D, D_ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    old = [p.clone() for p in D_ema.parameters()]
    DEmaController(D, D_ema).begin_iteration(IterationInfo(0, 0, 100))
    for p_ema, p0, p in zip(D_ema.parameters(), old, D.parameters()):
        assert torch.allclose(p_ema, 0.999 * p0 + 0.001 * p)


def test_ada_linear_sets_p_to_target_times_progress():
    pipe = torch.nn.Module()
    pipe.register_buffer('p', torch.zeros([]))
    ctl = AdaLinearController(pipe, target=0.6, total_kimg=10, interval=4)
    ctl.end_iteration(IterationInfo(3, 3000, 100))
    assert float(pipe.p) == 0
    ctl.end_iteration(IterationInfo(4, 4000, 100))
    assert float(pipe.p) == pytest.approx(0.6 * 4 / 10)


# ---------------------------------------------------------------------------------------------
# The loss terms and their weights (docs/insgen.md §3)


def _tiny_loss(cl_on_g=True):
    from training.augment import AugmentPipe
    from training.networks import Discriminator, Generator
    torch.manual_seed(0)
    G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                  mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=256, channel_max=16))
    D = Discriminator(0, 16, 3, channel_base=256, channel_max=16)
    pipe = AugmentPipe(xflip=1, rotate90=1, xint=1)
    loss = InsGenLoss(torch.device('cpu'), G, D, pipe, cl_on_g=cl_on_g, pl_weight=0, style_mixing_prob=0)
    heads = [ContrastiveHead(16, 6), ContrastiveHead(16, 6)]
    opts = [torch.optim.Adam(h.mlp.parameters(), lr=1e-3) for h in heads]
    loss.attach(_copy(D), heads[0], heads[1], *opts)
    return G, D, loss


def _copy(module):
    import copy
    return copy.deepcopy(module).eval()


def test_d_terms_weights_enqueue_and_the_perturbed_twin(monkeypatch):
    G, D, loss = _tiny_loss()
    seen = []
    original = loss.contrastive

    def spy(img, c, head, name, key_img=None, loss_only=False, enqueue_query=False):
        value = original(img, c, head, name, key_img=key_img, loss_only=loss_only, enqueue_query=enqueue_query)
        seen.append((name, head, key_img is not None, loss_only, enqueue_query, value.detach()))
        return value
    monkeypatch.setattr(loss, 'contrastive', spy)
    twins = []
    run_G = loss.run_G
    monkeypatch.setattr(loss, 'run_G', lambda z, c: twins.append(z.clone()) or run_G(z, c))
    z = torch.randn(4, 8)
    D.requires_grad_(True)
    head_before = [p.clone() for p in loss.heads['DHead'].mlp.parameters()]
    torch.manual_seed(1)
    extra_holder = {}
    orig_extra = loss.discriminator_main_extra
    monkeypatch.setattr(loss, 'discriminator_main_extra',
                        lambda r, c: extra_holder.setdefault('v', orig_extra(r, c)))
    loss.accumulate_gradients('Dmain', torch.randn(4, 3, 16, 16), torch.zeros(4, 0), z, torch.zeros(4, 0), gain=1)
    names = [s[0] for s in seen]
    assert names == ['D_cl', 'G_cl']
    assert seen[0][1] is loss.heads['DHead'] and not seen[0][2] and not seen[0][4]
    assert seen[1][1] is loss.heads['GHead'] and seen[1][2] and seen[1][4]
    assert float(extra_holder['v'].detach()) == pytest.approx(float(seen[0][5] + seen[1][5]), rel=1e-5)  # weights 1, 1
    fake_z, twin_z = twins[0], twins[1]
    assert torch.equal(fake_z, z)
    assert float((twin_z - z).std()) == pytest.approx(Z_PERTURBATION, rel=0.35)
    assert int(loss.heads['DHead'].queue_ptr) == 4 and int(loss.heads['GHead'].queue_ptr) == 4
    assert any(not torch.equal(a, b) for a, b in zip(head_before, loss.heads['DHead'].mlp.parameters()))
    assert not any(p.requires_grad for p in loss.heads['DHead'].parameters())  # trained inside Dmain only


@pytest.mark.parametrize('cl_on_g', [True, False])
def test_generator_term_is_added_after_the_atopk_reduction_and_leaves_the_queue(cl_on_g):
    G, D, loss = _tiny_loss(cl_on_g=cl_on_g)
    reduced = []
    loss.generator_loss_reducer = lambda per_sample, scores: reduced.append(per_sample) or per_sample.mean() * 0
    queue = loss.heads['GHead'].queue.clone()
    G.requires_grad_(True)
    loss.accumulate_gradients('Gmain', None, None, torch.randn(4, 8), torch.zeros(4, 0), gain=1)
    assert len(reduced) == 1 and reduced[0].shape == (4,)  # ATop-k sees the adversarial term only
    grads = [p.grad for p in G.parameters() if p.grad is not None]
    moved = bool(grads) and any(float(g.abs().sum()) > 0 for g in grads)
    assert moved == cl_on_g  # with the adversarial part zeroed, only the 0.1 contrastive term drives G
    assert torch.equal(loss.heads['GHead'].queue, queue) and int(loss.heads['GHead'].queue_ptr) == 0
    assert all(p.grad is None for p in loss.heads['GHead'].parameters())
    assert GENERATOR_WEIGHT == 0.1


# ---------------------------------------------------------------------------------------------
# Multi-process key gather (gloo, CPU)


def _gather_rank(rank, init_file, out_dir):
    distributed.init_process_group(rank, 2, torch.device('cpu'), init_method=f'file://{init_file}')
    torch.manual_seed(0)
    head = ContrastiveHead(8, 6)  # same init on both ranks (the loop broadcasts modules anyway)
    keys = torch.zeros(2, KEY_DIM)
    keys[0, rank], keys[1, rank + 2] = 1, 1  # rank 0: e0, e2; rank 1: e1, e3
    gathered = gather_keys(keys)
    head.enqueue(keys)
    with open(os.path.join(out_dir, f'gather{rank}.json'), 'w') as f:
        json.dump(dict(shape=list(gathered.shape), order=gathered.argmax(1).tolist(), queue=head.queue.tolist(),
                       ptr=int(head.queue_ptr)), f)
    distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_gather_gives_world_times_batch_keys_and_equal_queues(tmp_path):
    torch.multiprocessing.spawn(_gather_rank, args=(str(tmp_path / 'init'), str(tmp_path)), nprocs=2)
    r0, r1 = (json.load(open(tmp_path / f'gather{r}.json')) for r in (0, 1))
    assert r0['shape'] == r1['shape'] == [4, KEY_DIM]
    assert r0['order'] == r1['order'] == [0, 2, 1, 3]  # rank order, each rank's batch in order
    assert r0['queue'] == r1['queue'] and r0['ptr'] == r1['ptr'] == 4


def test_single_process_gather_is_the_identity():
    keys = torch.randn(3, KEY_DIM)
    assert gather_keys(keys) is keys


# ---------------------------------------------------------------------------------------------
# Configuration and tiny CPU runs


def insgen_args(tmp_path, **overrides):
    args = loop_args(dict(dict(outdir=str(tmp_path), data='builtin:16', backbone='insgen', cfg='low_shot', cbase=256,
                               cmax=16, batch=4, kimg=0.016, fp32=True, metrics=[], workers=0, tick=0.004, snap=1,
                               map=2, seed=0), **overrides))
    args.backbone_kwargs.G_kwargs.z_dim = args.backbone_kwargs.G_kwargs.w_dim = 32
    return args


def test_configuration(capsys):
    _, args = config.build_training_args(config.TrainOptions.from_flags(dict(
        outdir='unused', data='builtin:16', backbone='insgen', cbase=256, cmax=16, batch=16, mirror=True, metrics=[],
        rqs=12, ada_linear=True)))
    ins = args.backbone_kwargs.insgen
    assert ins.inplanes == 16 and ins.queue_sizes == dict(DHead=12, GHead=10) and ins.ada_linear
    assert args.backbone_kwargs.loss_kwargs.class_name == 'backbones.insgen.loss.InsGenLoss'
    assert 'WARNING: InsGen GHead queue holds 10 keys, fewer than the batch 16' in capsys.readouterr().out
    assert InsGenBackbone.default_preset == 'paper256'
    with pytest.raises(UserError, match='--rqs belongs to --backbone=insgen'):
        config.TrainOptions.from_flags(dict(outdir='unused', data='builtin:16', rqs=4))


def test_insgen_needs_ada(tmp_path):
    with pytest.raises(UserError, match='needs ADA'):
        run(insgen_args(tmp_path, aug='noaug'), tmp_path / 'r')


_RUNS: dict = {}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    def get(name, **flags):
        if name not in _RUNS:
            root = tmp_path_factory.mktemp(name)
            straight, _, resumed = straight_and_resumed(insgen_args, root, 0.008, **flags)
            _RUNS[name] = (straight, resumed, root)
        return _RUNS[name]
    yield get
    _RUNS.clear()


@pytest.mark.slow
def test_insgen_with_atopk_snapshots_and_resumes_exactly(trained):
    straight, resumed, root = trained('atopk', atopk=True)
    assert_same_training_state(straight['last_snapshot'], resumed['last_snapshot'])
    for name in ('DHead', 'GHead'):
        assert torch.equal(straight[name].queue, resumed[name].queue)
        # K = 5, 4 keys per iteration: pointer 0 → 4 → 3 → 2 → 1
        assert int(straight[name].queue_ptr) == int(resumed[name].queue_ptr) == 1
    stats = [json.loads(line) for line in open(root / 'straight' / 'stats.jsonl')]
    assert {'Loss/D_cl', 'Loss/G_cl', 'Loss/G_cl_on_g', 'ATopk/k'} <= set(stats[-1])
    assert all(math.isfinite(stats[-1][k]['mean']) for k in ('Loss/D_cl', 'Loss/G_cl', 'Loss/G_cl_on_g'))
    D, D_ema = straight['D'], straight['D_ema']
    assert any(not torch.equal(a, b) for a, b in zip(D.parameters(), D_ema.parameters()))
    sample = snapshot_io.load_generator(straight['last_snapshot'])  # generate.py / calc_metrics.py's path
    assert sample(torch.randn(2, sample.z_dim), torch.zeros(2, 0)).shape == (2, 3, 16, 16)


def test_insgen_with_chain_and_ada_linear_runs(tmp_path):
    result = run(insgen_args(tmp_path, chain=True, chain_start=0, ada_linear=True), tmp_path / 'r')
    assert result['cur_nimg'] == 16
    assert float(result['augment_pipe'].p) == pytest.approx(0.6)  # target · 16 / 16 images at iteration 4
    stats = [json.loads(line) for line in open(tmp_path / 'r' / 'stats.jsonl')]
    assert 'CHAIN/p' in stats[-1] and 'Loss/D_cl' in stats[-1]
