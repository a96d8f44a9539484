"""Projected GAN's generators ``fastgan`` and ``fastgan_lite`` (Sauer et al., NeurIPS 2021), official names.

docs/projected.md §4. Projected GAN's FastGAN G differs from the original FastGAN's
(:mod:`backbones.fastgan.networks`): width base ``ngf`` = 128, z normalised to unit second
moment, *one* kind of up block everywhere (``fastgan``: the big one with two convs and noise;
``fastgan_lite``: the small one), one output through a 3×3 conv **with bias and no tanh**, no
FastGAN weight initialisation (PyTorch's defaults). Diffusion-ProjectedGAN's copy adds early
exits at 32 and 64 px; this module is that superset (128 px and above are identical).

It fits the StyleGAN API as the reference does: ``G.mapping`` is parameter-free and returns z as
``ws`` [N, 1, z_dim]; ``G.synthesis(ws, c)`` makes the image; ``G(z, c)`` chains them. Every
layer the reference builds exists here, including those an early exit never runs (feat_64 … at
32 px), so official state dicts load 1:1 (keys ``synthesis.init.init.0.weight_orig``, …).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from backbones.fastgan.layers import SEBlock, channel_table, sn_conv, up_block, up_block_comp
from backbones.fastgan.networks import InitLayer
from torch_utils import persistence

#: Channel multipliers of ``ngf`` per resolution (Projected GAN's table; 2 is the init layer's).
MULTIPLIERS = {2: 16, 4: 16, 8: 8, 16: 4, 32: 2, 64: 2, 128: 1, 256: 0.5, 512: 0.25, 1024: 0.125}
RESOLUTIONS = (32, 64, 128, 256, 512, 1024)
CONFIGS = ('fastgan', 'fastgan_lite')


def normalize_second_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x · rsqrt(mean(x²) + ε) over ``dim``: z mapped to unit second moment (docs/projected.md §4)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


@persistence.persistent_class
class DummyMapping(nn.Module):
    """The StyleGAN API's mapping network without parameters: z [N, z_dim] → ws [N, 1, z_dim]."""

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None, **_kwargs: Any) -> torch.Tensor:
        return z.unsqueeze(1)


@persistence.persistent_class
class FastganSynthesis(nn.Module):
    """ws [N, 1, z_dim] → image [N, C, R, R]: init 4×4, up blocks to R, SLE gates 4→64, 8→128,
    16→256 (32→512 above 256 px), 3×3 conv with bias (docs/projected.md §4)."""

    def __init__(self, ngf: int = 128, z_dim: int = 256, nc: int = 3, img_resolution: int = 256,
                 lite: bool = False) -> None:
        super().__init__()
        if img_resolution not in RESOLUTIONS:
            raise ValueError(f'Projected GAN generators make {", ".join(map(str, RESOLUTIONS))} px images, '
                             f'got {img_resolution}')
        self.img_resolution, self.z_dim = img_resolution, z_dim
        nfc = channel_table(ngf, MULTIPLIERS)
        up = (lambda cin, cout: up_block(cin, cout)) if lite else up_block_comp
        self.init = InitLayer(z_dim, nfc[2])
        for res in (8, 16, 32, 64, 128, 256):
            setattr(self, f'feat_{res}', up(nfc[res // 2], nfc[res]))
        self.se_64 = SEBlock(nfc[4], nfc[64])
        self.se_128 = SEBlock(nfc[8], nfc[128])
        self.se_256 = SEBlock(nfc[16], nfc[256])
        self.to_big = sn_conv(nfc[img_resolution], nc, 3, 1, 1, bias=True)
        if img_resolution > 256:
            self.feat_512 = up(nfc[256], nfc[512])
            self.se_512 = SEBlock(nfc[32], nfc[512])
        if img_resolution > 512:
            self.feat_1024 = up(nfc[512], nfc[1024])

    def forward(self, ws: torch.Tensor, c: Optional[torch.Tensor] = None, **_kwargs: Any) -> torch.Tensor:
        z = normalize_second_moment(ws[:, 0])
        feat_4 = self.init(z)
        feat_8 = self.feat_8(feat_4)
        feat_16 = self.feat_16(feat_8)
        feat_32 = self.feat_32(feat_16)
        if self.img_resolution == 32:
            return self.to_big(feat_32)
        feat = self.se_64(feat_4, self.feat_64(feat_32))
        if self.img_resolution == 64:
            return self.to_big(feat)
        feat = self.se_128(feat_8, self.feat_128(feat))
        if self.img_resolution >= 256:
            feat = self.se_256(feat_16, self.feat_256(feat))
        if self.img_resolution >= 512:
            feat = self.se_512(feat_32, self.feat_512(feat))
        if self.img_resolution >= 1024:
            feat = self.feat_1024(feat)
        return self.to_big(feat)


@persistence.persistent_class
class Generator(nn.Module):
    """Projected GAN's G (``cfg`` 'fastgan' or 'fastgan_lite'), StyleGAN-style ``G(z, c)``.

    Args:
        c_dim: must be 0 (the conditional variant is out of scope, docs/projected.md §10).
        img_resolution: 32 … 1024 px (powers of two).
        img_channels: output channels.
        ngf: width base (128 in the reference; 4–16 for CPU tests).
        z_dim: latent size (256).
        cfg: 'fastgan' (big up blocks) or 'fastgan_lite' (small ones).

    Truncation and constant noise do not exist here (the reference swallows those arguments;
    degan's sampler refuses ψ ≠ 1): the noise injections always draw fresh noise.
    """

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int, ngf: int = 128, z_dim: int = 256,
                 cfg: str = 'fastgan') -> None:
        super().__init__()
        if c_dim:
            raise ValueError("Projected GAN's generator is unconditional here: train without --cond")
        if cfg not in CONFIGS:
            raise ValueError(f'cfg must be one of {CONFIGS}, got {cfg!r}')
        self.z_dim, self.c_dim, self.w_dim = z_dim, 0, 0
        self.img_resolution, self.img_channels, self.ngf, self.cfg = img_resolution, img_channels, ngf, cfg
        self.mapping = DummyMapping()
        self.synthesis = FastganSynthesis(ngf=ngf, z_dim=z_dim, nc=img_channels, img_resolution=img_resolution,
                                          lite=cfg == 'fastgan_lite')

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None, **_kwargs: Any) -> torch.Tensor:
        return self.synthesis(self.mapping(z, c), c)
