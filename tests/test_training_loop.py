"""Training loop: exact resume, multi-process consistency, NaN guard, Ctrl-C, run artefacts.

All runs use the built-in dataset at 16 px with a few hundred channels in total, so one
iteration takes a fraction of a second on 2 CPU cores.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import backbones
import dnnlib
from torch_utils import distributed, misc, persistence
from training import config, snapshot_io
from training.training_loop import training_loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loop_args(flags: dict) -> dnnlib.EasyDict:
    """training_loop kwargs of train.py flags, loading in-process on the CPU."""
    _desc, args = config.build_training_args(config.TrainOptions.from_flags(flags))
    args.data_loader_kwargs = dnnlib.EasyDict(num_workers=0)
    args.device = 'cpu'
    return args


def tiny_args(tmp_path, **overrides) -> dnnlib.EasyDict:
    args = loop_args(dict(dict(outdir=str(tmp_path), data='builtin:16', cfg='low_shot', cbase=256, cmax=16, batch=4,
                               kimg=0.024, fp32=True, metrics=[], workers=1, tick=0.008, snap=1, map=2), **overrides))
    args.backbone_kwargs.G_kwargs.z_dim = args.backbone_kwargs.G_kwargs.w_dim = 32
    return args


def run(args, run_dir, **kwargs):
    os.makedirs(run_dir, exist_ok=True)
    return training_loop(run_dir=str(run_dir), rank=0, **dict(args, **kwargs))


def run_cli(script: str, *args: str, tmp_path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command-line tool of the repository (cache under ``tmp_path``); fail with its output's tail."""
    env = dict(os.environ if env is None else env, DEGAN_CACHE_DIR=str(tmp_path / 'cache'))
    proc = subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def straight_and_resumed(make_args, root, half_kimg: float, **flags) -> tuple[dict, dict, dict]:
    """Exact-resume fixture: (a straight run, its first half, the second half resumed from it),
    with ``make_args(root, **flags)`` training_loop kwargs; run folders under ``root``."""
    straight = run(make_args(root, **flags), root / 'straight')
    first = run(make_args(root, **dict(flags, kimg=half_kimg)), root / 'first')
    resumed = run(make_args(root, **flags), root / 'resumed', resume_pkl=first['last_snapshot'])
    return straight, first, resumed


def assert_modules_in_their_slots(path: str) -> None:
    """Every module record of a snapshot names a class its backbone allows in that slot
    (``Backbone.snapshot_classes``), so load_module can rebuild each of them."""
    data = snapshot_io.read(path)
    backbone = backbones.get(data['backbone'])
    for name, record in data['modules'].items():
        if record is not None:
            snapshot_io.check_module_class(path, backbone, name, record)


def assert_same_training_state(path_a: str, path_b: str) -> None:
    a, b = snapshot_io.read(path_a), snapshot_io.read(path_b)
    assert a['modules'].keys() == b['modules'].keys()
    assert_modules_in_their_slots(path_a)
    for key, record in a['modules'].items():
        if record is None:
            assert b['modules'][key] is None, key
            continue
        for name, tensor in record['state_dict'].items():
            assert torch.equal(tensor, b['modules'][key]['state_dict'][name]), f'{key}.{name} differs'
    sa, sb = a['training_state'], b['training_state']
    assert sa['cur_nimg'] == sb['cur_nimg'] and sa['batch_idx'] == sb['batch_idx']
    assert sa['optimizers'].keys() == sb['optimizers'].keys()
    for opt in sa['optimizers']:
        for idx, state in sa['optimizers'][opt]['state'].items():
            for name, value in state.items():
                assert torch.equal(value, sb['optimizers'][opt]['state'][idx][name]), f'{opt} Adam {name} differs'
    assert_equal_nested(sa['states'], sb['states'], 'states')


def assert_equal_nested(a, b, where='controllers'):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_nested(a[key], b[key], f'{where}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_nested(x, y, f'{where}[{i}]')
    else:
        assert a == b, where


@pytest.mark.slow
def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    """Exact resume: 3 iterations + resume for 3 more == 6 iterations straight (bitwise on CPU)."""
    common = dict(atopk=True, aug='fixed', p=0.5)  # augmentation draws random numbers every step
    straight = run(tiny_args(tmp_path, **common), tmp_path / 'straight')
    first = run(tiny_args(tmp_path, kimg=0.012, **common), tmp_path / 'first')
    assert first['cur_nimg'] == 12
    resumed = run(tiny_args(tmp_path, **common), tmp_path / 'resumed', resume_pkl=first['last_snapshot'])
    assert resumed['cur_nimg'] == straight['cur_nimg'] == 24
    assert_same_training_state(straight['last_snapshot'], resumed['last_snapshot'])
    # stats.jsonl of the last tick agrees too (same losses).
    last = [json.loads(line) for line in open(tmp_path / 'straight' / 'stats.jsonl')][-1]
    last_resumed = [json.loads(line) for line in open(tmp_path / 'resumed' / 'stats.jsonl')][-1]
    for name in ('Loss/G/loss', 'Loss/D/loss', 'ATopk/k'):
        assert last[name]['mean'] == pytest.approx(last_resumed[name]['mean'], rel=1e-6), name


def test_run_directory_artefacts_and_status_line(tmp_path, capsys):
    result = run(tiny_args(tmp_path, kimg=0.008, chain=True, chain_start=0, atopk=True), tmp_path / 'r')
    out = capsys.readouterr().out
    files = set(os.listdir(tmp_path / 'r'))
    assert {'reals.png', 'fakes_init.png', 'stats.jsonl', 'atopk-trace.jsonl'} <= files
    assert any(f.startswith('network-snapshot-') and f.endswith('.pt') for f in files)
    assert any(f.startswith('fakes0') for f in files)
    status = [line for line in out.splitlines() if line.startswith('tick ')]
    assert status and all(f in status[-1] for f in ('kimg', 'sec/kimg', 'cpumem', 'augment', 'atopk_k', 'chain_p'))
    stats = [json.loads(line) for line in open(tmp_path / 'r' / 'stats.jsonl')]
    assert all('timestamp' in s and 'Progress/kimg' in s for s in stats)
    for name in ('ATopk/k', 'ATopk/p', 'ATopk/selected_fraction', 'ATopk/D_gap', 'CHAIN/p', 'CHAIN/0MR/real',
                 'CHAIN/0MR/fake'):
        assert name in stats[-1], name
    assert all(math.isfinite(v['mean']) for s in stats for k, v in s.items() if k != 'timestamp' and v['num'] > 0)
    data = torch.load(result['last_snapshot'], weights_only=True)
    assert data['format'] == 'degan-snapshot'


def test_nan_loss_stops_with_phase_and_snapshot_named(tmp_path):
    args = tiny_args(tmp_path)
    args.backbone_kwargs.loss_kwargs.r1_gamma = float('nan')
    with pytest.raises(misc.NonFiniteError) as info:
        run(args, tmp_path / 'nan')
    message = str(info.value)
    assert 'Dreg' in message and 'Last good snapshot' in message and 'kimg' in message


def _rank_digest(rank, args, run_dir, out_dir, init_file):
    distributed.init_process_group(rank, 2, torch.device('cpu'), init_method=f'file://{init_file}')
    result = training_loop(run_dir=run_dir, rank=rank, **dnnlib.EasyDict(args))
    digest = hashlib.sha256()
    for key in ('G', 'D', 'G_ema'):  # parameters (buffers like w_avg are per-rank statistics, as upstream)
        for name, tensor in result[key].named_parameters():
            digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f:
        json.dump(dict(nimg=result['cur_nimg'], params=digest.hexdigest()), f)
    distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_ranks_end_identical(tmp_path):
    args = tiny_args(tmp_path, gpus=2, batch=4, kimg=0.016, atopk=True)
    args.num_gpus = 2
    run_dir = tmp_path / 'ddp'
    os.makedirs(run_dir)
    init_file = tmp_path / 'init'
    torch.multiprocessing.spawn(_rank_digest, args=(dict(args), str(run_dir), str(tmp_path), str(init_file)), nprocs=2)
    r0 = json.load(open(tmp_path / 'rank0.json'))
    r1 = json.load(open(tmp_path / 'rank1.json'))
    assert r0['nimg'] == r1['nimg'] == 16
    assert r0['params'] is not None and r0['params'] == r1['params']


def test_ctrl_c_writes_a_final_snapshot(tmp_path):
    cmd = [sys.executable, 'train.py', f'--outdir={tmp_path}', '--data=builtin:16', '--cfg=low_shot', '--cbase=256',
           '--cmax=16', '--batch=4', '--kimg=1000', '--tick=0.004', '--snap=100000', '--fp32=1', '--metrics=none',
           '--workers=1', '--map=2']
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 240
    for line in proc.stdout:
        lines.append(line)
        if line.startswith('tick 2'):
            proc.send_signal(signal.SIGINT)
            break
        assert time.time() < deadline, ''.join(lines[-20:])
    rest, _ = proc.communicate(timeout=120)
    output = ''.join(lines) + rest
    assert proc.returncode == 0, output[-2000:]
    assert 'Exiting (interrupted)' in output
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    snaps = [f for f in os.listdir(run_dir) if f.startswith('network-snapshot-')]
    assert snaps, 'Ctrl-C must leave a final snapshot'
    data = persistence.load_snapshot(str(run_dir / snaps[-1]))
    assert data['training_state']['cur_nimg'] > 0
    assert not [f for f in os.listdir(run_dir) if f.endswith('.tmp')], 'no temp files left behind'


@pytest.mark.parametrize('flags, message', [
    (['--gpus=3'], 'power of two'),
    (['--aug=noaug', '--augpipe=bgc'], 'augpipe'),
    (['--atopk=1', '--topk-mode=fixed', '--topk-k=9'], 'between 1 and the batch'),
    (['--atopk=1', '--atopk-p=ada', '--aug=noaug'], 'atopk-p=ada'),
    (['--diffaugment=color,bogus'], 'diffaugment'),
    (['--chain=1', '--chain-place=C3'], 'chain-place'),
    (['--data=/nonexistent/folder'], 'nonexistent'),
    (['--metrics=fid5k'], 'unknown metric "fid5k"'),
    (['--metrics=is10k'], '--detector'),
    (['--metrics=pr50k3_full'], '--vgg16'),
    (['--metrics=fid10k_test'], '--ref-data'),
    (['--metrics=none', '--ref-data=/nonexistent/ref'], '--ref-data=/nonexistent/ref: no such file'),
])
def test_bad_flags_give_one_line_errors(tmp_path, flags, message):
    cmd = [sys.executable, 'train.py', f'--outdir={tmp_path}', '--data=builtin:16', '--batch=4', '-n'] + flags
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error:'), proc.stderr
    assert message in err[0]


def test_snapshots_and_grids_below_one_kimg_never_replace_each_other(tmp_path):
    """Ticks of 8 images: upstream's names (kimg rounded down) would all be ...000000; the first keeps
    it, the later ones name their exact image count (and sort after it)."""
    result = run(tiny_args(tmp_path, kimg=0.024, tick=0.008, snap=1), tmp_path / 'run')
    files = sorted(os.listdir(tmp_path / 'run'))
    snaps = [f for f in files if f.startswith('network-snapshot-')]
    grids = [f for f in files if f.startswith('fakes0')]
    assert snaps[0] == 'network-snapshot-000000.pt' and grids[0] == 'fakes000000.png'
    assert len(snaps) >= 3 and len(grids) == len(snaps), files
    counts = [snapshot_io.read(str(tmp_path / 'run' / f))['training_state']['cur_nimg'] for f in snaps]
    assert len(set(counts)) == len(counts), 'each file holds another moment of the run'
    assert result['last_snapshot'].endswith(f'network-snapshot-000000_{result["cur_nimg"]:03d}.pt')


def test_resume_removes_temporaries_of_killed_snapshot_writes(tmp_path):
    first = run(tiny_args(tmp_path, kimg=0.008), tmp_path / 'first')
    folder = tmp_path / 'first'
    stale = folder / '.network-snapshot-000004.pt.k3j9x0qz.tmp'   # as util.atomic_path names them
    stale_grid = folder / '.fakes000004.png.ab12cd34.png.tmp'
    fresh = folder / '.network-snapshot-000005.pt.zz99yy88.tmp'    # maybe a live writer: kept
    other = folder / '.notes.tmp'                                  # not ours: kept
    for path in (stale, stale_grid, fresh, other):
        path.write_bytes(b'partial')
    old = time.time() - 3600
    for path in (stale, stale_grid, other):
        os.utime(path, (old, old))
    run(tiny_args(tmp_path, kimg=0.016), tmp_path / 'resumed', resume_pkl=first['last_snapshot'])
    assert not stale.exists() and not stale_grid.exists()
    assert fresh.exists() and other.exists() and os.path.exists(first['last_snapshot'])
