"""The CUDA kernels of ``upfirdn2d`` and ``bias_act`` as autograd-aware functions.

Issue "Custom CUDA ops"; semantics in docs/stylegan2-arithmetic.md §1.2 (upfirdn2d), §2 (bias_act)
and docs/stylegan2-arithmetic.md §9 (CUDA numerics). This module only runs the kernels of the
plugin (``cuda_plugin``) with first- and second-order autograd and knows which calls they cover;
whether they may be used at all (built and self-checked) is ``cuda_selfcheck``'s business, and
which path each call of the public ops takes is ``_impl``'s.

- ``upfirdn2d(x, f, up=(ux, uy), down=(dx, dy), padding=(px0, px1, py0, py1), flip_filter, gain)``
  and ``bias_act(x, b, dim, act, alpha, gain, clamp)`` run the kernels. Calls the kernels do not
  cover (tensors off ``_KERNEL_DEVICE_TYPE``, float64, factors > 8, filters > 64 taps, a filter
  that needs a gradient, empty tensors, ...) are answered by the op's reference path, so these
  functions are always correct to call. ``stats`` counts both outcomes.
- The reference paths live in the public op modules above this one; each registers its own
  with ``register_reference`` when it is imported (this module never imports them).

Autograd:

- upfirdn2d is linear in x. Per axis, with input length n, output length m, filter length T,
  forward y[o] = gain * sum_k g[k] u[o*down + k - p0] (u = x upsampled by ``up``), the
  gradient is another upfirdn2d of dy with up' = down, down' = up, the filter flipped
  (flip_filter toggled), the same gain and padding p0' = T - 1 - p0,
  p1' = n*up - m*down + p0 - up + 1 (which makes its output length exactly n). The backward
  calls the same Function, so gradients of any order work.
- bias_act follows the "gradient from x / y" column of docs/stylegan2-arithmetic.md §2 (the table in
  ``activations``): the first derivative is a kernel call (mode 1) on the saved input (swish) or
  output (the others); its own derivative w.r.t. the incoming gradient is mode 1 again and
  w.r.t. x is mode 2 (f''), for the activations with a second-order gradient. A third
  derivative raises instead of silently returning zeros. The output is saved whenever a clamp
  is set (not only for the activations differentiated from y), so the clamp mask applies to
  every activation, including linear and swish.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Optional, Sequence

import torch

from torch_utils.ops import cuda_plugin
from torch_utils.ops.activations import ActivationSpec, activation_funcs, resolve_act_args

OPS = ('upfirdn2d', 'bias_act')

MAX_FACTOR = 8   # kUpfirdn2dMaxFactor in kernels.h
MAX_TAPS = 64    # kUpfirdn2dMaxTaps in kernels.h
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Activation codes of the kernel (BiasActAct in kernels.h); the rest of the table of
# docs/stylegan2-arithmetic.md §2 is in activations.
ACT_CODES: dict[str, int] = {'linear': 0, 'relu': 1, 'lrelu': 2, 'tanh': 3, 'sigmoid': 4, 'elu': 5, 'selu': 6,
                             'softplus': 7, 'swish': 8}

# Device type the kernels run on. Tests point this at 'cpu' together with a fake plugin, so the
# autograd and self-check machinery can be exercised without a GPU.
_KERNEL_DEVICE_TYPE = 'cuda'

# How often each path ran (keys 'upfirdn2d.kernel', 'upfirdn2d.fallback', ...); for tests/bench.
stats: collections.Counter = collections.Counter()

OpFn = Callable[..., torch.Tensor]


# ---------------------------------------------------------------------------------------------
# The reference paths, handed over by the public op modules.

_references: dict[str, OpFn] = {}


def register_reference(op: str, fn: OpFn) -> None:
    """Register ``op``'s reference path, called with this module's argument conventions."""
    if op not in OPS:
        raise ValueError(f'unknown custom op {op!r}; expected one of {OPS}')
    _references[op] = fn


def reference(op: str) -> OpFn:
    """The registered reference path of ``op`` (registered when ``torch_utils.ops.<op>`` is imported)."""
    fn = _references.get(op)
    if fn is None:
        raise RuntimeError(f'no reference path registered for {op}; import torch_utils.ops.{op} first')
    return fn


def _stream(x: torch.Tensor) -> int:
    return torch.cuda.current_stream(x.device).cuda_stream if x.is_cuda else 0


# ---------------------------------------------------------------------------------------------
# upfirdn2d.

@dataclasses.dataclass(frozen=True)
class _UpfirdnCfg:
    upx: int
    upy: int
    downx: int
    downy: int
    padx0: int
    padx1: int
    pady0: int
    pady1: int
    flip: bool
    gain: float

    def gradient(self, in_hw: Sequence[int], out_hw: Sequence[int], taps_hw: Sequence[int]) -> '_UpfirdnCfg':
        """The configuration whose upfirdn2d of dy is dL/dx (see the module docstring)."""
        (in_h, in_w), (out_h, out_w), (fh, fw) = in_hw, out_hw, taps_hw
        return _UpfirdnCfg(
            upx=self.downx, upy=self.downy, downx=self.upx, downy=self.upy,
            padx0=fw - 1 - self.padx0, padx1=in_w * self.upx - out_w * self.downx + self.padx0 - self.upx + 1,
            pady0=fh - 1 - self.pady0, pady1=in_h * self.upy - out_h * self.downy + self.pady0 - self.upy + 1,
            flip=not self.flip, gain=self.gain)


def _filter_taps(f: torch.Tensor) -> tuple[int, int]:
    """(fh, fw); a 1-D (separable) filter of T taps has fh = fw = T (docs/stylegan2-arithmetic.md §1.1)."""
    return (int(f.shape[0]), int(f.shape[-1]))


def _out_size(n: int, up: int, p0: int, p1: int, taps: int, down: int) -> int:
    span = n * up + p0 + p1 - taps
    return span // down + 1 if span >= 0 else 0


def upfirdn2d_unsupported(x: torch.Tensor, f: torch.Tensor, cfg: _UpfirdnCfg) -> str:
    """Why the kernel cannot take this call ('' if it can); such calls go to the reference."""
    if x.device.type != _KERNEL_DEVICE_TYPE:
        return f'tensor on {x.device.type}'
    if x.ndim != 4 or x.numel() == 0:
        return 'x is not a non-empty 4-D tensor'
    if x.dtype not in KERNEL_DTYPES:
        return f'dtype {x.dtype}'
    if f.ndim not in (1, 2) or f.numel() == 0 or f.device != x.device:
        return 'filter shape/device'
    if f.requires_grad and torch.is_grad_enabled():
        return 'the filter requires a gradient'
    factors = (cfg.upx, cfg.upy, cfg.downx, cfg.downy)
    if min(factors) < 1 or max(factors) > MAX_FACTOR:
        return f'up/down factor outside 1..{MAX_FACTOR}'
    fh, fw = _filter_taps(f)
    if fh > MAX_TAPS or fw > MAX_TAPS:
        return f'filter larger than {MAX_TAPS} taps'
    out_h = _out_size(x.shape[2], cfg.upy, cfg.pady0, cfg.pady1, fh, cfg.downy)
    out_w = _out_size(x.shape[3], cfg.upx, cfg.padx0, cfg.padx1, fw, cfg.downx)
    if out_h < 1 or out_w < 1:
        return 'empty output'
    return ''


def _plugin_upfirdn2d(x: torch.Tensor, f: torch.Tensor, cfg: _UpfirdnCfg) -> torch.Tensor:
    return cuda_plugin.get_plugin().upfirdn2d(x, f, cfg.upx, cfg.upy, cfg.downx, cfg.downy, cfg.padx0, cfg.padx1,
                                               cfg.pady0, cfg.pady1, cfg.flip, cfg.gain, _stream(x))


class _Upfirdn2dFn(torch.autograd.Function):
    """y = upfirdn2d(x); dL/dx = upfirdn2d(dL/dy) with the gradient configuration (any order)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, f: torch.Tensor, cfg: _UpfirdnCfg) -> torch.Tensor:
        y = _plugin_upfirdn2d(x, f, cfg)
        ctx.set_materialize_grads(False)  # no kernel call for an all-zero incoming gradient
        ctx.save_for_backward(f)
        ctx.cfg = cfg
        ctx.in_hw = (int(x.shape[2]), int(x.shape[3]))
        ctx.out_hw = (int(y.shape[2]), int(y.shape[3]))
        return y

    @staticmethod
    def backward(ctx: Any, dy: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], None, None]:
        (f,) = ctx.saved_tensors
        dx = None
        if dy is not None and ctx.needs_input_grad[0]:
            gcfg = ctx.cfg.gradient(ctx.in_hw, ctx.out_hw, _filter_taps(f))
            dx = _Upfirdn2dFn.apply(dy, f, gcfg)
        return dx, None, None


def upfirdn2d(x: torch.Tensor, f: Optional[torch.Tensor], up: Sequence[int] = (1, 1), down: Sequence[int] = (1, 1),
              padding: Sequence[int] = (0, 0, 0, 0), flip_filter: bool = False, gain: float = 1.0) -> torch.Tensor:
    """upfirdn2d on the CUDA kernel (docs/stylegan2-arithmetic.md §1.2), reference for uncovered calls.

    ``up``/``down`` are (x, y) pairs, ``padding`` is (px0, px1, py0, py1).
    ``f`` is a float32 1-D (separable) or 2-D filter as made by ``setup_filter``, or None (= [[1]]).
    The kernel multiplies the fp32 accumulator by ``gain`` and rounds once (docs/stylegan2-arithmetic.md §1.2).
    """
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    f = f.to(device=x.device, dtype=torch.float32)
    (upx, upy), (downx, downy) = (int(s) for s in up), (int(s) for s in down)
    px0, px1, py0, py1 = (int(p) for p in padding)
    cfg = _UpfirdnCfg(upx, upy, downx, downy, px0, px1, py0, py1, bool(flip_filter), float(gain))
    if upfirdn2d_unsupported(x, f, cfg):
        stats['upfirdn2d.fallback'] += 1
        return reference('upfirdn2d')(x, f, up=(upx, upy), down=(downx, downy), padding=(px0, px1, py0, py1),
                                      flip_filter=bool(flip_filter), gain=float(gain))
    stats['upfirdn2d.kernel'] += 1
    return _Upfirdn2dFn.apply(x, f.contiguous(), cfg)


# ---------------------------------------------------------------------------------------------
# bias_act.

MODE_FORWARD, MODE_GRAD, MODE_GRAD2 = 0, 1, 2  # BiasActMode in kernels.h


@dataclasses.dataclass(frozen=True)
class _BiasActCfg:
    dim: int
    act: str
    alpha: float
    gain: float
    clamp: float  # -1 disables

    @property
    def spec(self) -> ActivationSpec:
        return activation_funcs[self.act]

    @property
    def needs_grad_kernel(self) -> bool:
        return self.act != 'linear' or self.gain != 1 or self.clamp >= 0


def _plugin_bias_act(x: torch.Tensor, b: Optional[torch.Tensor], xref: Optional[torch.Tensor],
                     yref: Optional[torch.Tensor], dy: Optional[torch.Tensor], mode: int,
                     cfg: _BiasActCfg) -> torch.Tensor:
    return cuda_plugin.get_plugin().bias_act(x, b, xref, yref, dy, mode, ACT_CODES[cfg.act], cfg.alpha, cfg.gain,
                                             cfg.clamp, cfg.dim, _stream(x))


def _sum_to_bias(t: torch.Tensor, dim: int) -> torch.Tensor:
    dims = [i for i in range(t.ndim) if i != dim]
    return t.sum(dims) if dims else t


class _BiasActFn(torch.autograd.Function):
    """y = clampc(gain * f(x + b)); saves x (and b) and/or y as the derivatives need them."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, b: Optional[torch.Tensor], cfg: _BiasActCfg) -> torch.Tensor:
        y = _plugin_bias_act(x, b, None, None, None, MODE_FORWARD, cfg)
        keep_x = cfg.spec.ref == 'x' or cfg.spec.has_2nd_grad  # x is also the edge for f''
        keep_y = cfg.spec.ref == 'y' or cfg.clamp >= 0
        ctx.save_for_backward(x if keep_x else None, b if keep_x else None, y if keep_y else None)
        ctx.set_materialize_grads(False)  # the second-order pass sends no gradient to y: skip it
        ctx.cfg = cfg
        return y

    @staticmethod
    def backward(ctx: Any, dy: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], None]:
        if dy is None:
            return None, None, None
        x, b, y = ctx.saved_tensors
        cfg = ctx.cfg
        dx = _BiasActGradFn.apply(dy, x, b, y, cfg) if cfg.needs_grad_kernel else dy
        db = _sum_to_bias(dx, cfg.dim) if ctx.needs_input_grad[1] else None
        return (dx if ctx.needs_input_grad[0] else None), db, None


class _BiasActGradFn(torch.autograd.Function):
    """dx = dy * gain * f'(.) * mask (mode 1); its backward uses modes 1 and 2."""

    @staticmethod
    def forward(ctx: Any, dy: torch.Tensor, x: Optional[torch.Tensor], b: Optional[torch.Tensor],
                y: Optional[torch.Tensor], cfg: _BiasActCfg) -> torch.Tensor:
        from_x = cfg.spec.ref == 'x'
        dx = _plugin_bias_act(dy, b if from_x else None, x if from_x else None, y, None, MODE_GRAD, cfg)
        ctx.save_for_backward(dy if cfg.spec.has_2nd_grad else None, x, b, y)
        ctx.cfg = cfg
        return dx

    @staticmethod
    def backward(ctx: Any, d_dx: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        dy, x, b, y = ctx.saved_tensors
        cfg = ctx.cfg
        from_x = cfg.spec.ref == 'x'
        bk, xk = (b, x) if from_x else (None, None)
        d_dy = d_x = d_b = None
        with torch.no_grad():
            if ctx.needs_input_grad[0]:
                d_dy = _plugin_bias_act(d_dx, bk, xk, y, None, MODE_GRAD, cfg)
            if cfg.spec.has_2nd_grad and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
                d_x = _plugin_bias_act(d_dx, bk, xk, y, dy, MODE_GRAD2, cfg)
                if ctx.needs_input_grad[2]:
                    d_b = _sum_to_bias(d_x, cfg.dim)
                if not ctx.needs_input_grad[1]:
                    d_x = None
        if torch.is_grad_enabled():  # create_graph=True: a third derivative would be silently wrong
            deps = [t for t in (d_dx, dy, x, b, y) if t is not None and t.requires_grad]
            if deps:
                d_dy, d_x, d_b = (None if t is None else _NoThirdOrder.apply(t, *deps) for t in (d_dy, d_x, d_b))
        return d_dy, d_x, d_b, None, None


class _NoThirdOrder(torch.autograd.Function):
    """Identity on its first input whose backward raises: marks second-order bias_act results."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, *deps: torch.Tensor) -> torch.Tensor:
        return t.clone()

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        raise RuntimeError('bias_act (CUDA kernel): third-order gradients are not supported; '
                           'use the reference ops (--ops=ref) for them')


def bias_act_unsupported(x: torch.Tensor, b: Optional[torch.Tensor], dim: int, act: str,
                         clamp: Optional[float]) -> str:
    """Why the kernel cannot take this call ('' if it can); such calls go to the reference."""
    if x.device.type != _KERNEL_DEVICE_TYPE:
        return f'tensor on {x.device.type}'
    if x.dtype not in KERNEL_DTYPES:
        return f'dtype {x.dtype}'
    if x.ndim == 0 or x.numel() == 0 or not 0 <= dim < x.ndim:
        return 'empty tensor or dim out of range'
    if act not in activation_funcs:
        return f'unknown activation {act!r}'
    if clamp is not None and not clamp >= 0:
        return 'negative clamp'
    if b is not None and (b.ndim != 1 or b.shape[0] != x.shape[dim] or b.dtype != x.dtype or b.device != x.device):
        return 'bias shape/dtype/device'
    return ''


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1, act: str = 'linear',
             alpha: Optional[float] = None, gain: Optional[float] = None,
             clamp: Optional[float] = None) -> torch.Tensor:
    """bias_act on the CUDA kernel (docs/stylegan2-arithmetic.md §2), reference for uncovered calls.

    Computes in fp32 and rounds once; the clamp gradient passes where |y| < clamp strictly;
    softplus is linear above 80 (docs/stylegan2-arithmetic.md §2, CUDA vs reference).
    ``alpha``/``gain`` None take the defaults of docs/stylegan2-arithmetic.md §2.
    """
    dim = dim + x.ndim if dim < 0 else dim
    if act in activation_funcs:
        alpha, gain, clamp = resolve_act_args(act, alpha, gain, clamp)
    if bias_act_unsupported(x, b, dim, act, clamp):
        stats['bias_act.fallback'] += 1
        return reference('bias_act')(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    stats['bias_act.kernel'] += 1
    cfg = _BiasActCfg(dim=dim, act=act, alpha=float(alpha), gain=float(gain),
                      clamp=-1.0 if clamp is None else float(clamp))
    return _BiasActFn.apply(x, b, cfg)
