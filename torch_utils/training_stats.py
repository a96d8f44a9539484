"""Scalar statistics reported from anywhere during training and collected across processes.

Same API as StyleGAN2-ADA's module of that name: ``report(name, value)`` from inside the loss,
``Collector(regex)`` in the training loop, whose ``update()`` gathers everything reported since
its previous update — summed over all processes — and exposes ``num / mean / std`` per name.

Each process keeps cumulative moments ``[count, Σx, Σx²]`` per name in float64 on the device
where the values were produced, so ``report`` never forces a GPU→CPU sync. A Collector keeps
its own copy of the cumulative moments at its last update; the difference is what was reported
since. All ranks must report the same set of names (the training loop does).
"""

from __future__ import annotations

import re
from typing import Optional, Union

import numpy as np
import torch

from . import distributed

_moments: dict[str, dict[torch.device, torch.Tensor]] = {}
_sync_device: Optional[torch.device] = None


def init_multiprocessing(sync_device: Optional[torch.device]) -> None:
    """Set the device used for cross-rank reductions (the rank's CUDA device, or CPU for gloo)."""
    global _sync_device
    _sync_device = sync_device


def _as_tensor(value: Union[torch.Tensor, float, int, np.ndarray, list]) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().flatten().to(torch.float64)
    return torch.as_tensor(np.asarray(value, dtype=np.float64)).flatten()


def report(name: str, value: Union[torch.Tensor, float, int, np.ndarray, list]) -> Union[torch.Tensor, float]:
    """Record every element of ``value`` under ``name``; returns ``value`` unchanged.

    Non-finite elements are ignored (they would poison the mean); NaN detection is done on the
    losses themselves by the training loop.
    """
    x = _as_tensor(value)
    x = x[torch.isfinite(x)]
    if x.numel() == 0 and name in _moments:
        return value
    moments = torch.stack([torch.ones_like(x).sum(), x.sum(), x.square().sum()])
    per_device = _moments.setdefault(name, {})
    if moments.device in per_device:
        per_device[moments.device].add_(moments)
    else:
        per_device[moments.device] = moments
    return value


def report0(name: str, value: Union[torch.Tensor, float, int, np.ndarray, list]) -> Union[torch.Tensor, float]:
    """Like ``report`` but only rank 0's values count (other ranks report an empty sample)."""
    report(name, value if distributed.get_rank() == 0 else [])
    return value


def _cumulative(name: str, device: torch.device) -> torch.Tensor:
    total = torch.zeros(3, dtype=torch.float64, device=device)
    for moments in _moments.get(name, {}).values():
        total += moments.to(device)
    return total


class Collector:
    """Collects statistics whose names match ``regex`` between successive ``update()`` calls."""

    def __init__(self, regex: str = '.*', keep_previous: bool = True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._cumulative: dict[str, torch.Tensor] = {}
        self._moments: dict[str, torch.Tensor] = {}

    def names(self) -> list[str]:
        """All reported names that match the regex, sorted (identical order on every rank)."""
        return sorted(name for name in _moments if self._regex.fullmatch(name))

    def update(self) -> None:
        """Take a new window: everything reported since the previous update, summed over ranks."""
        if not self._keep_previous:
            self._moments.clear()
        names = self.names()
        if not names:
            return
        device = _sync_device or torch.device('cpu')
        stacked = torch.stack([_cumulative(name, device) for name in names])
        distributed.all_reduce_sum_(stacked, what='training statistics')
        stacked = stacked.cpu()
        for name, cumulative in zip(names, stacked):
            previous = self._cumulative.get(name, torch.zeros_like(cumulative))
            delta = cumulative - previous
            self._cumulative[name] = cumulative
            if delta[0] > 0 or not self._keep_previous:
                self._moments[name] = delta

    def num(self, name: str) -> int:
        m = self._moments.get(name)
        return 0 if m is None else int(m[0])

    def mean(self, name: str) -> float:
        m = self._moments.get(name)
        if m is None or m[0] == 0:
            return float('nan')
        return float(m[1] / m[0])

    def std(self, name: str) -> float:
        m = self._moments.get(name)
        if m is None or m[0] == 0 or not np.isfinite(float(m[1])):
            return float('nan')
        if m[0] == 1:
            return 0.0
        mean = float(m[1] / m[0])
        raw_var = float(m[2] / m[0])
        return float(np.sqrt(max(raw_var - mean * mean, 0.0)))

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{name: {num, mean, std}}`` for every name in the current window (stats.jsonl rows)."""
        return {name: dict(num=self.num(name), mean=self.mean(name), std=self.std(name))
                for name in sorted(self._moments)}

    def __getitem__(self, name: str) -> float:
        return self.mean(name)


def reset() -> None:
    """Forget everything reported (tests and fresh runs in one process)."""
    _moments.clear()
