"""reproduce.py: tables as data, every runnable row through train.py's dry run at paper and cpu
scale, the CPU-scale protocol's rules, a 2-row table end to end at smoke scale (run, report,
resume), dataset checks and the one-line errors. Tests make their own data (never ../shared)."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import math
import os
import shutil
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

import reproduce
from dnnlib import util
from repro import datasets, report, runner, scales, tables
from torch_utils import persistence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Detector(torch.nn.Module):
    """NVIDIA-convention stand-in for Inception (uint8 in): 6 colour statistics, 4-way softmax."""

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


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp('repro')
    torch.manual_seed(1)
    detector = str(root / 'detector.pt')
    torch.jit.save(torch.jit.script(_Detector().eval()), detector)
    vgg = root / 'vgg16.pth'
    vgg.write_bytes(b'stand-in')  # the dry run only checks that the file exists
    return util.EasyDict(root=root, detector=detector, vgg=str(vgg), cache=str(root / 'cache'))


@pytest.fixture(autouse=True)
def _cache(files, monkeypatch):
    monkeypatch.setenv('DEGAN_CACHE_DIR', files.cache)
    monkeypatch.setenv('OMP_NUM_THREADS', '1')


def _zip_of(path: str, res: int, count: int) -> str:
    """A stand-in dataset zip: ``count`` copies of one grey PNG."""
    if not os.path.exists(path):
        buf = io.BytesIO()
        PIL.Image.fromarray(np.full((res, res, 3), 128, np.uint8)).save(buf, 'PNG')
        with zipfile.ZipFile(path, 'w') as z:
            for i in range(count):
                z.writestr(f'img{i:08d}.png', buf.getvalue())
    return path


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        util.run_cli(reproduce.main, argv)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(capsys, argv: list[str], *needles: str) -> str:
    code, _, err = _cli(argv, capsys)
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Tables as data.


def test_tables_are_well_formed_and_say_why_a_row_cannot_run():
    import backbones
    built = set(backbones.names())
    statuses = {'runnable': 0, 'cited': 0, 'waits': 0}
    for table in tables.TABLES.values():
        for row in table.rows:
            datasets.get(row.dataset)
            assert row.paper is None or (isinstance(row.paper, float) and row.paper > 0), (table.name, row.id)
            blocker = row.blocker()
            if row.cited:
                assert blocker.startswith('not runnable: cited only') and row.paper is not None
                statuses['cited'] += 1
            elif row.backbone not in built:
                assert blocker.startswith(f'waits for --backbone={row.backbone}'), blocker
                statuses['waits'] += 1
            elif blocker:
                assert blocker.startswith('waits for '), blocker
                statuses['waits'] += 1
            else:
                assert row.batch and row.kimg and row.metric, (table.name, row.id)
                statuses['runnable'] += 1
    assert statuses['runnable'] >= 150 and statuses['cited'] == 20 and statuses['waits'] >= 40
    # The rows the first CPU runs use, exactly as the paper states them (docs/methods.md §1.2-1.3).
    fig3 = tables.get('atopk_fig3')
    assert fig3.row('sg2_worst3').paper == 68.71 and fig3.row('ada_worst3').paper == 53.67
    assert dict(fig3.row('da_worst3').flags) == dict(diffaugment='color,translation,cutout', topk_mode='worst',
                                                     topk_k=3)
    t5 = tables.get('atopk_table5')
    assert [(r.id, r.batch, r.paper) for r in t5.rows if r.id.startswith('fixed')] == [
        ('fixed3_b4', 4, 47.14), ('fixed3_b16', 16, 47.14), ('fixed5_b16', 16, 45.91), ('fixed10_b16', 16, 45.78)]
    assert t5.row('fixed5_b16').baseline == 'da_b16' and t5.row('atopk_b4').paper == 40.96
    assert tables.get('atopk_table1').row('da_atopk.panda').paper == 10.28


def test_rows_with_the_same_settings_share_their_runs():
    fig3, t5 = tables.get('atopk_fig3'), tables.get('atopk_table5')
    for a, b in (('da', 'da_b4'), ('da_atopk', 'atopk_b4'), ('da_fixed3', 'fixed3_b4')):
        assert runner.run_key(scales.resolve(fig3.row(a), 'cpu')) == runner.run_key(scales.resolve(t5.row(b), 'cpu'))
    assert runner.run_key(scales.resolve(t5.row('da_b4'), 'cpu')) != runner.run_key(scales.resolve(t5.row('da_b16'),
                                                                                                   'cpu'))


def test_every_runnable_row_passes_train_py_dry_run_at_paper_and_cpu_scale(files, tmp_path):
    opts = runner.Options(detector=files.detector, lpips_vgg16=files.vgg, seeds=1)
    checked, blocked_cpu, seen = {'paper': 0, 'cpu': 0}, [], set()
    for scale in ('paper', 'cpu'):
        for table in tables.TABLES.values():
            for row in table.rows:
                if row.blocker():
                    continue
                try:
                    spec = scales.resolve(row, scale)
                except util.UserError as e:
                    assert scale == 'cpu' and '--ada-kimg' in str(e), (table.name, row.id, e)
                    blocked_cpu.append(row.id)
                    continue
                paths = {(spec.dataset.name, spec.resolution): _zip_of(
                    str(files.root / f'standin-{spec.resolution}-{spec.dataset.subset or 4}.zip'), spec.resolution,
                    spec.dataset.subset or 4)}
                if spec.ref_dataset is not None:
                    paths[(spec.ref_dataset.name, spec.resolution)] = _zip_of(
                        str(files.root / f'standin-{spec.resolution}-4.zip'), spec.resolution, 4)
                plan = runner.make_plans([(table, row, spec)], opts)[0]
                argv = runner.train_argv(plan, opts, paths)
                key = tuple(a for a in argv if not a.startswith('--outdir='))
                if key not in seen:  # rows of several tables with the same settings
                    seen.add(key)
                    runner.dry_run_train(argv)
                checked[scale] += 1
    assert checked['paper'] >= 150 and checked['cpu'] + len(blocked_cpu) == checked['paper']
    if scales.train_flag_available('augment', 'ada_kimg'):
        assert not blocked_cpu


def test_cpu_scale_protocol_rules():
    """Length, controllers, R1 and widths against independent formulas; the batch is the row's."""
    def flags(table: str, row: str) -> dict[str, str]:
        spec = scales.resolve(tables.get(table).row(row), 'cpu')
        return dict(a[2:].split('=', 1) for a in spec.flags)

    f = 7.2 / 2000
    da = flags('atopk_fig3', 'da_atopk')
    assert da['batch'] == '4' and da['kimg'] == '7.2' and da['cbase'] == '2048' and da['cmax'] == '64'
    assert math.isclose(float(da['atopk-kimg']), 500 * f) and math.isclose(float(da['gamma']), 10 * (32 / 256) ** 2)
    assert da['cfg'] == 'auto' and da['glr'] == da['dlr'] == '0.002' and da['map'] == '2' and da['mbstd-group'] == '4'
    assert da['metrics'] == 'none' and float(da['tick']) * 4 == 7.2 and da['diffaugment'] == 'color,translation,cutout'
    assert flags('atopk_table5', 'fixed10_b16')['batch'] == '16'
    ch = flags('chain_lowshot', 'da_chain.obama')
    assert math.isclose(float(ch['chain-dp']), 0.001 / f, rel_tol=1e-5) and ch['chain-start'] == str(round(5000 * f))
    lin = flags('atopk_table6', 'da_linear')
    assert math.isclose(float(lin['topk-gamma']), 0.99 ** (1 / f), rel_tol=1e-5)
    dpg = flags('atopk_table6', 'dpg_atopk')
    f_dpg = 7.2 / 100000
    assert math.isclose(float(dpg['diffusion-kimg']), 100 * f_dpg, rel_tol=1e-5) and dpg['batch'] == '64'
    ffhq = flags('atopk_table3', 'insgen_atopk.ffhq1k')
    assert ffhq['batch'] == '64' and math.isclose(float(ffhq['gamma']), 1 * (32 / 256) ** 2)
    plan = scales.resolve(tables.get('atopk_fig3').row('da'), 'cpu').metric
    assert plan.recorded_name('fid5k_full') == 'fid5k_full@1k' and plan.fractions == (0.5, 1.0)
    paper = scales.resolve(tables.get('atopk_fig3').row('da'), 'paper')
    assert '--kimg=2000' in paper.flags and '--cfg=low_shot' in paper.flags and '--metrics=fid5k_full' in paper.flags


# ---------------------------------------------------------------------------------------------
# Training state and evaluation points (fake snapshots: only their counters matter here).


def _fake_snapshot(path, nimg: int) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    persistence.save_snapshot(dict(training_state=dict(cur_nimg=nimg), metadata=dict(kimg=nimg / 1000)), str(path))
    return str(path)


def test_resume_decision_and_evaluation_points(tmp_path):
    root = tmp_path / 'seed0'
    assert runner.training_state(str(root), 7.2) == ('fresh', None)
    _fake_snapshot(root / '00000-a' / 'network-snapshot-000000.pt', 4)
    mid = _fake_snapshot(root / '00000-a' / 'network-snapshot-001000.pt', 1000)  # stopped by Ctrl-C here
    assert runner.training_state(str(root), 7.2) == ('resume', mid)
    for nimg in (2800, 4600, 6400, 7200):  # the resumed run's ticks drift
        last = _fake_snapshot(root / '00001-a' / f'network-snapshot-{nimg // 1000:06d}_{nimg % 1000:03d}.pt', nimg)
    assert runner.training_state(str(root), 7.2) == ('done', last)
    chosen = runner.evaluation_snapshots(runner.snapshots(str(root)), 7.2, (0.5, 1.0))
    assert [n for n, _ in chosen] == [4600, 7200]


# ---------------------------------------------------------------------------------------------
# End to end at smoke scale.


@pytest.mark.slow
def test_smoke_table_runs_end_to_end_reports_and_resumes(files, tmp_path, monkeypatch, capsys):
    calls: list[list[str]] = []
    real = runner.run_command

    def counting(argv, log_path, what):
        calls.append(argv)
        return real(argv, log_path, what)

    monkeypatch.setattr(runner, 'run_command', counting)
    outdir = str(tmp_path / 'out')
    argv = ['run', 'atopk_fig3:da,da_atopk', '--scale=smoke', f'--outdir={outdir}', f'--detector={files.detector}']
    assert _cli(argv, capsys)[0] == 0
    assert [os.path.basename(a[1]) for a in calls] == ['train.py', 'calc_metrics.py'] * 2
    results = sorted(glob.glob(os.path.join(outdir, 'results', '*', 'seed0.json')))
    assert len(results) == 2
    record = json.load(open(results[0]))
    assert record['scale'] == 'smoke' and record['metric']['name'] == 'fid5k_full@32'
    assert record['git']['commit'] and record['versions']['torch'] == torch.__version__
    assert [c['argv'][1] for c in record['commands']] == ['train.py', 'calc_metrics.py']
    assert record['metric']['best'] == min(e['values']['fid5k_full@32'] for e in record['metric']['evaluations'])

    code, out, _ = _cli(['report', 'atopk_fig3', '--scale=smoke', f'--outdir={outdir}'], capsys)
    assert code == 0
    md = open(os.path.join(outdir, 'reports', 'atopk_fig3-smoke.md'), encoding='utf-8').read()
    values = {json.load(open(p))['row']: json.load(open(p))['metric']['best'] for p in results}
    assert f'| `da` | StyleGAN2 + DiffAugment | obama | 4 | {values["da"]:.2f} (n=1)' in md
    assert f'{values["da_atopk"] - values["da"]:+.2f} | n/a (needs 2 seeds each) | -5.91' in md
    assert '| `sg2` |' in md and 'not run' in md
    with PIL.Image.open(os.path.join(outdir, 'reports', 'atopk_fig3-smoke.png')) as img:
        assert img.format == 'PNG' and img.width > 500

    # A second run finds everything finished; a deleted record is rebuilt without training.
    calls.clear()
    assert _cli(argv, capsys)[0] == 0 and calls == []
    os.remove(results[0])
    assert _cli(argv, capsys)[0] == 0 and calls == [] and os.path.exists(results[0])

    # A training stopped early (only its first snapshot left) continues with --resume.
    key = os.path.basename(os.path.dirname(results[1]))
    run_root = os.path.join(outdir, 'runs', key, 'seed0')
    snaps = runner.snapshots(run_root)
    for _, path in snaps[1:]:
        os.remove(path)
    os.remove(results[1])
    assert _cli(argv, capsys)[0] == 0
    assert [os.path.basename(a[1]) for a in calls] == ['train.py', 'calc_metrics.py']
    assert calls[0][-1] == f'--resume={snaps[0][1]}'
    record = json.load(open(results[1]))
    assert [c['argv'][-1] for c in record['commands'] if c['argv'][1] == 'train.py'][-1].startswith('--resume=')

    # A result recorded at another commit stops the report, unless asked for (then marked).
    other = json.load(open(results[0]))
    other['git']['commit'] = '0' * 40
    util.atomic_write_json(results[0], other)
    _one_line_error(capsys, ['report', 'atopk_fig3', '--scale=smoke', f'--outdir={outdir}'], results[0],
                    'commit 000000000000', '--mixed-commits=1')
    assert _cli(['report', 'atopk_fig3', '--scale=smoke', f'--outdir={outdir}', '--mixed-commits=1'], capsys)[0] == 0
    assert '†' in open(os.path.join(outdir, 'reports', 'atopk_fig3-smoke.md'), encoding='utf-8').read()
    assert len(glob.glob(os.path.join(outdir, 'results', '*', 'seed0.json'))) == 2  # nothing finished is lost


# ---------------------------------------------------------------------------------------------
# Datasets and errors.


def _image_folder(folder, count: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        PIL.Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(os.path.join(folder, f'{i}.png'))
    return str(folder)


def test_folder_checksum_is_names_and_bytes_in_sorted_order(tmp_path):
    folder = _image_folder(tmp_path / 'imgs', 3)
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        data = open(os.path.join(folder, name), 'rb').read()
        digest.update(name.encode() + b'\0' + len(data).to_bytes(8, 'little') + data)
    assert datasets.checksum(folder, datasets.IMAGES_SHA256) == digest.hexdigest()
    zipped = tmp_path / 'imgs.zip'
    with zipfile.ZipFile(zipped, 'w') as z:
        for name in sorted(os.listdir(folder)):
            z.write(os.path.join(folder, name), name)
    assert datasets.checksum(str(zipped), datasets.IMAGES_SHA256) == digest.hexdigest()
    first2 = datasets.checksum(folder, datasets.IMAGES_SHA256, max_images=2)
    assert first2 != digest.hexdigest()
    known = datasets.known_checksums()
    assert known['100-shot-obama']['value'] and known['100-shot-grumpy_cat']['value'] is None


def test_datasets_are_checked_before_any_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, 'run_command', lambda *a: pytest.fail(f'nothing may run: {a[0]}'))
    root, outdir = tmp_path / 'data', str(tmp_path / 'out')
    root.mkdir()
    run = ['run', 'atopk_fig3:da', '--scale=cpu', f'--data-root={root}', f'--outdir={outdir}']
    _one_line_error(capsys, run, str(root / '100-shot-obama'), 'not found', 'data-efficient-gans',
                    'python dataset_tool.py --source=', '--resolution=256x256')
    _image_folder(root / '100-shot-obama', 5)
    _one_line_error(capsys, run, 'holds 5 images', '100-shot Obama has 100')
    for i in range(5, 100):
        shutil.copy(root / '100-shot-obama' / '0.png', root / '100-shot-obama' / f'{i}.png')
    _one_line_error(capsys, run, 'images-sha256 is', 'repro/checksums.json expects d18c43d9', 'wrong or truncated')
    # A set without a known checksum: recorded by the user, then checked.
    _image_folder(root / '100-shot-panda', 100)
    code, out, _ = _cli(['data', f'--data-root={root}', '--record=1'], capsys)
    assert code == 0 and '100-shot-panda' in out
    assert datasets.check_source(datasets.get('panda'), str(root)).status == 'recorded-ok'
    _image_folder(root / '100-shot-panda', 1, seed=7)  # overwrite 0.png
    _one_line_error(capsys, ['run', 'atopk_table1:da.panda', '--scale=cpu', f'--data-root={root}',
                             f'--outdir={outdir}'], 'degan-checksums.json expects')


def test_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, 'run_command', lambda *a: pytest.fail(f'nothing may run: {a[0]}'))
    out = ['--scale=smoke', f'--outdir={tmp_path / "out"}']
    _one_line_error(capsys, ['run', 'nosuch'] + out, 'unknown table "nosuch"', 'atopk_table1')
    _one_line_error(capsys, ['run', 'atopk_fig3:nosuch'] + out, 'table atopk_fig3 has no row "nosuch"')
    _one_line_error(capsys, ['run', 'chain_cifar10:biggan.10'] + out, 'waits for --backbone=biggan', 'not built yet')
    _one_line_error(capsys, ['run', 'atopk_table1:minegan.obama'] + out, 'not runnable: cited only', 'MineGAN')
    _one_line_error(capsys, ['run', 'atopk_table9'] + out, 'nothing to run')
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    _one_line_error(capsys, ['run', 'atopk_fig3:da', '--scale=smoke', f'--outdir={blocker / "sub"}'],
                    f'--outdir={blocker / "sub"} is not writable')
    _one_line_error(capsys, ['run', 'atopk_table8:da.100', '--scale=paper', f'--outdir={tmp_path / "o"}'],
                    'pass --detector=')
    _one_line_error(capsys, ['run', 'chain_fewshot:dbig.shells', '--scale=paper', f'--outdir={tmp_path / "o"}'],
                    'needs --lpips-vgg16=PATH')
    _one_line_error(capsys, ['report', 'atopk_fig3', '--scale=smoke', f'--outdir={tmp_path / "empty"}'],
                    'no results for atopk_fig3')
    code, out_text, _ = _cli(['list'], capsys)
    assert code == 0 and all(name in out_text for name in tables.TABLES)
    code, out_text, _ = _cli(['list', 'chain_cifar10'], capsys)
    assert code == 0 and 'waits for --backbone=omnigan' in out_text
    assert report.table_listing(tables.get('atopk_fig3')).count('\n') >= len(tables.get('atopk_fig3').rows)
