"""``--precision=fp32|fp16|bf16|auto``: the compute dtype of the reduced-precision blocks.

The one place that turns a ``--precision`` name into a dtype (:func:`resolve`, with a short
reason for the log: :func:`resolve_with_reason`) and holds the process-wide setting that the
networks read (:func:`reduced_dtype`; ``training.networks.block_dtype`` is its reader for the
StyleGAN2 networks). Which blocks are "reduced-precision" is the backbone's business
(``backbones.base.Backbone.precision_use``): for StyleGAN2 the top ``num_fp16_res`` resolutions
of G and D, the blocks upstream runs in float16, with conv_clamp (docs/stylegan2-arithmetic.md §9).
Only activations are cast: parameters, optimiser states and snapshots stay float32, and so do
the statistics that must be exact (the D epilogue and its logits, losses, R1 and path-length
penalties, CHAIN's 0MR means, ψ and running variances, ATop-k scores, the overfitting
statistics, metric features).

Rules of :func:`resolve`:

==========  ===========================================================================
``fp32``    float32 (the blocks keep conv_clamp; ``--fp32=1`` removes blocks and clamp)
``fp16``    float16, upstream's choice; allowed on the CPU, where it is ~75x slower
``bf16``    bfloat16; on a GPU without native bfloat16 (CUDA compute capability < 8.0) a
            one-line error
``auto``    CUDA: float16 (upstream); CPU: bfloat16 if the CPU has AMX tiles, else float32;
            any other device: float32
==========  ===========================================================================

Why ``auto`` keeps float32 on a CPU without AMX, measured on this project's 2-core machine
(AVX512-BF16, no AMX; torch 2.13): a 2048x2048 matmul runs at 117–137 GFLOP/s in float32 but
74–80 GFLOP/s in bfloat16 on one thread (oneDNN's brg_matmul:avx512_core_bf16), and one G+D
forward+backward of the full-width StyleGAN2 at 32 px, batch 16, takes 7.9 s in float32 against
11.5 s with its top 4 resolutions in bfloat16 (64 px: 19.7 vs 22.8 s). bfloat16 only pays on
CPUs whose matrix units take it natively (AMX); the probe is :func:`probe` (replaceable in tests).

When no setting was applied (``reduced_dtype() is None``: tests, ``generate.py``,
``calc_metrics.py``) the networks keep today's behaviour: float16 on CUDA, float32 on the CPU
(``networks.fp16_on_cpu`` allows float16 there).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Optional

import torch

from dnnlib.util import GlobalSetting, UserError

NAMES = ('fp32', 'fp16', 'bf16', 'auto')
_DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
DTYPE_NAMES = {torch.float32: 'float32', torch.float16: 'float16', torch.bfloat16: 'bfloat16'}
_BY_NAME = {name: dtype for dtype, name in DTYPE_NAMES.items()}


# ---------------------------------------------------------------------------------------------
# What the hardware computes natively.

@dataclasses.dataclass(frozen=True)
class Capabilities:
    """The facts :func:`resolve` depends on."""
    cpu_amx: bool       # the CPU has AMX tiles (oneDNN's native bfloat16 matrix units)
    cuda_bf16: bool     # the CUDA device computes bfloat16 natively (compute capability >= 8.0, or ROCm)


def cpu_has_amx() -> bool:
    """torch's AMX probe, False where this torch has none."""
    probe_fn = getattr(torch.cpu, '_is_amx_tile_supported', None)
    if probe_fn is None:
        return False
    try:
        return bool(probe_fn())
    except (RuntimeError, AttributeError):
        return False


def cuda_has_native_bf16(device: torch.device) -> bool:
    """True on a GPU whose arithmetic takes bfloat16 natively (not emulated)."""
    if device.type != 'cuda' or not torch.cuda.is_available():
        return False
    if torch.version.hip:
        return True
    return torch.cuda.get_device_properties(device).major >= 8


def probe(device: torch.device) -> Capabilities:
    """The capabilities of ``device`` (tests replace this function or pass ``caps``)."""
    device = torch.device(device)
    return Capabilities(cpu_amx=cpu_has_amx() if device.type == 'cpu' else False,
                        cuda_bf16=cuda_has_native_bf16(device))


# ---------------------------------------------------------------------------------------------
# --precision → dtype.

def resolve_with_reason(name: str, device: torch.device | str, caps: Optional[Capabilities] = None
                        ) -> tuple[torch.dtype, str]:
    """(compute dtype of the reduced-precision blocks, a short reason for the log) of ``--precision=name``
    on ``device`` (rules in the module docstring). ``caps``: the hardware facts (default: :func:`probe`)."""
    if name not in NAMES:
        raise UserError(f'--precision={name}: must be one of {", ".join(NAMES)}')
    device = torch.device(device)
    kind = device.type
    caps = probe(device) if caps is None else caps
    if name == 'fp32':
        return torch.float32, '--precision=fp32'
    if name == 'fp16':
        if kind == 'cpu':
            return torch.float16, '--precision=fp16; float16 on the CPU is ~75x slower than float32'
        return torch.float16, '--precision=fp16'
    if name == 'bf16':
        if kind == 'cuda' and not caps.cuda_bf16:
            raise UserError('--precision=bf16: this GPU does not compute bfloat16 natively (CUDA compute '
                            'capability 8.0 or newer does); use --precision=fp16 or --precision=auto')
        if kind == 'cpu' and not caps.cpu_amx:
            return torch.bfloat16, '--precision=bf16; this CPU has no AMX, so bfloat16 runs slower than float32'
        return torch.bfloat16, '--precision=bf16'
    if kind == 'cuda':
        return torch.float16, 'auto: CUDA, float16 as upstream'
    if kind == 'cpu':
        if caps.cpu_amx:
            return torch.bfloat16, 'auto: CPU with AMX'
        return torch.float32, 'auto: CPU without AMX, where bfloat16 is slower than float32'
    return torch.float32, f'auto: {kind} device'


def resolve(name: str, device: torch.device | str, caps: Optional[Capabilities] = None) -> torch.dtype:
    """The compute dtype of the reduced-precision blocks for ``--precision=name`` on ``device``."""
    return resolve_with_reason(name, device, caps)[0]


def dtype_from_name(name: str) -> torch.dtype:
    """'float32' / 'float16' / 'bfloat16' → the dtype."""
    return _BY_NAME[name]


# ---------------------------------------------------------------------------------------------
# The process-wide setting (read by training.networks.block_dtype).

#: The compute dtype of reduced-precision blocks in this process; None: not set (today's default).
_REDUCED_DTYPE = GlobalSetting(None)


def reduced_dtype() -> Optional[torch.dtype]:
    """The dtype reduced-precision blocks compute in (None: not set; the networks' own default)."""
    return _REDUCED_DTYPE.value


def set_reduced_dtype(dtype: Optional[torch.dtype]) -> Optional[torch.dtype]:
    """Set the process-wide reduced dtype (None: the networks' default); returns the old value."""
    if dtype is not None and dtype not in DTYPE_NAMES:
        raise ValueError(f'reduced-precision blocks compute in float32, float16 or bfloat16, not {dtype}')
    return _REDUCED_DTYPE.set(dtype)


@contextlib.contextmanager
def reduced_dtype_scope(dtype: Optional[torch.dtype]) -> Iterator[None]:
    """``with reduced_dtype_scope(torch.bfloat16): ...``: the setting for a block only."""
    old = set_reduced_dtype(dtype)
    try:
        yield
    finally:
        set_reduced_dtype(old)


# ---------------------------------------------------------------------------------------------
# A run's precision: the record in training_options.json and the lines of its log.

def plan(name: str, device: torch.device | str, blocks: Optional[str], float32_why: str = '',
         caps: Optional[Capabilities] = None) -> dict[str, Any]:
    """The run's precision record (plain data, ``training_options.json`` key ``precision``).

    ``blocks``: what the backbone computes in the resolved dtype (None: nothing, everything is
    float32, and ``float32_why`` says why). Keys: ``flag`` (the --precision name), ``dtype``
    (the resolved dtype's name), ``reason``, ``device``, ``blocks``, ``float32_why``."""
    dtype, reason = resolve_with_reason(name, device, caps)
    return dict(flag=name, dtype=DTYPE_NAMES[dtype], reason=reason, device=torch.device(device).type,
                blocks=blocks, float32_why=float32_why if blocks is None else None)


def compute_dtype_name(record: dict[str, Any]) -> str:
    """What the run's reduced-precision blocks compute in ('float32' when it has none)."""
    return record['dtype'] if record.get('blocks') else 'float32'


def start_line(record: dict[str, Any]) -> str:
    """The one line printed at start, e.g. ``precision: bfloat16 in the top 3 resolutions of G and
    D, 8-32 px, conv_clamp 256 (auto: CPU with AMX)``."""
    if record.get('blocks'):
        return f'precision: {record["dtype"]} in {record["blocks"]} ({record["reason"]})'
    line = f'precision: float32 everywhere: {record.get("float32_why") or "no reduced-precision blocks"}'
    if record['dtype'] != 'float32':
        line += f'; --precision={record["flag"]} ({record["dtype"]}) does not apply to it'
    return line


def resume_note(saved: Optional[str], record: dict[str, Any]) -> Optional[str]:
    """The note for resuming a run whose blocks computed in ``saved`` (None: unknown) under ``record``."""
    if saved is None or saved == compute_dtype_name(record):
        return None
    return f'resuming a {saved} run with --precision={record["flag"]} ({compute_dtype_name(record)}): ' \
           'continues, not bitwise'


def log_lines(record: Optional[dict[str, Any]]) -> list[str]:
    """What a run prints about its precision at start (nothing without a record)."""
    if record is None:
        return []
    lines = [start_line(record)]
    note = resume_note(record.get('resumed_from'), record)
    if note is not None:
        lines.append(note)
    return lines


@contextlib.contextmanager
def applied(record: Optional[dict[str, Any]]) -> Iterator[None]:
    """Apply a run's precision record to this process for the block (each training process
    enters it once; None leaves the setting as it is)."""
    if record is None:
        yield
        return
    with reduced_dtype_scope(dtype_from_name(compute_dtype_name(record))):
        yield
