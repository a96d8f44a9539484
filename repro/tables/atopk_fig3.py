"""ATop-k Fig. 3: Worst-k — the k = 3 lowest-scored fakes of a batch of 4 update G — on 100-shot
Obama, FID (docs/methods.md §1.2: StyleGAN2 + Worst-k 68.71, StyleGAN2 + ADA + Worst-k 53.67;
the baselines and ATop-k from Table 1).

The StyleGAN2 + DiffAugment rows are not in the figure: they put Worst-k on Table 5's backbone,
so that one CPU-scale comparison (baseline, + ATop-k, + Worst-k, + Fixed Top-k) runs on a single
backbone (docs/reproducing.md, "The first CPU comparison").
"""

from __future__ import annotations

from repro.rows import Row, Table
from repro.tables.methods import DIFFAUGMENT, LOWSHOT_SG2

_SG2 = dict(LOWSHOT_SG2, dataset='obama')
_WORST = dict(topk_mode='worst', topk_k=3)
_DA = dict(diffaugment=DIFFAUGMENT)

ROWS = (
    Row(id='sg2', label='StyleGAN2* (MA)', paper=65.57, flags=dict(aug='noaug'), **_SG2),
    Row(id='sg2_atopk', label='+ ATop-k', paper=55.78, flags=dict(aug='noaug', atopk=True), baseline='sg2', **_SG2),
    Row(id='sg2_worst3', label='+ Worst-k, k = 3', paper=68.71, flags=dict(aug='noaug', **_WORST), baseline='sg2',
        **_SG2),
    Row(id='ada', label='StyleGAN2 + ADA', paper=45.69, flags=dict(aug='ada'), **_SG2),
    Row(id='ada_atopk', label='+ ATop-k', paper=40.79, flags=dict(aug='ada', atopk=True), baseline='ada', **_SG2),
    Row(id='ada_worst3', label='+ Worst-k, k = 3', paper=53.67, flags=dict(aug='ada', **_WORST), baseline='ada',
        **_SG2),
    Row(id='da', label='StyleGAN2 + DiffAugment', paper=46.87, flags=_DA, note='Table 1 value', **_SG2),
    Row(id='da_atopk', label='+ ATop-k', paper=40.96, flags=dict(_DA, atopk=True), baseline='da', **_SG2),
    Row(id='da_worst3', label='+ Worst-k, k = 3', flags=dict(_DA, **_WORST), baseline='da',
        note='not in the paper: Worst-k on the DiffAugment backbone', **_SG2),
    Row(id='da_fixed3', label='+ Fixed Top-k, k = 3', paper=47.14, flags=dict(_DA, topk_mode='fixed', topk_k=3),
        baseline='da', note='Table 5 (its batch is ambiguous, docs/methods.md §8 A5)', **_SG2),
)

TABLE = Table(
    name='atopk_fig3', paper='ATop-k', rows=ROWS,
    title='ATop-k Fig. 3: Worst-k vs ATop-k, 100-shot Obama, batch 4, FID (fid5k_full)',
    note='da, da_atopk, da_worst3, da_fixed3 are the first CPU-scale comparison (docs/reproducing.md).')
