"""ATop-k Table 9: CIFAR-100 at 100 / 20 / 10 %, StyleGAN2 + DiffAugment → + ATop-k, IS and FID
of 10k generated images against the test set (docs/methods.md §1.3). The rows wait for a
CIFAR-100 reader in dataset_tool.py (repro/datasets.py)."""

from __future__ import annotations

from repro.rows import Table
from repro.tables._cifar_atopk import cifar_rows

TABLE = Table(
    name='atopk_table9', paper='ATop-k',
    rows=tuple(cifar_rows('cifar100', {'100': ((10.04, 15.22), (10.09, 15.06)), '20': ((9.82, 16.65), (9.91, 16.37)),
                                       '10': ((9.06, 20.75), (9.22, 20.02))})),
    title='ATop-k Table 9: CIFAR-100, FID (fid10k_test) and IS (is10k)')
