"""Shared builder of ATop-k Tables 8 and 9 (CIFAR-10 / CIFAR-100 at 100 / 20 / 10 %)."""

from __future__ import annotations

from repro.rows import Row
from repro.tables.methods import DIFFAUGMENT

#: StyleGAN2 + DiffAugment on CIFAR: upstream's ``cifar`` preset (batch 64, 100000 kimg),
#: unconditional as DiffAugment's StyleGAN2 CIFAR runs (our reading; their length is not checked).
CIFAR_SG2 = dict(cfg='cifar', batch=64, kimg=100000, runs=5, metric='fid10k_test', secondary=('is10k',))


def cifar_rows(prefix: str, paper: dict[str, tuple[tuple[float, float], tuple[float, float]]]) -> list[Row]:
    """Rows ``da.<pct>`` and ``da_atopk.<pct>``; ``paper[pct] = ((IS, FID) baseline, (IS, FID) ATop-k)``."""
    rows = []
    for pct, ((is_b, fid_b), (is_a, fid_a)) in paper.items():
        ds = prefix if pct == '100' else f'{prefix}_{pct}pct'
        common = dict(CIFAR_SG2, dataset=ds)
        rows.append(Row(id=f'da.{pct}', label=f'StyleGAN2 + DiffAugment ({pct} %)', paper=fid_b,
                        paper_secondary={'is10k': is_b}, flags=dict(diffaugment=DIFFAUGMENT), **common,
                        note='baseline = the DiffAugment-stylegan2 release numbers (is10k / fid10k vs the test set)'))
        rows.append(Row(id=f'da_atopk.{pct}', label=f'+ ATop-k ({pct} %)', paper=fid_a, paper_secondary={'is10k': is_a},
                        flags=dict(diffaugment=DIFFAUGMENT, atopk=True), baseline=f'da.{pct}', **common))
    return rows
