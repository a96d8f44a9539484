"""The StyleGAN2 numbers did not move: short runs of the current code against figures recorded
with the code from before the backbone registry (tests/stylegan2_figures.py, tests/data/).

CPUs of different kinds run float32 convolutions and matrix products with different kernels
(oneDNN / MKL pick them by instruction set), so the same code gives figures that differ in the
last bits, and Adam turns such bits on near-zero gradients into whole steps within a few
iterations (1e-3 relative after 6 iterations). Each kind has its own recording
(``figures.FIGURES_FILES``); a run must match one of them.
"""

from __future__ import annotations

import copy
import json
import os

import pytest

from tests import stylegan2_figures as figures
from tests.test_training_loop import run, tiny_args
from training import snapshot_io


@pytest.fixture(scope='module')
def recorded() -> dict:
    with open(figures.FIGURES_FILE, encoding='utf-8') as f:
        return json.load(f)


@pytest.fixture(scope='module')
def recordings() -> list[dict]:
    """The figures of every CPU kind they were recorded on."""
    out = []
    for path in figures.FIGURES_FILES:
        with open(path, encoding='utf-8') as f:
            out.append(json.load(f))
    return out


@pytest.mark.slow
@pytest.mark.parametrize('case', list(figures.CASES))
def test_same_seed_gives_the_recorded_losses_weights_and_stats(tmp_path, recordings, case):
    got = figures.figures_of(figures.run_case(case, str(tmp_path)))
    problems = [figures.compare(got, recording[case]) for recording in recordings]
    closest = min(problems, key=len)
    assert not closest, f'matches none of {len(recordings)} recordings; the closest differs in:\n' + \
        '\n'.join(closest[:20])


def test_version_1_snapshot_resumes_onto_the_recorded_trajectory(tmp_path, recorded):
    """A snapshot written by the previous format (3 iterations) + 3 iterations of the current code
    == 6 iterations of the previous code (weights, Adam states, losses, ATop-k / ADA / CHAIN)."""
    data = snapshot_io.persistence.load_snapshot(figures.V1_SNAPSHOT)
    assert data.get('version', 1) == 1 and 'G_ema' in data and 'modules' not in data
    args = tiny_args(tmp_path, atopk=True, atopk_kimg=0.05, chain=True, chain_start=0, chain_dp=0.05, target=0.3,
                     mirror=True, seed=3, cbase=128, cmax=8)
    result = run(args, tmp_path / 'resumed', resume_pkl=figures.V1_SNAPSHOT)
    assert result['cur_nimg'] == 24
    got = figures.figures_of(str(tmp_path / 'resumed'))
    want = copy.deepcopy(recorded['v1_resume_straight'])
    want['stats'] = want['stats'][-len(got['stats']):]  # the resumed run logs the last ticks only
    for tick, (g, w) in enumerate(zip(got['stats'], want['stats'])):
        # stats.jsonl keeps the last value of a statistic not reported in a tick (upstream's Collector);
        # a resumed process has none from before the resume (here: Greg/Dreg of iteration 0).
        assert set(g) <= set(w), f'tick {tick}: {sorted(set(g) - set(w))}'
        w_kept = {k: v for k, v in w.items() if k in g}
        w.clear()
        w.update(w_kept)
    problems = figures.compare(got, want)
    assert not problems, '\n'.join(problems[:20])
    assert snapshot_io.read(result['last_snapshot'])['version'] == snapshot_io.VERSION
    assert os.path.getsize(figures.V1_SNAPSHOT) < 400_000
