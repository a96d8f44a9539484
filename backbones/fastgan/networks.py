"""FastGAN's generator and original discriminator (Liu et al., ICLR 2021), official module names.

Architecture: docs/fastgan.md §1 (G) and §2 (D). Submodule and parameter names, their order
and their shapes are the official ones (reference tree: FastGAN-pytorch at commit 893b93d), so
an official ``state_dict`` loads 1:1 and gives the same images and logits; CHAIN's bigger
discriminator is in :mod:`backbones.fastgan.d_big`.

Interfaces (degan's, around the official forward):

* ``Generator(z) -> [image, image_128]`` (``small_output=True``, the original) or ``image``
  (CHAIN's ``nosmall``); no tanh at 256 and 512 px, tanh at 1024 (official quirk).
* ``Discriminator(imgs, part=None) -> logits [B, 50]`` (25 logits of the big head, then 25 of
  the small head, per sample), or with ``part`` (reals) ``(logits, [rec_big, rec_small,
  rec_part])``. The official D returns the same 50·B logits flat, all big ones first:
  :func:`official_logit_layout` converts.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from backbones.fastgan.layers import (GLU, LRELU_SLOPE, SEBlock, SimpleDecoder, channel_table, init_weights, quarter,
                                      resize_nearest, sn_conv, sn_conv_transpose, up_block, up_block_comp)
from torch_utils import persistence

#: Channel multipliers of ``ngf`` (G) and ``ndf`` (D) per resolution.
G_MULTIPLIERS = {4: 16, 8: 8, 16: 4, 32: 2, 64: 2, 128: 1, 256: 0.5, 512: 0.25, 1024: 0.125}
D_MULTIPLIERS = {4: 16, 8: 16, 16: 8, 32: 4, 64: 2, 128: 1, 256: 0.5, 512: 0.25, 1024: 0.125}
RESOLUTIONS = (256, 512, 1024)
SMALL_SIZE = 128  # the second output of G, the small branch of D, the decoders' output


def check_resolution(img_resolution: int) -> None:
    if img_resolution not in RESOLUTIONS:
        raise ValueError(f'FastGAN supports {", ".join(map(str, RESOLUTIONS))} px, got {img_resolution}; '
                         'convert the data with dataset_tool.py --resolution=256x256')


@persistence.persistent_class
class InitLayer(nn.Module):
    """z [B, nz] → 4×4 transposed conv to 2·C → BN → GLU → [B, C, 4, 4]."""

    def __init__(self, nz: int, channels: int) -> None:
        super().__init__()
        self.init = nn.Sequential(sn_conv_transpose(nz, channels * 2, 4, 1, 0), nn.BatchNorm2d(channels * 2), GLU())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.init(z.view(z.shape[0], -1, 1, 1))


@persistence.persistent_class
class Generator(nn.Module):
    """FastGAN G: init 4×4, up blocks alternating big/small to ``img_resolution``, SLE gates 4→64,
    8→128, 16→256 (32→512 above 256 px), outputs ``to_big`` (3×3) and ``to_128`` (1×1).

    Args:
        c_dim: must be 0 (FastGAN is unconditional).
        img_resolution: 256, 512 or 1024.
        img_channels: output channels (3).
        ngf: width base (64 official; 8–16 for CPU tests).
        z_dim: latent size nz (256).
        small_output: also return the 128-px image (original FastGAN); False is CHAIN's ``nosmall``.
        sample_bn: how samplers run BN ('train': batch statistics, the reference; 'eval': running
            statistics) — read by ``backbones.fastgan.FastGANSampler``, not by ``forward``.
    """

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int, ngf: int = 64, z_dim: int = 256,
                 small_output: bool = True, sample_bn: str = 'train') -> None:
        super().__init__()
        check_resolution(img_resolution)
        if c_dim:
            raise ValueError('FastGAN is unconditional: train without --cond')
        self.z_dim, self.c_dim, self.ngf = z_dim, 0, ngf
        self.img_resolution, self.img_channels, self.small_output = img_resolution, img_channels, small_output
        if sample_bn not in ('train', 'eval'):
            raise ValueError(f"sample_bn must be 'train' or 'eval', got {sample_bn!r}")
        self.sample_bn = sample_bn
        nfc = channel_table(ngf, G_MULTIPLIERS)
        self.init = InitLayer(z_dim, nfc[4])
        self.feat_8 = up_block_comp(nfc[4], nfc[8])
        self.feat_16 = up_block(nfc[8], nfc[16])
        self.feat_32 = up_block_comp(nfc[16], nfc[32])
        self.feat_64 = up_block(nfc[32], nfc[64])
        self.feat_128 = up_block_comp(nfc[64], nfc[128])
        self.feat_256 = up_block(nfc[128], nfc[256])
        self.se_64 = SEBlock(nfc[4], nfc[64])
        self.se_128 = SEBlock(nfc[8], nfc[128])
        self.se_256 = SEBlock(nfc[16], nfc[256])
        self.to_128 = sn_conv(nfc[128], img_channels, 1) if small_output else None
        self.to_big = sn_conv(nfc[img_resolution], img_channels, 3, 1, 1)
        if img_resolution > 256:
            self.feat_512 = up_block_comp(nfc[256], nfc[512])
            self.se_512 = SEBlock(nfc[32], nfc[512])
        if img_resolution > 512:
            self.feat_1024 = up_block(nfc[512], nfc[1024])
        self.apply(init_weights)

    def forward(self, z: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:
        feat_4 = self.init(z)
        feat_8 = self.feat_8(feat_4)
        feat_16 = self.feat_16(feat_8)
        feat_32 = self.feat_32(feat_16)
        feat_64 = self.se_64(feat_4, self.feat_64(feat_32))
        feat_128 = self.se_128(feat_8, self.feat_128(feat_64))
        feat = self.se_256(feat_16, self.feat_256(feat_128))
        if self.img_resolution > 256:
            feat = self.se_512(feat_32, self.feat_512(feat))
        if self.img_resolution > 512:
            feat = self.feat_1024(feat)
        big = self.to_big(feat)
        small = self.to_128(feat_128) if self.small_output else None
        if self.img_resolution == 1024:  # the official tanh, only at 1024 px
            big = torch.tanh(big)
            small = None if small is None else torch.tanh(small)
        return big if small is None else [big, small]


@persistence.persistent_class
class DownBlock(nn.Module):
    """4×4 stride-2 conv → BN → LReLU (the small branch of D)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.main = nn.Sequential(sn_conv(in_channels, out_channels, 4, 2, 1), nn.BatchNorm2d(out_channels),
                                  nn.LeakyReLU(LRELU_SLOPE, inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


@persistence.persistent_class
class DownBlockComp(nn.Module):
    """(main + direct) / 2 with main = 4×4 s2 conv → BN → LReLU → 3×3 conv → BN → LReLU and
    direct = 2×2 avg-pool → 1×1 conv → BN → LReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.main = nn.Sequential(sn_conv(in_channels, out_channels, 4, 2, 1), nn.BatchNorm2d(out_channels),
                                  nn.LeakyReLU(LRELU_SLOPE, inplace=True),
                                  sn_conv(out_channels, out_channels, 3, 1, 1), nn.BatchNorm2d(out_channels),
                                  nn.LeakyReLU(LRELU_SLOPE))
        self.direct = nn.Sequential(nn.AvgPool2d(2, 2), sn_conv(in_channels, out_channels, 1),
                                    nn.BatchNorm2d(out_channels), nn.LeakyReLU(LRELU_SLOPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.main(x) + self.direct(x)) / 2


def big_stem(img_resolution: int, img_channels: int, nfc: dict[int, int]) -> nn.Sequential:
    """``down_from_big``: the input brought to a 256×256 map of ``nfc[512]`` channels."""
    lrelu = nn.LeakyReLU(LRELU_SLOPE, inplace=True)
    if img_resolution == 256:
        return nn.Sequential(sn_conv(img_channels, nfc[512], 3, 1, 1), lrelu)
    if img_resolution == 512:
        return nn.Sequential(sn_conv(img_channels, nfc[512], 4, 2, 1), lrelu)
    return nn.Sequential(sn_conv(img_channels, nfc[1024], 4, 2, 1), nn.LeakyReLU(LRELU_SLOPE, inplace=True),
                         sn_conv(nfc[1024], nfc[512], 4, 2, 1), nn.BatchNorm2d(nfc[512]), lrelu)


@persistence.persistent_class
class Discriminator(nn.Module):
    """FastGAN's original D: a big branch (256² → 8², SLE 2→16, 4→32, 8→last, head ``rf_big``:
    25 logits), a small branch on the 128-px image (head ``rf_small``: 25 logits) and three
    decoders on reals (docs/fastgan.md §2).

    Args:
        c_dim: must be 0.
        img_resolution: 256, 512 or 1024.
        img_channels: 3.
        ndf: width base (64 official).
    """

    num_logits = 50

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int, ndf: int = 64) -> None:
        super().__init__()
        check_resolution(img_resolution)
        if c_dim:
            raise ValueError('FastGAN is unconditional: train without --cond')
        self.c_dim, self.ndf, self.img_resolution, self.img_channels = 0, ndf, img_resolution, img_channels
        nfc = channel_table(ndf, D_MULTIPLIERS)
        self.down_from_big = big_stem(img_resolution, img_channels, nfc)
        self.down_4 = DownBlockComp(nfc[512], nfc[256])
        self.down_8 = DownBlockComp(nfc[256], nfc[128])
        self.down_16 = DownBlockComp(nfc[128], nfc[64])
        self.down_32 = DownBlockComp(nfc[64], nfc[32])
        self.down_64 = DownBlockComp(nfc[32], nfc[16])
        self.rf_big = nn.Sequential(sn_conv(nfc[16], nfc[8], 1), nn.BatchNorm2d(nfc[8]),
                                    nn.LeakyReLU(LRELU_SLOPE, inplace=True), sn_conv(nfc[8], 1, 4))
        self.se_2_16 = SEBlock(nfc[512], nfc[64])
        self.se_4_32 = SEBlock(nfc[256], nfc[32])
        self.se_8_64 = SEBlock(nfc[128], nfc[16])
        self.down_from_small = nn.Sequential(sn_conv(img_channels, nfc[256], 4, 2, 1),
                                             nn.LeakyReLU(LRELU_SLOPE, inplace=True),
                                             DownBlock(nfc[256], nfc[128]), DownBlock(nfc[128], nfc[64]),
                                             DownBlock(nfc[64], nfc[32]))
        self.rf_small = sn_conv(nfc[32], 1, 4)
        self.decoder_big = SimpleDecoder(nfc[16], img_channels)
        self.decoder_part = SimpleDecoder(nfc[32], img_channels)
        self.decoder_small = SimpleDecoder(nfc[32], img_channels)
        self.apply(init_weights)

    def forward(self, imgs: Union[torch.Tensor, list[torch.Tensor]], part: Optional[int] = None):
        """Logits [B, 50] for fakes ([big, small] from G) or reals (one tensor, resized nearest);
        with ``part`` also the decoders' reconstructions [rec_big, rec_small, rec_part] (128 px)."""
        if not isinstance(imgs, (list, tuple)):
            imgs = [resize_nearest(imgs, self.img_resolution), resize_nearest(imgs, SMALL_SIZE)]
        big, small = imgs
        feat_2 = self.down_from_big(big)
        feat_4 = self.down_4(feat_2)
        feat_8 = self.down_8(feat_4)
        feat_16 = self.se_2_16(feat_2, self.down_16(feat_8))
        feat_32 = self.se_4_32(feat_4, self.down_32(feat_16))
        feat_last = self.se_8_64(feat_8, self.down_64(feat_32))
        feat_small = self.down_from_small(small)
        batch = big.shape[0]
        logits = torch.cat([self.rf_big(feat_last).view(batch, -1), self.rf_small(feat_small).view(batch, -1)], dim=1)
        if part is None:
            return logits
        recs = [self.decoder_big(feat_last), self.decoder_small(feat_small), self.decoder_part(quarter(feat_32, part))]
        return logits, recs


def official_logit_layout(logits: torch.Tensor) -> torch.Tensor:
    """degan's [B, 50] → the official flat (50·B,) vector: all big-head logits, then all small-head ones."""
    half = logits.shape[1] // 2
    return torch.cat([logits[:, :half].reshape(-1), logits[:, half:].reshape(-1)])
