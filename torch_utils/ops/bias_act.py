"""bias_act: fused bias + activation + gain + clamp.

Spec: docs/stylegan2-arithmetic.md §2 (table of activations, fixed step order: bias, activation,
gain only if != 1 exactly, clamp after gain), docs/stylegan2-arithmetic.md §9;
docs/stylegan2-ada.md §7. The table itself lives in ``activations`` (re-exported here as
``activation_funcs``); the reference path is built from its framework activations, so it has
first- and second-order gradients wherever the activation itself has them. This module sits on
top of the CUDA side: it hands ``reference_bias_act`` to ``cuda_kernels`` (the oracle of the
kernel's self-check and its answer for calls the kernel does not cover) and lets ``_impl`` pick
the path of each call.
"""

from __future__ import annotations

from typing import Optional

import torch

from torch_utils.ops import _impl, cuda_kernels
from torch_utils.ops.activations import ActivationSpec, activation_funcs, get_activation, resolve_act_args

__all__ = ['ActivationSpec', 'activation_funcs', 'bias_act', 'get_activation', 'reference_bias_act']


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1, act: str = 'linear',
             alpha: Optional[float] = None, gain: Optional[float] = None, clamp: Optional[float] = None,
             impl: Optional[str] = None) -> torch.Tensor:
    """y = clamp(f(x + b, alpha) * gain, -clamp, clamp), in the fixed order of docs/stylegan2-arithmetic.md §2.

    b: 1-D of length x.shape[dim] and x's dtype, broadcast along ``dim``. alpha/gain None take the
    activation's defaults; the gain multiply is skipped iff gain == 1 exactly; clamp (>= 0) bounds
    the final output. impl: 'ref' | 'cuda' | 'auto' | None (see ``_impl.resolve_impl``).
    """
    spec = get_activation(act)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'bias_act: x must be a torch.Tensor, got {type(x).__name__}')
    if dim < 0:
        dim += x.ndim
    if b is not None:
        if not 0 <= dim < x.ndim:
            raise ValueError(f'bias_act: dim out of range for a {x.ndim}-D tensor')
        if not isinstance(b, torch.Tensor) or b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f'bias_act: b must be 1-D of length x.shape[{dim}] = {x.shape[dim]}, got '
                             f'{list(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__}')
        if b.dtype != x.dtype:
            raise TypeError(f'bias_act: b has dtype {b.dtype} but x has {x.dtype}; cast b to x.dtype')
    alpha, gain, clamp = resolve_act_args(act, alpha, gain, clamp)
    if clamp is not None and not clamp >= 0:
        raise ValueError(f'bias_act: clamp must be >= 0 or None, got {clamp}')
    if _impl.resolve_impl('bias_act', x, impl) == 'cuda':
        return _impl.get_backend().bias_act(x, b, dim, act, alpha, gain, clamp)
    return _bias_act_ref(x, b, dim, spec, alpha, gain, clamp)


def _bias_act_ref(x: torch.Tensor, b: Optional[torch.Tensor], dim: int, spec: ActivationSpec, alpha: float,
                  gain: float, clamp: Optional[float]) -> torch.Tensor:
    """Reference path of docs/stylegan2-arithmetic.md §2 with resolved arguments: bias, activation,
    gain (if != 1), clamp."""
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def reference_bias_act(x: torch.Tensor, b: Optional[torch.Tensor], dim: int = 1, act: str = 'linear',
                       alpha: Optional[float] = None, gain: Optional[float] = None,
                       clamp: Optional[float] = None) -> torch.Tensor:
    """``bias_act(..., impl='ref')`` with the CUDA contract's positional arguments (see ``_impl``)."""
    return bias_act(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp, impl='ref')


cuda_kernels.register_reference('bias_act', reference_bias_act)
