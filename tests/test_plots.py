"""Figures 3a / 14 / 15 from synthetic run logs (patches/plots.py, plot_stats.py)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import PIL.Image
import pytest

from dnnlib.util import UserError
from patches import plots
from patches.atopk import TRACE_FILE, KController, append_trace

B = 4


def _make_run(run_dir: str, iterations: int, atopk: bool = True, iters_per_tick: int = 1000, seed: int = 0) -> None:
    """A run whose p rises linearly to 0.9: k walks down from B; the D gap grows then settles."""
    os.makedirs(run_dir, exist_ok=True)
    controller = KController('adaptive', B, seed=seed)
    rows, tick_k = [], []
    for t in range(1, iterations + 1):
        p = 0.9 * t / iterations
        tick_k.append(controller.k)
        controller.step(t, p=p)
        if t % iters_per_tick == 0:
            kimg = t * B / 1000
            gap = 3 * (1 - math.exp(-kimg / 60))
            row = {'Progress/kimg': dict(num=1, mean=kimg, std=0),
                   'Loss/scores/real': dict(num=8000, mean=0.5 * gap + 0.1, std=1),
                   'Loss/scores/fake': dict(num=8000, mean=-0.5 * gap + 0.1, std=1)}
            if atopk:
                row['ATopk/k'] = dict(num=iters_per_tick, mean=float(np.mean(tick_k)), std=0)
                row['ATopk/p'] = dict(num=iters_per_tick, mean=p, std=0)
                row['ATopk/selected_fraction'] = dict(num=iters_per_tick, mean=float(np.mean(tick_k)) / B, std=0)
                row['ATopk/D_gap'] = dict(num=1, mean=gap, std=0)
            row['timestamp'] = 1e9 + t
            rows.append(row)
            tick_k = []
            if atopk:
                append_trace(run_dir, controller.pop_history())
            else:
                controller.pop_history()
    with open(os.path.join(run_dir, plots.STATS_FILE), 'w', encoding='utf-8') as f:
        f.write(''.join(json.dumps(r) + '\n' for r in rows))


def _check_png(path: str, min_width: int = 400) -> np.ndarray:
    assert os.path.isfile(path)
    with PIL.Image.open(path) as im:
        im.load()
        arr = np.asarray(im.convert('RGB'))
    assert arr.shape[1] >= min_width and arr.shape[0] >= 300
    assert arr.std() > 10  # not blank
    assert (arr.min(axis=2) < 100).mean() > 0.005  # dark pixels: lines, text, axes
    return arr


def test_all_figures_from_one_run(tmp_path):
    run = str(tmp_path / '00001-synthetic-atopk')
    _make_run(run, iterations=52_000)
    written = plots.plot_runs([run], run)
    assert [os.path.basename(p) for p in written] == [plots.FIG3A, plots.FIG14, plots.FIG15]
    for path in written:
        _check_png(path)
    wide = _check_png(written[1])
    assert wide.shape[1] > 900  # two windows side by side


def test_series_definitions(tmp_path):
    run = str(tmp_path / 'r')
    _make_run(run, iterations=8000)
    rows = plots.load_stats(run)
    x, gap = plots.d_gap_series(rows)
    assert np.allclose(x, np.arange(1, 9) * 4.0)
    assert np.allclose(gap, 3 * (1 - np.exp(-x / 60)))
    for row in rows:  # without ATopk/D_gap the gap comes from the score stats
        del row['ATopk/D_gap']
    assert np.allclose(plots.d_gap_series(rows)[1], gap)
    x15, per4k = plots.selected_per_4k_series(rows)
    trace = plots.load_trace(run)
    mean_k = trace['k'].reshape(8, 1000).mean(axis=1)
    assert np.allclose(per4k, 4000 * mean_k / B)  # 4000·Σk/(B·iterations)
    assert per4k[0] > per4k[-1]  # fewer fakes selected as p grows
    assert plots.moving_average(np.array([1.0, 3.0, 5.0]), 2).tolist() == [1.0, 2.0, 4.0]


def test_trace_loading_keeps_last_record_and_skips_truncated_line(tmp_path):
    run = str(tmp_path)
    append_trace(run, [dict(batch_idx=i, k=4, p=0.0) for i in range(10)])
    append_trace(run, [dict(batch_idx=i, k=2, p=0.7) for i in range(5, 12)])  # a resumed run re-records 5..9
    with open(os.path.join(run, TRACE_FILE), 'a', encoding='utf-8') as f:
        f.write('{"batch_idx": 12, "k"')  # still being written
    trace = plots.load_trace(run)
    assert trace['batch_idx'].tolist() == list(range(12))
    assert trace['k'].tolist() == [4] * 5 + [2] * 7


def test_window_choice(tmp_path):
    trace = dict(batch_idx=np.arange(0, 60_000), k=np.ones(60_000, dtype=np.int64), p=np.zeros(60_000))
    assert plots.window_starts(trace, 50) == [4000, 50000]
    short = dict(batch_idx=np.arange(0, 3000), k=np.ones(3000, dtype=np.int64), p=np.zeros(3000))
    assert plots.window_starts(short, 50) == [0, 2950]
    assert plots.window_starts(short, 50, [100]) == [100]
    with pytest.raises(UserError, match='covers iterations 0..2999'):
        plots.window_starts(short, 50, [2990])


def test_baseline_run_gets_only_fig3a_and_comparison(tmp_path):
    base = str(tmp_path / 'baseline')
    ours = str(tmp_path / 'atopk')
    _make_run(base, iterations=6000, atopk=False)
    _make_run(ours, iterations=6000, seed=1)
    assert [os.path.basename(p) for p in plots.plot_runs([base], str(tmp_path / 'out1'))] == [plots.FIG3A]
    written = plots.plot_runs([base, ours], str(tmp_path / 'out2'))
    assert len(written) == 3  # the ATop-k run supplies Fig. 14 / 15
    with pytest.raises(UserError, match='atopk-trace.jsonl'):
        plots.plot_runs([base], str(tmp_path / 'out3'), figures=['14'])
    with pytest.raises(UserError, match='selected_fraction'):
        plots.plot_runs([base], str(tmp_path / 'out3'), figures=['15'])


def test_cli_and_one_line_errors(tmp_path, capsys):
    import plot_stats
    from dnnlib import util

    run = str(tmp_path / 'run')
    _make_run(run, iterations=4000)
    outdir = str(tmp_path / 'figs')
    util.run_cli(plot_stats.main, ['--run', run, '--outdir', outdir, '--figs', '3a,15', '--smooth', '2'])
    out = capsys.readouterr().out.split()
    assert [os.path.basename(p) for p in out] == [plots.FIG3A, plots.FIG15]
    _check_png(os.path.join(outdir, plots.FIG15))

    missing = str(tmp_path / 'nothing')
    os.makedirs(missing)
    with pytest.raises(SystemExit) as e:
        util.run_cli(plot_stats.main, ['--run', missing])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'stats.jsonl not found' in err
    with pytest.raises(SystemExit) as e:
        util.run_cli(plot_stats.main, ['--run', run, '--figs', '7'])
    assert e.value.code == 1 and 'unknown figure' in capsys.readouterr().err
