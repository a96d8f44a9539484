"""ATop-k Table 3: FFHQ subsets of 100 / 1K / 2K / 5K images (FakeCLR protocol: 256 px, batch 64,
25000 kimg for every method), FID (``fid5k_full``, best over training, mean of 5 runs).
Values: docs/methods.md §1.3 and the README's InsGen section."""

from __future__ import annotations

from repro.rows import Row, Table, method_rows
from repro.tables.methods import DPG, INSGEN, atopk_methods, by_dataset

COLUMNS = ('ffhq100', 'ffhq1k', 'ffhq2k', 'ffhq5k')

PAPER = by_dataset(COLUMNS, {
    'sg2': (179.00, 100.16, 54.30, 49.68),
    'sg2_atopk': (121.96, 66.37, 40.98, 21.75),
    'da': (61.91, 25.66, 24.32, 10.45),
    'da_atopk': (55.24, 22.98, 16.12, 10.15),
    'ada': (85.8, 21.29, 15.39, 10.96),
    'ada_atopk': (69.92, 20.71, 15.09, 10.71),
    'insgen': (45.75, 18.21, 11.47, 7.83),
    'insgen_atopk': (43.09, 16.97, 10.52, 7.40),
    'dpg': (25.47, 8.76, 7.99, 6.59),
    'dpg_atopk': (24.32, 8.24, 7.89, 6.51),
})

#: Every method at batch 64 and 25000 kimg (the ATop-k paper, section 4.1); StyleGAN2 on upstream's ``paper256`` preset.
_FFHQ = dict(batch=64, kimg=25000, runs=5)
_METHODS = atopk_methods(dict(_FFHQ, cfg='paper256'), dict(INSGEN, **_FFHQ), dict(DPG, **_FFHQ))

ROWS: list[Row] = []
for _ds in COLUMNS:
    ROWS += method_rows(_ds, PAPER[_ds], _METHODS,
                        note='FFHQ subset = the first N images in sorted order (our reading; FakeCLR\'s unchecked)')

TABLE = Table(
    name='atopk_table3', paper='ATop-k', rows=tuple(ROWS),
    title='ATop-k Table 3: FFHQ-100/1K/2K/5K, FID (fid5k_full, best over training, 5 runs)',
    note='StyleGAN2 rows use --cfg=paper256 at batch 64 (our choice of preset for the FakeCLR protocol).')
