"""ATop-k Table 6: Linear Top-k (Sinha et al.'s schedule, minimum 0.75 × batch) against ATop-k on
100-shot Obama, FID (docs/methods.md §1.2: StyleGAN2 63.41, + DiffAugment 44.87,
Diffusion-ProjectedGAN 10.46; baselines and ATop-k from Table 1)."""

from __future__ import annotations

from repro.rows import Row, Table
from repro.tables.methods import DIFFAUGMENT, DPG, LOWSHOT_SG2

_SG2 = dict(LOWSHOT_SG2, dataset='obama')
_DPG = dict(DPG, dataset='obama')
_LINEAR = dict(topk_mode='linear', topk_nu=0.75)

ROWS = (
    Row(id='sg2', label='StyleGAN2* (MA)', paper=65.57, flags=dict(aug='noaug'), **_SG2),
    Row(id='sg2_linear', label='+ Linear Top-k', paper=63.41, flags=dict(aug='noaug', **_LINEAR), baseline='sg2',
        **_SG2),
    Row(id='sg2_atopk', label='+ ATop-k', paper=55.78, flags=dict(aug='noaug', atopk=True), baseline='sg2', **_SG2),
    Row(id='da', label='StyleGAN2 + DiffAugment', paper=46.87, flags=dict(diffaugment=DIFFAUGMENT), **_SG2),
    Row(id='da_linear', label='+ Linear Top-k', paper=44.87, flags=dict(diffaugment=DIFFAUGMENT, **_LINEAR),
        baseline='da', **_SG2),
    Row(id='da_atopk', label='+ ATop-k', paper=40.96, flags=dict(diffaugment=DIFFAUGMENT, atopk=True), baseline='da',
        **_SG2),
    Row(id='dpg', label='Diffusion-ProjectedGAN', paper=10.54, flags=dict(diffusion=True), **_DPG),
    Row(id='dpg_linear', label='+ Linear Top-k', paper=10.46, flags=dict(diffusion=True, **_LINEAR), baseline='dpg',
        **_DPG),
    Row(id='dpg_atopk', label='+ ATop-k', paper=9.92, flags=dict(diffusion=True, atopk=True), baseline='dpg', **_DPG),
)

TABLE = Table(
    name='atopk_table6', paper='ATop-k', rows=ROWS,
    title='ATop-k Table 6: Linear Top-k vs ATop-k, 100-shot Obama, FID (fid5k_full)')
