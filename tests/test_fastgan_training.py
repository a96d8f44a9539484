"""FastGAN through the training loop and the CLI (docs/fastgan.md §4–§6): exact resume with the
original D, with CHAIN's D_big and with ATop-k; CHAIN's p after the D step; the G_ema rule; the
configuration; train.py + generate.py.

Tiny CPU runs: 256 px, ngf = ndf = 8, batch 2, 4 iterations, one tick per iteration.
"""

from __future__ import annotations

import json
import os

import numpy as np
import PIL.Image
import pytest
import torch

from backbones.fastgan.loss import FastGANLoss
from dnnlib.util import UserError
from tests.test_training_loop import assert_same_training_state, loop_args, run, run_cli
from training import config, ema, snapshot_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 2
ITERATIONS = 4
VARIANTS = {
    'orig': {},
    'big_chain': dict(fastgan_d='big', chain=True, chain_start=0, chain_tau=0),
    'atopk': dict(atopk=True),
}


def fastgan_args(tmp_path, **flags):
    return loop_args(dict(dict(outdir=str(tmp_path), data='builtin:256', backbone='fastgan', ngf=8, ndf=8,
                               recon_loss='l1', batch=BATCH, kimg=ITERATIONS * BATCH / 1000, tick=BATCH / 1000,
                               snap=1, metrics=[], workers=0, grid='2x2', seed=0), **flags))


class Recorder:
    """Wraps FastGANLoss and ConstantEMA (behaviour unchanged) to see inside one run.

    ``ema_sign_start`` — CHAIN only: set the context's sign EMA a to this value when the run's first
    Dmain begins, so that a stays > 0 for the first iterations and p (τ = 0) must rise by Δp at
    every update: whether the update came after Dmain or at the end of the iteration is then
    visible in the p that the Gmain pass sees.
    """

    def __init__(self, ema_sign_start=None):
        self.ema_sign_start = ema_sign_start
        self.passes = []          # (cur_nimg, label, p during the pass, real logits for 'dreal')
        self.initial = None       # G, D, G_ema state before the first step
        self.first_ema = None     # what the first EMA update saw and did
        self.loss = None

    def install(self, mp):
        recorder = self
        accumulate, d_pass, update = FastGANLoss.accumulate_gradients, FastGANLoss._d, ema.ConstantEMA.update

        def accumulate_gradients(self, phase, real_img, real_c, gen_z, gen_c, gain, cur_nimg=0):
            recorder.loss, recorder.cur_nimg = self, cur_nimg
            if recorder.initial is None:
                recorder.initial = dict(G=_params(self.G), D=_params(self.D))
            ctx = getattr(self.D, 'chain_ctx', None)
            if recorder.ema_sign_start is not None and phase == 'Dmain' and cur_nimg == 0:
                ctx.ema_sign.fill_(recorder.ema_sign_start)
            return accumulate(self, phase, real_img, real_c, gen_z, gen_c, gain, cur_nimg)

        def _d(self, imgs, label, part=None):
            out, extra = d_pass(self, imgs, label, part)
            ctx = getattr(self.D, 'chain_ctx', None)
            logits = out[0] if part is not None else out
            recorder.passes.append((recorder.cur_nimg, label, None if ctx is None else ctx.p_value,
                                    logits.detach().clone() if label == 'dreal' else None))
            return out, extra

        def ema_update(self, G, G_ema, **kwargs):
            if recorder.first_ema is None:
                before = _params(G_ema)
                update(self, G, G_ema, **kwargs)
                recorder.first_ema = dict(G=_params(G), G_ema_before=before, G_ema_after=_params(G_ema),
                                          G_buffers=_buffers(G), G_ema_buffers=_buffers(G_ema),
                                          D=_params(recorder.loss.D), beta=self.beta)
                return None
            return update(self, G, G_ema, **kwargs)

        mp.setattr(FastGANLoss, 'accumulate_gradients', accumulate_gradients)
        mp.setattr(FastGANLoss, '_d', _d)
        mp.setattr(ema.ConstantEMA, 'update', ema_update)


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _buffers(module):
    return {n: b.detach().clone() for n, b in module.named_buffers()}


_RUNS: dict = {}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """variant → (straight run, first half, resumed second half, recorder of the straight run)."""

    def get(variant):
        if variant not in _RUNS:
            root = tmp_path_factory.mktemp(variant)
            flags = VARIANTS[variant]
            ema_sign = 1.0 if flags.get('chain') else None
            with pytest.MonkeyPatch.context() as mp:
                recorder = Recorder(ema_sign)
                recorder.install(mp)
                straight = run(fastgan_args(root, **flags), root / 'straight')
            with pytest.MonkeyPatch.context() as mp:
                Recorder(ema_sign).install(mp)  # the same a at iteration 0 (the resumed half never sees it)
                first = run(fastgan_args(root, kimg=ITERATIONS // 2 * BATCH / 1000, **flags), root / 'first')
                resumed = run(fastgan_args(root, **flags), root / 'resumed', resume_pkl=first['last_snapshot'])
            _RUNS[variant] = (straight, first, resumed, recorder, root)
        return _RUNS[variant]

    yield get
    _RUNS.clear()


def _stats(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, 'stats.jsonl'))]


# ---------------------------------------------------------------------------------------------
# 16. Exact resume.

@pytest.mark.parametrize('variant', list(VARIANTS))
def test_straight_run_equals_half_plus_resumed_half(trained, variant):
    straight, first, resumed, _, root = trained(variant)
    assert first['cur_nimg'] == ITERATIONS // 2 * BATCH
    assert straight['cur_nimg'] == resumed['cur_nimg'] == ITERATIONS * BATCH
    data = snapshot_io.read(straight['last_snapshot'])
    assert data['backbone'] == 'fastgan'
    assert set(data['modules']) >= {'G', 'D', 'G_ema', 'augment_pipe'}
    stats_straight, stats_resumed = _stats(root / 'straight'), _stats(root / 'resumed')
    for name in ('Loss/G/loss', 'Loss/D/loss', 'Loss/D/recon'):
        assert stats_straight[-1][name]['mean'] == pytest.approx(stats_resumed[-1][name]['mean'], rel=1e-6), name
    D = straight['D']
    if variant == 'big_chain':
        assert type(D).__name__ == 'DiscriminatorBig'
        # a starts at 1 (Recorder): p rises by Δp at every one of the 4 updates.
        assert D.chain_ctx.p_value == pytest.approx(ITERATIONS * 0.001) and D.chain_ctx.p_value > 0
        assert resumed['D'].chain_ctx.p_value == D.chain_ctx.p_value
        assert {'CHAIN/0MR/real', 'CHAIN/0MR/fake', 'CHAIN/p'} <= set(stats_straight[-1])
        chain0 = D.down_4.main[2]
        assert not torch.equal(chain0.running_var_real, torch.ones_like(chain0.running_var_real))
    else:
        assert type(D).__name__ == 'Discriminator'
    if variant == 'atopk':
        assert (root / 'straight' / 'atopk-trace.jsonl').exists()
        assert 'ATopk/k' in stats_straight[-1]
        assert 'atopk' in data['training_state']['states']
    # Every module's state (G_ema's buffers included), Adam, RNG-driven states: bitwise the same.
    assert_same_training_state(straight['last_snapshot'], resumed['last_snapshot'])


# ---------------------------------------------------------------------------------------------
# 17. CHAIN's p moves after the D step, before the G step.

def test_chain_p_is_updated_between_dmain_and_gmain(trained):
    straight, _, _, recorder, _ = trained('big_chain')
    passes = recorder.passes
    assert [label for _, label, _, _ in passes] == ['dreal', 'dfake', 'gfake'] * ITERATIONS
    first_iteration = {label: p for nimg, label, p, _ in passes if nimg == 0}
    assert first_iteration['dreal'] == first_iteration['dfake'] == 0
    assert first_iteration['gfake'] == pytest.approx(0.001), 'p moved after Dmain, before the G pass'
    # The whole trace follows a ← 0.9 a + 0.1 mean(sign(D(x_real))), p ← clip(p + Δp sign(a − τ)) after each Dmain.
    a, p = 1.0, 0.0
    for i in range(ITERATIONS):
        (_, _, p_real, logits), (_, _, p_fake, _), (_, _, p_g, _) = passes[3 * i:3 * i + 3]
        assert p_real == pytest.approx(p, abs=1e-12) and p_fake == pytest.approx(p, abs=1e-12)
        a = 0.9 * a + 0.1 * float(logits.sign().mean())
        p = min(max(p + 0.001 * np.sign(a - 0.0), 0.0), 1.0)
        assert p_g == pytest.approx(p, abs=1e-12), f'iteration {i}'
    assert straight['D'].chain_ctx.ema_value == pytest.approx(a, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# 18. One step: G and D move, G_ema is 0.999·old + 0.001·new, buffers copied.

def test_one_step_moves_g_and_d_and_g_ema_follows_the_constant_ema(trained):
    _, _, _, recorder, _ = trained('orig')
    initial, step = recorder.initial, recorder.first_ema
    assert step['beta'] == 0.999
    for name, old in initial['G'].items():
        assert torch.equal(step['G_ema_before'][name], old), f'G_ema starts as G ({name})'
        assert not torch.equal(step['G'][name], old), f'G.{name} did not move'
        want = 0.999 * old + 0.001 * step['G'][name]
        torch.testing.assert_close(step['G_ema_after'][name], want, rtol=1e-6, atol=1e-9)
    assert all(not torch.equal(step['D'][name], old) for name, old in initial['D'].items())
    assert step['G_buffers'].keys() == step['G_ema_buffers'].keys() and step['G_buffers']
    for name, buf in step['G_buffers'].items():
        assert torch.equal(step['G_ema_buffers'][name], buf), f'G_ema carries G.{name}'


# ---------------------------------------------------------------------------------------------
# 19. Configuration.

BASE_FLAGS = dict(outdir='unused', data='builtin:256', backbone='fastgan', ngf=8, ndf=8, recon_loss='l1',
                  metrics=[], workers=0)


def _configure(**flags):
    return config.build_training_args(config.TrainOptions.from_flags(dict(BASE_FLAGS, **flags)))


@pytest.mark.parametrize('flags, message', [
    (dict(chain=True), '--fastgan-d=big'),
    (dict(data='builtin:64'), '256'),
    (dict(recon_loss='lpips'), '--lpips-vgg16'),
])
def test_configuration_errors(flags, message):
    with pytest.raises(UserError, match=message):
        _configure(**flags)


def test_configuration_defaults_and_overrides(capsys):
    desc, args = _configure()
    assert 'WARNING' in capsys.readouterr().out
    assert 'reconl1' in desc and '-dorig' in desc
    assert args.augment_kwargs == dict(class_name='training.diffaugment.DiffAugmentPipe', policy='color,translation',
                                       random_order=False)
    assert args.total_kimg == 400 and args.batch_size == 8 and args.chain_kwargs is None
    kw = args.backbone_kwargs
    assert kw.margin == 'random' and kw.recon == dict(kind='l1') and kw.G_kwargs.small_output
    assert kw.ema_kwargs == dict(class_name='training.ema.ConstantEMA', beta=0.999, buffers='copy')
    assert kw.G_opt_kwargs.betas == kw.D_opt_kwargs.betas == [0.5, 0.999]
    assert kw.G_opt_kwargs.lr == kw.D_opt_kwargs.lr == 2e-4

    desc, args = _configure(fastgan_d='big', chain=True, chain_res=[256, 16])
    assert '-dbig' in desc and '-chain' in desc and args.total_kimg == 800
    assert args.augment_kwargs.policy == 'color,translation' and args.augment_kwargs.random_order is True
    kw = args.backbone_kwargs
    assert kw.margin == 'one' and not kw.G_kwargs.small_output
    assert kw.D_kwargs.class_name == 'backbones.fastgan.d_big.DiscriminatorBig'
    assert kw.D_kwargs.chain_kwargs.resolutions == [256, 16] and kw.D_kwargs.chain_kwargs.variant == 'chain'

    _, args = _configure(aug='ada')
    assert args.augment_kwargs.class_name == 'training.augment.AugmentPipe'
    _, args = _configure(fastgan_d='big', diffaugment='color')
    assert args.augment_kwargs.policy == 'color' and args.augment_kwargs.random_order is True


# ---------------------------------------------------------------------------------------------
# 20. train.py and generate.py.

def _cli(script, *args, tmp_path):
    return run_cli(script, *args, tmp_path=tmp_path)


@pytest.fixture(scope='module')
def cli_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('cli')
    proc = _cli('train.py', f'--outdir={tmp_path}', '--backbone=fastgan', '--data=builtin:256', '--ngf=8', '--ndf=8',
                '--recon-loss=l1', '--kimg=0.008', '--batch=4', '--tick=0.004', '--snap=1', '--metrics=none',
                '--workers=0', '--grid=2x2', tmp_path=tmp_path)
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir() and p.name != 'cache')
    return tmp_path, run_dir, proc


def test_train_py(cli_run):
    _, run_dir, proc = cli_run
    assert run_dir.name.startswith('00000-builtin256-fastgan') and 'reconl1' in run_dir.name
    assert 'WARNING: --recon-loss=l1' in proc.stdout
    files = set(os.listdir(run_dir))
    assert {'reals.png', 'fakes_init.png', 'stats.jsonl', 'training_options.json'} <= files
    options = json.load(open(run_dir / 'training_options.json'))
    assert options['backbone'] == 'fastgan' and options['backbone_kwargs']['recon'] == {'kind': 'l1'}
    snaps = sorted(f for f in files if f.startswith('network-snapshot-'))
    assert snaps
    data = snapshot_io.read(str(run_dir / snaps[-1]))
    assert data['training_state']['cur_nimg'] == 8


def test_generate_py_writes_256px_pngs(cli_run):
    tmp_path, run_dir, _ = cli_run
    snap = str(run_dir / sorted(f for f in os.listdir(run_dir) if f.startswith('network-snapshot-'))[-1])
    out = tmp_path / 'out'
    _cli('generate.py', f'--network={snap}', '--seeds=0-2', f'--outdir={out}', tmp_path=tmp_path)
    for seed in range(3):
        img = np.asarray(PIL.Image.open(out / f'seed{seed:04d}.png'))
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8 and img.std() > 0
