"""calc_metrics.py end to end: a tiny snapshot, image folders, stub TorchScript detectors, the
record files, one-line errors and two CPU processes through torch.distributed."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

import calc_metrics
from dnnlib import util
from metrics import frechet_inception_distance
from torch_utils import persistence
from training import networks
from training.dataset import IMAGE_FILES_CLASS, IMAGE_FOLDER_CLASS, ImageFilesDataset, image_files_kwargs, \
    image_folder_kwargs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _NvidiaStub(torch.nn.Module):
    """NVIDIA-convention detector (uint8 in, no resize): 6 colour statistics; 4-way softmax."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(6, 4)

    def forward(self, img: torch.Tensor, return_features: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        x = img.to(torch.float32) / 255
        feats = torch.cat([x.mean(dim=[2, 3]), x.std(dim=[2, 3])], dim=1)
        if return_features:
            return feats
        logits = torch.nn.functional.linear(feats * 20, self.head.weight, None if no_output_bias else self.head.bias)
        return torch.softmax(logits, dim=1)


class _PlainStub(torch.nn.Module):
    """Plain-convention detector like default_1.pt: resized (x − 128)/128 input at 299²."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 10, 23, stride=23)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1).flatten(1)


def _script(module: torch.nn.Module, path) -> str:
    torch.manual_seed(1)
    module = module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    torch.jit.save(torch.jit.script(module), str(path))
    return str(path)


def _write_images(folder, count: int, size: int, seed: int, gray: bool = False) -> str:
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        base = rng.integers(0, 256, 3 if not gray else 1)
        img = np.clip(base + rng.normal(0, 40, (size, size, 3 if not gray else 1)), 0, 255).astype(np.uint8)
        PIL.Image.fromarray(img[..., 0] if gray else img).save(os.path.join(folder, f'{i:04d}.png'))
    return str(folder)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny workloads: one thread (two busy-waiting OpenMP threads on a shared 2-core machine can be
    # many times slower than one).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv('DEGAN_CACHE_DIR', str(tmp_path / 'cache'))
    data = _write_images(tmp_path / 'data', 12, 16, seed=0)
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    (run_dir / 'training_options.json').write_text('{}')
    torch.manual_seed(0)
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=16))
    snap = run_dir / 'network-snapshot-000000.pt'
    persistence.save_snapshot({'G_ema': persistence.module_to_record(G),
                               'training_set_kwargs': dict(class_name='training.dataset.ImageFolderDataset', path=data,
                                                           resolution=16, use_labels=False, xflip=True, max_size=12)},
                              str(snap))
    return util.EasyDict(tmp=tmp_path, data=data, run_dir=run_dir, snap=str(snap),
                         nv=_script(_NvidiaStub(), tmp_path / 'nv.pt'),
                         plain=_script(_PlainStub(), tmp_path / 'plain.pt'))


def _run(argv: list[str]) -> None:
    util.run_cli(calc_metrics.main, argv)


def _records(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding='utf-8').read().splitlines()]


def test_snapshot_end_to_end_fid5k_full(env, capsys):
    _run(['--metrics=fid5k_full', f'--network={env.snap}', f'--detector={env.nv}', '--verbose=0'])
    recs = _records(env.run_dir / 'metric-fid5k_full.jsonl')
    assert len(recs) == 1
    rec = recs[0]
    assert rec['metric'] == 'fid5k_full' and rec['snapshot_pkl'] == 'network-snapshot-000000.pt'
    assert rec['num_gen'] == 5000 and rec['num_real'] == 12 and rec['num_gpus'] == 1
    assert set(rec) >= {'results', 'total_time', 'total_time_str', 'timestamp'}
    fid = rec['results']['fid5k_full']
    assert np.isfinite(fid) and fid > 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])['results'] == rec['results']

    # Same inputs, same seed: the same number (reals now come from the cache; 'full' ignores the
    # snapshot's xflip=True); another seed gives a different value.
    _run(['--metrics=fid5k_full', f'--network={env.snap}', f'--detector={env.nv}', '--verbose=0'])
    _run(['--metrics=fid5k_full', f'--network={env.snap}', f'--detector={env.nv}', '--verbose=0', '--seed=1'])
    values = [r['results']['fid5k_full'] for r in _records(env.run_dir / 'metric-fid5k_full.jsonl')]
    assert values[1] == pytest.approx(values[0], rel=1e-9) and values[2] != values[0]


def test_gen_data_uses_all_images_up_to_the_count(env):
    gen = _write_images(env.tmp / 'gen', 9, 24, seed=1)  # other size than the reals: resized anyway
    _run(['--metrics=fid5k_full,kid50k_full', f'--gen-data={gen}', f'--data={env.data}',
          f'--detector={env.plain}', '--verbose=0'])
    # No snapshot, no run directory: nothing written next to the images.
    assert not any(name.startswith('metric-') for name in os.listdir(gen))

    # The same FID from the features directly.
    from metrics import detectors
    det = detectors.load_detector(env.plain)

    def feats(folder):
        src = ImageFilesDataset(folder)
        return det.features(torch.stack([torch.as_tensor(src[i][0]) for i in range(len(src))])).double().numpy()
    fr, fg = feats(env.data), feats(gen)
    expected = frechet_inception_distance.frechet_distance(fr.mean(0), np.cov(fr, rowvar=False, ddof=0),
                                                           fg.mean(0), np.cov(fg, rowvar=False, ddof=0))
    opts = dict(gen_dataset_kwargs=image_files_kwargs(gen), dataset_kwargs=image_folder_kwargs(env.data),
                detector_path=env.plain)
    from metrics import metric_main
    result = metric_main.calc_metric('fid5k_full', **opts)
    assert result.num_gen == 9 and result.num_real == 12 and result.gen_data == gen
    # 9 images are not fid5k_full: the record says so in its name and its keys.
    assert result.metric == 'fid5k_full@9' and result.base_metric == 'fid5k_full' and result.num_gen_nominal == 5000
    assert set(result.results) == {'fid5k_full@9'}
    assert result.results['fid5k_full@9'] == pytest.approx(expected, rel=1e-6)


def test_is10k_with_stub_classifier_on_gen_data(env, tmp_path):
    gen = _write_images(tmp_path / 'gen_gray', 20, 8, seed=2, gray=True)
    from metrics import metric_main
    result = metric_main.calc_metric('is10k', gen_dataset_kwargs=image_files_kwargs(gen), detector_path=env.nv)
    assert result.num_gen == 20 and result.metric == 'is10k@20' and set(result.results) == {'is10k@20_mean',
                                                                                            'is10k@20_std'}
    # By hand: softmax of the stub's bias-free logits, 10 splits of 2 images.
    module = torch.jit.load(env.nv)
    src = ImageFilesDataset(gen)
    imgs = torch.stack([torch.as_tensor(src[i][0]) for i in range(20)]).repeat(1, 3, 1, 1)
    with torch.no_grad():
        x = imgs.float() / 255
        f = torch.cat([x.mean(dim=[2, 3]), x.std(dim=[2, 3])], dim=1)
        p = torch.softmax(f * 20 @ module.head.weight.T, dim=1).double().numpy()
    scores = []
    for i in range(10):
        part = p[2 * i:2 * i + 2]
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(part.mean(0))), axis=1))))
    assert result.results['is10k@20_mean'] == pytest.approx(np.mean(scores), rel=1e-5)
    assert result.results['is10k@20_std'] == pytest.approx(np.std(scores), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize('argv,match', [
    (['--metrics=fid5k'], 'unknown metric "fid5k"'),
    (['--metrics=pr50k3_full'], '--vgg16'),
    (['--metrics=is50k'], '--detector'),
    (['--metrics=fid10k_test'], '--ref-data'),
    (['--metrics=fid5k_full', '--gen-data=GEN'], 'exactly one of --network'),
    (['--metrics=fid5k_full', '--detector=/nonexistent/inception.pt'], 'no such file'),
    (['--metrics=fid5k_full', '--gpus=0'], '--gpus'),
])
def test_one_line_errors(env, capsys, argv, match):
    argv = [a.replace('GEN', env.data) for a in argv] + [f'--network={env.snap}']
    with pytest.raises(SystemExit) as info:
        _run(argv)
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and match in err and '\n' not in err


def _build_args(**flags):
    args = dict(metrics=['fid5k_full'], network_path=None, gen_data=None, data=None, mirror=None, gpus=1,
                verbose=False, detector=None, vgg16=None, ref_data=None, seed=0, batch=None, device='cpu',
                ops='ref', cache=True)
    args.update(flags)
    return calc_metrics.build_args(**args)


def test_dataset_kwargs_name_their_class(env, tmp_path):
    """Metrics have no default dataset class: every flag's kwargs name one (old snapshots' too)."""
    args = _build_args(metrics=['fid5k_full', 'fid10k_test'], gen_data=env.data, data=env.data, mirror=True,
                       ref_data=env.data, detector=env.nv)
    assert dict(args.dataset_kwargs) == dict(class_name=IMAGE_FOLDER_CLASS, path=env.data, xflip=True)
    assert dict(args.ref_dataset_kwargs) == dict(class_name=IMAGE_FOLDER_CLASS, path=env.data, max_size=None,
                                                 xflip=False)
    assert dict(args.gen_dataset_kwargs) == dict(class_name=IMAGE_FILES_CLASS, path=env.data)

    # From the snapshot: its training_set_kwargs as stored, resolution/labels from G.
    args = _build_args(network_path=env.snap, detector=env.nv)
    assert dict(args.dataset_kwargs) == dict(class_name=IMAGE_FOLDER_CLASS, path=env.data, resolution=16,
                                             use_labels=False, xflip=True, max_size=12)
    assert args.gen_dataset_kwargs is None and args.ref_dataset_kwargs is None
    # A snapshot whose training_set_kwargs lack class_name gets the image-folder class.
    snapshot = persistence.load_snapshot(env.snap)
    del snapshot['training_set_kwargs']['class_name']
    persistence.save_snapshot(snapshot, str(tmp_path / 'old.pt'))
    args = _build_args(network_path=str(tmp_path / 'old.pt'), detector=env.nv)
    assert args.dataset_kwargs.class_name == IMAGE_FOLDER_CLASS and args.dataset_kwargs.path == env.data


def test_gen_data_without_reals_is_an_error(env, capsys):
    with pytest.raises(SystemExit):
        _run(['--metrics=fid5k_full', f'--gen-data={env.data}', f'--detector={env.nv}'])
    assert '--data' in capsys.readouterr().err


def test_two_cpu_processes_match_one(env, tmp_path):
    """--gpus=2 on the CPU (gloo), and two ranks started by torchrun: the gathered features give
    the same FID as one process."""
    gen = _write_images(tmp_path / 'gen2', 11, 16, seed=3)  # odd count: ranks wrap around, extras dropped
    values = []
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node=2']
    for name, launcher, gpus in (('one', [sys.executable], 1), ('spawn', [sys.executable], 2),
                                 ('torchrun', torchrun, None)):
        cmd = [*launcher, os.path.join(REPO, 'calc_metrics.py'), '--metrics=fid5k_full', f'--gen-data={gen}',
               f'--data={env.data}', f'--detector={env.nv}', '--verbose=0', '--device=cpu', '--batch=4']
        cmd += [f'--gpus={gpus}'] if gpus else []
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, DEGAN_CACHE_DIR=str(tmp_path / f'cache-{name}')))
        assert proc.returncode == 0, proc.stderr
        lines = [line for line in proc.stdout.strip().splitlines() if line.startswith('{')]
        assert len(lines) == 1, f'{name}: one result line, from rank 0 only'
        rec = json.loads(lines[-1])
        assert rec['num_gpus'] == (gpus or 2) and rec['num_gen'] == 11 and rec['num_real'] == 12
        values.append(rec['results']['fid5k_full@11'])
    assert values[1] == pytest.approx(values[0], rel=1e-9) and values[2] == pytest.approx(values[0], rel=1e-9)


def test_training_metric_runner_writes_jsonl_and_best(env):
    """What train.py --metrics=fid5k_full does at each snapshot: a jsonl line and best.json."""
    from training.reporting import MetricRunner
    snapshot = persistence.load_snapshot(env.snap)
    G = persistence.module_from_record(snapshot['G_ema'])
    runner = MetricRunner(['fid5k_full'], dict(detector_path=env.nv), snapshot['training_set_kwargs'], 1, 0,
                          torch.device('cpu'), str(env.run_dir))
    for kimg, scale in ((0, 1.0), (4, 0.0)):  # a constant-grey generator is far worse
        with torch.no_grad():
            for p in G.synthesis.parameters():
                p.mul_(scale)
        runner.run(G, str(env.run_dir / f'network-snapshot-{kimg:06d}.pt'))
    recs = _records(env.run_dir / 'metric-fid5k_full.jsonl')
    assert [r['snapshot_pkl'] for r in recs] == ['network-snapshot-000000.pt', 'network-snapshot-000004.pt']
    values = [r['results']['fid5k_full'] for r in recs]
    best = json.loads((env.run_dir / 'best.json').read_text())
    assert best['metric'] == 'fid5k_full' and best['value'] == min(values)
    assert best['snapshot'] == recs[int(np.argmin(values))]['snapshot_pkl']
    assert len(runner.take_results()) == 2


def test_a_snapshot_cannot_choose_the_dataset_class(env, tmp_path, capsys, monkeypatch):
    """A weights_only-clean snapshot naming another degan callable as its dataset class is refused
    (it once ran the training loop into a folder the file chose)."""
    data = torch.load(env.snap, weights_only=True)
    data['training_set_kwargs'] = dict(data['training_set_kwargs'], class_name='training.training_loop.training_loop',
                                       run_dir=str(tmp_path / 'chosen-by-the-file'))
    evil = tmp_path / 'evil.pt'
    torch.save(data, str(evil))
    ran = []
    monkeypatch.setattr('training.training_loop.training_loop', lambda **kwargs: ran.append(kwargs))
    with pytest.raises(SystemExit) as info:
        _run(['--metrics=fid5k_full', f'--network={evil}', f'--detector={env.nv}', '--verbose=0'])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and 'training.training_loop.training_loop' in err and '--data' in err
    assert not ran and not (tmp_path / 'chosen-by-the-file').exists()


# ---------------------------------------------------------------------------------------------
# --num-gen: fewer generated images, never recorded under the metric's own name (issue 18 item 9).


def _count_generated(monkeypatch) -> list[int]:
    """Images drawn from the generator, per call of the metrics' sampler."""
    from metrics import metric_utils
    drawn: list[int] = []
    sample = metric_utils.GeneratorSampler.sample

    def counting(self, batch_size, batch_gen=None):
        images = sample(self, batch_size, batch_gen)
        drawn.append(images.shape[0])
        return images
    monkeypatch.setattr(metric_utils.GeneratorSampler, 'sample', counting)
    return drawn


def test_num_gen_draws_fewer_images_and_records_another_name(env, capsys, monkeypatch):
    drawn = _count_generated(monkeypatch)
    _run(['--metrics=fid5k_full,is10k', '--num-gen=40', '--batch=8', f'--network={env.snap}', f'--detector={env.nv}',
          '--verbose=1'])
    assert sum(drawn) == 2 * 40  # not 5000 + 10000
    out = capsys.readouterr().out
    assert 'Evaluating fid5k_full, is10k' in out and '--num-gen=40 generated images per metric' in out

    # Recorded under its own name and file: metric-fid5k_full.jsonl (the real fid5k_full) is untouched.
    assert not (env.run_dir / 'metric-fid5k_full.jsonl').exists()
    assert not (env.run_dir / 'metric-is10k.jsonl').exists()
    [fid] = _records(env.run_dir / 'metric-fid5k_full@40.jsonl')
    assert fid['metric'] == 'fid5k_full@40' and fid['base_metric'] == 'fid5k_full'
    assert fid['num_gen'] == 40 and fid['num_gen_override'] == 40 and fid['num_gen_nominal'] == 5000
    assert set(fid['results']) == {'fid5k_full@40'} and np.isfinite(fid['results']['fid5k_full@40'])
    [inception] = _records(env.run_dir / 'metric-is10k@40.jsonl')
    assert set(inception['results']) == {'is10k@40_mean', 'is10k@40_std'} and inception['num_gen'] == 40

    # Printed: a note before each record (the record stays the last line of its metric).
    lines = out.splitlines()
    i = lines.index(next(line for line in lines if line.startswith('note: fid5k_full@40')))
    assert lines[i] == ('note: fid5k_full@40 is fid5k_full computed from 40 generated images instead of 5000 '
                        '(--num-gen=40); it is recorded as fid5k_full@40 and is not comparable with fid5k_full')
    assert json.loads(lines[i + 1])['metric'] == 'fid5k_full@40'
    assert any(line.startswith('note: is10k@40 is is10k computed from 40 generated images instead of 10000')
               for line in lines)

    # Whole thousands read as "k"; the value equals the full metric's first 1000 images (same seed).
    drawn.clear()
    _run(['--metrics=fid5k_full', '--num-gen=1000', f'--network={env.snap}', f'--detector={env.nv}', '--verbose=0'])
    [rec] = _records(env.run_dir / 'metric-fid5k_full@1k.jsonl')
    assert rec['metric'] == 'fid5k_full@1k' and rec['num_gen'] == 1000 and sum(drawn) == 1024  # 32 per batch
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])['results'] == rec['results']


def test_num_gen_equal_to_the_metrics_count_is_the_metric(env, monkeypatch):
    from metrics import metric_main
    drawn = _count_generated(monkeypatch)
    gen = _write_images(env.tmp / 'gen', 10, 16, seed=4)
    spec = copy.copy(metric_main._metric_dict['fid5k_full'])
    spec.num_gen = 10  # a folder of 10 images is the whole metric
    monkeypatch.setitem(metric_main._metric_dict, 'fid5k_full', spec)
    result = metric_main.calc_metric('fid5k_full', gen_dataset_kwargs=image_files_kwargs(gen),
                                     dataset_kwargs=image_folder_kwargs(env.data), detector_path=env.nv, num_gen=10)
    assert result.metric == 'fid5k_full' and 'base_metric' not in result and result.num_gen_override == 10
    assert drawn == []  # from the folder, not a generator


@pytest.mark.parametrize('flag,match', [
    ('--num-gen=0', '--num-gen=0: the number of generated images must be at least 1'),
    ('--num-gen=-5', '--num-gen=-5: the number of generated images must be at least 1'),
    ('--num-gen=5001', '--num-gen=5001 is more than the 5000 generated images of fid5k_full; --num-gen can only '
                       'lower the count'),
    ('--num-gen=x', "'--num-gen': 'x' is not a valid integer"),
])
def test_num_gen_bad_values_are_one_line_errors(env, capsys, monkeypatch, flag, match):
    drawn = _count_generated(monkeypatch)
    with pytest.raises(SystemExit) as info:
        _run(['--metrics=fid5k_full', flag, f'--network={env.snap}', f'--detector={env.nv}', '--verbose=0'])
    err = capsys.readouterr().err.strip()
    assert info.value.code == (2 if flag.endswith('x') else 1)
    assert err.startswith('error: ') and match in err and '\n' not in err
    assert drawn == [] and not any(n.startswith('metric-') for n in os.listdir(env.run_dir))


def test_num_gen_below_a_metrics_minimum(env, capsys):
    with pytest.raises(SystemExit) as info:
        _run(['--metrics=fid5k_full,is10k', '--num-gen=5', f'--network={env.snap}', f'--detector={env.nv}'])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 1 and err == 'error: --num-gen=5: is10k needs at least 10 generated images'


def test_unwritable_run_directory_is_a_one_line_error(env, capsys, monkeypatch):
    """The jsonl of a run directory that cannot be written: refused before the evaluation, and a
    failing write after it (e.g. a full disk) is one line too, with the result already printed."""
    real_access = os.access
    monkeypatch.setattr(os, 'access', lambda path, mode: False if str(path) == str(env.run_dir)
                        else real_access(path, mode))
    with pytest.raises(SystemExit) as info:
        _run(['--metrics=fid5k_full', '--num-gen=8', f'--network={env.snap}', f'--detector={env.nv}', '--verbose=0'])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 1 and '\n' not in err
    assert err.startswith(f'error: --network={env.snap}: its run directory {env.run_dir} is not writable')
    monkeypatch.setattr(os, 'access', real_access)

    from metrics import metric_main

    def full_disk(path, line):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(metric_main, '_append_line', full_disk)
    with pytest.raises(SystemExit) as info:
        _run(['--metrics=fid5k_full', '--num-gen=8', f'--network={env.snap}', f'--detector={env.nv}', '--verbose=0'])
    out, err = capsys.readouterr()
    assert info.value.code == 1 and json.loads(out.strip().splitlines()[-1])['metric'] == 'fid5k_full@8'
    assert err.strip() == (f'error: cannot append the result to {env.run_dir / "metric-fid5k_full@8.jsonl"} '
                           f'(No space left on device); the result is printed above; make the run directory writable')


def test_unwritable_statistics_cache_is_a_warning(env, capsys, tmp_path, monkeypatch):
    blocker = tmp_path / 'not-a-folder'
    blocker.write_text('')
    monkeypatch.setenv('DEGAN_CACHE_DIR', str(blocker))  # its "gan-metrics" folder cannot be created
    _run(['--metrics=fid5k_full', '--num-gen=8', f'--network={env.snap}', f'--detector={env.nv}', '--verbose=0'])
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])['metric'] == 'fid5k_full@8'
    assert err.startswith('warning: cannot write the statistics cache ') and err.count('\n') == 1
