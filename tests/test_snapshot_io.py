"""Snapshot format 2: named modules and named states; version 1 read through its upgrade."""

from __future__ import annotations

import pytest
import torch

from dnnlib.util import UserError
from tests import stylegan2_figures as figures
from tests.test_training_loop import run, tiny_args
from torch_utils import persistence
from training import snapshot_io


def test_a_run_writes_named_modules_and_states_loadable_without_code(tmp_path):
    result = run(tiny_args(tmp_path, kimg=0.004, atopk=True, chain=True), tmp_path / 'r')
    data = torch.load(result['last_snapshot'], weights_only=True)
    assert (data['format'], data['version'], data['backbone']) == ('degan-snapshot', 2, 'stylegan2')
    assert set(data['modules']) == {'G', 'D', 'G_ema', 'augment_pipe'}
    state = data['training_state']
    assert set(state['optimizers']) == {'G', 'D'} and set(state['states']) == {'loss', 'ada', 'atopk'}
    assert set(state['states']['loss']) == {'pl_mean'}
    assert 'chain_ctx.p' in data['modules']['D']['state_dict'], "CHAIN's p is a D buffer"


def test_version_1_upgrade_keeps_every_tensor():
    old = persistence.load_snapshot(figures.V1_SNAPSHOT)
    new = snapshot_io.upgrade_v1(old)
    assert snapshot_io.read(figures.V1_SNAPSHOT).keys() == new.keys()
    assert new['version'] == 2 and new['backbone'] == 'stylegan2'
    for name in ('G', 'D', 'G_ema', 'augment_pipe'):
        assert new['modules'][name] is old[name]
    ts, old_ts = new['training_state'], old['training_state']
    assert new['modules']['G']['class_name'] == 'training.networks.Generator'
    assert ts['states']['loss']['pl_mean'] is old_ts['pl_mean']
    assert ts['states']['atopk'] is old_ts['controllers']['atopk'] and ts['states']['ada'] is old_ts['controllers']['ada']
    assert ts['optimizers'] is old_ts['optimizers'] and ts['rng'] is old_ts['rng']
    assert [ts[k] for k in snapshot_io.COUNTERS] == [old_ts[k] for k in snapshot_io.COUNTERS]


def test_newer_versions_and_other_backbones_are_refused(tmp_path):
    data = snapshot_io.read(figures.V1_SNAPSHOT)
    persistence.save_snapshot(dict(data, version=3), str(tmp_path / 'future.pt'))
    with pytest.raises(UserError, match='version 3 is newer'):
        snapshot_io.read(str(tmp_path / 'future.pt'))
    persistence.save_snapshot(dict(data, backbone='toy'), str(tmp_path / 'toy.pt'))
    args = tiny_args(tmp_path, kimg=0.004, cbase=128, cmax=8)
    with pytest.raises(UserError, match='written by --backbone=toy'):
        run(args, tmp_path / 'r', resume_pkl=str(tmp_path / 'toy.pt'))


def test_a_missing_module_names_itself(tmp_path):
    data = snapshot_io.read(figures.V1_SNAPSHOT)
    data['modules'] = {k: v for k, v in data['modules'].items() if k != 'D'}
    persistence.save_snapshot(data, str(tmp_path / 'noD.pt'))
    args = tiny_args(tmp_path, kimg=0.004, cbase=128, cmax=8, atopk=True, chain=True, chain_start=0, target=0.3,
                     mirror=True, seed=3, atopk_kimg=0.05, chain_dp=0.05)
    with pytest.raises(UserError, match='holds no "D"'):
        run(args, tmp_path / 'r', resume_pkl=str(tmp_path / 'noD.pt'))


class _NotAllowed:
    pass


@pytest.mark.parametrize('content, reason', [
    ('class', 'refers to tests.test_snapshot_io._NotAllowed'),
    ('garbage', 'truncated, corrupt or not a torch file'),
    ('truncated', 'truncated, corrupt or not a torch file'),
])
def test_unreadable_snapshots_never_advise_weights_only_false(tmp_path, content, reason):
    path = tmp_path / 'snap.pt'
    if content == 'class':
        torch.save({'format': persistence.SNAPSHOT_FORMAT, 'x': _NotAllowed()}, str(path))
    elif content == 'garbage':
        path.write_bytes(b'hello world' * 10)
    else:
        torch.save({'format': persistence.SNAPSHOT_FORMAT, 'w': torch.zeros(1000)}, str(path))
        path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(UserError) as info:
        snapshot_io.read(str(path))
    message = str(info.value)
    assert reason in message and '\n' not in message and 'weights_only' not in message
