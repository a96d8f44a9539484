"""fma(a, b, c) = a * b + c as one ``torch.addcmul``, with gradients reduced to each input's shape.

Spec: docs/stylegan2-ada.md §7 ("fma: addcmul with unbroadcast-aware backward"); used by the non-fused
modulated convolution (docs/stylegan2-arithmetic.md §6) as x * dcoefs + noise. The backward is made
of differentiable tensor ops, so second-order gradients (R1/PL through G or D) work.
"""

from __future__ import annotations

from typing import Any, Optional

import torch


def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a * b + c with broadcasting (computed as addcmul(c, a, b))."""
    return _FusedMultiplyAdd.apply(a, b, c)


class _FusedMultiplyAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out = torch.addcmul(c, a, b)
        ctx.save_for_backward(a, b)
        ctx.c_shape = c.shape
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        a, b = ctx.saved_tensors
        da = db = dc = None
        if ctx.needs_input_grad[0]:
            da = _unbroadcast(dout * b, a.shape)
        if ctx.needs_input_grad[1]:
            db = _unbroadcast(dout * a, b.shape)
        if ctx.needs_input_grad[2]:
            dc = _unbroadcast(dout, ctx.c_shape)
        return da, db, dc


def _unbroadcast(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum x over the axes along which a tensor of ``shape`` was broadcast to x.shape."""
    extra = x.ndim - len(shape)
    dims = list(range(extra)) + [i + extra for i, n in enumerate(shape) if n == 1 and x.shape[i + extra] != 1]
    if dims:
        x = x.sum(dim=dims, keepdim=True)
    if extra:
        x = x.reshape(shape)
    return x
