"""StyleGAN2's flags and ``--cfg`` presets (docs/stylegan2-ada.md §2).

Presets and the ``auto`` formulas are upstream StyleGAN2-ADA's; ``low_shot`` is DiffAugment's
low-shot StyleGAN2 preset (docs/methods.md §4).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import click

from training.options import OptionGroup, flag

# ref_gpus, kimg, mb (batch), mbstd, fmaps, lrate, gamma, ema (kimg), ramp, map; -1 = derived.
CFG_SPECS: dict[str, dict[str, Any]] = {
    'auto':      dict(ref_gpus=-1, kimg=25000,  mb=-1, mbstd=-1, fmaps=-1,  lrate=-1,     gamma=-1,   ema=-1,  ramp=0.05, map=2),
    'stylegan2': dict(ref_gpus=8,  kimg=25000,  mb=32, mbstd=4,  fmaps=1,   lrate=0.002,  gamma=10,   ema=10,  ramp=None, map=8),
    'paper256':  dict(ref_gpus=8,  kimg=25000,  mb=64, mbstd=8,  fmaps=0.5, lrate=0.0025, gamma=1,    ema=20,  ramp=None, map=8),
    'paper512':  dict(ref_gpus=8,  kimg=25000,  mb=64, mbstd=8,  fmaps=1,   lrate=0.0025, gamma=0.5,  ema=20,  ramp=None, map=8),
    'paper1024': dict(ref_gpus=8,  kimg=25000,  mb=32, mbstd=4,  fmaps=1,   lrate=0.002,  gamma=2,    ema=10,  ramp=None, map=8),
    'cifar':     dict(ref_gpus=2,  kimg=100000, mb=64, mbstd=32, fmaps=1,   lrate=0.0025, gamma=0.01, ema=500, ramp=0.05, map=2),
    'low_shot':  dict(ref_gpus=-1, kimg=300,    mb=8,  mbstd=4,  fmaps=1,   lrate=0.002,  gamma=10,   ema=10,  ramp=None, map=2),
}

_AtLeastOne = click.IntRange(1)


@dataclasses.dataclass
class StyleGAN2Options(OptionGroup):
    """Flags of ``--backbone=stylegan2`` (upstream names; StyleGAN3-style overrides)."""
    title: ClassVar[str] = 'StyleGAN2 backbone (--backbone=stylegan2)'
    gamma: Optional[float] = flag(None, 'Override R1 gamma', type=click.FloatRange(0), show_default='from --cfg')
    cbase: Optional[int] = flag(None, 'Capacity multiplier (channel_base)', type=_AtLeastOne, show_default='from --cfg')
    cmax: Optional[int] = flag(None, 'Max. feature maps', type=_AtLeastOne, show_default='512')
    map: Optional[int] = flag(None, 'Mapping network depth', type=_AtLeastOne, show_default='from --cfg')
    mbstd_group: Optional[int] = flag(None, 'Minibatch std group size', type=click.IntRange(0), show_default='from --cfg')
    freezed: int = flag(0, 'Freeze-D: number of frozen D layers', type=click.IntRange(0))
    fp32: bool = flag(False, 'Disable mixed-precision training', type=bool, metavar='BOOL')
    nhwc: bool = flag(False, 'Use NHWC memory format with FP16', type=bool, metavar='BOOL')
