"""Flags of ``--backbone=fastgan`` (docs/fastgan.md §5).

The reference's fixed settings (nz 256, Adam 2e-4 with β = (0.5, 0.999), batch 8, EMA 0.999,
DiffAugment ``color,translation``) are defaults here; ``--ngf``/``--ndf`` make tiny CPU
networks, ``--fastgan-d=big`` selects CHAIN's discriminator, and the reconstruction loss needs
the LPIPS VGG16 weights (``--lpips-vgg16``) unless the labelled fallback ``--recon-loss=l1`` is
chosen.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

import click

from dnnlib.util import UserError
from training.options import OptionGroup, flag

#: Iterations of the reference recipes at batch 8 (FastGAN: 50k, CHAIN's D_big: 100k), in kimg.
REFERENCE_KIMG = {'orig': 400, 'big': 800}
REFERENCE_BATCH = 8


@dataclasses.dataclass
class FastGANOptions(OptionGroup):
    """Flags of ``--backbone=fastgan``."""
    title: ClassVar[str] = 'FastGAN backbone (--backbone=fastgan)'
    fastgan_d: str = flag('orig', "Discriminator: FastGAN's original, or CHAIN's D_big",
                          type=click.Choice(['orig', 'big']))
    ngf: int = flag(64, 'G width base', type=click.IntRange(8))
    ndf: int = flag(64, 'D width base', type=click.IntRange(8))
    recon_loss: str = flag('lpips', "D decoders' reconstruction distance; l1 is NOT the reference's (no VGG16 needed)",
                           type=click.Choice(['lpips', 'l1']))
    lpips_vgg16: Optional[str] = flag(None, 'torchvision vgg16 ImageNet state dict for LPIPS (e.g. vgg16-397923af.pth)',
                                      metavar='PATH', show_default='required with --recon-loss=lpips')
    lpips_lin: Optional[str] = flag(None, "LPIPS v0.1 linear-calibration weights (vgg.pth)", metavar='PATH',
                                    show_default="the installed lpips package's")
    fastgan_sample: str = flag('train', 'BN when sampling G_ema: batch statistics (reference) or running ones',
                               type=click.Choice(['train', 'eval']))

    def validate(self) -> None:
        if self.recon_loss == 'lpips' and self.lpips_vgg16 is None:
            raise UserError('--backbone=fastgan: the D reconstruction loss needs LPIPS VGG16 weights: pass '
                            '--lpips-vgg16=PATH (a torchvision vgg16 state dict), or --recon-loss=l1 (not the reference)')
        if self.recon_loss == 'l1' and self.lpips_vgg16 is not None:
            raise UserError('--lpips-vgg16 is only used with --recon-loss=lpips')
