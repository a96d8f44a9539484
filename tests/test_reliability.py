"""Reliability under real conditions (issue 18): signals, broken pipes, stderr, CPU threads,
resume validation, progress inside long ticks, class names read from files.

Runs use the built-in dataset at 16 px with a few hundred channels (a fraction of a second per
iteration on 2 CPU cores); the signal tests start train.py as a user would.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import dnnlib
from dnnlib.util import UserError
from torch_utils import misc, persistence
from training import config, snapshot_io
from training import training_loop as training_loop_module

from .test_training_loop import REPO, run, tiny_args

TRAIN_FLAGS = ['--data=builtin:16', '--cfg=low_shot', '--cbase=256', '--cmax=16', '--batch=4', '--kimg=1000',
               '--tick=0.004', '--snap=100000', '--fp32=1', '--metrics=none', '--workers=1', '--map=2']


# ---------------------------------------------------------------------------------------------
# Signals: Ctrl-C through a pipe whose reader dies, SIGTERM from a scheduler.


def _start_training(tmp_path, stdout) -> subprocess.Popen:
    env = dict(os.environ, DEGAN_CACHE_DIR=str(tmp_path / 'cache'), PYTHONUNBUFFERED='1')
    return subprocess.Popen([sys.executable, 'train.py', f'--outdir={tmp_path / "runs"}'] + TRAIN_FLAGS, cwd=REPO,
                            stdout=stdout, stderr=subprocess.PIPE, env=env, start_new_session=True)


def _wait_for_ticks(tmp_path, proc: subprocess.Popen, ticks: int = 2, timeout: float = 240) -> str:
    """Wait until log.txt shows ``ticks`` status lines; returns the run directory."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        runs = list((tmp_path / 'runs').glob('0*')) if (tmp_path / 'runs').exists() else []
        log = runs[0] / 'log.txt' if runs else None
        if log is not None and log.exists() and log.read_text().count('\ntick ') >= ticks:
            return str(runs[0])
        time.sleep(0.5)
    raise AssertionError('training did not reach its second tick in time')


def _final_snapshot(run_dir: str) -> dict:
    snaps = sorted(f for f in os.listdir(run_dir) if f.startswith('network-snapshot-'))
    assert snaps, f'no final snapshot in {os.listdir(run_dir)}'
    assert not [f for f in os.listdir(run_dir) if f.endswith('.tmp')], 'no temporary files left behind'
    return persistence.load_snapshot(os.path.join(run_dir, snaps[-1]))


@pytest.mark.slow
def test_ctrl_c_through_a_pipe_whose_reader_died_still_writes_the_final_snapshot(tmp_path):
    """``python train.py … | tee log`` and Ctrl-C: the terminal sends SIGINT to the whole process
    group, tee dies first, every later print hits a broken pipe."""
    proc = _start_training(tmp_path, subprocess.PIPE)
    reader = subprocess.Popen(['cat'], stdin=proc.stdout, stdout=subprocess.DEVNULL)  # the "tee"
    proc.stdout.close()  # only the reader holds the pipe's read end now
    run_dir = _wait_for_ticks(tmp_path, proc)
    reader.kill()
    reader.wait()
    os.killpg(proc.pid, signal.SIGINT)  # the process group: train.py and its DataLoader worker
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert _final_snapshot(run_dir)['training_state']['cur_nimg'] > 0
    assert 'Exiting (interrupted)' in open(os.path.join(run_dir, 'log.txt')).read()


@pytest.mark.slow
def test_sigterm_writes_a_final_snapshot_and_exits_cleanly(tmp_path):
    proc = _start_training(tmp_path, subprocess.DEVNULL)
    run_dir = _wait_for_ticks(tmp_path, proc)
    os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler: every process of the job
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert _final_snapshot(run_dir)['training_state']['cur_nimg'] > 0
    log = open(os.path.join(run_dir, 'log.txt')).read()
    assert 'SIGTERM: finishing this iteration' in log and 'Exiting (terminated)' in log


def test_loader_workers_ignore_stop_signals():
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        training_loop_module.ignore_stop_signals(0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_stop_request_handles_sigterm_and_a_second_ctrl_c_aborts():
    with training_loop_module.StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.requested and stop.signal_name == 'SIGTERM'
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM lets the final snapshot finish
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# ---------------------------------------------------------------------------------------------
# The log: a dead console never stops the run; errors go to stderr (and log.txt).


class _BrokenConsole(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, 'Broken pipe')

    def fileno(self) -> int:
        raise io.UnsupportedOperation('no descriptor')


def test_logger_survives_a_broken_console_and_keeps_the_log(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, 'stdout', _BrokenConsole())
    logger = dnnlib.util.Logger(file_name=str(tmp_path / 'log.txt'))
    try:
        print('first line')
        print('second line')
    finally:
        logger.close()
    assert open(tmp_path / 'log.txt').read() == 'first line\nsecond line\n'


def test_logger_keeps_stderr_on_stderr(tmp_path, capsys):
    logger = dnnlib.util.Logger(file_name=str(tmp_path / 'log.txt'))
    try:
        print('to stdout')
        print('error: to stderr', file=sys.stderr)
    finally:
        logger.close()
    captured = capsys.readouterr()
    assert captured.out == 'to stdout\n' and captured.err == 'error: to stderr\n'
    assert open(tmp_path / 'log.txt').read() == 'to stdout\nerror: to stderr\n'


@pytest.mark.parametrize('error, expected', [
    (UserError('the dataset went away'), 'error: the dataset went away'),
    (RuntimeError('something inside torch'), 'RuntimeError: something inside torch'),
])
def test_errors_inside_the_training_process_go_to_stderr_and_the_log(tmp_path, monkeypatch, capsys, error, expected):
    import train

    def fail(**_kwargs):
        raise error
    monkeypatch.setattr(training_loop_module, 'training_loop', fail)
    args = dnnlib.EasyDict(run_dir=str(tmp_path), device='cpu', num_gpus=1)
    with pytest.raises(SystemExit) as info:
        train.subprocess_fn(0, args, str(tmp_path))
    assert info.value.code == 1
    captured = capsys.readouterr()
    assert expected in captured.err and expected not in captured.out
    assert expected in open(tmp_path / 'log.txt').read()


# ---------------------------------------------------------------------------------------------
# A full disk.


def _fill_the_disk_at_call(n: int, real: callable):
    """A stand-in for ``real`` (a writer taking the file as its second argument) whose ``n``-th
    call writes a little and then fails as a full disk does."""
    calls = []

    def write(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) < n:
            return real(obj, f, *args, **kwargs)
        with (open(f, 'wb') if isinstance(f, (str, os.PathLike)) else contextlib.nullcontext(f)) as out:
            out.write(b'PK\x03\x04 half a snapshot')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write


def test_a_full_disk_during_a_snapshot_is_one_line_and_the_previous_snapshot_stays(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, 'save', _fill_the_disk_at_call(2, torch.save))
    with pytest.raises(UserError) as info:
        run(tiny_args(tmp_path, kimg=0.024), tmp_path / 'run')
    message = str(info.value)
    previous = str(tmp_path / 'run' / 'network-snapshot-000000.pt')
    failed = str(tmp_path / 'run' / 'network-snapshot-000000_012.pt')
    assert '\n' not in message and message.startswith(f'disk full: could not write {failed} (No space left')
    assert f'The previous snapshot {previous} is intact' in message and f'--resume={previous}' in message
    names = os.listdir(tmp_path / 'run')
    assert os.path.basename(failed) not in names and not [name for name in names if name.endswith('.tmp')]
    assert persistence.load_snapshot(previous)['training_state']['cur_nimg'] == 4


def test_a_full_disk_while_appending_statistics_names_stats_jsonl(tmp_path, monkeypatch):
    from training import reporting

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(reporting.StatsWriter, 'write', full)
    with pytest.raises(UserError) as info:
        run(tiny_args(tmp_path, kimg=0.024), tmp_path / 'run')
    snapshot = tmp_path / 'run' / 'network-snapshot-000000.pt'
    assert str(info.value).startswith(f'disk full: could not write {tmp_path / "run" / "stats.jsonl"}')
    assert f'The previous snapshot {snapshot} is intact' in str(info.value) and snapshot.exists()


# ---------------------------------------------------------------------------------------------
# CPU threads.


def test_clis_make_idle_openmp_threads_sleep_unless_the_user_chose():
    code = 'import os, sys; sys.argv = ["x"]; import {0}; print(os.environ["OMP_WAIT_POLICY"])'
    for script in ('train', 'generate', 'calc_metrics'):
        env = {k: v for k, v in os.environ.items() if k != 'OMP_WAIT_POLICY'}
        out = subprocess.run([sys.executable, '-c', code.format(script)], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.stdout.strip() == 'PASSIVE', (script, out.stderr[-500:])
        env['OMP_WAIT_POLICY'] = 'ACTIVE'
        out = subprocess.run([sys.executable, '-c', code.format(script)], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.stdout.strip() == 'ACTIVE', (script, out.stderr[-500:])


@pytest.mark.parametrize('chosen', [{}, {'OMP_WAIT_POLICY': 'ACTIVE'}, {'GOMP_SPINCOUNT': '10000'},
                                    {'KMP_BLOCKTIME': '0'}])
def test_the_openmp_wait_default_leaves_a_users_choice_alone(monkeypatch, chosen):
    for name in dnnlib.util.OPENMP_WAIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in chosen.items():
        monkeypatch.setenv(name, value)
    dnnlib.util.let_idle_openmp_threads_sleep()
    assert os.environ.get('OMP_WAIT_POLICY') == chosen.get('OMP_WAIT_POLICY', None if chosen else 'PASSIVE')


def test_cpu_processes_split_the_cores(monkeypatch):
    previous = torch.get_num_threads()
    monkeypatch.setattr(misc, 'usable_cores', lambda: 8)
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.delenv('MKL_NUM_THREADS', raising=False)
    try:
        assert misc.configure_cpu_threads(4) == 2 and torch.get_num_threads() == 2
        assert misc.configure_cpu_threads(16) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv('OMP_NUM_THREADS', '3')
        assert misc.configure_cpu_threads(4) is None and torch.get_num_threads() == 1  # the user's choice stands
    finally:
        torch.set_num_threads(previous)


def test_each_cpu_training_process_gets_its_share_of_threads(tmp_path, monkeypatch):
    import train
    seen = {}
    monkeypatch.setattr(misc, 'usable_cores', lambda: 8)
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.delenv('MKL_NUM_THREADS', raising=False)
    monkeypatch.setattr(training_loop_module, 'training_loop', lambda **kw: seen.update(threads=torch.get_num_threads()))
    previous = torch.get_num_threads()
    try:
        train.subprocess_fn(0, dnnlib.EasyDict(run_dir=str(tmp_path), device='cpu', num_gpus=1), str(tmp_path))
        assert seen['threads'] == 8
    finally:
        torch.set_num_threads(previous)


def test_dry_run_on_a_cpu_says_what_runs_instead_of_gpus(tmp_path):
    out = subprocess.run([sys.executable, 'train.py', f'--outdir={tmp_path}', '--data=builtin:16', '-n',
                          '--device=cpu', '--gpus=2'], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if line.startswith('Number of GPUs'))
    assert 'none: 2 CPU processes' in line


# ---------------------------------------------------------------------------------------------
# --resume validated before anything is created.


@pytest.fixture(scope='module')
def atopk_snapshot(tmp_path_factory) -> str:
    """A finished 8-image run with ATop-k (kimg 0.008)."""
    root = tmp_path_factory.mktemp('atopk')
    return run(tiny_args(root, kimg=0.008, atopk=True), root / 'run')['last_snapshot']


def build(tmp_path, **flags) -> dnnlib.EasyDict:
    base = dict(outdir=str(tmp_path), data='builtin:16', cfg='low_shot', cbase=256, cmax=16, batch=4, kimg=0.024,
                fp32=True, metrics=[], tick=0.008, snap=1, map=2)
    return config.build_training_args(config.TrainOptions.from_flags(dict(base, **flags)))[1]


def test_resume_on_another_resolution_blames_the_dataset_not_cfg(tmp_path, atopk_snapshot):
    with pytest.raises(UserError) as info:
        build(tmp_path, data='builtin:32', atopk=True, resume=atopk_snapshot)
    message = str(info.value)
    assert '16x16' in message and '32x32' in message and '--data=builtin:32' in message
    assert '--cfg' not in message


def test_resume_without_a_method_of_the_snapshot_stops_and_lists_it(tmp_path, atopk_snapshot):
    with pytest.raises(UserError) as info:
        build(tmp_path, resume=atopk_snapshot)
    message = str(info.value)
    assert 'ATop-k is in the snapshot (k=' in message and '--fresh-methods=1' in message
    with pytest.raises(UserError, match='CHAIN is on in the flags but not in the snapshot'):
        build(tmp_path, atopk=True, chain=True, resume=atopk_snapshot)


def test_fresh_methods_accepts_the_differences_and_says_so(tmp_path, atopk_snapshot, capsys):
    args = build(tmp_path, chain=True, resume=atopk_snapshot, fresh_methods=True)
    assert args.resume_fresh_methods
    note = capsys.readouterr().out
    assert 'Note: --fresh-methods=1: ATop-k is in the snapshot' in note and 'CHAIN is on in the flags' in note
    args.data_loader_kwargs = dnnlib.EasyDict(num_workers=0)
    args.device = 'cpu'
    args.backbone_kwargs.G_kwargs.z_dim = args.backbone_kwargs.G_kwargs.w_dim = 32
    result = run(args, tmp_path / 'fresh')
    out = capsys.readouterr().out
    assert 'Continuing with the differing methods fresh at kimg 0.0' in out
    assert "atopk state is not used by this run" in out and 'chain' in out.lower()
    assert result['cur_nimg'] > 8
    with pytest.raises(UserError, match='applies to --resume only'):
        build(tmp_path, fresh_methods=True)


def test_resuming_a_finished_run_stops_before_anything_starts(tmp_path, atopk_snapshot):
    with pytest.raises(UserError, match='already at kimg 0.008.*larger --kimg'):
        build(tmp_path, kimg=0.008, atopk=True, resume=atopk_snapshot)


def test_the_loop_trains_not_one_iteration_past_kimg_on_a_finished_run(tmp_path, atopk_snapshot):
    before = set(os.listdir(os.path.dirname(atopk_snapshot)))
    args = tiny_args(tmp_path, kimg=0.008, atopk=True)
    result = run(args, tmp_path / 'again', resume_pkl=atopk_snapshot)
    assert result['cur_nimg'] == snapshot_io.read(atopk_snapshot)['training_state']['cur_nimg'] == 8
    assert not [f for f in os.listdir(tmp_path / 'again') if f.startswith('network-snapshot-')]
    assert set(os.listdir(os.path.dirname(atopk_snapshot))) == before


# ---------------------------------------------------------------------------------------------
# A slow tick is not silent.


def test_long_ticks_print_progress_with_an_eta(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(training_loop_module, 'PROGRESS_SECONDS', 0.0)
    run(tiny_args(tmp_path, kimg=0.016, tick=0.016), tmp_path / 'run')
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith('  ... tick 1')]
    assert lines, 'progress lines inside tick 1'
    assert all('of 0.016' in line and 'tick ends in' in line and 'run ends in' in line for line in lines)


# ---------------------------------------------------------------------------------------------
# A file never chooses the class built in a slot.


@pytest.mark.parametrize('slot, class_name', [
    ('G_ema', 'training.networks.Discriminator'),   # a degan network, but not a generator
    ('G_ema', 'training.augment.AugmentPipe'),
    ('D', 'training.networks.Generator'),
    ('G', 'training.training_loop.training_loop'),  # not a network at all
])
def test_a_module_record_naming_a_class_its_slot_does_not_hold_is_refused(tmp_path, atopk_snapshot, slot, class_name):
    data = snapshot_io.read(atopk_snapshot)
    source = {'training.networks.Discriminator': 'D', 'training.networks.Generator': 'G'}.get(class_name, 'G')
    data['modules'][slot] = dict(data['modules'][source], class_name=class_name)
    path = str(tmp_path / 'swapped.pt')
    persistence.save_snapshot(data, path)
    with pytest.raises(UserError) as info:
        snapshot_io.load_module(path, slot)
    assert f'its "{slot}" record names the class "{class_name}"' in str(info.value)
    assert 'nothing of it was built' in str(info.value)
    snapshot_io.load_module(atopk_snapshot, slot)  # the untouched snapshot loads


# ---------------------------------------------------------------------------------------------
# The README's first command.


def readme_train_command() -> list[str]:
    """The train.py arguments of the README's first command (the first code block's first line)."""
    text = open(os.path.join(REPO, 'README.md'), encoding='utf-8').read()
    block = text.split('```bash\n', 1)[1].split('```', 1)[0]
    line = next(line for line in block.splitlines() if 'train.py' in line)
    return line.split('python train.py', 1)[1].split()


def test_the_readme_main_command_is_valid_and_names_the_run_directory_the_readme_lists(tmp_path):
    flags = [f for f in readme_train_command() if not f.startswith('--outdir=')]
    out = subprocess.run([sys.executable, 'train.py', f'--outdir={tmp_path}', '-n', *flags], cwd=REPO,
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, DEGAN_CACHE_DIR=str(tmp_path / 'cache')))
    assert out.returncode == 0, out.stderr
    run_dir = next(line for line in out.stdout.splitlines() if line.startswith('Output directory:')).split()[-1]
    readme = open(os.path.join(REPO, 'README.md'), encoding='utf-8').read()
    assert f'runs/{os.path.basename(run_dir)}/' in readme, 'the README names the run directory the command makes'
