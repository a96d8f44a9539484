"""Thin helpers around ``torch.distributed`` (NCCL on GPUs, gloo on CPU).

Nothing here invents a protocol: processes are started with ``torch.multiprocessing.spawn`` (or
``torchrun``) and talk only through ``torch.distributed`` collectives. Every helper is a no-op
when no process group is initialised, so single-process code needs no special cases.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import socket
from typing import Any, Optional

import torch
import torch.distributed as dist

from dnnlib.util import UserError


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def default_backend(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    return 'nccl' if device.type == 'cuda' else 'gloo'


def find_free_port() -> int:
    """A free TCP port on the loopback interface (for single-machine process groups)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class LaunchedRank:
    """Where a process started by a launcher (``torchrun``) stands: its global rank, the world
    size over all nodes, and its rank and process count on this node."""
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


#: The variables ``torchrun`` sets for every process it starts.
LAUNCHER_VARIABLES = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')


def launched_rank() -> Optional[LaunchedRank]:
    """This process's rank when ``torchrun`` (or a launcher setting the same variables) started it;
    None when the script was started directly (train.py then spawns its own processes)."""
    if not all(name in os.environ for name in LAUNCHER_VARIABLES):
        return None
    rank, world_size, local_rank = (int(os.environ[name]) for name in LAUNCHER_VARIABLES)
    return LaunchedRank(rank=rank, world_size=world_size, local_rank=local_rank,
                        local_world_size=int(os.environ.get('LOCAL_WORLD_SIZE', world_size)))


def launched_world_size(gpus_flag: Optional[int], launched: LaunchedRank) -> int:
    """``--gpus`` under torchrun: absent (None: the world size) or equal to the world size."""
    if gpus_flag is not None and gpus_flag != launched.world_size:
        raise UserError(f'--gpus={gpus_flag}, but torchrun started {launched.world_size} processes '
                        f'(WORLD_SIZE={launched.world_size}); leave --gpus out under torchrun')
    return launched.world_size


#: Seconds a collective waits for the other ranks before it fails (a rank that died or hangs);
#: ``DEGAN_DIST_TIMEOUT`` overrides it.
DEFAULT_TIMEOUT_S = 600


def collective_timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get('DEGAN_DIST_TIMEOUT', DEFAULT_TIMEOUT_S)))


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (identity without a process group)."""
    if not (is_initialized() and get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def init_process_group(rank: int, world_size: int, device: torch.device, init_method: Optional[str] = None) -> None:
    """Join the process group of ``world_size`` processes (on this machine, or over nodes with
    ``env://``); a collective that waits longer than :func:`collective_timeout` fails.

    ``init_method`` defaults to ``env://`` when ``MASTER_ADDR``/``MASTER_PORT`` are set (torchrun),
    else it must be given (train.py passes a ``file://`` path in the run directory, as upstream).
    """
    if world_size <= 1 or is_initialized():
        return
    if init_method is None:
        if 'MASTER_ADDR' not in os.environ:
            raise RuntimeError('init_process_group: give init_method or set MASTER_ADDR/MASTER_PORT')
        init_method = 'env://'
    kwargs = {}
    if device.type == 'cuda':
        kwargs['device_id'] = device
    dist.init_process_group(backend=default_backend(device), init_method=init_method,
                            rank=rank, world_size=world_size, timeout=collective_timeout(), **kwargs)


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity without a process group)."""
    if is_initialized() and get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast from ``src`` (identity without a process group)."""
    if is_initialized() and get_world_size() > 1:
        dist.broadcast(tensor, src=src)
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped tensors from all ranks along dim 0, in rank order."""
    if not (is_initialized() and get_world_size() > 1):
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Make every parameter and buffer equal to rank ``src``'s copy."""
    if not (is_initialized() and get_world_size() > 1):
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=src)


def barrier() -> None:
    if is_initialized() and get_world_size() > 1:
        dist.barrier()
