"""The activation table of bias_act: the one source of truth for the reference op and its CUDA kernel.

Spec: docs/stylegan2-arithmetic.md §2 (table of activations: default alpha and gain, whether the
derivative is evaluated from the input x or the output y, whether f'' is non-zero). The
reference ``bias_act`` evaluates ``func``; the CUDA side (``cuda_kernels``) reads the other
columns to wire its autograd Functions and adds only its kernel codes. The functions are
framework activations, so they have first- and second-order gradients wherever the activation
itself has them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class ActivationSpec:
    """One row of the table of docs/stylegan2-arithmetic.md §2.

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
    """The docs/stylegan2-arithmetic.md §2 table row of ``act``; a ValueError listing the valid names otherwise."""
    spec = activation_funcs.get(act)
    if spec is None:
        raise ValueError(f'bias_act: unknown activation {act!r}; valid: {", ".join(activation_funcs)}')
    return spec


def resolve_act_args(act: str, alpha: Optional[float], gain: Optional[float],
                     clamp: Optional[float]) -> tuple[float, float, Optional[float]]:
    """Fill the defaults of docs/stylegan2-arithmetic.md §2: alpha and gain None take the activation's;
    clamp stays None if unset."""
    spec = get_activation(act)
    return (float(spec.def_alpha if alpha is None else alpha), float(spec.def_gain if gain is None else gain),
            None if clamp is None else float(clamp))
