"""EMA rules for G_ema, as objects a backbone picks (``ema_kwargs = {'class_name': ..., ...}``).

Every rule has ``update(G, G_ema, *, cur_nimg, batch_idx, batch_size)`` and is called once per
iteration after the optimiser steps, *before* the counters advance (``cur_nimg`` and
``batch_idx`` still count the iterations done before this one). The rules hold no state of
their own: everything they need is in the counters, so exact resume needs nothing extra.

* :class:`HalfLifeEMA` — StyleGAN2 (docs/stylegan2-ada.md §5, docs/stylegan2-arithmetic.md
  §10): β = 0.5^(B / ema_nimg), ema_nimg = ema_kimg·1000, with the ramp-up
  ema_nimg ← min(ema_nimg, cur_nimg·ema_rampup) when ``ema_rampup`` is set; buffers are copied.
* :class:`ConstantEMA` — a fixed β per step, e.g. FastGAN's β = 0.999 on parameters only.
* :class:`StartIterationEMA` — BigGAN's: a copy (β = 0) until iteration ``start_iter``
  (1-based, ``batch_idx + 1``), then a fixed decay; parameters and buffers alike.

In every rule ``p_ema ← lerp(p, p_ema, β) = p + β·(p_ema − p)``.
"""

from __future__ import annotations

from typing import Optional, Protocol

import torch

import dnnlib


class EMARule(Protocol):
    def update(self, G: torch.nn.Module, G_ema: torch.nn.Module, *, cur_nimg: int, batch_idx: int,
               batch_size: int) -> None: ...


@torch.no_grad()
def lerp_parameters(G: torch.nn.Module, G_ema: torch.nn.Module, beta: float, buffers: str = 'copy') -> None:
    """p_ema ← lerp(p, p_ema, β) for every parameter; buffers: 'copy', 'lerp' or 'keep'."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.lerp(p_ema, beta))
    if buffers == 'keep':
        return
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        if buffers == 'lerp' and b.is_floating_point():
            b_ema.copy_(b.lerp(b_ema, beta))
        else:
            b_ema.copy_(b)


class HalfLifeEMA:
    """StyleGAN2's G_ema: half-life ``ema_kimg`` thousand images, optional ramp-up."""

    def __init__(self, ema_kimg: float = 10, ema_rampup: Optional[float] = 0.05):
        self.ema_kimg = float(ema_kimg)
        self.ema_rampup = None if ema_rampup is None else float(ema_rampup)

    def beta(self, cur_nimg: int, batch_size: int) -> float:
        ema_nimg = self.ema_kimg * 1000
        if self.ema_rampup is not None:
            ema_nimg = min(ema_nimg, cur_nimg * self.ema_rampup)
        return 0.5 ** (batch_size / max(ema_nimg, 1e-8))

    def update(self, G: torch.nn.Module, G_ema: torch.nn.Module, *, cur_nimg: int, batch_idx: int,
               batch_size: int) -> None:
        lerp_parameters(G, G_ema, self.beta(cur_nimg, batch_size), buffers='copy')


class ConstantEMA:
    """A fixed β every step (FastGAN: β = 0.999, parameters only — ``buffers='keep'``)."""

    def __init__(self, beta: float = 0.999, buffers: str = 'keep'):
        if not 0 <= beta < 1 or buffers not in ('copy', 'lerp', 'keep'):
            raise ValueError('ConstantEMA: need 0 <= beta < 1 and buffers in copy/lerp/keep')
        self.beta, self.buffers = float(beta), buffers

    def update(self, G: torch.nn.Module, G_ema: torch.nn.Module, *, cur_nimg: int, batch_idx: int,
               batch_size: int) -> None:
        lerp_parameters(G, G_ema, self.beta, buffers=self.buffers)


class StartIterationEMA:
    """BigGAN's EMA: G_ema = G until iteration ``start_iter`` (1-based), then decay ``decay``."""

    def __init__(self, decay: float = 0.9999, start_iter: int = 1000, buffers: str = 'lerp'):
        if not 0 <= decay < 1 or start_iter < 0 or buffers not in ('copy', 'lerp', 'keep'):
            raise ValueError('StartIterationEMA: need 0 <= decay < 1, start_iter >= 0, buffers in copy/lerp/keep')
        self.decay, self.start_iter, self.buffers = float(decay), int(start_iter), buffers

    def beta(self, batch_idx: int) -> float:
        return self.decay if batch_idx + 1 >= self.start_iter else 0.0

    def update(self, G: torch.nn.Module, G_ema: torch.nn.Module, *, cur_nimg: int, batch_idx: int,
               batch_size: int) -> None:
        lerp_parameters(G, G_ema, self.beta(batch_idx), buffers=self.buffers)


def build_ema(ema_kwargs: dict) -> EMARule:
    """The rule named by ``ema_kwargs['class_name']`` (a class of this module)."""
    return dnnlib.util.construct_class_by_name(**ema_kwargs)
