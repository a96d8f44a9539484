"""CUDA backend of ``upfirdn2d`` and ``bias_act``: build on first use, self-check, autograd.

Issue "Custom CUDA ops"; semantics in stylegan2-arithmetic.md §1.2 (upfirdn2d), §2 (bias_act)
and §9 (CUDA numerics), build behaviour in stylegan2-ada.md §7 and §13.

Contract with ``torch_utils.ops._impl`` (the reference side):

- ``is_ready(op)`` is True only when the plugin built **and** the op's self-check against the
  reference path passed. Both happen lazily on the first call on a CUDA machine and are cached;
  on a machine without CUDA it is False at once and nothing is built. A build failure or a
  self-check mismatch warns once (``RuntimeWarning`` naming the reason) and keeps it False, so
  training falls back to the reference and never silently uses a wrong kernel.
- ``why_not_ready(op)`` says why in one line.
- ``upfirdn2d(x, f, up=(ux, uy), down=(dx, dy), padding=(px0, px1, py0, py1), flip_filter, gain)``
  and ``bias_act(x, b, dim, act, alpha, gain, clamp)`` run the kernels with full first- and
  second-order autograd. Calls the kernels do not cover (CPU tensors, float64, factors > 8,
  filters > 64 taps, a filter that needs a gradient, empty tensors, ...) are answered by the
  reference path, so these functions are always correct to call.

Autograd:

- upfirdn2d is linear in x. Per axis, with input length n, output length m, filter length T,
  forward y[o] = gain * sum_k g[k] u[o*down + k - p0] (u = x upsampled by ``up``), the
  gradient is another upfirdn2d of dy with up' = down, down' = up, the filter flipped
  (flip_filter toggled), the same gain and padding p0' = T - 1 - p0,
  p1' = n*up - m*down + p0 - up + 1 (which makes its output length exactly n). The backward
  calls the same Function, so gradients of any order work.
- bias_act follows the "gradient from x / y" column of stylegan2-arithmetic.md §2: the first
  derivative is a kernel call (mode 1) on the saved input (swish) or output (the others); its
  own derivative w.r.t. the incoming gradient is mode 1 again and w.r.t. x is mode 2 (f''),
  for the activations with a second-order gradient. A third derivative raises instead of
  silently returning zeros. The output is saved whenever a clamp is set (not only for the
  activations differentiated from y), so the clamp mask applies to every activation,
  including linear and swish.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import threading
import warnings
from typing import Any, Callable, Optional, Sequence

import torch

OPS = ('upfirdn2d', 'bias_act')
PLUGIN_NAME = 'degan_ops_plugin'
ABI_VERSION = 1  # must equal kAbiVersion in ops_binding.cpp
OPS_DIR = os.path.dirname(os.path.abspath(__file__))
PLUGIN_SOURCES = ('ops_binding.cpp', 'upfirdn2d_kernel.cu', 'bias_act_kernel.cu')
PLUGIN_HEADERS = ('kernels.h', 'elem.cuh')

MAX_FACTOR = 8   # kUpfirdn2dMaxFactor in kernels.h
MAX_TAPS = 64    # kUpfirdn2dMaxTaps in kernels.h
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Device type the kernels run on. Tests point this at 'cpu' together with a fake plugin, so the
# autograd and self-check machinery can be exercised without a GPU.
_KERNEL_DEVICE_TYPE = 'cuda'

# How often each path ran (keys 'upfirdn2d.kernel', 'upfirdn2d.fallback', ...); for tests/bench.
stats: collections.Counter = collections.Counter()


# ---------------------------------------------------------------------------------------------
# Activation table (stylegan2-arithmetic.md §2); codes match BiasActAct in kernels.h.

@dataclasses.dataclass(frozen=True)
class ActSpec:
    code: int
    def_alpha: float
    def_gain: float
    grad_from: str     # '' (linear), 'x' or 'y'
    has_2nd: bool      # whether a second-order gradient exists (non-zero f'')


ACTIVATIONS: dict[str, ActSpec] = {
    'linear': ActSpec(0, 0.0, 1.0, '', False),
    'relu': ActSpec(1, 0.0, math.sqrt(2), 'y', False),
    'lrelu': ActSpec(2, 0.2, math.sqrt(2), 'y', False),
    'tanh': ActSpec(3, 0.0, 1.0, 'y', True),
    'sigmoid': ActSpec(4, 0.0, 1.0, 'y', True),
    'elu': ActSpec(5, 0.0, 1.0, 'y', True),
    'selu': ActSpec(6, 0.0, 1.0, 'y', True),
    'softplus': ActSpec(7, 0.0, 1.0, 'y', True),
    'swish': ActSpec(8, 0.0, math.sqrt(2), 'x', True),
}


# ---------------------------------------------------------------------------------------------
# Plugin and readiness state.

_lock = threading.RLock()
_status: dict[str, Optional[str]] = {op: None for op in OPS}  # None: unchecked, '': ready, else the reason
_plugin: Any = None


def _load_plugin() -> Any:
    """Build (or reuse) and import the plugin; raises on failure. Tests monkeypatch this."""
    from torch_utils import custom_ops
    return custom_ops.get_plugin(PLUGIN_NAME, PLUGIN_SOURCES, PLUGIN_HEADERS, source_dir=OPS_DIR)


def _get_plugin() -> Any:
    global _plugin
    if _plugin is None:
        module = _load_plugin()
        version = getattr(module, 'abi_version', None)
        if version != ABI_VERSION:
            raise RuntimeError(f'plugin ABI version {version} does not match cuda_backend.py ({ABI_VERSION})')
        _plugin = module
    return _plugin


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _check_device() -> torch.device:
    return torch.device('cuda', torch.cuda.current_device())


def _validate_op(op: str) -> None:
    if op not in OPS:
        raise ValueError(f'unknown custom op {op!r}; expected one of {OPS}')


def is_ready(op: str) -> bool:
    """True when ``op``'s kernel is built and passed its self-check (built/checked on first call)."""
    status = _status.get(op)
    if status is not None:  # fast path: called on every op call via _impl.resolve_impl
        return status == ''
    _validate_op(op)
    if not _cuda_available():
        return False
    with _lock:
        if _status[op] is None:
            _status[op] = prepare(op, _check_device())
        return _status[op] == ''


def why_not_ready(op: str) -> str:
    """One line saying why ``op`` does not use its kernel ('' when it does)."""
    _validate_op(op)
    if not _cuda_available():
        return 'CUDA is not available'
    status = _status[op]
    if status is None:
        return 'not checked yet (built and self-checked on the first call with a CUDA tensor)'
    return status


def prepare(op: str, device: torch.device) -> str:
    """Build the plugin and self-check ``op`` on ``device``. Returns '' or the reason; warns once on failure."""
    _validate_op(op)
    try:
        _get_plugin()
    except Exception as err:  # noqa: BLE001 - any build/import problem means: use the reference
        reason = f'the CUDA plugin could not be built: {err}'
    else:
        reason = run_self_check(op, device)
    if reason:
        warnings.warn(f'degan: custom CUDA kernel for {op} disabled ({reason}); '
                      f'falling back to the slow reference implementation.', RuntimeWarning, stacklevel=3)
    return reason


def reset() -> None:
    """Forget the plugin and every op's readiness (tests; a retry in the same process)."""
    global _plugin
    with _lock:
        _plugin = None
        for op in OPS:
            _status[op] = None
        stats.clear()


def _stream(x: torch.Tensor) -> int:
    return torch.cuda.current_stream(x.device).cuda_stream if x.is_cuda else 0


# ---------------------------------------------------------------------------------------------
# Reference path (impl='ref') with the contract's argument conventions.

def reference_upfirdn2d(x: torch.Tensor, f: Optional[torch.Tensor], up: Sequence[int] = (1, 1),
                        down: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0, 0, 0),
                        flip_filter: bool = False, gain: float = 1.0) -> torch.Tensor:
    """``torch_utils.ops.upfirdn2d.upfirdn2d(..., impl='ref')`` with tuple arguments."""
    from torch_utils.ops import upfirdn2d as module
    return module.upfirdn2d(x, f, up=list(up), down=list(down), padding=list(padding),
                            flip_filter=flip_filter, gain=gain, impl='ref')


def reference_bias_act(x: torch.Tensor, b: Optional[torch.Tensor], dim: int = 1, act: str = 'linear',
                       alpha: Optional[float] = None, gain: Optional[float] = None,
                       clamp: Optional[float] = None) -> torch.Tensor:
    """``torch_utils.ops.bias_act.bias_act(..., impl='ref')``."""
    from torch_utils.ops import bias_act as module
    return module.bias_act(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp, impl='ref')


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
    """(fh, fw); a 1-D (separable) filter of T taps has fh = fw = T (§1.1)."""
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
    return _get_plugin().upfirdn2d(x, f, cfg.upx, cfg.upy, cfg.downx, cfg.downy, cfg.padx0, cfg.padx1,
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


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def _quad(v: Any) -> tuple[int, int, int, int]:
    if isinstance(v, int):
        return (v, v, v, v)
    v = [int(p) for p in v]
    if len(v) == 2:
        return (v[0], v[0], v[1], v[1])
    a, b, c, d = v
    return (a, b, c, d)


def upfirdn2d(x: torch.Tensor, f: Optional[torch.Tensor], up: Any = (1, 1), down: Any = (1, 1),
              padding: Any = (0, 0, 0, 0), flip_filter: bool = False, gain: float = 1.0) -> torch.Tensor:
    """upfirdn2d on the CUDA kernel (stylegan2-arithmetic.md §1.2), reference for uncovered calls.

    ``up``/``down`` are (x, y) pairs, ``padding`` is (px0, px1, py0, py1); ints are accepted too.
    ``f`` is a float32 1-D (separable) or 2-D filter as made by ``setup_filter``, or None (= [[1]]).
    The kernel multiplies the fp32 accumulator by ``gain`` and rounds once (§1.2).
    """
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    f = f.to(device=x.device, dtype=torch.float32)
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = _pair(up), _pair(down), _quad(padding)
    cfg = _UpfirdnCfg(upx, upy, downx, downy, px0, px1, py0, py1, bool(flip_filter), float(gain))
    if upfirdn2d_unsupported(x, f, cfg):
        stats['upfirdn2d.fallback'] += 1
        return reference_upfirdn2d(x, f, up=(upx, upy), down=(downx, downy), padding=(px0, px1, py0, py1),
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
    def spec(self) -> ActSpec:
        return ACTIVATIONS[self.act]

    @property
    def needs_grad_kernel(self) -> bool:
        return self.act != 'linear' or self.gain != 1 or self.clamp >= 0


def _plugin_bias_act(x: torch.Tensor, b: Optional[torch.Tensor], xref: Optional[torch.Tensor],
                     yref: Optional[torch.Tensor], dy: Optional[torch.Tensor], mode: int,
                     cfg: _BiasActCfg) -> torch.Tensor:
    return _get_plugin().bias_act(x, b, xref, yref, dy, mode, cfg.spec.code, cfg.alpha, cfg.gain, cfg.clamp,
                                  cfg.dim, _stream(x))


def _sum_to_bias(t: torch.Tensor, dim: int) -> torch.Tensor:
    dims = [i for i in range(t.ndim) if i != dim]
    return t.sum(dims) if dims else t


class _BiasActFn(torch.autograd.Function):
    """y = clampc(gain * f(x + b)); saves x (and b) and/or y as the derivatives need them."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, b: Optional[torch.Tensor], cfg: _BiasActCfg) -> torch.Tensor:
        y = _plugin_bias_act(x, b, None, None, None, MODE_FORWARD, cfg)
        keep_x = cfg.spec.grad_from == 'x' or cfg.spec.has_2nd  # x is also the edge for f''
        keep_y = cfg.spec.grad_from == 'y' or cfg.clamp >= 0
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
        from_x = cfg.spec.grad_from == 'x'
        dx = _plugin_bias_act(dy, b if from_x else None, x if from_x else None, y, None, MODE_GRAD, cfg)
        ctx.save_for_backward(dy if cfg.spec.has_2nd else None, x, b, y)
        ctx.cfg = cfg
        return dx

    @staticmethod
    def backward(ctx: Any, d_dx: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        dy, x, b, y = ctx.saved_tensors
        cfg = ctx.cfg
        from_x = cfg.spec.grad_from == 'x'
        bk, xk = (b, x) if from_x else (None, None)
        d_dy = d_x = d_b = None
        with torch.no_grad():
            if ctx.needs_input_grad[0]:
                d_dy = _plugin_bias_act(d_dx, bk, xk, y, None, MODE_GRAD, cfg)
            if cfg.spec.has_2nd and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
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


def resolve_act_args(act: str, alpha: Optional[float], gain: Optional[float],
                     clamp: Optional[float]) -> tuple[float, float, Optional[float]]:
    """Fill §2's defaults: alpha and gain from the activation table; clamp stays None if unset."""
    spec = ACTIVATIONS[act]
    return (float(spec.def_alpha if alpha is None else alpha), float(spec.def_gain if gain is None else gain),
            None if clamp is None else float(clamp))


def bias_act_unsupported(x: torch.Tensor, b: Optional[torch.Tensor], dim: int, act: str,
                         clamp: Optional[float]) -> str:
    """Why the kernel cannot take this call ('' if it can); such calls go to the reference."""
    if x.device.type != _KERNEL_DEVICE_TYPE:
        return f'tensor on {x.device.type}'
    if x.dtype not in KERNEL_DTYPES:
        return f'dtype {x.dtype}'
    if x.ndim == 0 or x.numel() == 0 or not 0 <= dim < x.ndim:
        return 'empty tensor or dim out of range'
    if act not in ACTIVATIONS:
        return f'unknown activation {act!r}'
    if clamp is not None and not clamp >= 0:
        return 'negative clamp'
    if b is not None and (b.ndim != 1 or b.shape[0] != x.shape[dim] or b.dtype != x.dtype or b.device != x.device):
        return 'bias shape/dtype/device'
    return ''


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1, act: str = 'linear',
             alpha: Optional[float] = None, gain: Optional[float] = None,
             clamp: Optional[float] = None) -> torch.Tensor:
    """bias_act on the CUDA kernel (stylegan2-arithmetic.md §2), reference for uncovered calls.

    Computes in fp32 and rounds once; the clamp gradient passes where |y| < clamp strictly;
    softplus is linear above 80 (§2's CUDA column). ``alpha``/``gain`` None take §2's defaults.
    """
    dim = dim + x.ndim if dim < 0 else dim
    if act in ACTIVATIONS:
        alpha, gain, clamp = resolve_act_args(act, alpha, gain, clamp)
    if bias_act_unsupported(x, b, dim, act, clamp):
        stats['bias_act.fallback'] += 1
        return reference_bias_act(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    stats['bias_act.kernel'] += 1
    cfg = _BiasActCfg(dim=dim, act=act, alpha=float(alpha), gain=float(gain),
                      clamp=-1.0 if clamp is None else float(clamp))
    return _BiasActFn.apply(x, b, cfg)


# ---------------------------------------------------------------------------------------------
# Self-check: run an op and the reference on the same small random inputs (forward, first and
# optionally second-order gradients) and compare with a normalised max error:
#     err = max|got - want| / max(max|want|, 1e-3)   (non-finite entries must coincide)
# Tolerances: fp32 1e-4 (fp32 accumulation in another order), fp16 5e-3 and bf16 4e-2 (the
# reference rounds after every step, the kernel once: a few ulps, i.e. ~7e-4 in fp16 and ~1e-2
# in bf16 relative to the largest value; a wrong kernel is off by far more). With a clamp, elements whose reference
# output lies within a few ulps of ±clamp are left out of gradient comparisons: there the two
# paths legitimately disagree (§2: strict vs inclusive rule after rounding).

TOLERANCES = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 4e-2}

OpFn = Callable[..., torch.Tensor]


@dataclasses.dataclass(frozen=True)
class CheckCase:
    """One self-check configuration: inputs (made on the CPU), how to call the op, what to differentiate."""
    name: str
    make: Callable[[torch.Generator, torch.dtype], dict[str, torch.Tensor]]
    call: Callable[[OpFn, dict[str, torch.Tensor]], torch.Tensor]
    grad_inputs: tuple[str, ...] = ('x',)
    order: int = 1              # 0: forward only; 1: + gradients; 2: + gradients of gradients
    clamp: Optional[float] = None
    bias_dim: int = 1           # the axis a bias gradient keeps (for the clamp tie mask)
    dtypes: tuple[torch.dtype, ...] = KERNEL_DTYPES


def _randn(gen: torch.Generator, shape: Sequence[int], dtype: torch.dtype, scale: float = 1.0,
           channels_last: bool = False) -> torch.Tensor:
    t = (torch.randn(list(shape), generator=gen) * scale).to(dtype)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _fir4() -> torch.Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    return torch.outer(k, k) / 64


def _upfirdn_case(name: str, x_shape: Sequence[int], f_kind: Any, up: tuple[int, int], down: tuple[int, int],
                  padding: tuple[int, int, int, int], flip: bool = False, gain: float = 1.0, order: int = 1,
                  channels_last: bool = False, dtypes: tuple[torch.dtype, ...] = KERNEL_DTYPES) -> CheckCase:
    def make(gen: torch.Generator, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        x = _randn(gen, x_shape, dtype, channels_last=channels_last)
        f = _fir4() if f_kind == 'fir4' else torch.rand(list(f_kind), generator=gen) + 0.1
        return {'x': x, 'f': f / f.sum() if f_kind != 'fir4' else f}

    def call(fn: OpFn, t: dict[str, torch.Tensor]) -> torch.Tensor:
        return fn(t['x'], t['f'], up=up, down=down, padding=padding, flip_filter=flip, gain=gain)

    return CheckCase(name=f'upfirdn2d {name}', make=make, call=call, order=order, dtypes=dtypes)


def upfirdn2d_check_cases() -> list[CheckCase]:
    """The StyleGAN2 shapes (4x4 filter with up 2 / down 2 / neither), a separable filter with
    mixed factors and negative padding, a non-square 2-D filter, and many small channels_last planes."""
    low = (torch.float32, torch.float16, torch.bfloat16)
    return [
        _upfirdn_case('filter2d 4x4', [2, 3, 8, 8], 'fir4', (1, 1), (1, 1), (2, 1, 2, 1), order=2, dtypes=low),
        _upfirdn_case('upsample2d 4x4 up=2', [2, 3, 5, 6], 'fir4', (2, 2), (1, 1), (2, 1, 2, 1), gain=4.0, order=2),
        _upfirdn_case('downsample2d 4x4 down=2', [1, 4, 9, 8], 'fir4', (1, 1), (2, 2), (1, 1, 1, 1),
                      dtypes=(torch.float32, torch.float16)),
        _upfirdn_case('separable 7 taps up=(3,1) down=(1,2)', [2, 2, 7, 9], (7,), (3, 1), (1, 2), (-1, 2, 3, -2),
                      flip=True, gain=1.5, dtypes=low),
        _upfirdn_case('2-D 3x5 up=(1,2) down=(3,1)', [1, 3, 6, 5], (3, 5), (1, 2), (3, 1), (0, 4, -1, 1),
                      flip=True, gain=0.5, dtypes=(torch.float32,)),
        _upfirdn_case('many planes channels_last', [4, 16, 4, 4], 'fir4', (1, 1), (1, 1), (2, 1, 2, 1),
                      channels_last=True, dtypes=(torch.float32, torch.float16)),
    ]


def _bias_act_case(act: str, x_shape: Sequence[int] = (3, 5, 4, 4), dim: int = 1, bias: bool = True,
                   alpha: Optional[float] = None, gain: Optional[float] = None, clamp: Optional[float] = None,
                   scale: float = 2.0, order: int = 2, channels_last: bool = False,
                   dtypes: tuple[torch.dtype, ...] = KERNEL_DTYPES) -> CheckCase:
    alpha_, gain_, clamp_ = resolve_act_args(act, alpha, gain, clamp)

    def make(gen: torch.Generator, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        t = {'x': _randn(gen, x_shape, dtype, scale=scale, channels_last=channels_last)}
        if bias:
            t['b'] = _randn(gen, [x_shape[dim]], dtype, scale=0.5)
        return t

    def call(fn: OpFn, t: dict[str, torch.Tensor]) -> torch.Tensor:
        return fn(t['x'], t.get('b'), dim=dim, act=act, alpha=alpha_, gain=gain_, clamp=clamp_)

    extras = ('' if bias else ' no bias') + (' channels_last' if channels_last else '')
    label = (f'bias_act {act} x{list(x_shape)}*{scale:g}{extras} dim={dim} '
             f'alpha={alpha_:g} gain={gain_:g} clamp={clamp_}')
    return CheckCase(name=label, make=make, call=call, grad_inputs=('x', 'b') if bias else ('x',), order=order,
                     clamp=clamp_, bias_dim=dim, dtypes=dtypes)


def bias_act_check_cases() -> list[CheckCase]:
    """Every activation with a bias and second order (fp32; first order in fp16/bf16), clamps
    (incl. linear and swish), custom alpha/gain, another bias axis, channels_last, no bias,
    and softplus across both linear thresholds (20 in the reference, 80 in the kernel)."""
    cases = [_bias_act_case(act) for act in ACTIVATIONS]
    cases += [
        _bias_act_case('lrelu', clamp=0.75),
        _bias_act_case('tanh', gain=2.0, clamp=0.5),
        _bias_act_case('swish', clamp=1.0),
        _bias_act_case('linear', gain=2.0, clamp=1.5),
        _bias_act_case('elu', x_shape=(6, 4), dim=0, alpha=0.1, gain=1.3),
        _bias_act_case('lrelu', x_shape=(6, 4), dim=0, alpha=0.1, gain=1.3),
        _bias_act_case('selu', x_shape=(2, 6, 3, 3), channels_last=True),
        _bias_act_case('softplus', bias=False),
        _bias_act_case('softplus', scale=40.0, order=1, dtypes=(torch.float32,)),
    ]
    return cases


def _evaluate(case: CheckCase, fn: OpFn, inputs: dict[str, torch.Tensor],
              cot: dict[str, torch.Tensor]) -> dict[str, Optional[torch.Tensor]]:
    """Forward output, gradients (cotangent cot['dy']) and second-order gradients of
    sum_k <grad_k, cot['w_k']> with respect to the inputs and dy."""
    leaves = {k: v.detach().clone().requires_grad_(k in case.grad_inputs) for k, v in inputs.items()}
    y = case.call(fn, leaves)
    out: dict[str, Optional[torch.Tensor]] = {'y': y.detach()}
    if case.order < 1:
        return out
    if 'dy' not in cot:
        return out
    if tuple(cot['dy'].shape) != tuple(y.shape):
        return out
    dy = cot['dy'].detach().clone().requires_grad_(case.order >= 2)
    keys = list(case.grad_inputs)
    grads = torch.autograd.grad(y, [leaves[k] for k in keys], dy, create_graph=case.order >= 2,
                                allow_unused=True)
    for k, g in zip(keys, grads):
        out[f'grad_{k}'] = None if g is None else g.detach()
    if case.order >= 2:
        terms = [(g.float() * cot[f'w_{k}']).sum() for k, g in zip(keys, grads) if g is not None and g.requires_grad]
        targets = [leaves[k] for k in keys] + [dy]
        g2 = torch.autograd.grad(sum(terms), targets, allow_unused=True) if terms else [None] * len(targets)
        for k, g in zip(keys + ['dy'], g2):
            out[f'grad2_{k}'] = None if g is None else g.detach()
    return out


def compare(key: str, got: Optional[torch.Tensor], want: Optional[torch.Tensor], tol: float,
            exclude: Optional[torch.Tensor] = None) -> str:
    """'' if ``got`` matches ``want`` within the normalised tolerance, else a one-line reason.
    None stands for an all-zero gradient; ``exclude`` masks elements out of the comparison."""
    if got is None and want is None:
        return ''
    if got is None or want is None:
        ref = want if got is None else got
        got = torch.zeros_like(ref) if got is None else got
        want = torch.zeros_like(ref) if want is None else want
    if tuple(got.shape) != tuple(want.shape):
        return f'{key}: shape {tuple(got.shape)} != reference {tuple(want.shape)}'
    g, w = got.detach().double().cpu(), want.detach().double().cpu()
    if exclude is not None:
        g, w = g.masked_fill(exclude, 0.0), w.masked_fill(exclude, 0.0)
    fin_g, fin_w = torch.isfinite(g), torch.isfinite(w)
    if not torch.equal(fin_g, fin_w) or not torch.equal(g[~fin_g].nan_to_num(0.0), w[~fin_w].nan_to_num(0.0)):
        return f'{key}: non-finite entries differ from the reference'
    if g.numel() == 0 or fin_w.sum() == 0:
        return ''
    err = (g[fin_g] - w[fin_w]).abs().max().item() / max(w[fin_w].abs().max().item(), 1e-3)
    if not err <= tol:
        return f'{key}: normalised max error {err:.2e} > {tol:.0e}'
    return ''


def _tie_mask(case: CheckCase, y_ref: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
    if case.clamp is None:
        return None
    eps = torch.finfo(dtype).eps
    y = y_ref.detach().double().cpu().abs()
    return y >= case.clamp * (1 - 4 * eps)


def _mask_for(key: str, tie: Optional[torch.Tensor], bias_dim: int) -> Optional[torch.Tensor]:
    if tie is None or key == 'y':
        return None
    if key.endswith('_b'):
        dims = [i for i in range(tie.ndim) if i != bias_dim]
        return tie.any(dim=dims) if dims else tie
    return tie


def check_case(case: CheckCase, dtype: torch.dtype, device: torch.device, candidate: OpFn, reference: OpFn,
               seed: int = 0) -> str:
    """Compare ``candidate`` with ``reference`` on one case and dtype; '' or the reason."""
    gen = torch.Generator().manual_seed(seed)
    inputs = {k: v.to(device) for k, v in case.make(gen, dtype).items()}
    with torch.inference_mode(False), torch.enable_grad():
        want = _evaluate(case, reference, inputs, {})
        y_ref = want['y']
        assert y_ref is not None
        cot = {'dy': _randn(gen, y_ref.shape, dtype).to(device)}
        for k in case.grad_inputs:
            cot[f'w_{k}'] = torch.randn(list(inputs[k].shape), generator=gen).to(device)
        want = _evaluate(case, reference, inputs, cot)
        got = _evaluate(case, candidate, inputs, cot)
    tie = _tie_mask(case, y_ref, dtype)
    tol = TOLERANCES[dtype]
    for key, w in want.items():
        reason = compare(key, got.get(key), w, tol, _mask_for(key, tie, case.bias_dim))
        if reason:
            return f'{case.name} [{str(dtype).replace("torch.", "")}]: {reason}'
    return ''


def default_check_dtypes(device: torch.device) -> tuple[torch.dtype, ...]:
    """fp32 and fp16 everywhere; bf16 where the device supports it."""
    dtypes = [torch.float32, torch.float16]
    if device.type == 'cuda' and torch.cuda.is_bf16_supported():
        dtypes.append(torch.bfloat16)
    return tuple(dtypes)


def run_self_check(op: str, device: torch.device, candidate: Optional[OpFn] = None,
                   reference: Optional[OpFn] = None, dtypes: Optional[Sequence[torch.dtype]] = None) -> str:
    """Self-check ``op`` (default: this module's kernel path vs the reference path) on ``device``.

    Returns '' when every case matches within tolerance, else a one-line reason (the first
    mismatch, or the exception the candidate raised). Uses its own random generator, so the
    global RNG state (and thus training reproducibility) is untouched.
    """
    _validate_op(op)
    candidate = candidate or (upfirdn2d if op == 'upfirdn2d' else bias_act)
    reference = reference or (reference_upfirdn2d if op == 'upfirdn2d' else reference_bias_act)
    dtypes = tuple(dtypes) if dtypes is not None else default_check_dtypes(device)
    cases = upfirdn2d_check_cases() if op == 'upfirdn2d' else bias_act_check_cases()
    fallbacks_before = stats[f'{op}.fallback']
    try:
        # The first op call may come from inside no_grad / inference_mode / autocast (generate.py,
        # metrics); the self-check needs plain autograd.
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device_type=device.type, enabled=False):
            for seed, case in enumerate(cases):
                for dtype in dtypes:
                    if dtype not in case.dtypes:
                        continue
                    order_case = case if dtype == torch.float32 else dataclasses.replace(case, order=min(case.order, 1))
                    reason = check_case(order_case, dtype, device, candidate, reference, seed=seed)
                    if reason:
                        return f'self-check mismatch: {reason}'
    except Exception as err:  # noqa: BLE001 - a crashing kernel is a failed self-check
        first_line = (str(err).strip().splitlines() or [''])[0]
        return f'self-check raised {type(err).__name__}: {first_line}'
    if candidate in (upfirdn2d, bias_act) and stats[f'{op}.fallback'] != fallbacks_before:
        return 'self-check did not reach the kernel (a case fell back to the reference)'
    return ''
