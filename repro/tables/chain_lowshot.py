"""CHAIN's 100-shot / AnimalFace table with StyleGAN2 backbones, FID (docs/methods.md §5.4:
StyleGAN2 + CHAIN 28.72 27.21 9.51 38.93 53.27; StyleGAN2 + DiffAugment + CHAIN 22.87 17.57
6.93 19.58 30.88). The poster's baseline values are not in our copy (None).

CHAIN's StyleGAN2 settings (batch, length, placement) are not public (docs/methods.md §5.5):
degan runs ATop-k's low-shot setting (batch 4, 2000 kimg, ``low_shot``, x-flips), so the
baselines are the same runs as ATop-k Table 1's, and CHAIN's official defaults (τ 0.5, λ 20,
Δp 0.001, start 5000 iterations; p0 0.1 below ~150 images, else 0; docs/methods.md §8 C3).
"""

from __future__ import annotations

from repro.rows import Row, Table, method_rows
from repro.tables.methods import DIFFAUGMENT, LOWSHOT_SG2, by_dataset

COLUMNS = ('obama', 'grumpy_cat', 'panda', 'animalface_cat', 'animalface_dog')
_P0 = {'obama': 0.1, 'grumpy_cat': 0.1, 'panda': 0.1, 'animalface_cat': 0.0, 'animalface_dog': 0.0}

PAPER = by_dataset(COLUMNS, {
    'sg2': (None,) * 5,
    'sg2_chain': (28.72, 27.21, 9.51, 38.93, 53.27),
    'da': (None,) * 5,
    'da_chain': (22.87, 17.57, 6.93, 19.58, 30.88),
})

ROWS: list[Row] = []
for _ds in COLUMNS:
    _chain = dict(chain=True, chain_p0=_P0[_ds])
    ROWS += method_rows(_ds, PAPER[_ds], {
        'sg2': dict(LOWSHOT_SG2, label='StyleGAN2* (MA)', flags=dict(aug='noaug')),
        'sg2_chain': dict(LOWSHOT_SG2, label='StyleGAN2* (MA) + CHAIN', flags=dict(aug='noaug', **_chain),
                          baseline='sg2'),
        'da': dict(LOWSHOT_SG2, label='StyleGAN2 + DiffAugment', flags=dict(diffaugment=DIFFAUGMENT)),
        'da_chain': dict(LOWSHOT_SG2, label='StyleGAN2 + DiffAugment + CHAIN',
                         flags=dict(diffaugment=DIFFAUGMENT, **_chain), baseline='da'),
    })

TABLE = Table(
    name='chain_lowshot', paper='CHAIN', rows=tuple(ROWS),
    title='CHAIN: 100-shot and AnimalFace with StyleGAN2, FID (fid5k_full)',
    note='Baseline values of the poster are not in our copy; the baselines are the runs of ATop-k Table 1.')
