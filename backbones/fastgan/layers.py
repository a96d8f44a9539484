"""FastGAN's building blocks (Liu et al., ICLR 2021), shared by its generator and both discriminators.

Every convolution is spectral-normalised with PyTorch's ``torch.nn.utils.spectral_norm``, so the
state-dict keys are the official ``weight_orig`` / ``weight_u`` / ``weight_v`` (docs/fastgan.md
§1). The blocks are ``nn.Sequential`` stacks in the official order: their indices are part of the
parameter names (``feat_8.1.weight_orig``, ``feat_8.3.running_mean``, …), so the order of the
layers below must not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torch_utils import persistence

LRELU_SLOPE = 0.2


def sn_conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: int = 0,
            bias: bool = False) -> nn.Module:
    """Spectral-normalised ``Conv2d`` (old-style SN: ``weight_orig`` + power-iteration vectors)."""
    return nn.utils.spectral_norm(nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=bias))


def sn_conv_transpose(in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: int = 0,
                      bias: bool = False) -> nn.Module:
    """Spectral-normalised ``ConvTranspose2d``."""
    return nn.utils.spectral_norm(nn.ConvTranspose2d(in_channels, out_channels, kernel, stride, padding, bias=bias))


def sn_linear(in_features: int, out_features: int, bias: bool = True) -> nn.Module:
    """Spectral-normalised ``Linear`` (D_big's head)."""
    return nn.utils.spectral_norm(nn.Linear(in_features, out_features, bias=bias))


def channel_table(base: int, multipliers: dict[int, float]) -> dict[int, int]:
    """Channels per resolution: ``int(multiplier · base)`` (``ngf`` for G, ``ndf`` for D)."""
    return {res: int(mult * base) for res, mult in multipliers.items()}


@persistence.persistent_class
class GLU(nn.Module):
    """Gated linear unit over channels: first half × sigmoid(second half); halves the channel count."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % 2:
            raise ValueError(f'GLU needs an even channel count, got {x.shape[1]}')
        half = x.shape[1] // 2
        return x[:, :half] * torch.sigmoid(x[:, half:])


@persistence.persistent_class
class Swish(nn.Module):
    """x · sigmoid(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


@persistence.persistent_class
class NoiseInjection(nn.Module):
    """x + w·n with one learnable scalar w (0 at init) and fresh n ~ N(0, 1) of shape [B, 1, H, W]."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = torch.randn([x.shape[0], 1, x.shape[2], x.shape[3]], device=x.device, dtype=x.dtype)
        return x + self.weight * noise


@persistence.persistent_class
class SumPool2d(nn.Module):
    """Sum over the spatial axes: [B, C, H, W] → [B, C] (D_big's head)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=(2, 3))


@persistence.persistent_class
class SEBlock(nn.Module):
    """Skip-layer excitation: a low-resolution map gates a high-resolution one channel-wise.

    gate = sigmoid(conv1x1(swish(conv4x4_valid(avgpool_4x4(low))))), both convs bias-free
    (``bias`` only for variants); output = high · gate, the gate broadcast over H×W.
    """

    def __init__(self, ch_in: int, ch_out: int, bias: bool = False) -> None:
        super().__init__()
        self.main = nn.Sequential(nn.AdaptiveAvgPool2d(4), sn_conv(ch_in, ch_out, 4, bias=bias), Swish(),
                                  sn_conv(ch_out, ch_out, 1, bias=bias), nn.Sigmoid())

    def gate(self, low: torch.Tensor) -> torch.Tensor:
        return self.main(low)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return high * self.gate(low)


def up_block(in_channels: int, out_channels: int, bias: bool = False) -> nn.Sequential:
    """FastGAN's small up block: nearest ×2 → 3×3 conv to 2·out → BN → GLU."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode='nearest'),
                         sn_conv(in_channels, out_channels * 2, 3, 1, 1, bias=bias),
                         nn.BatchNorm2d(out_channels * 2), GLU())


def up_block_comp(in_channels: int, out_channels: int) -> nn.Sequential:
    """FastGAN's big up block: nearest ×2 → (3×3 conv → noise → BN → GLU) twice."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode='nearest'),
                         sn_conv(in_channels, out_channels * 2, 3, 1, 1), NoiseInjection(),
                         nn.BatchNorm2d(out_channels * 2), GLU(),
                         sn_conv(out_channels, out_channels * 2, 3, 1, 1), NoiseInjection(),
                         nn.BatchNorm2d(out_channels * 2), GLU())


#: The decoders' widths: a fixed base of 32 channels, independent of ``ndf``.
DECODER_CHANNELS = channel_table(32, {16: 4, 32: 2, 64: 2, 128: 1})


@persistence.persistent_class
class SimpleDecoder(nn.Module):
    """D's self-supervised decoder: avg-pool to 8×8 → four small up blocks → 3×3 conv → tanh (128×128).

    Channels in → 128 → 64 → 64 → 32 → ``img_channels``; ``bias`` only in CHAIN's D_big variant
    (whose decoders are bias-free too, the default).
    """

    def __init__(self, in_channels: int, img_channels: int = 3, bias: bool = False) -> None:
        super().__init__()
        ch = DECODER_CHANNELS
        self.main = nn.Sequential(nn.AdaptiveAvgPool2d(8),
                                  up_block(in_channels, ch[16], bias), up_block(ch[16], ch[32], bias),
                                  up_block(ch[32], ch[64], bias), up_block(ch[64], ch[128], bias),
                                  sn_conv(ch[128], img_channels, 3, 1, 1, bias=bias), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def quarter(x: torch.Tensor, part: int) -> torch.Tensor:
    """Quarter ``part`` of a map: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right."""
    if part not in (0, 1, 2, 3):
        raise ValueError(f'part must be 0, 1, 2 or 3, got {part!r}')
    h, w = x.shape[2] // 2, x.shape[3] // 2
    rows = slice(None, h) if part < 2 else slice(h, None)
    cols = slice(None, w) if part % 2 == 0 else slice(w, None)
    return x[:, :, rows, cols]


def resize_nearest(x: torch.Tensor, size: int) -> torch.Tensor:
    """``F.interpolate`` in its default (nearest) mode, as FastGAN resizes D inputs and targets."""
    return x if x.shape[2] == size and x.shape[3] == size else F.interpolate(x, size=size)


@torch.no_grad()
def init_weights(module: nn.Module) -> None:
    """FastGAN's initialisation, applied to every submodule (``module.apply(init_weights)``).

    Every module whose class name contains "Conv" (so transposed convs too) gets weights
    N(0, 0.02) — through spectral norm this lands on ``weight_orig``, whose storage the
    pre-forward ``weight`` shares; every BatchNorm gets weight N(1, 0.02) and bias 0. Linear
    layers keep PyTorch's default.
    """
    name = type(module).__name__
    if 'Conv' in name:
        weight = getattr(module, 'weight_orig', None)
        weight = module.weight if weight is None else weight
        weight.normal_(0.0, 0.02)
    elif 'BatchNorm' in name:
        module.weight.normal_(1.0, 0.02)
        module.bias.zero_()
