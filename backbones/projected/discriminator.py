"""Projected GAN's discriminator: projector + four multi-scale mini-discriminators (docs/projected.md §3).

``ProjectedDiscriminator(x, c) -> logits [B, N]``: the images (already DiffAugment-ed by the
loss' augmentation hook, docs/projected.md §5) are bilinearly resized to 224 px when the data
is smaller than 224 (the reference's ``interp224`` rule), projected
(:class:`backbones.projected.projector.FeatureProjector`), and each of the four feature maps is
judged by its own mini-discriminator; their logit maps are flattened per image and concatenated
(256-px input: 4 × 5×5 = 100 logits; 224: 4 × 4×4 = 64).

A mini-discriminator stacks down blocks from its start size to 8, then a 4×4 valid SN conv (no
bias) to one channel. Start sizes are the reference's hard-coded 256-px layout (128, 64, 32, 16)
— or, with the test knob ``disc_start='actual'`` (NOT faithful), the real feature sizes, which
lets 32/64-px inputs run on a CPU. Down block (default): 4×4 stride-2 SN conv with bias → BN →
LReLU(0.2); separable (option): SN depthwise 3×3 + SN pointwise 1×1 → BN → LReLU → 2×2 avg-pool.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from backbones.fastgan.layers import LRELU_SLOPE, sn_conv
from backbones.projected.projector import REFERENCE_RESOLUTIONS, FeatureProjector
from torch_utils import persistence

#: Mini-discriminator channels per feature-map size (the entry at the start size becomes the input's).
CHANNELS = {4: 512, 8: 512, 16: 256, 32: 128, 64: 64, 128: 64, 256: 32, 512: 16, 1024: 8}
END_SIZE = 8
INTERP_SIZE = 224


@persistence.persistent_class
class SeparableConv2d(nn.Module):
    """SN depthwise 3×3 (padding 1) then SN pointwise 1×1, both bias-free."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3) -> None:
        super().__init__()
        self.depthwise = nn.utils.spectral_norm(nn.Conv2d(in_channels, in_channels, kernel, padding=1,
                                                          groups=in_channels, bias=False))
        self.pointwise = sn_conv(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


@persistence.persistent_class
class DownBlock(nn.Module):
    """Halve the resolution: SN conv 4×4/2 with bias → BN → LReLU(0.2) (or the separable form)."""

    def __init__(self, in_channels: int, out_channels: int, separable: bool = False) -> None:
        super().__init__()
        if separable:
            self.main = nn.Sequential(SeparableConv2d(in_channels, out_channels, 3), nn.BatchNorm2d(out_channels),
                                      nn.LeakyReLU(LRELU_SLOPE, inplace=True), nn.AvgPool2d(2, 2))
        else:
            self.main = nn.Sequential(sn_conv(in_channels, out_channels, 4, 2, 1, bias=True),
                                      nn.BatchNorm2d(out_channels), nn.LeakyReLU(LRELU_SLOPE, inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


@persistence.persistent_class
class SingleDisc(nn.Module):
    """Down blocks from ``start_size`` to ``end_size``, then a 4×4 valid SN conv to one logit map."""

    def __init__(self, in_channels: int, start_size: int, end_size: int = END_SIZE, separable: bool = False) -> None:
        super().__init__()
        if start_size not in CHANNELS:  # the reference snaps odd sizes to the nearest table entry
            start_size = min(CHANNELS, key=lambda s: abs(s - start_size))
        end_size = min(end_size, start_size)
        nfc = dict(CHANNELS)
        nfc[start_size] = in_channels
        layers: list[nn.Module] = []
        size = start_size
        while size > end_size:
            layers.append(DownBlock(nfc[size], nfc[size // 2], separable=separable))
            size //= 2
        layers.append(sn_conv(nfc[end_size], 1, 4, 1, 0))
        self.start_size = start_size
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.main(x)


@persistence.persistent_class
class MultiScaleD(nn.Module):
    """One :class:`SingleDisc` per feature level (``mini_discs['0']`` … ``['3']``); logits [B, Σ HᵢWᵢ]."""

    def __init__(self, channels: list[int], resolutions: list[int], separable: bool = False) -> None:
        super().__init__()
        self.mini_discs = nn.ModuleDict({str(i): SingleDisc(cin, res, separable=separable)
                                         for i, (cin, res) in enumerate(zip(channels, resolutions))})

    def forward(self, features: dict[str, torch.Tensor], c: Optional[torch.Tensor] = None) -> torch.Tensor:
        return torch.cat([disc(features[k], c).flatten(1) for k, disc in self.mini_discs.items()], dim=1)


def feature_sizes(input_size: int) -> list[int]:
    """CSM output sizes for an input of ``input_size`` px: 2·ceil(n / 2^(l+2)) per level l."""
    sizes, n = [], input_size
    for level in range(4):
        n = -(-n // (4 if level == 0 else 2))
        sizes.append(2 * n)
    return sizes


@persistence.persistent_class
class ProjectedDiscriminator(nn.Module):
    """Projected GAN's D (module docstring).

    Args:
        c_dim: must be 0 (the conditional mini-discriminators are out of scope).
        img_resolution, img_channels: the data's.
        feature_net: Lite0 weights (None: the package's file; a path; 'random': tests only).
        separable: separable down blocks (the reference's ``stylegan2`` cfg) instead of 4×4 convs.
        interp_size: the size images are resized to before the projector — None: the reference
            rule (224 when ``img_resolution`` < 224, else no resize); an int is a test knob
            (NOT faithful).
        disc_start: 'reference' (mini-D start sizes of a 256-px input, whatever the input) or
            'actual' (the real feature sizes; test knob, NOT faithful).
        diffusion, d_pos: Diffusion-ProjectedGAN's feature diffusion (see ``FeatureProjector``).
    """

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int, feature_net: Optional[str] = None,
                 separable: bool = False, interp_size: Optional[int] = None, disc_start: str = 'reference',
                 diffusion: Optional[dict] = None, d_pos: str = 'first') -> None:
        super().__init__()
        if c_dim:
            raise ValueError("Projected GAN's discriminator is unconditional here: train without --cond")
        if img_channels != 3:
            raise ValueError(f'Projected GAN needs RGB images (EfficientNet input), got {img_channels} channels')
        if disc_start not in ('reference', 'actual'):
            raise ValueError(f"disc_start must be 'reference' or 'actual', got {disc_start!r}")
        self.c_dim, self.img_resolution, self.img_channels = 0, img_resolution, img_channels
        self.interp_size = interp_size if interp_size is not None else (
            INTERP_SIZE if img_resolution < INTERP_SIZE else None)
        self.feature_network = FeatureProjector(feature_net, diffusion=diffusion, d_pos=d_pos)
        input_size = self.interp_size or img_resolution
        starts = list(REFERENCE_RESOLUTIONS) if disc_start == 'reference' else feature_sizes(input_size)
        self.discriminator = MultiScaleD(self.feature_network.CHANNELS, starts, separable=separable)

    @property
    def diffusion(self):  # -> Optional[FeatureDiffusion]
        return self.feature_network.diffusion

    def requires_grad_(self, requires_grad: bool = True) -> 'ProjectedDiscriminator':
        """Only the mini-discriminators ever train; the projector stays frozen."""
        self.discriminator.requires_grad_(requires_grad)
        self.feature_network.requires_grad_(False)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What D's optimiser steps: the mini-discriminators' parameters."""
        return list(self.discriminator.parameters())

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.interp_size is not None and x.shape[-1] != self.interp_size:
            x = F.interpolate(x, self.interp_size, mode='bilinear', align_corners=False)
        return self.discriminator(self.feature_network(x), c)
