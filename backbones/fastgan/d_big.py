"""CHAIN's FastGAN discriminator "D_big" (Ni & Koniusz, CVPR 2024, official ``FastGANDBig`` code).

Architecture and CHAIN placement: docs/fastgan.md §3. No BatchNorm (but in the decoders); pre-activation residual
down blocks whose convs carry a bias, CHAIN layers where the batch norms would be (after C1,
C2 and the skip conv CS), a non-downsampling residual head, sum pooling and one spectral-norm
linear logit per image; two decoders (big, part). Names, order and shapes are the official ones
(``down_4.main.1.weight_orig``, ``down_4.main.2.running_var_real``,
``chain_shared_context.p``, …), so an official state dict — CHAIN buffers included — loads 1:1.

**The shared activation.** The official blocks start with an *in-place* LeakyReLU on their
input, so every later reader of a block's input — the skip branch, the SLE gates, the
decoders, the head's identity skip — sees the activated map. degan writes that activation out
(``a_k = lrelu(feat_k)``, once, before any reader) and gives ``a_k`` to all of them: the same
numbers without relying on the order of the readers; it is applied in place like the official
one, since nothing reads ``feat_k`` itself (same memory and speed).

CHAIN layers (:class:`patches.chain.Chain`) share the context ``chain_shared_context``
(:class:`patches.chain.ChainContext`), present — with p = 0 — even when CHAIN is off, as in
the official D. Blocks are chosen by the resolution they work at (``--chain-res``): the five
down blocks run at 256, 128, 64, 32 and 16 px (the official ``--chain_blocks 12345``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from backbones.fastgan.layers import (LRELU_SLOPE, SEBlock, SimpleDecoder, SumPool2d, channel_table, init_weights,
                                      quarter, sn_conv, sn_linear)
from backbones.fastgan.networks import D_MULTIPLIERS, check_resolution
from patches.chain import Chain, ChainContext
from torch_utils import persistence

#: Input resolution of the five CHAIN-capable down blocks (official block ids 1–5).
BLOCK_RESOLUTIONS = {'down_4': 256, 'down_8': 128, 'down_16': 64, 'down_32': 32, 'down_64': 16}
CHAIN_PLACES = ('C1', 'C2', 'CS')


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """The blocks' input activation, in place like the official ``LeakyReLU(0.2, inplace=True)`` (the
    producers of ``x`` — conv, add, SLE product — do not need it for their backward)."""
    return F.leaky_relu(x, LRELU_SLOPE, inplace=True)


class ResDownBlock(nn.Module):
    """Pre-activation residual block (the official ``DownBlockComp`` of D_big).

    main: LReLU → 3×3 conv → [C1] → LReLU → 3×3 conv → [C2] → avg-pool 2;
    skip: 1×1 conv → [CS] → avg-pool 2 (identity when neither downsampling nor changing width).
    Output: main + skip, both reading the activated input. ``chain`` maps 'C1'/'C2'/'CS' to
    the CHAIN layers to place (others are identities).
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool = True,
                 chain: Optional[dict[str, nn.Module]] = None) -> None:
        super().__init__()
        chain = chain or {}
        pool = nn.AvgPool2d(2, 2) if downsample else nn.Identity()
        self.main = nn.Sequential(nn.LeakyReLU(LRELU_SLOPE), sn_conv(in_channels, out_channels, 3, 1, 1, bias=True),
                                  chain.get('C1', nn.Identity()), nn.LeakyReLU(LRELU_SLOPE),
                                  sn_conv(out_channels, out_channels, 3, 1, 1, bias=True),
                                  chain.get('C2', nn.Identity()), pool)
        if downsample or in_channels != out_channels:
            self.skip = nn.Sequential(sn_conv(in_channels, out_channels, 1, bias=True), chain.get('CS', nn.Identity()),
                                      nn.AvgPool2d(2, 2) if downsample else nn.Identity())
        else:
            self.skip = nn.Identity()

    def from_activated(self, a: torch.Tensor) -> torch.Tensor:
        """The block on an input already activated (``a = lrelu(x)``)."""
        x = a
        for layer in list(self.main)[1:]:  # the main branch after its activation (no Sequential built per call)
            x = layer(x)
        return x + self.skip(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_activated(lrelu(x))


def _chain_layers(channels: int, places: tuple[str, ...], context: ChainContext, variant: str) -> dict[str, nn.Module]:
    return {place: Chain(channels, context, variant=variant) for place in places}


@persistence.persistent_class
class DiscriminatorBig(nn.Module):
    """CHAIN's D_big for FastGAN: one logit per image, decoders big and part, CHAIN in the down blocks.

    Args:
        c_dim: must be 0.
        img_resolution: 256, 512 or 1024.
        img_channels: 3.
        ndf: width base (64 official).
        chain_kwargs: CHAIN layer and context settings (``training.method_options.ChainOptions``:
            variant, resolutions, place, and ChainContext's tau, lambda_, p0, dp, start_iter);
            None: no CHAIN layers (the context is still there, p = 0).
    """

    num_logits = 1

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int, ndf: int = 64,
                 chain_kwargs: Optional[dict[str, Any]] = None) -> None:
        super().__init__()
        check_resolution(img_resolution)
        if c_dim:
            raise ValueError('FastGAN is unconditional: train without --cond')
        self.c_dim, self.ndf, self.img_resolution, self.img_channels = 0, ndf, img_resolution, img_channels
        self.chain_enabled = chain_kwargs is not None
        kwargs = dict(chain_kwargs or {})
        variant = kwargs.pop('variant', 'chain')
        resolutions = kwargs.pop('resolutions', None)
        place = kwargs.pop('place', 'C1C2CS')
        self.chain_shared_context = ChainContext(**kwargs)
        blocks = self._chain_blocks(resolutions) if self.chain_enabled else set()
        places = tuple(place[i:i + 2] for i in range(0, len(place), 2))
        if any(p not in CHAIN_PLACES for p in places):
            raise ValueError(f'CHAIN place must be a concatenation of {CHAIN_PLACES}, got {place!r}')

        nfc = channel_table(ndf, D_MULTIPLIERS)

        def down(name: str, cin: int, cout: int) -> ResDownBlock:
            chain = _chain_layers(cout, places, self.chain_shared_context, variant) if name in blocks else None
            return ResDownBlock(cin, cout, chain=chain)

        if img_resolution == 1024:
            self.down_from_big = nn.Sequential(sn_conv(img_channels, nfc[1024], 4, 2, 1, bias=True),
                                               ResDownBlock(nfc[1024], nfc[512]))
        elif img_resolution == 512:
            self.down_from_big = sn_conv(img_channels, nfc[512], 4, 2, 1, bias=True)
        else:
            self.down_from_big = sn_conv(img_channels, nfc[512], 3, 1, 1, bias=True)
        self.down_4 = down('down_4', nfc[512], nfc[256])
        self.down_8 = down('down_8', nfc[256], nfc[128])
        self.down_16 = down('down_16', nfc[128], nfc[64])
        self.down_32 = down('down_32', nfc[64], nfc[32])
        self.down_64 = down('down_64', nfc[32], nfc[16])
        self.rf_big = nn.Sequential(ResDownBlock(nfc[16], nfc[16], downsample=False), SumPool2d(),
                                    sn_linear(nfc[16], 1))
        self.se_2_16 = SEBlock(nfc[512], nfc[64])
        self.se_4_32 = SEBlock(nfc[256], nfc[32])
        self.se_8_64 = SEBlock(nfc[128], nfc[16])
        self.decoder_big = SimpleDecoder(nfc[16], img_channels)
        self.decoder_part = SimpleDecoder(nfc[32], img_channels)
        self.apply(init_weights)

    @staticmethod
    def _chain_blocks(resolutions: Optional[list[int]]) -> set[str]:
        if resolutions is None:
            return set(BLOCK_RESOLUTIONS)
        unknown = sorted(set(resolutions) - set(BLOCK_RESOLUTIONS.values()))
        if unknown:
            raise ValueError(f'CHAIN resolutions {unknown} are not D_big down blocks '
                             f'{sorted(BLOCK_RESOLUTIONS.values(), reverse=True)}')
        return {name for name, res in BLOCK_RESOLUTIONS.items() if res in resolutions}

    @property
    def chain_ctx(self) -> Optional[ChainContext]:
        """The CHAIN context when CHAIN layers were placed (what the training loop wires)."""
        return self.chain_shared_context if self.chain_enabled else None

    def forward(self, imgs: torch.Tensor, part: Optional[int] = None):
        """Logits [B, 1]; with ``part`` (reals) also [rec_big, rec_part] (128 px)."""
        a_2 = lrelu(self.down_from_big(imgs))
        a_4 = lrelu(self.down_4.from_activated(a_2))
        a_8 = lrelu(self.down_8.from_activated(a_4))
        a_16 = lrelu(self.se_2_16(a_2, self.down_16.from_activated(a_8)))
        a_32 = lrelu(self.se_4_32(a_4, self.down_32.from_activated(a_16)))
        a_last = lrelu(self.se_8_64(a_8, self.down_64.from_activated(a_32)))
        head_block, pool, linear = self.rf_big
        logits = linear(pool(head_block.from_activated(a_last)))
        if part is None:
            return logits
        return logits, [self.decoder_big(a_last), self.decoder_part(quarter(a_32, part))]
