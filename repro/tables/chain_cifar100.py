"""CHAIN's CIFAR-100 table (10 / 20 / 100 %), IS / tFID; our copy has the + CHAIN rows only
(docs/methods.md §5.4). Every row waits for its backbone and for a CIFAR-100 reader."""

from __future__ import annotations

from repro.rows import Table
from repro.tables._cifar_chain import cifar_chain_rows

PAPER = {
    'biggan_chain': {'10': (10.04, 13.13), '20': (10.15, 11.58), '100': (11.16, 6.04)},
    'lecam_da_chain': {'10': (10.11, 12.69), '20': (10.62, 9.02), '100': (11.37, 5.26)},
    'omnigan_ada_chain': {'10': (12.70, 9.49), '20': (12.98, 7.02), '100': (13.98, 4.02)},
}

TABLE = Table(name='chain_cifar100', paper='CHAIN', rows=tuple(cifar_chain_rows('cifar100', PAPER)),
              title='CHAIN: CIFAR-100, tFID (fid50k_full, our reading) and IS (is50k)')
