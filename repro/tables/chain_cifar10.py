"""CHAIN's CIFAR-10 table (10 / 20 / 100 %), IS / tFID (docs/methods.md §5.4; cells not in our
copy of the poster are None). Every row waits for its backbone (repro/tables/_cifar_chain.py)."""

from __future__ import annotations

from repro.rows import Table
from repro.tables._cifar_chain import cifar_chain_rows

PAPER = {
    'biggan': {'10': (8.24, 31.45), '20': (8.74, 16.20), '100': (9.21, 5.48)},
    'biggan_chain': {'10': (8.63, 12.02), '20': (8.98, 8.15), '100': (9.49, 4.18)},
    'lecam_da': {'10': (8.81, 12.64)},
    'lecam_da_chain': {'10': (8.96, 8.54), '20': (9.27, 5.92), '100': (9.52, 3.51)},
    'omnigan_ada': {'10': (7.86, 40.05), '20': (9.41, 27.04), '100': (10.24, 4.95)},
    'omnigan_ada_chain': {'10': (10.10, 6.22), '20': (10.26, 3.98), '100': (10.31, 2.22)},
}

TABLE = Table(name='chain_cifar10', paper='CHAIN', rows=tuple(cifar_chain_rows('cifar10', PAPER)),
              title='CHAIN: CIFAR-10, tFID (fid50k_full, our reading) and IS (is50k)')
