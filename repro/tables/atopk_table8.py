"""ATop-k Table 8: CIFAR-10 at 100 / 20 / 10 % of the training set, StyleGAN2 + DiffAugment →
+ ATop-k, IS and FID of 10k generated images against the test set (``is10k`` / ``fid10k_test``),
mean of 5 evaluations (docs/methods.md §1.3). The 10 % / 20 % subsets are ``train.py --subset``,
which follows ``--seed`` (our runs vary the subset with the seed)."""

from __future__ import annotations

from repro.rows import Table
from repro.tables._cifar_atopk import cifar_rows

TABLE = Table(
    name='atopk_table8', paper='ATop-k',
    rows=tuple(cifar_rows('cifar10', {'100': ((9.40, 9.89), (9.43, 9.72)), '20': ((9.21, 12.15), (9.27, 11.87)),
                                      '10': ((8.84, 14.50), (8.99, 13.98))})),
    title='ATop-k Table 8: CIFAR-10, FID (fid10k_test) and IS (is10k)',
    note='IS needs an Inception with logits: pass --detector=inception-2015-12-05.pt.')
