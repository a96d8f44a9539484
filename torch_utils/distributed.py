"""Thin helpers around ``torch.distributed`` (NCCL on GPUs, gloo on CPU).

Nothing here invents a protocol: processes are started with ``torch.multiprocessing.spawn`` (or
``torchrun``) and talk only through ``torch.distributed`` collectives. Every helper is a no-op
when no process group is initialised, so single-process code needs no special cases.

Every collective of degan goes through a helper here and carries a name (``what``: "gradients
of D", "ATop-k scores", …). When the backend gives up on one — a peer closed its connection
(it died) or :func:`collective_timeout` passed (it hangs) — the helper raises
:class:`RankFailure`, whose one-line message names this rank, the collective and the rank(s)
at fault. To tell which rank that is, every rank keeps a heartbeat in the rendezvous store (a
background thread; ``torch.distributed``'s own key-value store, no protocol of ours) with the
number of the collective it is in: a rank whose heartbeat stopped died or was stopped; a rank
whose heartbeat goes on but which is still at an earlier collective hangs.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import socket
import threading
import time
from typing import Any, Callable, Optional, TypeVar

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


class RankFailure(UserError):
    """A collective failed because another rank died, hangs or cannot be reached; the process
    group cannot be used any more (every rank stops; the run continues with ``--resume``)."""


#: Seconds between two heartbeats of a rank; a rank whose heartbeat did not move for
#: ``STALE_BEATS`` of them is taken for dead (or stopped).
HEARTBEAT_S = 2.0
STALE_BEATS = 2.5


@dataclasses.dataclass(frozen=True)
class Beat:
    """One rank's heartbeat record: how many beats it sent, and the collective it was in."""
    count: int
    seq: int
    what: str

    def encode(self) -> str:
        return f'{self.count} {self.seq} {self.what}'

    @staticmethod
    def decode(text: str) -> 'Beat':
        count, seq, what = text.split(' ', 2)
        return Beat(int(count), int(seq), what)


class Heartbeat:
    """This rank's heartbeat in the rendezvous store (a daemon thread) and its collective counter."""

    def __init__(self, store: Any, rank: int, world_size: int, interval: float = HEARTBEAT_S):
        self.store = dist.PrefixStore('degan_heartbeat', store)
        self.rank, self.world_size, self.interval = rank, world_size, interval
        self.seq, self.what, self.failed = 0, 'joining the process group', False
        self._count = 0
        self._stop = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._run, name='degan-heartbeat', daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        self._count += 1
        self.store.set(f'rank{self.rank}', Beat(self._count, self.seq, self.what).encode())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
            except Exception:  # the store is gone (its host died): the next collective will say so
                return

    def stop(self) -> None:
        self._stop.set()

    def read(self) -> dict[int, Optional[Beat]]:
        """Every other rank's last record (None: it never wrote one); raises if the store is gone."""
        beats: dict[int, Optional[Beat]] = {}
        for rank in range(self.world_size):
            if rank != self.rank:
                key = f'rank{rank}'
                beats[rank] = Beat.decode(self.store.get(key).decode()) if self.store.check([key]) else None
        return beats


_HEARTBEAT: Optional[Heartbeat] = None


def _store_host() -> str:
    return 'torchrun\'s agent on the first node' if 'TORCHELASTIC_RUN_ID' in os.environ else 'rank 0'


def diagnose(heartbeat: Heartbeat) -> str:
    """Which ranks are at fault: read every rank's heartbeat twice, ``STALE_BEATS`` beats apart."""
    try:
        first = heartbeat.read()
        time.sleep(heartbeat.interval * STALE_BEATS)
        second = heartbeat.read()
    except Exception:
        return (f'the rendezvous store does not answer ({_store_host()} hosts it), '
                f'so {_store_host()} probably died')
    faults = []
    for rank, beat in second.items():
        if beat is None:
            faults.append(f'rank {rank} never sent a heartbeat')
        elif first[rank] is not None and beat.count == first[rank].count:
            faults.append(f'rank {rank} stopped answering: no heartbeat for {heartbeat.interval * STALE_BEATS:.0f} s '
                          f'(it died, was killed or is stopped), last seen in #{beat.seq} {beat.what}')
        elif beat.seq < heartbeat.seq:
            faults.append(f'rank {rank} is alive but has not reached this collective: it hangs in #{beat.seq} '
                          f'{beat.what}')
    return '; '.join(faults) if faults else 'every other rank still answers; see the backend\'s message'


def _is_backend_failure(error: BaseException) -> bool:
    """A collective's failure that means a peer is gone or late (not a programming error)."""
    if isinstance(error, getattr(dist, 'DistError', ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        word in text for word in ('gloo', 'nccl', 'timed out', 'timeout', 'connection', 'socket', 'peer'))


def backend_reason(error: BaseException) -> str:
    """The backend's own words, short: its first sentence without the source-file prefix."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r'^\[[^\]]*\]\s*', '', text)
    return text.split('. ')[0].rstrip('.')[:160]


T = TypeVar('T')


def collective(what: str, op: str, run: Callable[[], T]) -> T:
    """Run one collective ``op`` named ``what``; a peer's death or a timeout becomes :class:`RankFailure`."""
    heartbeat = _HEARTBEAT
    if heartbeat is None:
        return run()
    if heartbeat.failed:
        raise RankFailure(f'rank {heartbeat.rank}: the process group failed earlier; {what} ({op}) cannot run')
    heartbeat.seq += 1
    heartbeat.what = f'{what} ({op})'
    started = time.monotonic()
    try:
        return run()
    except Exception as error:
        if not _is_backend_failure(error):
            raise
        heartbeat.failed = True
        waited = time.monotonic() - started
        reason = backend_reason(error)
        raise RankFailure(f'rank {heartbeat.rank}: collective #{heartbeat.seq} "{what}" ({op}) failed after '
                          f'{waited:.0f} s: {diagnose(heartbeat)}. Every rank stops; continue from the last '
                          f'snapshot with --resume (backend: {reason})') from None


def group_failed() -> bool:
    """Whether a collective of this process failed (the group must not be used, not even to leave)."""
    return _HEARTBEAT is not None and _HEARTBEAT.failed


def _world() -> int:
    return get_world_size() if is_initialized() else 1


def broadcast_object(obj: Any, src: int = 0, what: str = 'an object') -> Any:
    """Rank ``src``'s ``obj`` on every rank (identity without a process group)."""
    if _world() <= 1:
        return obj
    box = [obj]
    collective(what, 'broadcast_object_list', lambda: dist.broadcast_object_list(box, src=src))
    return box[0]


def all_gather_object(obj: Any, what: str = 'objects') -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group)."""
    if _world() <= 1:
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    collective(what, 'all_gather_object', lambda: dist.all_gather_object(gathered, obj))
    return gathered


def init_process_group(rank: int, world_size: int, device: torch.device, init_method: Optional[str] = None) -> None:
    """Join the process group of ``world_size`` processes (on this machine, or over nodes with
    ``env://``) and start this rank's heartbeat; a collective that waits longer than
    :func:`collective_timeout` fails.

    ``init_method`` defaults to ``env://`` when ``MASTER_ADDR``/``MASTER_PORT`` are set (torchrun),
    else it must be given (train.py passes a ``file://`` path in the run directory, as upstream).
    """
    global _HEARTBEAT
    if world_size <= 1 or is_initialized():
        return
    if init_method is None:
        if 'MASTER_ADDR' not in os.environ:
            raise RuntimeError('init_process_group: give init_method or set MASTER_ADDR/MASTER_PORT')
        init_method = 'env://'
    kwargs = {}
    if device.type == 'cuda':
        kwargs['device_id'] = device
    store, rank, world_size = next(dist.rendezvous(init_method, rank, world_size, timeout=collective_timeout()))
    dist.init_process_group(backend=default_backend(device), store=store, rank=rank, world_size=world_size,
                            timeout=collective_timeout(), **kwargs)
    _HEARTBEAT = Heartbeat(store, rank, world_size)


def destroy_process_group() -> None:
    """Leave the process group: together with the others (a barrier) unless a collective failed, when
    nobody waits for a rank that is gone."""
    global _HEARTBEAT
    if not is_initialized():
        return
    if not group_failed():
        barrier('leaving the process group')
    if _HEARTBEAT is not None:
        _HEARTBEAT.stop()
    _HEARTBEAT = None
    dist.destroy_process_group()


def all_reduce_sum_(tensor: torch.Tensor, what: str = 'a sum over ranks') -> torch.Tensor:
    """In-place sum over ranks (identity without a process group)."""
    if _world() > 1:
        collective(what, 'all_reduce', lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM))
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0, what: str = 'a tensor') -> torch.Tensor:
    """In-place broadcast from ``src`` (identity without a process group)."""
    if _world() > 1:
        collective(what, 'broadcast', lambda: dist.broadcast(tensor, src=src))
    return tensor


def all_gather_list(tensor: torch.Tensor, what: str = 'tensors') -> list[torch.Tensor]:
    """Every rank's equally shaped ``tensor``, in rank order (``[tensor]`` without a process group)."""
    if _world() <= 1:
        return [tensor]
    parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
    collective(what, 'all_gather', lambda: dist.all_gather(parts, tensor.contiguous()))
    return parts


def all_gather_cat(tensor: torch.Tensor, what: str = 'tensors') -> torch.Tensor:
    """Concatenate equally shaped tensors from all ranks along dim 0, in rank order."""
    if _world() <= 1:
        return tensor
    return torch.cat(all_gather_list(tensor, what), dim=0)


def broadcast_module_(module: torch.nn.Module, src: int = 0, what: str = 'a module') -> None:
    """Make every parameter and buffer equal to rank ``src``'s copy."""
    if _world() <= 1:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        broadcast_(tensor.data, src=src, what=what)


def barrier(what: str = 'a barrier') -> None:
    if _world() > 1:
        collective(what, 'barrier', dist.barrier)
