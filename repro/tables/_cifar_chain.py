"""Shared builder of CHAIN's CIFAR tables: BigGAN, LeCam + DA and OmniGAN + ADA, each ± CHAIN.

None of these backbones is built yet (``--backbone=biggan`` / ``omnigan``); the rows say so.
The poster's "tFID" is read as FID of 50k G_ema samples against the training set
(``fid50k_full``) with IS of 50k samples (``is50k``); lengths are reals shown to D
(BigGAN: 4 D steps of 50 reals per iteration; OmniGAN: our recipe).
"""

from __future__ import annotations

from typing import Optional

from repro.rows import Row

PCTS = ('10', '20', '100')
_BIGGAN_KIMG = {'cifar10': {'10': 25000, '20': 50000, '100': 50000},
                'cifar100': {'10': 25000, '20': 50000, '100': 100000}}

METHODS = {
    'biggan': dict(label='BigGAN', backbone='biggan', batch=50, flags={}),
    'biggan_chain': dict(label='BigGAN + CHAIN', backbone='biggan', batch=50, flags=dict(chain=True),
                         baseline='biggan'),
    'lecam_da': dict(label='LeCam + DA', backbone='biggan', batch=50, flags=dict(diffaugment='translation,cutout'),
                     waits_for='the LeCam regulariser'),
    'lecam_da_chain': dict(label='LeCam + DA + CHAIN', backbone='biggan', batch=50,
                           flags=dict(diffaugment='translation,cutout', chain=True), baseline='lecam_da',
                           waits_for='the LeCam regulariser'),
    'omnigan_ada': dict(label='OmniGAN + ADA', backbone='omnigan', batch=32, flags=dict(aug='ada')),
    'omnigan_ada_chain': dict(label='OmniGAN + ADA + CHAIN', backbone='omnigan', batch=32,
                              flags=dict(aug='ada', chain=True), baseline='omnigan_ada'),
}


def cifar_chain_rows(prefix: str, paper: dict[str, dict[str, Optional[tuple[float, float]]]]) -> list[Row]:
    """Rows ``<method>.<pct>``; ``paper[method][pct] = (IS, tFID)`` or None."""
    rows = []
    for pct in PCTS:
        ds = prefix if pct == '100' else f'{prefix}_{pct}pct'
        for method, spec in METHODS.items():
            fields = dict(spec)
            if fields.get('baseline'):
                fields['baseline'] = f'{fields["baseline"]}.{pct}'
            value = paper.get(method, {}).get(pct)
            rows.append(Row(id=f'{method}.{pct}', dataset=ds, kimg=_BIGGAN_KIMG[prefix][pct], cond=True,
                            metric='fid50k_full', secondary=('is50k',), mirror=True, runs=3,
                            paper=None if value is None else value[1],
                            paper_secondary={} if value is None else {'is50k': value[0]}, **fields))
    return rows
