"""upfirdn2d: upsample by zero insertion, pad/crop, FIR filter, downsample (per channel).

Spec: docs/stylegan2-arithmetic.md §1 (setup_filter §1.1, upfirdn2d §1.2, wrappers §1.3) and §9;
docs/stylegan2-ada.md §7. The reference path below reproduces the official reference path step for
step (zero insertion, F.pad, slicing, depthwise ``F.conv2d`` with the gain folded into the filter,
two 1-D passes for a separable filter), so it rounds the same way. It is differentiable to any
order because it is built only from framework primitives. This module sits on top of the CUDA
side: it hands ``reference_upfirdn2d`` to ``cuda_kernels`` (the oracle of the kernel's
self-check and its answer for calls the kernel does not cover) and lets ``_impl`` pick the path
of each call.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from torch_utils.ops import _impl, cuda_kernels

Scaling = Union[int, Sequence[int]]
Padding = Union[int, Sequence[int]]


# ---------------------------------------------------------------------------------------------
# Argument parsing (docs/stylegan2-arithmetic.md §1.2).

def _parse_scaling(scaling: Scaling, name: str = 'scaling') -> tuple[int, int]:
    """int s -> (s, s); an (sx, sy) pair -> (sx, sy). Each factor must be an int >= 1."""
    if isinstance(scaling, int):
        if scaling < 1:
            raise ValueError(f'upfirdn2d: {name} must be >= 1, got {scaling}')
        return scaling, scaling
    try:
        sx, sy = (int(s) for s in scaling)
    except (TypeError, ValueError):
        raise ValueError(f'upfirdn2d: {name} must be an int or an (x, y) pair of ints, got {scaling!r}') from None
    if sx < 1 or sy < 1:
        raise ValueError(f'upfirdn2d: {name} factors must be >= 1, got {scaling!r}')
    return sx, sy


def _parse_padding(padding: Padding) -> tuple[int, int, int, int]:
    """int p -> (p,p,p,p); (px, py) -> (px,px,py,py); (px0, px1, py0, py1) as is."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    try:
        values = [int(p) for p in padding]
    except (TypeError, ValueError):
        values = []
    if len(values) == 2:
        return values[0], values[0], values[1], values[1]
    if len(values) == 4:
        return values[0], values[1], values[2], values[3]
    raise ValueError(f'upfirdn2d: padding must be an int, an (x, y) pair or (x0, x1, y0, y1), got {padding!r}')


def _check_filter(f: Optional[torch.Tensor]) -> None:
    if f is None:
        return
    if not isinstance(f, torch.Tensor):
        raise TypeError(f'upfirdn2d: filter must be a torch.Tensor or None (use setup_filter), got {type(f).__name__}')
    if f.ndim not in (1, 2):
        raise ValueError(f'upfirdn2d: filter must be 1-D (separable) or 2-D, got shape {list(f.shape)}')
    if f.numel() == 0:
        raise ValueError('upfirdn2d: filter must not be empty')
    if not f.is_floating_point():
        raise TypeError(f'upfirdn2d: filter must be floating point, got {f.dtype}')


def _get_filter_size(f: Optional[torch.Tensor]) -> tuple[int, int]:
    """(fw, fh) of a filter (docs/stylegan2-arithmetic.md §1.1): last axis, first axis; None -> (1, 1)."""
    if f is None:
        return 1, 1
    _check_filter(f)
    return int(f.shape[-1]), int(f.shape[0])


get_filter_size = _get_filter_size


def output_size(in_size: int, up: int, pad0: int, pad1: int, taps: int, down: int) -> int:
    """Output length along one axis (docs/stylegan2-arithmetic.md §1.2): floor((n*up + p0 + p1 - taps) / down) + 1."""
    return (in_size * up + pad0 + pad1 - taps) // down + 1


# ---------------------------------------------------------------------------------------------
# setup_filter (docs/stylegan2-arithmetic.md §1.1).

def setup_filter(f: Any, device: torch.device = torch.device('cpu'), normalize: bool = True,
                 flip_filter: bool = False, gain: float = 1, separable: Optional[bool] = None) -> torch.Tensor:
    """Turn a list/array/tensor of taps into the float32 filter tensor upfirdn2d expects
    (docs/stylegan2-arithmetic.md §1.1).

    None means the scalar 1; a 0-d value becomes a 1-tap 1-D filter. A 1-D filter stays 1-D
    (separable) iff ``separable`` is True, or it is None and the filter has >= 8 taps; otherwise
    it becomes its outer product. Then: divide by the sum (normalize), reverse every axis
    (flip_filter), multiply by gain^(ndim/2).
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim not in (0, 1, 2):
        raise ValueError(f'setup_filter: filter must be 0-D, 1-D or 2-D, got shape {list(f.shape)}')
    if f.numel() == 0:
        raise ValueError('setup_filter: filter must not be empty')
    if f.ndim == 0:
        f = f[None]
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if f.ndim != (1 if separable else 2):
        raise ValueError(f'setup_filter: separable=True needs a 1-D filter, got shape {list(f.shape)}')
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


# ---------------------------------------------------------------------------------------------
# upfirdn2d (docs/stylegan2-arithmetic.md §1.2).

def upfirdn2d(x: torch.Tensor, f: Optional[torch.Tensor], up: Scaling = 1, down: Scaling = 1,
              padding: Padding = 0, flip_filter: bool = False, gain: float = 1,
              impl: Optional[str] = None) -> torch.Tensor:
    """Upsample (zero insertion), pad/crop, FIR-filter and downsample every channel of x
    (docs/stylegan2-arithmetic.md §1.2).

    x: [N, C, H, W]. f: 1-D (two separable passes) or 2-D filter from ``setup_filter``, or None
    (= [[1]]). up/down: int or (x, y). padding: int, (px, py) or (px0, px1, py0, py1); negative
    values crop. With flip_filter=False the filter is applied as a true convolution, otherwise as
    a correlation. Output height is floor((H*uy + py0 + py1 - fh) / dy) + 1, width likewise.
    impl: 'ref' | 'cuda' | 'auto' | None (see ``_impl.resolve_impl``).
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f'upfirdn2d: x must be a 4-D [N, C, H, W] tensor, got '
                         f'{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}')
    upx, upy = _parse_scaling(up, 'up')
    downx, downy = _parse_scaling(down, 'down')
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    out_h = output_size(x.shape[2], upy, py0, py1, fh, downy)
    out_w = output_size(x.shape[3], upx, px0, px1, fw, downx)
    if out_h < 1 or out_w < 1:
        raise ValueError(f'upfirdn2d: empty output ({out_h}x{out_w}) for input {x.shape[2]}x{x.shape[3]}, '
                         f'up ({upx},{upy}), padding ({px0},{px1},{py0},{py1}), filter {fh}x{fw}, '
                         f'down ({downx},{downy})')
    if _impl.resolve_impl('upfirdn2d', x, impl) == 'cuda':
        return _impl.get_backend().upfirdn2d(x, f, up=(upx, upy), down=(downx, downy), padding=(px0, px1, py0, py1),
                                             flip_filter=flip_filter, gain=gain)
    return _upfirdn2d_ref(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain)


def _upfirdn2d_ref(x: torch.Tensor, f: Optional[torch.Tensor], upx: int, upy: int, downx: int, downy: int,
                   px0: int, px1: int, py0: int, py1: int, flip_filter: bool, gain: float) -> torch.Tensor:
    """The reference path of docs/stylegan2-arithmetic.md §1.2, steps 1-4, with parsed arguments."""
    n, c, h, w = x.shape
    # 1. Zero insertion: the up-1 zeros follow each sample.
    if upx > 1 or upy > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)
    # 2. Pad with zeros, then crop for negative padding.
    if px0 > 0 or px1 > 0 or py0 > 0 or py1 > 0:
        x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    if px0 < 0 or px1 < 0 or py0 < 0 or py1 < 0:
        x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    # 3. FIR: gain folded into the filter, cast to x's dtype, flipped for a true convolution.
    if f is not None or gain != 1:
        if f is None:
            f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
        f = f * (gain ** (f.ndim / 2))
        f = f.to(dtype=x.dtype, device=x.device)
        if not flip_filter:
            f = f.flip(list(range(f.ndim)))
        f = f[None, None].repeat([c, 1] + [1] * f.ndim)
        if f.ndim == 4:
            x = F.conv2d(x, f, groups=c)
        else:
            x = F.conv2d(x, f.unsqueeze(2), groups=c)  # taps along the width
            x = F.conv2d(x, f.unsqueeze(3), groups=c)  # taps along the height
    # 4. Decimate.
    if downx > 1 or downy > 1:
        x = x[:, :, ::downy, ::downx]
    return x


def reference_upfirdn2d(x: torch.Tensor, f: Optional[torch.Tensor], up: Sequence[int] = (1, 1),
                        down: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0, 0, 0),
                        flip_filter: bool = False, gain: float = 1.0) -> torch.Tensor:
    """``upfirdn2d(..., impl='ref')`` with the CUDA contract's tuple arguments (see ``_impl``)."""
    return upfirdn2d(x, f, up=list(up), down=list(down), padding=list(padding), flip_filter=flip_filter,
                     gain=gain, impl='ref')


cuda_kernels.register_reference('upfirdn2d', reference_upfirdn2d)


# ---------------------------------------------------------------------------------------------
# Wrappers (docs/stylegan2-arithmetic.md §1.3): their padding is extra padding on top of the automatic one.

def filter2d(x: torch.Tensor, f: Optional[torch.Tensor], padding: Padding = 0, flip_filter: bool = False,
             gain: float = 1, impl: Optional[str] = None) -> torch.Tensor:
    """Filter without resampling; output size equals input size plus the extra padding
    (docs/stylegan2-arithmetic.md §1.3)."""
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x: torch.Tensor, f: Optional[torch.Tensor], up: Scaling = 2, padding: Padding = 0,
               flip_filter: bool = False, gain: float = 1, impl: Optional[str] = None) -> torch.Tensor:
    """Upsample by ``up`` with the filter, gain * ux * uy to keep the DC level (docs/stylegan2-arithmetic.md §1.3)."""
    upx, upy = _parse_scaling(up, 'up')
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=(upx, upy), padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x: torch.Tensor, f: Optional[torch.Tensor], down: Scaling = 2, padding: Padding = 0,
                 flip_filter: bool = False, gain: float = 1, impl: Optional[str] = None) -> torch.Tensor:
    """Filter and downsample by ``down``, no extra gain (docs/stylegan2-arithmetic.md §1.3)."""
    downx, downy = _parse_scaling(down, 'down')
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=(downx, downy), padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
