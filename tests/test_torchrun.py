"""train.py started by torchrun (issue 19): one rank per process, env:// rendezvous, any number of
nodes. A standalone launch and a two-"node" launch on localhost must train exactly as the
one-machine spawn path with the same global batch, seed and threads per process; SIGTERM to
every rank leaves one loadable final snapshot.

Runs use the built-in dataset at 16 px with a few hundred channels on gloo; one thread per
process (OMP_NUM_THREADS=1) everywhere, so the float reductions match bit for bit.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from dnnlib.util import UserError
from torch_utils import distributed, persistence

from .test_training_loop import REPO, assert_same_training_state

FLAGS = ['--data=builtin:16', '--cfg=low_shot', '--cbase=256', '--cmax=16', '--batch=4', '--tick=0.008', '--snap=1',
         '--fp32=1', '--metrics=none', '--workers=0', '--map=2', '--device=cpu', '--mirror=1']
TORCHRUN = [sys.executable, '-m', 'torch.distributed.run']


def _env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_VARIABLES}
    return dict(env, OMP_NUM_THREADS='1', DEGAN_CACHE_DIR=str(tmp_path / 'cache'), PYTHONUNBUFFERED='1')


def _last_snapshot(outdir) -> str:
    snaps = sorted(glob.glob(os.path.join(str(outdir), '*', 'network-snapshot-*.pt')))
    assert snaps, f'no snapshot under {outdir}'
    return snaps[-1]


def _check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.fixture(scope='module')
def spawned(tmp_path_factory) -> str:
    """The final snapshot of the one-machine path: train.py --gpus=2 (spawn, file:// rendezvous)."""
    root = tmp_path_factory.mktemp('spawn')
    _check(subprocess.run([sys.executable, 'train.py', f'--outdir={root}', '--gpus=2', '--kimg=0.016', *FLAGS],
                          cwd=REPO, env=_env(root), capture_output=True, text=True, timeout=300))
    return _last_snapshot(root)


@pytest.mark.slow
def test_torchrun_standalone_trains_exactly_as_the_spawn_path(tmp_path, spawned):
    proc = subprocess.run([*TORCHRUN, '--standalone', '--nproc-per-node=2', 'train.py', f'--outdir={tmp_path}',
                           '--kimg=0.016', *FLAGS], cwd=REPO, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    _check(proc)
    assert len(glob.glob(str(tmp_path / '0*'))) == 1, 'rank 0 alone made the run directory'
    assert_same_training_state(_last_snapshot(tmp_path), spawned)
    assert proc.stdout.count('Training options:') == 1, 'the options are printed once, by rank 0'


@pytest.mark.slow
def test_two_nodes_on_localhost_train_exactly_as_the_spawn_path(tmp_path, spawned):
    port = distributed.find_free_port()
    nodes = [subprocess.Popen([*TORCHRUN, '--nnodes=2', f'--node-rank={node}', '--nproc-per-node=1',
                               '--master-addr=127.0.0.1', f'--master-port={port}', 'train.py',
                               f'--outdir={tmp_path}', '--kimg=0.016', *FLAGS], cwd=REPO, env=_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    for node in nodes:
        out, err = node.communicate(timeout=300)
        assert node.returncode == 0, out[-2000:] + err[-2000:]
    assert len(glob.glob(str(tmp_path / '0*'))) == 1
    assert_same_training_state(_last_snapshot(tmp_path), spawned)


@pytest.mark.slow
def test_sigterm_to_every_rank_leaves_one_final_snapshot(tmp_path):
    proc = subprocess.Popen([*TORCHRUN, '--standalone', '--nproc-per-node=2', 'train.py', f'--outdir={tmp_path}',
                             '--kimg=1000', *FLAGS[:-1]], cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(glob.glob(str(tmp_path / '0*' / 'network-snapshot-*.pt'))) < 2:
        assert proc.poll() is None, proc.stdout.read()[-2000:]
        time.sleep(0.5)
    before = set(glob.glob(str(tmp_path / '0*' / 'network-snapshot-*.pt')))
    os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler does: every process of the job
    out, _ = proc.communicate(timeout=120)
    assert out.count('Exiting (terminated)') == 1, out[-3000:]
    run_dir = glob.glob(str(tmp_path / '0*'))[0]
    assert not [f for f in os.listdir(run_dir) if f.endswith('.tmp')]
    final = _last_snapshot(tmp_path)
    assert final not in before and persistence.load_snapshot(final)['training_state']['cur_nimg'] > 0


def test_a_dry_run_under_torchrun_with_one_process_makes_nothing(tmp_path):
    proc = subprocess.run([*TORCHRUN, '--standalone', '--nproc-per-node=1', 'train.py', f'--outdir={tmp_path}',
                           '--kimg=0.016', '-n', *FLAGS], cwd=REPO, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    _check(proc)
    assert 'Dry run; exiting.' in proc.stdout and not glob.glob(str(tmp_path / '0*'))


def test_gpus_under_torchrun_must_match_the_world_size():
    launched = distributed.LaunchedRank(rank=0, world_size=2, local_rank=0, local_world_size=2)
    assert distributed.launched_world_size(None, launched) == 2 and distributed.launched_world_size(2, launched) == 2
    with pytest.raises(UserError, match=r'--gpus=4, but torchrun started 2 processes.*leave --gpus out'):
        distributed.launched_world_size(4, launched)


def test_the_launcher_environment_is_read_only_when_complete(monkeypatch):
    for name in distributed.LAUNCHER_VARIABLES + ('LOCAL_WORLD_SIZE',):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launched_rank() is None
    monkeypatch.setenv('RANK', '3')
    monkeypatch.setenv('WORLD_SIZE', '4')
    assert distributed.launched_rank() is None  # no LOCAL_RANK: not a launcher's process
    monkeypatch.setenv('LOCAL_RANK', '1')
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')
    assert distributed.launched_rank() == distributed.LaunchedRank(rank=3, world_size=4, local_rank=1,
                                                                   local_world_size=2)
