"""generate.py end to end on fresh, untrained snapshots (unconditional and conditional)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

import generate
from dnnlib import util
from torch_utils import persistence
from training import networks

RES = 16


def write_snapshot(path, c_dim=0):
    torch.manual_seed(3)
    G = networks.Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=RES, img_channels=3,
                           mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=16))
    with torch.no_grad():
        G.mapping.w_avg.normal_()  # so that truncation visibly changes the images
    persistence.save_snapshot({'G_ema': persistence.module_to_record(G), 'training_set_kwargs': {}}, str(path))
    return G.eval()


def expected_image(G, seed, psi=1.0, label=None):
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim))
    c = torch.zeros(1, G.c_dim) if label is None else label
    with torch.no_grad():
        img = G(z, c, truncation_psi=psi, noise_mode='const')
    return (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].numpy()


def test_one_png_per_seed_matching_the_network(tmp_path):
    G = write_snapshot(tmp_path / 'snap.pt')
    util.run_cli(generate.main, ['--network', str(tmp_path / 'snap.pt'), '--seeds', '0-2,7', '--outdir', str(tmp_path / 'out')])
    for seed in (0, 1, 2, 7):
        img = np.asarray(PIL.Image.open(tmp_path / 'out' / f'seed{seed:04d}.png'))
        assert img.shape == (RES, RES, 3)
        assert np.array_equal(img, expected_image(G, seed)), 'seed → z must follow RandomState(seed).randn'
    a = np.asarray(PIL.Image.open(tmp_path / 'out' / 'seed0000.png'))
    b = np.asarray(PIL.Image.open(tmp_path / 'out' / 'seed0001.png'))
    assert not np.array_equal(a, b)


def test_grid_and_truncation(tmp_path):
    G = write_snapshot(tmp_path / 'snap.pt')
    util.run_cli(generate.main, ['--network', str(tmp_path / 'snap.pt'), '--seeds', '0-4', '--grid', '--trunc', '0.5',
                                 '--outdir', str(tmp_path / 'out')])
    grid = np.asarray(PIL.Image.open(tmp_path / 'out' / 'grid.png'))
    assert grid.shape == (2 * RES, 3 * RES, 3)  # 5 images → 3 columns × 2 rows
    assert np.array_equal(grid[RES:, RES:2 * RES], expected_image(G, 4, psi=0.5))
    assert not grid[RES:, 2 * RES:].any(), 'the empty cell stays black'
    assert not np.array_equal(grid[:RES, :RES], expected_image(G, 0, psi=1.0))


def test_conditional_network_needs_class(tmp_path, capsys):
    G = write_snapshot(tmp_path / 'cond.pt', c_dim=3)
    with pytest.raises(SystemExit) as info:
        util.run_cli(generate.main, ['--network', str(tmp_path / 'cond.pt'), '--seeds', '0', '--outdir', str(tmp_path / 'o')])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and '--class' in err[0]
    util.run_cli(generate.main, ['--network', str(tmp_path / 'cond.pt'), '--seeds', '5', '--class', '2',
                                 '--outdir', str(tmp_path / 'o')])
    label = torch.zeros(1, 3)
    label[0, 2] = 1
    assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / 'o' / 'seed0005.png')), expected_image(G, 5, label=label))


@pytest.mark.parametrize('args, message', [
    (['--network', 'missing.pt', '--seeds', '0'], 'not found'),
    (['--seeds', 'x-y'], '--seeds: cannot parse "x-y"'),
    # numpy's seeds are 0 … 2**32-1; these were a ValueError traceback from RandomState.
    (['--seeds=-1'], "error: --seeds: -1 is not a valid seed; seeds must be between 0 and 4294967295 (2**32-1, "
                     "numpy's seed range)"),
    (['--seeds', '-1'], '--seeds: -1 is not a valid seed'),
    (['--seeds=4294967296'], '--seeds: 4294967296 is not a valid seed; seeds must be between 0 and 4294967295'),
    (['--seeds=0-2,4294967290-4294967296'], '--seeds: 4294967296 is not a valid seed'),
    (['--seeds=3-1'], '--seeds: bad range "3-1"'),
    (['--seeds=0-4294967295'], '--seeds=0-4294967295 names 4294967296 seeds; at most 1000000'),
])
def test_bad_input_one_line(tmp_path, capsys, args, message):
    write_snapshot(tmp_path / 'snap.pt')
    argv = ['--network', str(tmp_path / 'snap.pt'), '--outdir', str(tmp_path / 'o')] + args
    with pytest.raises(SystemExit) as info:
        util.run_cli(generate.main, argv)
    assert info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_largest_seed(tmp_path):
    G = write_snapshot(tmp_path / 'snap.pt')
    util.run_cli(generate.main, ['--network', str(tmp_path / 'snap.pt'), '--seeds=4294967295,0',
                                 '--outdir', str(tmp_path / 'out')])
    img = np.asarray(PIL.Image.open(tmp_path / 'out' / 'seed4294967295.png'))
    assert np.array_equal(img, expected_image(G, 2 ** 32 - 1))
