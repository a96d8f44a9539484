"""Flags of ``--backbone=insgen``: StyleGAN2's (inherited) plus InsGen's (docs/insgen.md §5).

InsGen trains StyleGAN2-ADA's networks, so every StyleGAN2 flag applies (``--cfg``, ``--gamma``,
``--cbase`` …; default preset ``paper256``, as InsGen's README). Its own flags: the queue sizes
(default 5 % of the images, doubled with ``--mirror``), the generator's contrastive term and
``--ada-linear`` (ADA's p rising linearly to ``--target`` instead of the feedback rule).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

import click

from backbones.stylegan2.options import StyleGAN2Options
from training.options import flag


@dataclasses.dataclass
class InsGenOptions(StyleGAN2Options):
    """Flags of ``--backbone=insgen`` (StyleGAN2's flags are inherited)."""
    title: ClassVar[str] = 'InsGen backbone (--backbone=insgen; the StyleGAN2 flags apply too)'
    rqs: Optional[int] = flag(None, 'Real-image queue size (keys)', type=click.IntRange(1),
                              show_default='5% of the images, x2 with --mirror')
    fqs: Optional[int] = flag(None, 'Fake-image queue size (keys)', type=click.IntRange(1),
                              show_default='5% of the images, x2 with --mirror')
    no_cl_on_g: bool = flag(False, "Drop G's contrastive (diversity) term", type=bool, metavar='BOOL')
    ada_linear: bool = flag(False, "ADA's p rises linearly to --target over the run (InsGen's option for < 5k images)",
                            type=bool, metavar='BOOL')
