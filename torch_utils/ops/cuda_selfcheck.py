"""Whether the CUDA kernels may be used: the self-check against the reference ops, and its verdict.

Issue "Custom CUDA ops"; numerics in docs/stylegan2-arithmetic.md §9, behaviour in docs/stylegan2-ada.md
§7. This is the CUDA side of the contract with ``torch_utils.ops._impl``:

- ``is_ready(op)`` is True only when the plugin built (``cuda_plugin``) **and** the op's
  self-check against the reference path passed. Both happen lazily on the first call on a
  CUDA machine and are cached; on a machine without CUDA it is False at once and nothing is
  built. A build failure or a self-check mismatch warns once (``RuntimeWarning`` naming the
  reason) and keeps it False, so training falls back to the reference and never silently uses
  a wrong kernel.
- ``why_not_ready(op)`` says why in one line.

``run_self_check(op, device, candidate, reference)`` compares two implementations of an op
given as functions; by default the kernel function of ``cuda_kernels`` against the reference
path the public op module registered there, so this module never imports the public ops.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from typing import Any, Callable, Optional, Sequence

import torch

from torch_utils.ops import cuda_kernels, cuda_plugin
from torch_utils.ops.activations import activation_funcs, resolve_act_args
from torch_utils.ops.cuda_kernels import OPS, OpFn

# ---------------------------------------------------------------------------------------------
# Readiness state.

_lock = threading.RLock()
_status: dict[str, Optional[str]] = {op: None for op in OPS}  # None: unchecked, '': ready, else the reason


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
        cuda_plugin.get_plugin()
    except Exception as err:  # noqa: BLE001 - any build/import problem means: use the reference
        reason = f'the CUDA plugin could not be built: {err}'
    else:
        reason = run_self_check(op, device)
    if reason:
        warnings.warn(f'degan: custom CUDA kernel for {op} disabled ({reason}); '
                      f'falling back to the slow reference implementation.', RuntimeWarning, stacklevel=3)
    return reason


def reset() -> None:
    """Forget the plugin, every op's readiness and the kernel/fallback counts (tests; a retry)."""
    with _lock:
        cuda_plugin.forget_plugin()
        for op in OPS:
            _status[op] = None
        cuda_kernels.stats.clear()


# ---------------------------------------------------------------------------------------------
# Self-check: run an op and the reference on the same small random inputs (forward, first and
# optionally second-order gradients) and compare with a normalised max error:
#     err = max|got - want| / max(max|want|, 1e-3)   (non-finite entries must coincide)
# Tolerances: fp32 1e-4 (fp32 accumulation in another order), fp16 5e-3 and bf16 4e-2 (the
# reference rounds after every step, the kernel once: a few ulps, i.e. ~7e-4 in fp16 and ~1e-2
# in bf16 relative to the largest value; a wrong kernel is off by far more). With a clamp, elements whose reference
# output lies within a few ulps of ±clamp are left out of gradient comparisons: there the two
# paths legitimately disagree (docs/stylegan2-arithmetic.md §2: strict vs inclusive rule after rounding).

TOLERANCES = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 4e-2}


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
    dtypes: tuple[torch.dtype, ...] = cuda_kernels.KERNEL_DTYPES


def _randn(gen: torch.Generator, shape: Sequence[int], dtype: torch.dtype, scale: float = 1.0,
           channels_last: bool = False) -> torch.Tensor:
    t = (torch.randn(list(shape), generator=gen) * scale).to(dtype)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _fir4() -> torch.Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    return torch.outer(k, k) / 64


def _upfirdn_case(name: str, x_shape: Sequence[int], f_kind: Any, up: tuple[int, int], down: tuple[int, int],
                  padding: tuple[int, int, int, int], flip: bool = False, gain: float = 1.0, order: int = 1,
                  channels_last: bool = False,
                  dtypes: tuple[torch.dtype, ...] = cuda_kernels.KERNEL_DTYPES) -> CheckCase:
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
    return [
        _upfirdn_case('filter2d 4x4', [2, 3, 8, 8], 'fir4', (1, 1), (1, 1), (2, 1, 2, 1), order=2),
        _upfirdn_case('upsample2d 4x4 up=2', [2, 3, 5, 6], 'fir4', (2, 2), (1, 1), (2, 1, 2, 1), gain=4.0, order=2),
        _upfirdn_case('downsample2d 4x4 down=2', [1, 4, 9, 8], 'fir4', (1, 1), (2, 2), (1, 1, 1, 1),
                      dtypes=(torch.float32, torch.float16)),
        _upfirdn_case('separable 7 taps up=(3,1) down=(1,2)', [2, 2, 7, 9], (7,), (3, 1), (1, 2), (-1, 2, 3, -2),
                      flip=True, gain=1.5),
        _upfirdn_case('2-D 3x5 up=(1,2) down=(3,1)', [1, 3, 6, 5], (3, 5), (1, 2), (3, 1), (0, 4, -1, 1),
                      flip=True, gain=0.5, dtypes=(torch.float32,)),
        _upfirdn_case('many planes channels_last', [4, 16, 4, 4], 'fir4', (1, 1), (1, 1), (2, 1, 2, 1),
                      channels_last=True, dtypes=(torch.float32, torch.float16)),
    ]


def _bias_act_case(act: str, x_shape: Sequence[int] = (3, 5, 4, 4), dim: int = 1, bias: bool = True,
                   alpha: Optional[float] = None, gain: Optional[float] = None, clamp: Optional[float] = None,
                   scale: float = 2.0, order: int = 2, channels_last: bool = False,
                   dtypes: tuple[torch.dtype, ...] = cuda_kernels.KERNEL_DTYPES) -> CheckCase:
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
    cases = [_bias_act_case(act) for act in activation_funcs]
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
    """Self-check ``candidate`` against ``reference`` for ``op`` on ``device``.

    Defaults: the kernel function of ``cuda_kernels`` against the reference path the public op
    module registered there (``cuda_kernels.reference``); pass both to compare any two paths.

    Returns '' when every case matches within tolerance, else a one-line reason (the first
    mismatch, or the exception the candidate raised). Uses its own random generator, so the
    global RNG state (and thus training reproducibility) is untouched.
    """
    _validate_op(op)
    kernel = cuda_kernels.upfirdn2d if op == 'upfirdn2d' else cuda_kernels.bias_act
    candidate = candidate or kernel
    reference = reference or cuda_kernels.reference(op)
    dtypes = tuple(dtypes) if dtypes is not None else default_check_dtypes(device)
    cases = upfirdn2d_check_cases() if op == 'upfirdn2d' else bias_act_check_cases()
    fallbacks_before = cuda_kernels.stats[f'{op}.fallback']
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
    if candidate is kernel and cuda_kernels.stats[f'{op}.fallback'] != fallbacks_before:
        return 'self-check did not reach the kernel (a case fell back to the reference)'
    return ''
