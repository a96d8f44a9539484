"""Miscellaneous PyTorch helpers used across degan (upstream-compatible names)."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from dnnlib import util

# ---------------------------------------------------------------------------------------------
# Cached constant tensors (avoid re-creating small tensors in hot paths).

_constant_cache: dict[tuple, torch.Tensor] = {}


def constant(value: Any, shape: Optional[Sequence[int]] = None, dtype: Optional[torch.dtype] = None,
             device: Optional[torch.device] = None, memory_format: Optional[torch.memory_format] = None) -> torch.Tensor:
    """A cached constant tensor; do not modify the result in place."""
    value = np.asarray(value)
    if shape is not None:
        shape = tuple(shape)
    if dtype is None:
        dtype = torch.get_default_dtype()
    if device is None:
        device = torch.device('cpu')
    if memory_format is None:
        memory_format = torch.contiguous_format
    key = (value.shape, value.dtype, value.tobytes(), shape, dtype, str(device), memory_format)
    tensor = _constant_cache.get(key)
    if tensor is None:
        tensor = torch.as_tensor(value.copy(), dtype=dtype, device=device)
        if shape is not None:
            tensor, _ = torch.broadcast_tensors(tensor, torch.empty(shape))
        tensor = tensor.contiguous(memory_format=memory_format)
        _constant_cache[key] = tensor
    return tensor


def assert_shape(tensor: torch.Tensor, ref_shape: Sequence[Optional[int]]) -> None:
    """Assert that ``tensor.shape`` matches ``ref_shape``, where None matches any size."""
    if tensor.ndim != len(ref_shape):
        raise AssertionError(f'wrong number of dimensions: got {tensor.ndim}, expected {len(ref_shape)}')
    for idx, (size, ref_size) in enumerate(zip(tensor.shape, ref_shape)):
        if ref_size is not None and size != ref_size:
            raise AssertionError(f'wrong size for dimension {idx}: got {size}, expected {ref_size}')


# ---------------------------------------------------------------------------------------------
# Data sampling.

class InfiniteSampler(torch.utils.data.Sampler):
    """Endless, resumable sample order shared by all ranks.

    Global sample number ``i`` (counting every image fetched by any rank) maps to epoch
    ``i // N`` and position ``i % N`` of that epoch's permutation, drawn from a generator seeded
    with ``(seed, epoch)``. Rank ``r`` of ``W`` takes the numbers ``i ≡ r (mod W)``. Starting
    at ``start_index`` (= images already consumed, e.g. ``batch_idx · batch`` on resume)
    continues the exact sequence an uninterrupted run would have seen.
    """

    def __init__(self, dataset: Any, rank: int = 0, num_replicas: int = 1, shuffle: bool = True,
                 seed: int = 0, start_index: int = 0):
        assert len(dataset) > 0
        assert num_replicas > 0 and 0 <= rank < num_replicas
        super().__init__()
        self.size = len(dataset)
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.start_index = start_index

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self) -> Iterator[int]:
        # First global number >= start_index that belongs to this rank.
        i = self.start_index + (self.rank - self.start_index) % self.num_replicas
        epoch, order = -1, None
        while True:
            if i // self.size != epoch:
                epoch = i // self.size
                order = self._order(epoch)
            yield int(order[i % self.size])
            i += self.num_replicas


# ---------------------------------------------------------------------------------------------
# Parameters, buffers and gradients.

def params_and_buffers(module: torch.nn.Module) -> list[torch.Tensor]:
    return list(module.parameters()) + list(module.buffers())


def named_params_and_buffers(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(module.named_parameters()) + list(module.named_buffers())


@torch.no_grad()
def copy_params_and_buffers(src_module: torch.nn.Module, dst_module: torch.nn.Module, require_all: bool = False) -> None:
    """Copy every parameter/buffer of ``src`` into the tensor of the same name in ``dst``."""
    src_tensors = dict(named_params_and_buffers(src_module))
    for name, tensor in named_params_and_buffers(dst_module):
        if name in src_tensors:
            tensor.copy_(src_tensors[name])
        elif require_all:
            raise KeyError(f'{name} is missing from the source module')


@torch.no_grad()
def nan_to_num_grads(params: Sequence[torch.nn.Parameter]) -> None:
    """Clean gradients in place as upstream does before each step: NaN → 0, ±inf → ±1e5."""
    for param in params:
        if param.grad is not None:
            torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)


@contextlib.contextmanager
def ddp_sync(module: torch.nn.Module, sync: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce (``no_sync``) unless ``sync`` — for gradient accumulation."""
    if sync or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        yield
    else:
        with module.no_sync():
            yield


def check_ddp_consistency(module: torch.nn.Module, ignore_regex: Optional[str] = None) -> None:
    """Assert that every parameter and buffer is bitwise identical on all ranks."""
    import re

    from . import distributed
    if distributed.get_world_size() == 1:
        return
    for name, tensor in named_params_and_buffers(module):
        if ignore_regex is not None and re.fullmatch(ignore_regex, name):
            continue
        other = tensor.detach().clone()
        distributed.broadcast_(other, src=0, what=f'consistency check of {name}')
        if not torch.equal(tensor.detach().nan_to_num(), other.nan_to_num()):
            raise AssertionError(f'{name} differs between ranks')


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def print_module_summary(module: torch.nn.Module, inputs: Sequence[Any], max_nesting: int = 3,
                         skip_redundant: bool = True) -> Any:
    """Print a table of submodules with parameter counts and output shapes; returns the outputs."""
    assert isinstance(inputs, (tuple, list))
    entries: list[tuple[str, int, int, list[str], list[str]]] = []
    nesting = [0]
    names = {m: n for n, m in module.named_modules()}

    def pre_hook(_mod: torch.nn.Module, _inputs: Any) -> None:
        nesting[0] += 1

    def post_hook(mod: torch.nn.Module, _inputs: Any, outputs: Any) -> None:
        nesting[0] -= 1
        if nesting[0] <= max_nesting:
            outs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
            outs = [t for t in outs if isinstance(t, torch.Tensor)]
            n_params = sum(p.numel() for p in mod.parameters(recurse=False))
            n_buffers = sum(b.numel() for b in mod.buffers(recurse=False))
            entries.append((names.get(mod, '?') or '<top-level>', n_params, n_buffers,
                            [str(list(t.shape)) for t in outs], [str(t.dtype).split('.')[-1] for t in outs]))

    hooks = [m.register_forward_pre_hook(pre_hook) for m in module.modules()]
    hooks += [m.register_forward_hook(post_hook) for m in module.modules()]
    outputs = module(*inputs)
    for hook in hooks:
        hook.remove()

    rows = [('Parameters', 'Buffers', 'Output shape', 'Datatype', 'Name')]
    for name, n_params, n_buffers, shapes, dtypes in entries:
        if skip_redundant and name != '<top-level>' and n_params == 0 and n_buffers == 0 and not shapes:
            continue
        rows.append((str(n_params) if n_params else '-', str(n_buffers) if n_buffers else '-',
                     (shapes + ['-'])[0], (dtypes + ['-'])[0], name))
    total_params = sum(p.numel() for p in module.parameters())
    total_buffers = sum(b.numel() for b in module.buffers())
    rows.append(('---',) * 5)
    rows.append((str(total_params), str(total_buffers), '-', '-', 'Total'))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    print()
    for row in rows:
        print('  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print()
    return outputs


# ---------------------------------------------------------------------------------------------
# Random number generator state (exact resume).

def get_rng_state() -> dict[str, Any]:
    """Global RNG states as plain tensors/lists (storable with ``torch.load(weights_only=True)``)."""
    import random
    np_state = np.random.get_state()
    state: dict[str, Any] = dict(
        torch_cpu=torch.get_rng_state(),
        numpy=dict(name=np_state[0], keys=torch.from_numpy(np_state[1].astype(np.int64)),
                   pos=int(np_state[2]), has_gauss=int(np_state[3]), cached_gaussian=float(np_state[4])),
        python=_python_state_to_list(random.getstate()),
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['torch_cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``get_rng_state`` returned."""
    import random
    torch.set_rng_state(state['torch_cpu'])
    npst = state['numpy']
    np.random.set_state((npst['name'], npst['keys'].numpy().astype(np.uint32), npst['pos'],
                         npst['has_gauss'], npst['cached_gaussian']))
    random.setstate(_python_state_from_list(state['python']))
    if 'torch_cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['torch_cuda'])


def _python_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_list(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


# ---------------------------------------------------------------------------------------------
# Finite checks.

def check_finite(name: str, value: torch.Tensor, hint: str = '') -> None:
    """Raise ``util.UserError`` naming ``name`` if ``value`` holds NaN or inf (a loss gone bad)."""
    if not bool(torch.isfinite(value).all()):
        bad = 'NaN' if bool(torch.isnan(value).any()) else 'inf'
        raise NonFiniteError(f'{name} became {bad}.{(" " + hint) if hint else ""}')


class NonFiniteError(util.UserError):
    """A loss or statistic became NaN/inf: training stops instead of continuing on garbage."""



# ---------------------------------------------------------------------------------------------
# CPU threads.

# The OpenMP wait policy is set before torch is imported: dnnlib.util.let_idle_openmp_threads_sleep.


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; all cores where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_threads_per_process(num_processes: int) -> int:
    """The usable cores split evenly between ``num_processes`` processes of one job (at least 1)."""
    return max(1, usable_cores() // max(num_processes, 1))


def configure_cpu_threads(num_processes: int) -> Optional[int]:
    """torch's intra-op threads for one of ``num_processes`` CPU processes sharing this machine.

    A user's ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` always wins (nothing is changed; None is
    returned); otherwise N processes get cores/N threads each instead of N × all cores."""
    if os.environ.get('OMP_NUM_THREADS') or os.environ.get('MKL_NUM_THREADS'):
        return None
    threads = cpu_threads_per_process(num_processes)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
