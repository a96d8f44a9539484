"""The methods the tables share, as Row fields (plain data).

The recipes follow the papers' training setups (docs/methods.md §1.1–1.2, §5.4, §7) and the
README's commands for the other backbones: low-shot StyleGAN2 / + ADA / + DiffAugment at
batch 4 for 2000 kimg on DiffAugment's ``low_shot`` preset (docs/methods.md §8 A10, our reading)
with x-flips ("MA"); InsGen + ADA at batch 64 for 25000 kimg on ``paper256`` with
``--ada-linear``; Diffusion-ProjectedGAN at batch 64 for 100000 kimg; FFHQ subsets at batch 64
for 25000 kimg for every method. FID of 5k generated images against all training images,
best over training (``fid5k_full``), averaged over 3 runs (low-shot) or 5 (FFHQ, CIFAR).
"""

from __future__ import annotations

from typing import Any

DIFFAUGMENT = 'color,translation,cutout'

#: Low-shot StyleGAN2 (ATop-k paper, section 4.1: batch 4, 2000 kimg).
LOWSHOT_SG2: dict[str, Any] = dict(cfg='low_shot', batch=4, kimg=2000, runs=3)
INSGEN: dict[str, Any] = dict(backbone='insgen', cfg='paper256', batch=64, kimg=25000, runs=3)
DPG: dict[str, Any] = dict(backbone='projected', batch=64, kimg=100000, runs=3)


def _with(base: dict[str, Any], label: str, flags: dict[str, Any], **more: Any) -> dict[str, Any]:
    return dict(base, label=label, flags=flags, **more)


def atopk_methods(sg2: dict[str, Any], insgen: dict[str, Any], dpg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ten method rows of ATop-k Tables 1 and 3: five backbones, each without and with ATop-k."""
    return {
        'sg2': _with(sg2, 'StyleGAN2* (MA)', dict(aug='noaug')),
        'sg2_atopk': _with(sg2, 'StyleGAN2* (MA) + ATop-k', dict(aug='noaug', atopk=True), baseline='sg2'),
        'da': _with(sg2, 'StyleGAN2 + DiffAugment', dict(diffaugment=DIFFAUGMENT)),
        'da_atopk': _with(sg2, 'StyleGAN2 + DiffAugment + ATop-k', dict(diffaugment=DIFFAUGMENT, atopk=True),
                          baseline='da'),
        'ada': _with(sg2, 'StyleGAN2 + ADA', dict(aug='ada')),
        'ada_atopk': _with(sg2, 'StyleGAN2 + ADA + ATop-k', dict(aug='ada', atopk=True), baseline='ada'),
        'insgen': _with(insgen, 'InsGen + ADA', dict(ada_linear=True)),
        'insgen_atopk': _with(insgen, 'InsGen + ADA + ATop-k', dict(ada_linear=True, atopk=True), baseline='insgen'),
        'dpg': _with(dpg, 'Diffusion-ProjectedGAN', dict(diffusion=True)),
        'dpg_atopk': _with(dpg, 'Diffusion-ProjectedGAN + ATop-k', dict(diffusion=True, atopk=True), baseline='dpg'),
    }


def by_dataset(columns: tuple[str, ...], table: dict[str, tuple]) -> dict[str, dict[str, float]]:
    """``{method: (v1, v2, …)}`` in column order → ``{dataset: {method: value}}``."""
    return {ds: {m: values[i] for m, values in table.items()} for i, ds in enumerate(columns)}
