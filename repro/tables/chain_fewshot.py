"""CHAIN's few-shot table: FastGAN-D_big → + CHAIN on seven 1024-px sets, FID of 5k samples
against the whole training set (docs/methods.md §5.4; the README's FastGAN section: official
recipe τ 0.5, λ 20, p0 0.1 on the tiny Shells / Skulls / AnimeFace, 100k iterations = 800 kimg at
batch 8, ArtPainting p0 0 and 200k iterations; ``--snap=2`` evaluates every 1000 iterations).
Baseline values other than Shells' are not in our copy (None)."""

from __future__ import annotations

from repro.rows import Row, Table, method_rows
from repro.tables.methods import by_dataset

COLUMNS = ('shells', 'skulls', 'anime_face', 'brecahad', 'messidor_set1', 'pokemon', 'art_painting')
_P0 = dict(shells=0.1, skulls=0.1, anime_face=0.1)

PAPER = by_dataset(COLUMNS, {
    'dbig': (171.35, None, None, None, None, None, None),
    'dbig_chain': (78.62, 82.47, 46.27, 58.98, 28.76, 31.94, 38.83),
})

ROWS: list[Row] = []
for _ds in COLUMNS:
    _common = dict(backbone='fastgan', batch=8, kimg=1600 if _ds == 'art_painting' else 800, weights=('lpips_vgg16',),
                   paper_flags=dict(snap=2))
    ROWS += method_rows(_ds, PAPER[_ds], {
        'dbig': dict(_common, label='FastGAN-D_big', flags=dict(fastgan_d='big')),
        'dbig_chain': dict(_common, label='FastGAN-D_big + CHAIN', baseline='dbig',
                           flags=dict(fastgan_d='big', chain=True, chain_type='chain', chain_tau=0.5, chain_lambda=20.0,
                                      chain_p0=_P0.get(_ds, 0.0))),
    })

TABLE = Table(
    name='chain_fewshot', paper='CHAIN', rows=tuple(ROWS),
    title='CHAIN: few-shot 1024 px, FastGAN-D_big, FID (fid5k_full)',
    note='Needs --lpips-vgg16 (torchvision vgg16-397923af.pth) for the reference LPIPS reconstruction loss.')
