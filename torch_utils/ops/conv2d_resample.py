"""conv2d_resample: 2-D convolution fused with FIR up/downsampling.

Spec: docs/stylegan2-arithmetic.md §3. Every execution path equals the "Meaning" of §3
(upfirdn2d(up, padding P, gain up^2) -> valid grouped K -> upfirdn2d(down)) up to rounding; the
path taken, (a)-(f), follows the official reference so that the rounding is the same too.
K is a correlation with w for flip_weight=True and a true convolution for flip_weight=False.
Differentiable to any order (conv2d, conv_transpose2d and upfirdn2d's reference primitives).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from torch_utils.ops import upfirdn2d
from torch_utils.ops.upfirdn2d import Padding

PATHS = ('a', 'b', 'c', 'd', 'e', 'f')


def _conv(x: torch.Tensor, w: torch.Tensor, stride: int = 1, padding: tuple[int, int] = (0, 0), groups: int = 1,
          transpose: bool = False, flip_weight: bool = True) -> torch.Tensor:
    """conv2d / conv_transpose2d; w is reversed spatially first iff flip_weight is False
    (docs/stylegan2-arithmetic.md §3)."""
    if not flip_weight and (w.shape[2] > 1 or w.shape[3] > 1):
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def execution_path(kw: int, kh: int, up: int, down: int, px0: int, px1: int, py0: int, py1: int) -> str:
    """Which of the execution paths (a)-(f) of docs/stylegan2-arithmetic.md §3 runs, given the kernel
    size and the adjusted padding P."""
    if kw == 1 and kh == 1 and down > 1 and up == 1:
        return 'a'
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        return 'b'
    if down > 1 and up == 1:
        return 'c'
    if up > 1:
        return 'd'
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return 'e'
    return 'f'


def _check_args(x: torch.Tensor, w: torch.Tensor, f: Optional[torch.Tensor], up: int, down: int,
                groups: int) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError('conv2d_resample: x must be a 4-D [N, C, H, W] tensor')
    if not isinstance(w, torch.Tensor) or w.ndim != 4:
        raise ValueError('conv2d_resample: w must be a 4-D [O, I/groups, kh, kw] tensor')
    if w.dtype != x.dtype:
        raise TypeError(f'conv2d_resample: w has dtype {w.dtype} but x has {x.dtype}; cast w to x.dtype')
    if f is not None and (not isinstance(f, torch.Tensor) or f.ndim not in (1, 2) or f.numel() == 0):
        raise ValueError('conv2d_resample: f must be None or a non-empty 1-D/2-D filter from setup_filter')
    if not isinstance(up, int) or not isinstance(down, int) or up < 1 or down < 1:
        raise ValueError(f'conv2d_resample: up and down must be ints >= 1, got up={up!r}, down={down!r}')
    if not isinstance(groups, int) or groups < 1 or x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
        raise ValueError(f'conv2d_resample: groups={groups!r} does not fit x with {x.shape[1]} channels and '
                         f'w of shape {list(w.shape)}')


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: Optional[torch.Tensor] = None, up: int = 1,
                    down: int = 1, padding: Padding = 0, groups: int = 1, flip_weight: bool = True,
                    flip_filter: bool = False) -> torch.Tensor:
    """Grouped conv of x [N, I, H, W] with w [O, I/groups, kh, kw], upsampling by ``up`` before and
    downsampling by ``down`` after, both with FIR filter f (docs/stylegan2-arithmetic.md §3).

    padding (int, (px, py) or (px0, px1, py0, py1)) is relative to the upsampled image. flip_weight
    True: correlation with w (the framework's conv); False: true convolution.
    """
    _check_args(x, w, f, up, down, groups)
    out_channels, in_per_group, kh, kw = w.shape
    fw, fh = upfirdn2d.get_filter_size(f)
    px0, px1, py0, py1 = upfirdn2d._parse_padding(padding)

    # Adjust the padding for the up/downsampling filters.
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2
    pad = [px0, px1, py0, py1]
    path = execution_path(kw, kh, up, down, px0, px1, py0, py1)

    if path == 'a':  # 1x1, down only: filter + decimate first, then the 1x1 conv.
        x = upfirdn2d.upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)
    if path == 'b':  # 1x1, up only: the 1x1 conv first, then upsample.
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d.upfirdn2d(x, f, up=up, padding=pad, gain=up ** 2, flip_filter=flip_filter)
    if path == 'c':  # down only: filter at full resolution, then a strided conv.
        x = upfirdn2d.upfirdn2d(x, f, padding=pad, flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)
    if path == 'd':  # up (and maybe down): transposed strided conv, FIR, optional decimation.
        return _transposed_path(x, w, f, up, down, pad, groups, flip_weight, flip_filter)
    if path == 'e':  # no resampling, symmetric non-negative padding: the conv pads itself.
        return _conv(x, w, padding=(py0, px0), groups=groups, flip_weight=flip_weight)
    # (f) no resampling, asymmetric or negative padding: pad/crop (f ignored), then a valid conv.
    x = upfirdn2d.upfirdn2d(x, None, padding=pad, flip_filter=flip_filter)
    return _conv(x, w, groups=groups, flip_weight=flip_weight)


def _transposed_path(x: torch.Tensor, w: torch.Tensor, f: Optional[torch.Tensor], up: int, down: int,
                     pad: list[int], groups: int, flip_weight: bool, flip_filter: bool) -> torch.Tensor:
    """Path (d) of docs/stylegan2-arithmetic.md §3: rearrange w to [I, O/g, kh, kw], conv_transpose2d
    with stride up, then FIR."""
    out_channels, in_per_group, kh, kw = w.shape
    if groups == 1:
        w = w.transpose(0, 1)
    else:
        w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw)
        w = w.transpose(1, 2)
        w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
    px0, px1, py0, py1 = pad
    px0 -= kw - 1
    px1 -= kw - up
    py0 -= kh - 1
    py1 -= kh - up
    pxt = max(min(-px0, -px1), 0)
    pyt = max(min(-py0, -py1), 0)
    x = _conv(x, w, stride=up, padding=(pyt, pxt), groups=groups, transpose=True, flip_weight=not flip_weight)
    x = upfirdn2d.upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2,
                            flip_filter=flip_filter)
    if down > 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter)
    return x
