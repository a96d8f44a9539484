"""A second backbone through the registry only (tests/toy_backbone.py): training, exact resume,
grids, generate.py, calc_metrics.py, ATop-k and CHAIN — and the fail-loud method-hook checks."""

from __future__ import annotations

import json
import math
import os
import subprocess

import numpy as np
import PIL.Image
import pytest
import torch

import backbones
import dnnlib
from tests.test_training_loop import assert_same_training_state, loop_args, run, run_cli
from training import controllers, snapshot_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_ENV = dict(os.environ, DEGAN_BACKBONES='toy=tests.toy_backbone')


@pytest.fixture(autouse=True)
def _toy_registered():
    backbones.register('toy', 'tests.toy_backbone')


def toy_args(tmp_path, **flags) -> dnnlib.EasyDict:
    return loop_args(dict(dict(outdir=str(tmp_path), data='builtin:16', backbone='toy', batch=4, kimg=0.024,
                               metrics=[], workers=1, tick=0.008, snap=1, seed=1), **flags))


def read_stats(run_dir) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(run_dir, 'stats.jsonl'))]


METHODS = dict(atopk=True, atopk_kimg=0.01, chain=True, chain_start=0, chain_dp=0.05, chain_tau=0.1, aug='fixed', p=0.3)


def test_toy_backbone_trains_with_atopk_and_chain_and_resumes_exactly(tmp_path):
    straight = run(toy_args(tmp_path, **METHODS), tmp_path / 'straight')
    first = run(toy_args(tmp_path, kimg=0.012, **METHODS), tmp_path / 'first')
    resumed = run(toy_args(tmp_path, **METHODS), tmp_path / 'resumed', resume_pkl=first['last_snapshot'])
    assert straight['cur_nimg'] == resumed['cur_nimg'] == 24
    assert_same_training_state(straight['last_snapshot'], resumed['last_snapshot'])

    data = snapshot_io.read(straight['last_snapshot'])
    assert data['backbone'] == 'toy' and data['version'] == snapshot_io.VERSION
    assert set(data['modules']) == {'G', 'D', 'G_ema', 'D_ema', 'augment_pipe'}
    states = data['training_state']['states']
    assert states['toy_d_ema'] == {'updates': 6}, 'the pre-iteration hook ran once per iteration'
    assert set(states) == {'loss', 'toy_d_ema', 'ada', 'atopk'} - {'ada'}  # fixed p: ADA has no state
    assert float(states['loss']['real_score_mean']) != 0
    sgd = data['training_state']['optimizers']['D']['state']
    assert all('momentum_buffer' in s for s in sgd.values()), 'D is trained by its configured SGD'
    assert torch.equal(data['modules']['D_ema']['state_dict']['conv0.weight'],
                       resumed['D_ema'].state_dict()['conv0.weight'])

    # The methods visibly acted on this backbone: k left B, CHAIN's p moved, its 0MR terms were reported.
    trace = [json.loads(line) for line in open(tmp_path / 'straight' / 'atopk-trace.jsonl')]
    assert min(entry['k'] for entry in trace) < 4
    stats = read_stats(tmp_path / 'straight')
    assert stats[-1]['CHAIN/p']['mean'] > 0
    assert {'CHAIN/0MR/real', 'CHAIN/0MR/fake', 'ATopk/selected_fraction'} <= set(stats[-1])
    assert not torch.equal(straight['D'].chain0.running_var_real, torch.ones_like(straight['D'].chain0.running_var_real))


@pytest.mark.parametrize('broken, flags, message', [
    ('reduction', dict(atopk=True), 'reduce_generator_adv_loss'),
    ('dpass', dict(chain=True, chain_start=0), 'labelled real pass'),
])
def test_a_method_whose_hook_is_bypassed_stops_at_the_first_iteration(tmp_path, broken, flags, message):
    with pytest.raises(controllers.MethodHookError) as info:
        run(toy_args(tmp_path, toy_break=broken, **flags), tmp_path / 'r')
    text = str(info.value)
    assert "backbone 'toy'" in text and message in text
    assert not [f for f in os.listdir(tmp_path / 'r') if f.startswith('network-snapshot-')], 'stopped before tick 0'
    # The same broken loss without the method is not an error: the check belongs to the method.
    result = run(toy_args(tmp_path, toy_break=broken, kimg=0.004), tmp_path / 'plain')
    assert result['cur_nimg'] == 4


def test_chain_on_a_backbone_that_places_no_layers_is_refused(tmp_path):
    args = toy_args(tmp_path, chain=True)
    del args.backbone_kwargs.D_kwargs['chain_kwargs']  # as if the backbone ignored --chain
    with pytest.raises(dnnlib.util.UserError, match="backbone 'toy' placed no CHAIN layers"):
        run(args, tmp_path / 'r')


class _NvidiaStub(torch.nn.Module):
    """NVIDIA-convention detector (uint8 in): 6 colour statistics as features."""

    def forward(self, img: torch.Tensor, return_features: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        x = img.to(torch.float32) / 255
        return torch.cat([x.mean(dim=[2, 3]), x.std(dim=[2, 3])], dim=1)


def _cli(script: str, *args: str, tmp_path) -> subprocess.CompletedProcess:
    return run_cli(script, *args, tmp_path=tmp_path, env=TOY_ENV)


@pytest.mark.slow
def test_toy_backbone_through_train_generate_and_calc_metrics(tmp_path):
    proc = _cli('train.py', f'--outdir={tmp_path}', '--backbone=toy', '--data=builtin:16', '--kimg=0.016',
                '--tick=0.008', '--snap=1', '--metrics=none', '--workers=1', '--atopk=1', '--chain=1',
                '--chain-start=0', '--toy-width=6', tmp_path=tmp_path)
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir() and p.name != 'cache')
    assert run_dir.name.startswith('00000-builtin16-toy-tiny')
    files = set(os.listdir(run_dir))
    assert {'reals.png', 'fakes_init.png', 'stats.jsonl', 'training_options.json', 'atopk-trace.jsonl'} <= files
    assert any(f.startswith('fakes0') for f in files)
    status = [line for line in proc.stdout.splitlines() if line.startswith('tick ')]
    assert status and all(f in status[-1] for f in ('atopk_k', 'chain_p', 'toy_d_ema'))
    assert json.load(open(run_dir / 'training_options.json'))['backbone'] == 'toy'
    snap = str(run_dir / sorted(f for f in files if f.startswith('network-snapshot-'))[-1])

    _cli('generate.py', f'--network={snap}', '--seeds=0-3', f'--outdir={tmp_path / "out"}', tmp_path=tmp_path)
    G = snapshot_io.load_module(snap, 'G_ema')
    for seed in range(4):
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim))
        with torch.no_grad():
            want = (G(z, torch.zeros(1, 0)).permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0]
        assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / 'out' / f'seed{seed:04d}.png')), want.numpy())

    detector = tmp_path / 'stub.pt'
    torch.jit.save(torch.jit.script(_NvidiaStub().eval()), str(detector))
    proc = _cli('calc_metrics.py', '--metrics=fid5k_full', f'--network={snap}', f'--detector={detector}',
                '--verbose=0', tmp_path=tmp_path)
    record = json.loads(open(run_dir / 'metric-fid5k_full.jsonl').read().splitlines()[-1])
    assert record['num_gen'] == 5000 and record['num_real'] == 100
    assert math.isfinite(record['results']['fid5k_full']) and record['results']['fid5k_full'] > 0


def test_snapshot_of_an_unregistered_backbone_is_refused(tmp_path):
    result = run(toy_args(tmp_path, kimg=0.004), tmp_path / 'r')
    data = snapshot_io.read(result['last_snapshot'])
    data['backbone'] = 'nosuchgan'
    from torch_utils import persistence
    persistence.save_snapshot(data, str(tmp_path / 'other.pt'))
    with pytest.raises(dnnlib.util.UserError, match='unknown backbone'):
        snapshot_io.load_module(str(tmp_path / 'other.pt'))
