"""The overfitting tracker: ADA's heuristic r_t = E[sign(D(x_real))] and its probability p.

One tracker implements both ADA's augmentation probability (docs/methods.md §3.1) and ATop-k's
overfitting probability (ATop-k Eq. 10 and the text below it); the arithmetic is
docs/methods.md §3.1 / §9.2:

* every real-image D forward adds ``sign(logits)`` (all elements, ``torch.sign`` so that
  sign(0) = 0, ambiguity A11) to a window;
* after ``batch_idx`` has been incremented, when ``batch_idx % interval == 0``: the window is
  summed over all ranks, ``r = Σ sign / count`` and
  ``p ← max(p + sign(r − target) · B · interval / (kimg · 1000), 0)`` (lower clamp only, A3);
  the window is reset.

p is stored like upstream's ``augment_pipe.p``: a 0-dim float32 tensor, updated as
``(p + adjust).max(0)`` with ``adjust`` a float64 Python number, so a tracker *bound* to an
augment pipe's ``p`` buffer and a free-standing tracker fed the same statistics hold
bit-identical values (property P4). The module depends on torch only, so any GAN loop can use it.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch

from torch_utils import distributed

__all__ = ['OverfitTracker', 'RealSignCollector', 'sign_moments']


def sign_moments(real_logits: torch.Tensor) -> torch.Tensor:
    """float64 [count, Σ sign(l)] over every element of ``real_logits`` (NaNs ignored; sign(0) = 0).

    The statistic of ATop-k Eq. 10 / ADA (docs/methods.md §3.1) / CHAIN's p controller is Σ sign / count.
    """
    logits = real_logits.detach().to(torch.float64)
    valid = ~torch.isnan(logits)  # checked on the logits: torch.sign(NaN) is 0 on some devices
    signs = torch.sign(logits)
    return torch.stack([valid.sum(dtype=torch.float64), torch.where(valid, signs, 0).sum()])


class RealSignCollector:
    """The one collector of E[sign(D(x_real))] of a training loop, one iteration at a time.

    Every real-image D forward is added (``accumulate``); ``take()`` returns the iteration's
    moments — over all real passes (``all``: main and R1-only passes, what ADA's and ATop-k's
    trackers read) and over the main (D loss) passes only (``main``: what CHAIN's p reads) — and
    starts the next iteration. The moments stay on the logits' device (no synchronisation).
    """

    def __init__(self) -> None:
        self._all: Optional[torch.Tensor] = None
        self._main: Optional[torch.Tensor] = None

    def accumulate(self, real_logits: torch.Tensor, main: bool = True) -> None:
        moments = sign_moments(real_logits)
        self._all = moments if self._all is None else self._all + moments
        if main:
            self._main = moments if self._main is None else self._main + moments

    def peek(self) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(all, main) moments of the iteration so far, without starting the next one."""
        return self._all, self._main

    def take(self) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(all, main) moments of the iteration so far (None where nothing was seen); resets."""
        taken = (self._all, self._main)
        self._all = self._main = None
        return taken


class OverfitTracker:
    """ADA-style overfitting heuristic and probability p (ADA, docs/methods.md §3.1; ATop-k Eq. 10;
    docs/methods.md §9.2).

    Args:
        batch_size: total batch B over all ranks (the step is B·interval/(kimg·1000)).
        target: the target t for r_t (0.6).
        interval: update p every ``interval`` minibatches (4).
        kimg: p can move by 1 in ``kimg`` thousand real images (500).
        p: initial p (0).
        max_p: optional upper clamp (None = lower clamp only, as ADA and ATop-k; 1.0 gives the
            ``--atopk-clamp-p`` variant of ambiguity A3).
        device: device of an empty or restored window (afterwards the window follows the device
            of the logits given to ``accumulate``); give it (e.g. the rank's CUDA device with
            NCCL) when a rank might reach an update before seeing any logits.

    The window sums live on the logits' device as float64 tensors, so ``accumulate`` never waits
    for the GPU; ``update`` synchronises once per ``interval`` iterations (as ADA does).
    """

    def __init__(self, batch_size: int, target: float = 0.6, interval: int = 4, kimg: float = 500,
                 p: float = 0.0, max_p: Optional[float] = None, device: Optional[torch.device] = None):
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f'OverfitTracker: batch_size must be a positive integer, got {batch_size!r}')
        if int(interval) != interval or interval < 1:
            raise ValueError(f'OverfitTracker: interval must be a positive integer, got {interval!r}')
        if not (kimg > 0 and math.isfinite(kimg)):
            raise ValueError(f'OverfitTracker: kimg must be positive, got {kimg!r}')
        if not (p >= 0 and math.isfinite(p)):
            raise ValueError(f'OverfitTracker: initial p must be finite and >= 0, got {p!r}')
        if max_p is not None and not max_p > 0:
            raise ValueError(f'OverfitTracker: max_p must be positive or None, got {max_p!r}')
        self.batch_size = int(batch_size)
        self.target = float(target)
        self.interval = int(interval)
        self.kimg = float(kimg)
        self.max_p = None if max_p is None else float(max_p)
        self._p = torch.full([], float(p), dtype=torch.float32)
        self._device = None if device is None else torch.device(device)
        self._window: Optional[torch.Tensor] = None  # float64 [count, Σ sign] on self._device
        self.last_r: Optional[float] = None
        self.num_updates = 0

    # ------------------------------------------------------------------ p

    @property
    def step_size(self) -> float:
        """|Δp| per update: B · interval / (kimg · 1000) (ADA's ``adjust`` magnitude)."""
        return self.batch_size * self.interval / (self.kimg * 1000)

    @property
    def p(self) -> float:
        """Current p as a Python float (reads the tensor; may synchronise with its device)."""
        return float(self._p)

    @p.setter
    def p(self, value: float) -> None:
        self._p.fill_(float(value))

    @property
    def p_tensor(self) -> torch.Tensor:
        """The 0-dim float32 tensor holding p (an augment pipe's buffer once ``bind`` was called)."""
        return self._p

    def bind(self, buffer: torch.Tensor) -> 'OverfitTracker':
        """Make ``buffer`` (e.g. ``augment_pipe.p``) *the* storage of p from now on.

        The buffer keeps its current value (it is the truth, e.g. ``--augpipe`` set it to
        ``augment_p``); the tracker's previous p is discarded. Its dtype is p's arithmetic from
        then on (float32 for ADA's pipe as upstream; float64 for Diffusion-ProjectedGAN's p,
        a Python float in its reference). Every later update writes into the
        buffer in place, so the pipe sees the new p without any copying by the caller.
        """
        if not isinstance(buffer, torch.Tensor) or buffer.ndim != 0 or not buffer.is_floating_point():
            raise ValueError('OverfitTracker.bind: expected a 0-dim floating-point tensor (like augment_pipe.p)')
        self._p = buffer
        return self

    # ------------------------------------------------------------------ statistics

    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Add sign(real_logits) (every element; NaNs ignored) to the window (ATop-k Eq. 10).

        Call it for every real-image D forward (main and R1 passes, as ADA's collector does).
        """
        self.add_moments(sign_moments(real_logits))

    def add_moments(self, moments: torch.Tensor) -> None:
        """Add [count, Σ sign] (``sign_moments``, e.g. one iteration's from a ``RealSignCollector``)."""
        self._device = moments.device  # the window follows the logits (no host round trip)
        if self._window is None:
            self._window = moments
        else:
            self._window = self._window.to(moments.device) + moments

    def _reduced_window(self) -> tuple[float, float]:
        """(count, Σ sign) of the window, summed over ranks when torch.distributed is initialised."""
        device = self._device or torch.device('cpu')
        window = self._window if self._window is not None else torch.zeros(2, dtype=torch.float64, device=device)
        if distributed.get_world_size() > 1:
            window = distributed.all_reduce_sum_(window.clone(), what='the overfitting statistic E[sign(D_real)]')
        count, total = window.cpu().tolist()
        return count, total

    def update(self, batch_idx: int) -> bool:
        """Adjust p if ``batch_idx % interval == 0`` (call after incrementing batch_idx; docs/methods.md §9.2).

        Collective when torch.distributed is initialised: every rank must call it with the same
        ``batch_idx``. Returns True when p was adjusted. A window that is empty on every rank
        leaves p unchanged (upstream would turn p into NaN there).
        """
        if batch_idx % self.interval != 0:
            return False
        count, total = self._reduced_window()
        self._window = None if self._window is None else torch.zeros_like(self._window)
        if count <= 0:
            return False
        r = total / count
        self.last_r = r
        self.num_updates += 1
        self.apply_adjustment(r)
        return True

    def apply_adjustment(self, r: float) -> None:
        """p ← max(p + sign(r − t)·B·interval/(kimg·1000), 0), upstream's float32 arithmetic."""
        adjust = float(np.sign(r - self.target)) * (self.batch_size * self.interval) / (self.kimg * 1000)
        new_p = (self._p + adjust).max(torch.zeros([], dtype=self._p.dtype, device=self._p.device))
        if self.max_p is not None:
            new_p = new_p.min(torch.full([], self.max_p, dtype=self._p.dtype, device=self._p.device))
        self._p.copy_(new_p)

    # ------------------------------------------------------------------ snapshots

    def state_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able, safe for ``torch.load(weights_only=True)``): p, window, last_r."""
        count, total = (0.0, 0.0) if self._window is None else tuple(self._window.cpu().tolist())
        return dict(p=self.p, window_count=float(count), window_sum=float(total),
                    last_r=self.last_r, num_updates=int(self.num_updates))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output (p is written into the bound buffer, if any)."""
        missing = {'p', 'window_count', 'window_sum'} - set(state)
        if missing:
            raise ValueError(f'OverfitTracker.load_state_dict: missing keys {sorted(missing)}')
        self.p = float(state['p'])
        count, total = float(state['window_count']), float(state['window_sum'])
        if count > 0 or self._window is not None:
            device = self._device or torch.device('cpu')
            self._window = torch.tensor([count, total], dtype=torch.float64, device=device)
        last_r = state.get('last_r')
        self.last_r = None if last_r is None else float(last_r)
        self.num_updates = int(state.get('num_updates', 0))

    def __repr__(self) -> str:
        return (f'OverfitTracker(batch_size={self.batch_size}, target={self.target}, interval={self.interval}, '
                f'kimg={self.kimg}, p={self.p:.6f})')
