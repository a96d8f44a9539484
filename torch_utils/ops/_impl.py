"""The single switch point between the pure-PyTorch reference ops and the CUDA kernels.

Spec: stylegan2-arithmetic.md §9 ("custom ops") and stylegan2-ada.md §7; spec README decision 10
("reference ops are the truth": every custom CUDA op has a pure-PyTorch reference path that is
the CPU default and the oracle in tests).

Choosing an implementation
--------------------------
``resolve_impl(op, x, impl)`` returns ``'ref'`` or ``'cuda'`` for one call of ``op``
('upfirdn2d' or 'bias_act') on input ``x``:

1. ``impl`` None means the process-wide default (``set_default_impl``; initially ``'auto'``).
2. ``'ref'`` -> ``'ref'``.
3. A CPU tensor -> ``'ref'`` (whatever was asked; the kernels only run on CUDA tensors).
4. Otherwise (``'auto'`` or ``'cuda'``) ``torch_utils.ops.cuda_backend`` is imported lazily;
   if it is importable and ``cuda_backend.is_ready(op)`` is True -> ``'cuda'``, else ``'ref'``.
   When ``'cuda'`` was asked for (explicitly or as the default) and is not available, one
   ``RuntimeWarning`` per op names the op and, if the backend has ``why_not_ready(op)``, the reason.

Contract with ``torch_utils.ops.cuda_backend`` (written separately)
-------------------------------------------------------------------
- ``is_ready(op: str) -> bool``: the plugin is built **and** ``op`` passed its self-check against
  the reference path. It may build and check lazily on its first call.
- ``why_not_ready(op: str) -> str`` (optional): one line saying why ``op`` is not ready.
- ``upfirdn2d(x, f, up=(ux, uy), down=(dx, dy), padding=(px0, px1, py0, py1), flip_filter, gain)``:
  ``f`` is the filter as given to ``upfirdn2d.upfirdn2d`` (a float 1-D/2-D tensor, or None
  meaning [[1]]); every argument is already parsed into the tuples shown; same result as
  ``upfirdn2d.upfirdn2d(..., impl='ref')`` up to rounding (§1.2).
- ``bias_act(x, b, dim, act, alpha, gain, clamp)``: ``dim`` is non-negative, ``alpha`` and
  ``gain`` are floats with §2's defaults already filled in, ``clamp`` is a float >= 0 or None.
- Both return tensors with first- and second-order autograd support (the backend's job).
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch

VALID_IMPLS = ('ref', 'cuda', 'auto')
OPS_WITH_KERNELS = ('upfirdn2d', 'bias_act')

_default_impl: str = 'auto'
_warned: set[str] = set()
_backend: Any = None          # the imported cuda_backend module, once imported
_backend_error: Optional[str] = None  # why it could not be imported, once tried


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


def _import_backend() -> Any:
    """Import ``cuda_backend`` once; None (with the reason remembered) if it cannot be imported."""
    global _backend, _backend_error
    if _backend is None and _backend_error is None:
        try:
            from torch_utils.ops import cuda_backend
            _backend = cuda_backend
        except ImportError as exc:
            _backend_error = f'torch_utils.ops.cuda_backend cannot be imported ({exc})'
    return _backend


def _warn_not_ready(op: str, backend: Any) -> None:
    if op in _warned:
        return
    _warned.add(op)
    if backend is None:
        reason = _backend_error or 'no CUDA backend'
    elif hasattr(backend, 'why_not_ready'):
        reason = backend.why_not_ready(op)
    else:
        reason = 'the CUDA backend reports it is not ready'
    warnings.warn(f"ops impl 'cuda' requested for {op} but the kernel is not available ({reason}); "
                  f"using the reference implementation", RuntimeWarning, stacklevel=3)


def resolve_impl(op: str, x: torch.Tensor, impl: Optional[str] = None) -> str:
    """Return 'ref' or 'cuda' for one call of ``op`` on ``x`` (rules in the module docstring)."""
    if impl is None:
        impl = _default_impl
    if impl == 'ref' or x.is_cpu:
        if impl not in VALID_IMPLS:
            _validate_impl(impl)
        return 'ref'
    _validate_impl(impl)
    if op not in OPS_WITH_KERNELS:
        raise ValueError(f'unknown custom op {op!r}; expected one of {", ".join(OPS_WITH_KERNELS)}')
    backend = _import_backend()
    if backend is not None and backend.is_ready(op):
        return 'cuda'
    if impl == 'cuda':
        _warn_not_ready(op, backend)
    return 'ref'


def get_backend() -> Any:
    """The imported ``cuda_backend`` module (only valid after ``resolve_impl`` returned 'cuda')."""
    return _import_backend()
