"""bias_act: fused bias + activation + gain + clamp.

Spec: stylegan2-arithmetic.md §2 (table of activations, fixed step order: bias, activation,
gain only if != 1 exactly, clamp after gain), §9; stylegan2-ada.md §7. The reference path is built
from framework activations, so it has first- and second-order gradients wherever the activation
itself has them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from torch_utils.ops import _impl


@dataclasses.dataclass(frozen=True)
class ActivationSpec:
    """One row of §2's table.

    func(x, alpha) is the activation; ``ref`` says whether its derivative is evaluated from the
    saved input ('x') or output ('y'), '' for linear; ``has_2nd_grad`` whether f'' is non-zero.
    """
    name: str
    func: Callable[[torch.Tensor, float], torch.Tensor]
    def_alpha: float
    def_gain: float
    ref: str
    has_2nd_grad: bool


def _linear(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return x


def _relu(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return F.relu(x)


def _lrelu(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return F.leaky_relu(x, alpha)


def _tanh(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.tanh(x)


def _sigmoid(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.sigmoid(x)


def _elu(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return F.elu(x)


def _selu(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return F.selu(x)


def _softplus(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return F.softplus(x)


def _swish(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.sigmoid(x) * x


_SQRT2 = math.sqrt(2)

activation_funcs: dict[str, ActivationSpec] = {spec.name: spec for spec in (
    ActivationSpec('linear', _linear, 0.0, 1.0, '', False),
    ActivationSpec('relu', _relu, 0.0, _SQRT2, 'y', False),
    ActivationSpec('lrelu', _lrelu, 0.2, _SQRT2, 'y', False),
    ActivationSpec('tanh', _tanh, 0.0, 1.0, 'y', True),
    ActivationSpec('sigmoid', _sigmoid, 0.0, 1.0, 'y', True),
    ActivationSpec('elu', _elu, 0.0, 1.0, 'y', True),
    ActivationSpec('selu', _selu, 0.0, 1.0, 'y', True),
    ActivationSpec('softplus', _softplus, 0.0, 1.0, 'y', True),
    ActivationSpec('swish', _swish, 0.0, _SQRT2, 'x', True),
)}


def get_activation(act: str) -> ActivationSpec:
    """The §2 table row of ``act``; a ValueError listing the valid names otherwise."""
    spec = activation_funcs.get(act)
    if spec is None:
        raise ValueError(f'bias_act: unknown activation {act!r}; valid: {", ".join(activation_funcs)}')
    return spec


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1, act: str = 'linear',
             alpha: Optional[float] = None, gain: Optional[float] = None, clamp: Optional[float] = None,
             impl: Optional[str] = None) -> torch.Tensor:
    """y = clamp(f(x + b, alpha) * gain, -clamp, clamp), in §2's fixed order.

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
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    if clamp is not None:
        clamp = float(clamp)
        if not clamp >= 0:
            raise ValueError(f'bias_act: clamp must be >= 0 or None, got {clamp}')
    if _impl.resolve_impl('bias_act', x, impl) == 'cuda':
        return _impl.get_backend().bias_act(x, b, dim, act, alpha, gain, clamp)
    return _bias_act_ref(x, b, dim, spec, alpha, gain, clamp)


def _bias_act_ref(x: torch.Tensor, b: Optional[torch.Tensor], dim: int, spec: ActivationSpec, alpha: float,
                  gain: float, clamp: Optional[float]) -> torch.Tensor:
    """Reference path of §2 with resolved arguments: bias, activation, gain (if != 1), clamp."""
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x
