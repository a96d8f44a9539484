"""The single switch point between the pure-PyTorch reference ops and the CUDA kernels.

Spec: docs/stylegan2-arithmetic.md §9 ("custom ops") and docs/stylegan2-ada.md §7; docs/README.md decision 10
("reference ops are the truth": every custom CUDA op has a pure-PyTorch reference path that is
the CPU default and the oracle in tests).

Layering: the public ops (``upfirdn2d``, ``bias_act``) import this module; this module imports
the CUDA side (``cuda_selfcheck`` for readiness, ``cuda_kernels`` for the kernels, both built on
``cuda_plugin``); nothing below imports the public ops, which hand their reference paths down
with ``cuda_kernels.register_reference``.

Choosing an implementation
--------------------------
``resolve_impl(op, x, impl)`` returns ``'ref'`` or ``'cuda'`` for one call of ``op``
('upfirdn2d' or 'bias_act') on input ``x``:

1. ``impl`` None means the process-wide default (``set_default_impl``; initially ``'auto'``).
2. ``'ref'`` -> ``'ref'``.
3. A CPU tensor -> ``'ref'`` (whatever was asked; the kernels only run on CUDA tensors).
4. Otherwise (``'auto'`` or ``'cuda'``): ``'cuda'`` if the backend's ``is_ready(op)`` is True,
   else ``'ref'``. When ``'cuda'`` was asked for (explicitly or as the default) and is not
   available, one ``RuntimeWarning`` per op names the op and the backend's ``why_not_ready(op)``.

Contract with the backend (``get_backend()``; tests substitute a fake)
----------------------------------------------------------------------
- ``is_ready(op: str) -> bool``: the plugin is built **and** ``op`` passed its self-check against
  the reference path. It may build and check lazily on its first call.
- ``why_not_ready(op: str) -> str``: one line saying why ``op`` is not ready.
- ``upfirdn2d(x, f, up=(ux, uy), down=(dx, dy), padding=(px0, px1, py0, py1), flip_filter, gain)``:
  ``f`` is the filter as given to ``upfirdn2d.upfirdn2d`` (a float 1-D/2-D tensor, or None
  meaning [[1]]); every argument is already parsed into the tuples shown; same result as
  ``upfirdn2d.upfirdn2d(..., impl='ref')`` up to rounding (docs/stylegan2-arithmetic.md §1.2).
- ``bias_act(x, b, dim, act, alpha, gain, clamp)``: ``dim`` is non-negative, ``alpha`` and
  ``gain`` are floats with the defaults of docs/stylegan2-arithmetic.md §2 already filled in,
  ``clamp`` is a float >= 0 or None.
- Both return tensors with first- and second-order autograd support (the backend's job).
"""

from __future__ import annotations

import types
import warnings
from typing import Any, Optional

import torch

from torch_utils.ops import cuda_kernels, cuda_selfcheck

VALID_IMPLS = ('ref', 'cuda', 'auto')

_default_impl: str = 'auto'
_warned: set[str] = set()
_backend: Any = types.SimpleNamespace(  # the CUDA side, as the contract above sees it
    is_ready=cuda_selfcheck.is_ready, why_not_ready=cuda_selfcheck.why_not_ready,
    upfirdn2d=cuda_kernels.upfirdn2d, bias_act=cuda_kernels.bias_act)


def _validate_impl(impl: str) -> str:
    if impl not in VALID_IMPLS:
        raise ValueError(f'unknown ops implementation {impl!r}; expected one of {", ".join(VALID_IMPLS)}')
    return impl


def set_default_impl(impl: str) -> str:
    """Set the process-wide default implementation ('ref' | 'cuda' | 'auto'); returns the previous one."""
    global _default_impl
    previous = _default_impl
    _default_impl = _validate_impl(impl)
    return previous


def get_default_impl() -> str:
    """The process-wide default implementation ('auto' unless changed)."""
    return _default_impl


def _warn_not_ready(op: str) -> None:
    if op in _warned:
        return
    _warned.add(op)
    warnings.warn(f"ops impl 'cuda' requested for {op} but the kernel is not available "
                  f"({_backend.why_not_ready(op)}); using the reference implementation", RuntimeWarning, stacklevel=3)


def resolve_impl(op: str, x: torch.Tensor, impl: Optional[str] = None) -> str:
    """Return 'ref' or 'cuda' for one call of ``op`` on ``x`` (rules in the module docstring)."""
    if impl is None:
        impl = _default_impl
    if impl == 'ref' or x.is_cpu:
        if impl not in VALID_IMPLS:
            _validate_impl(impl)
        return 'ref'
    _validate_impl(impl)
    if op not in cuda_kernels.OPS:
        raise ValueError(f'unknown custom op {op!r}; expected one of {", ".join(cuda_kernels.OPS)}')
    if _backend.is_ready(op):
        return 'cuda'
    if impl == 'cuda':
        _warn_not_ready(op)
    return 'ref'


def get_backend() -> Any:
    """The backend of the contract above (use it after ``resolve_impl`` returned 'cuda')."""
    return _backend
