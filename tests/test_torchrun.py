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
import torch

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


def _start_rank(rank: int, port: int, outdir, env: dict) -> subprocess.Popen:
    """One rank of a two-"node" job started as a launcher would (RANK, WORLD_SIZE, MASTER_*), without
    torchrun's agent: nothing stops the survivor but degan itself."""
    node_env = dict(env, RANK=str(rank), WORLD_SIZE='2', LOCAL_RANK='0', LOCAL_WORLD_SIZE='1',
                    MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    return subprocess.Popen([sys.executable, 'train.py', f'--outdir={outdir}', '--kimg=1000', *FLAGS[:-1]],
                            cwd=REPO, env=node_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGKILL, signal.SIGSTOP], ids=['killed', 'stopped'])
def test_a_rank_that_dies_or_hangs_stops_the_other_with_a_message_naming_it(tmp_path, signum):
    env = dict(_env(tmp_path), DEGAN_DIST_TIMEOUT='10')
    port = distributed.find_free_port()
    ranks = [_start_rank(rank, port, tmp_path, env) for rank in (0, 1)]
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not glob.glob(str(tmp_path / '0*' / 'stats.jsonl')):
            assert all(r.poll() is None for r in ranks), ranks[0].communicate()[0][-2000:]
            time.sleep(0.5)
        os.kill(ranks[1].pid, signum)
        started = time.time()
        out, _ = ranks[0].communicate(timeout=120)
        waited = time.time() - started
    finally:
        for r in ranks:
            if r.poll() is None:
                r.kill()
                r.wait()
    assert ranks[0].returncode == 1, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1, out[-3000:]
    assert errors[0].startswith('error: rank 0: collective #') and 'failed after' in errors[0], errors[0]
    assert 'rank 1 stopped answering' in errors[0] and '--resume' in errors[0], errors[0]
    assert 'Traceback' not in out, out[-3000:]
    if signum == signal.SIGSTOP:  # nothing closed a connection: the collective's timeout fired
        assert 'failed after 1' in errors[0] and waited >= 10, (waited, errors[0])


class _FakeHeartbeat(distributed.Heartbeat):
    """A heartbeat over an in-process store whose thread never runs (tests drive the records)."""

    def __init__(self, world_size: int, seq: int):
        import threading
        self.store = torch.distributed.HashStore()
        self.rank, self.world_size, self.interval = 0, world_size, 0.001
        self.seq, self.what, self.failed = seq, 'ATop-k scores of the fakes (all_gather)', False
        self._count, self._stop = 0, threading.Event()

    def write(self, rank: int, count: int, seq: int, what: str) -> None:
        self.store.set(f'rank{rank}', distributed.Beat(count, seq, what).encode())


def test_the_diagnosis_tells_a_dead_rank_from_a_hanging_one_and_from_one_that_is_fine(monkeypatch):
    heartbeat = _FakeHeartbeat(world_size=5, seq=40)
    heartbeat.write(1, count=7, seq=40, what='ATop-k scores of the fakes (all_gather)')  # fine: beats, same place
    heartbeat.write(2, count=3, seq=12, what='gradients of D (all_reduce)')              # dead: no new beat
    heartbeat.write(3, count=9, seq=31, what='training statistics (all_reduce)')         # hangs: beats, behind
    # rank 4 never wrote a record

    def one_beat_later(_seconds: float) -> None:
        heartbeat.write(1, count=8, seq=40, what='ATop-k scores of the fakes (all_gather)')
        heartbeat.write(3, count=10, seq=31, what='training statistics (all_reduce)')
    monkeypatch.setattr(distributed.time, 'sleep', one_beat_later)
    faults = distributed.diagnose(heartbeat).split('; ')
    assert faults == [
        'rank 2 stopped answering: no heartbeat for 0 s (it died, was killed or is stopped), last seen in #12 '
        'gradients of D (all_reduce)',
        'rank 3 is alive but has not reached this collective: it hangs in #31 training statistics (all_reduce)',
        'rank 4 never sent a heartbeat']


def test_the_diagnosis_names_the_store_host_when_the_store_is_gone(monkeypatch):
    heartbeat = _FakeHeartbeat(world_size=2, seq=3)

    def gone(_keys):
        raise RuntimeError('Connection reset by peer')
    monkeypatch.setattr(heartbeat, 'read', lambda: gone(None))
    monkeypatch.delenv('TORCHELASTIC_RUN_ID', raising=False)
    assert distributed.diagnose(heartbeat) == 'the rendezvous store does not answer (rank 0 hosts it), so rank 0 ' \
                                              'probably died'


def test_a_backend_failure_becomes_one_rank_failure_and_the_group_is_not_used_again(monkeypatch):
    heartbeat = _FakeHeartbeat(world_size=2, seq=6)
    heartbeat.write(1, count=1, seq=6, what='x (all_reduce)')
    monkeypatch.setattr(distributed, '_HEARTBEAT', heartbeat)
    monkeypatch.setattr(distributed.time, 'sleep', lambda _s: None)

    def closed():
        raise RuntimeError('[/src/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:1160: Connection reset by '
                           'peer. This is typically caused by a remote worker hanging')
    with pytest.raises(distributed.RankFailure) as failure:
        distributed.collective('gradients of D', 'all_reduce', closed)
    assert str(failure.value) == (
        'rank 0: collective #7 "gradients of D" (all_reduce) failed after 0 s: rank 1 stopped answering: no '
        'heartbeat for 0 s (it died, was killed or is stopped), last seen in #6 x (all_reduce). Every rank stops; continue from the last snapshot with --resume (backend: Read error [127.0.0.1]:1160: '
        'Connection reset by peer)')
    assert distributed.group_failed()
    with pytest.raises(distributed.RankFailure, match='the process group failed earlier; the run directory'):
        distributed.collective('the run directory', 'broadcast', lambda: None)


def test_a_programming_error_inside_a_collective_is_not_taken_for_a_dead_rank(monkeypatch):
    monkeypatch.setattr(distributed, '_HEARTBEAT', _FakeHeartbeat(world_size=2, seq=0))

    def wrong_shape():
        raise RuntimeError('Tensors must be contiguous')
    with pytest.raises(RuntimeError, match='contiguous'):
        distributed.collective('ATop-k scores', 'all_gather', wrong_shape)
    assert not distributed.group_failed()


def _snapshot_at(run_dir_glob: str, name: str) -> str:
    found = glob.glob(os.path.join(run_dir_glob, name))
    assert len(found) == 1, (run_dir_glob, name, found)
    return found[0]


@pytest.mark.slow
def test_resuming_under_torchrun_continues_exactly_with_the_same_ranks_and_says_what_differs_with_others(
        tmp_path, spawned):
    """The spawn run's mid-run snapshot (kimg 0.012, 2 processes) resumed by torchrun: with 2 ranks it ends
    exactly at the spawn run's final state; with 1 rank it finishes and names what is not continued exactly."""
    middle = _snapshot_at(os.path.dirname(spawned), 'network-snapshot-000000_012.pt')
    same = subprocess.run([*TORCHRUN, '--standalone', '--nproc-per-node=2', 'train.py', f'--outdir={tmp_path / "two"}',
                           '--kimg=0.016', f'--resume={middle}', *FLAGS], cwd=REPO, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    _check(same)
    assert 'Note: the snapshot was written by' not in same.stdout
    assert_same_training_state(_last_snapshot(tmp_path / 'two'), spawned)
    other = subprocess.run([*TORCHRUN, '--standalone', '--nproc-per-node=1', 'train.py', f'--outdir={tmp_path / "one"}',
                            '--kimg=0.016', f'--resume={middle}', *FLAGS], cwd=REPO, env=_env(tmp_path),
                           capture_output=True, text=True, timeout=300)
    _check(other)
    assert ('Note: the snapshot was written by 2 process(es), this run has 1. Continued exactly: the weights, the '
            'optimiser and controller states, and the real images of every iteration') in other.stdout
    assert 'the random streams of process 1 end' in other.stdout
    final = persistence.load_snapshot(_last_snapshot(tmp_path / 'one'))
    assert final['training_state']['cur_nimg'] == persistence.load_snapshot(spawned)['training_state']['cur_nimg']
