"""ATop-k: adaptive Top-k generator updates, and its ablations (Fixed / Linear / Worst-k).

Backbone-agnostic: this module needs only torch (and ``patches.overfit``). It implements

* the overfitting probability p of ATop-k Eq. 10 (``patches.overfit.OverfitTracker``: ADA's
  arithmetic, target 0.6, every 4 minibatches, 500 kimg speed, lower clamp only);
* the k controller of ATop-k Eq. 11 — a ±1 random walk on {1, …, B} driven by its own seeded
  RNG (identical on every rank) — and the ablation schedules of docs/methods.md §9.4: fixed k,
  Sinha et al.'s "Linear" (geometric per-epoch) decay and Worst-k;
* the selection and reduction of per-sample G losses (ATop-k Eq. 12, docs/methods.md §9.3
  step 1): the mean over the k selected fakes, exact zero gradient for the others, selection
  over the *global* batch across processes (A5), and the plain mean when k = B (bitwise, K2).

Adopting it in another GAN loop (StyleGAN2's non-saturating loss; for hinge / FastGAN /
Projected GAN pass ``-scores`` as the per-sample loss)::

    from patches.atopk import ATopk
    atopk = ATopk(mode='adaptive', batch_size=B, seed=seed)           # B = global batch
    # D step, for every D forward on real images:
    atopk.accumulate(real_logits)
    # G step: scores [N] or [N, L] from the same D forward that gives the gradient
    logits = D(augment(G(z)))
    per_sample = F.softplus(-logits).flatten(1).mean(1)
    atopk.reduce_generator_loss(per_sample, logits.detach()).backward()
    # end of the iteration, after batch_idx += 1 and cur_nimg += B:
    atopk.end_iteration(batch_idx, cur_nimg, dataset_size=len(dataset))
    # checkpoint: ckpt['atopk'] = atopk.state_dict(); resume: atopk.load_state_dict(ckpt['atopk'])

With several processes, gradients must be *averaged* over ranks (DDP or an all-reduce / W):
each rank's loss is (W/k)·Σ over its selected samples, so the average is the global top-k
mean. ``atopk.pop_history()`` returns the per-iteration (batch_idx, k, p) trace (Fig. 14);
``append_trace`` writes it as ``atopk-trace.jsonl``.
"""

from __future__ import annotations

import collections
import json
import math
import os
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch

from torch_utils import distributed

from patches.overfit import OverfitTracker

__all__ = ['MODES', 'ATopk', 'KController', 'per_sample_scores', 'selection_ranks', 'select_topk',
           'global_topk_mask', 'topk_loss', 'add_d_gap', 'append_trace', 'TRACE_FILE']

MODES = ('adaptive', 'fixed', 'linear', 'worst')
TRACE_FILE = 'atopk-trace.jsonl'
_ROUNDING_TOLERANCE = 1e-9  # so that e.g. ceil(0.7 * 10) is 7, not 8, despite float noise
_SEED_SALT = 0x41546F706B  # 'ATopk': keeps the k RNG stream apart from the run's torch seed


def _noop_report(_name: str, value: Any) -> Any:
    return value


# ---------------------------------------------------------------------------------------------
# Selection and reduction (ATop-k Eq. 12; docs/methods.md §9.3 step 1, A4, A5, A7).


def per_sample_scores(scores: torch.Tensor) -> torch.Tensor:
    """Detached float32 score per sample: [N] as is, [N, ...] → mean over the rest (A7)."""
    scores = scores.detach()
    if scores.ndim == 0:
        raise ValueError('ATop-k: scores must have a batch dimension, got a scalar')
    if scores.ndim > 1:
        scores = scores.flatten(1).to(torch.float32).mean(1)
    return scores.to(torch.float32)


def selection_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Position of each sample in the order (score descending, index ascending), as int64 [N].

    The deterministic tie-break of A5: a stable sort keeps equal scores in index order.
    """
    order = torch.sort(per_sample_scores(scores), descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel(), device=order.device)
    return ranks


def _check_k(k: int, n: int) -> int:
    if int(k) != k or not 1 <= k <= n:
        raise ValueError(f'ATop-k: k must be an integer in [1, {n}], got {k!r}')
    return int(k)


def select_topk(scores: torch.Tensor, k: int, largest: bool = True) -> torch.Tensor:
    """Boolean mask [N] of the k largest scores (``largest=False``: the k smallest, Worst-k).

    Ties: the order is (score desc, index asc); top-k takes its first k entries, worst-k its
    last k, so ``select_topk(s, k, False) == ~select_topk(s, N - k, True)`` even with ties (W1).
    """
    ranks = selection_ranks(scores)
    n = ranks.numel()
    k = _check_k(k, n)
    return ranks < k if largest else ranks >= n - k


def global_topk_mask(local_scores: torch.Tensor, k: int, largest: bool = True,
                     check_sizes: bool = True) -> torch.Tensor:
    """This rank's slice of the top-k mask over the global batch (A5).

    All-gathers the detached per-sample scores of every rank (equal local batch sizes
    required), selects over the concatenation — global index = rank·b + i, so ties are broken
    identically on every rank — and returns the mask of the local samples. Collective: every
    rank must call it. Without a process group it is ``select_topk``.
    """
    scores = per_sample_scores(local_scores).contiguous()
    world = distributed.get_world_size()
    if world == 1:
        return select_topk(scores, k, largest)
    if check_sizes:
        size = torch.tensor([scores.numel()], dtype=torch.int64, device=scores.device)
        sizes_list = [int(s) for s in distributed.all_gather_list(size, what='ATop-k batch sizes')]
        if len(set(sizes_list)) != 1:
            raise ValueError(f'ATop-k global selection needs equal per-rank batches, got {sizes_list}')
    mask = select_topk(distributed.all_gather_cat(scores, what='ATop-k scores of the fakes'), k, largest)
    b = scores.numel()
    rank = distributed.get_rank()
    return mask[rank * b:(rank + 1) * b]


def _reduce_selected(per_sample_loss: torch.Tensor, mask: torch.Tensor, k: int, world: int) -> torch.Tensor:
    """(W/k)·Σ_{i ∈ S ∩ local} loss_i; ``torch.where`` gives the others exactly zero gradient."""
    selected = torch.where(mask, per_sample_loss, torch.zeros_like(per_sample_loss))
    total = selected.sum()
    if world != 1:
        total = total * world
    return total / k


def topk_loss(per_sample_loss: torch.Tensor, scores: torch.Tensor, k: int, largest: bool = True,
              global_batch: Optional[bool] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Reduced G loss and the local selection mask (None when bypassed).

    ``per_sample_loss`` [N] (e.g. softplus(−l) or −l), ``scores`` [N] or [N, L] (detached inside).
    With ``global_batch`` (default: when torch.distributed is initialised with W > 1) k counts
    over the global batch W·N and the result is (W/k)·Σ_{local selected}; otherwise the mean
    over the k selected. When k equals the (global) batch every sample is selected whatever the
    direction, and the result is exactly ``per_sample_loss.mean()`` (bypass, K2 / F1 / W1).
    """
    if per_sample_loss.ndim != 1:
        raise ValueError(f'ATop-k: per_sample_loss must be [N], got shape {list(per_sample_loss.shape)}')
    if scores.shape[0] != per_sample_loss.shape[0]:
        raise ValueError(f'ATop-k: {scores.shape[0]} scores for {per_sample_loss.shape[0]} per-sample losses')
    world = distributed.get_world_size() if global_batch is None or global_batch else 1
    n_global = per_sample_loss.shape[0] * world
    k = _check_k(k, n_global)
    if k == n_global:
        return per_sample_loss.mean(), None
    mask = global_topk_mask(scores, k, largest, check_sizes=False) if world > 1 else select_topk(scores, k, largest)
    return _reduce_selected(per_sample_loss, mask.to(per_sample_loss.device), k, world), mask


# ---------------------------------------------------------------------------------------------
# The k controller (ATop-k Eq. 11; docs/methods.md §9.3 step 4, §9.4, A1, A3, A12).


def _round(x: float, how: str) -> int:
    if how == 'ceil':
        return math.ceil(x - _ROUNDING_TOLERANCE * max(1.0, abs(x)))
    return math.floor(x + _ROUNDING_TOLERANCE * max(1.0, abs(x)))


def _generator_seed(seed: int) -> int:
    if int(seed) != seed or seed < 0:
        raise ValueError(f'ATop-k: seed must be a non-negative integer, got {seed!r}')
    words = np.random.SeedSequence([int(seed), _SEED_SALT]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class KController:
    """k_t for one of the modes 'adaptive' | 'fixed' | 'linear' | 'worst' (docs/methods.md §9.3–9.4).

    * adaptive (ATop-k Eq. 11): k₀ = B; every ``k_interval`` iterations draw u ~ U[0, 1) from the
      controller's own CPU generator and set k ← clip(k − 1, 1, B) if u < min(p, 1) else
      clip(k + 1, 1, B) (A1, A3). One draw per update, also at the boundaries, so the trajectory
      is a function of the seed and the p sequence only — identical on every rank.
    * fixed / worst: k ≡ K (1 ≤ K ≤ B); worst-k selects the smallest scores.
    * linear (Sinha et al., A12): k = max(R(γ^e·B), R(ν·B), 1), e = ⌊cur_nimg / N⌋ with N the
      training-set length; R = ceil (default) or floor.

    ``step`` records (batch_idx − 1, k, p) of the iteration that just finished in a bounded
    ``history`` (Fig. 14), emptied by ``pop_history``.
    """

    def __init__(self, mode: str = 'adaptive', batch_size: int = 4, k: Optional[int] = None, k_interval: int = 1,
                 gamma: float = 0.99, nu: float = 0.75, round: str = 'ceil', seed: int = 0,
                 max_history: int = 100_000):
        if mode not in MODES:
            raise ValueError(f'ATop-k: unknown mode {mode!r}; expected one of {", ".join(MODES)}')
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f'ATop-k: batch_size must be a positive integer, got {batch_size!r}')
        if int(k_interval) != k_interval or k_interval < 1:
            raise ValueError(f'ATop-k: k_interval must be a positive integer, got {k_interval!r}')
        if round not in ('ceil', 'floor'):
            raise ValueError(f"ATop-k: round must be 'ceil' or 'floor', got {round!r}")
        if not 0 < gamma <= 1 or not 0 < nu <= 1:
            raise ValueError(f'ATop-k: gamma and nu must be in (0, 1], got gamma={gamma!r}, nu={nu!r}')
        self.mode = mode
        self.batch_size = int(batch_size)
        self.k_interval = int(k_interval)
        self.gamma = float(gamma)
        self.nu = float(nu)
        self.round = round
        if mode in ('fixed', 'worst'):
            if k is None:
                raise ValueError(f'ATop-k: mode {mode!r} needs k (1 <= k <= batch size {batch_size})')
            if int(k) != k or not 1 <= k <= batch_size:
                raise ValueError(f'ATop-k: k={k!r} must be an integer between 1 and the batch size {batch_size}')
            self._k = int(k)
        else:
            if k is not None:
                raise ValueError(f'ATop-k: k is only given with mode fixed or worst (mode {mode!r} starts at the batch size)')
            self._k = self.batch_size
        self.seed = int(seed)
        self._rng = torch.Generator(device='cpu')
        self._rng.manual_seed(_generator_seed(seed))
        self.num_draws = 0
        self.history: collections.deque = collections.deque(maxlen=int(max_history))

    @property
    def k(self) -> int:
        return self._k

    @property
    def largest(self) -> bool:
        """Select the largest scores (all modes except worst)."""
        return self.mode != 'worst'

    def linear_k(self, cur_nimg: int, dataset_size: int) -> int:
        """Sinha et al.'s schedule: max(R(γ^e·B), R(ν·B), 1), e = ⌊cur_nimg / N⌋ (A12)."""
        if dataset_size is None or dataset_size < 1:
            raise ValueError('ATop-k linear mode needs dataset_size (the training-set length) >= 1')
        epoch = int(cur_nimg) // int(dataset_size)
        decayed = _round(self.gamma ** epoch * self.batch_size, self.round)
        floor = _round(self.nu * self.batch_size, self.round)
        return int(min(self.batch_size, max(decayed, floor, 1)))

    def draw(self) -> float:
        """u ~ U[0, 1) from the controller's own generator (float64)."""
        self.num_draws += 1
        return float(torch.rand([], generator=self._rng, dtype=torch.float64))

    def record(self, iteration: int, p: float) -> None:
        """Append (iteration, current k, p) to the bounded history (oldest entries drop first)."""
        self.history.append((int(iteration), self._k, float(p)))

    def step(self, batch_idx: int, p: float = 0.0, cur_nimg: int = 0, dataset_size: Optional[int] = None,
             record: bool = True) -> int:
        """End of an iteration (batch_idx already incremented): record it, then update k. Returns k.

        The record is (batch_idx − 1, the k that iteration used, ``p``); ``p`` — the newest p,
        after this iteration's tracker update — drives the update (A1).
        """
        if record:
            self.record(int(batch_idx) - 1, p)
        if self.mode == 'adaptive':
            if batch_idx % self.k_interval == 0:
                u = self.draw()
                step = -1 if u < min(float(p), 1.0) else 1
                self._k = min(max(self._k + step, 1), self.batch_size)
        elif self.mode == 'linear':
            self._k = self.linear_k(cur_nimg, dataset_size)
        return self._k

    def pop_history(self) -> list[dict[str, Any]]:
        """The recorded iterations since the last call: [{'batch_idx', 'k', 'p'}, ...]."""
        entries = [dict(batch_idx=b, k=k, p=p) for b, k, p in self.history]
        self.history.clear()
        return entries

    def state_dict(self) -> dict[str, Any]:
        """k, counters and the generator state (a uint8 tensor; safe for weights_only loading)."""
        return dict(mode=self.mode, batch_size=self.batch_size, k=self._k, num_draws=self.num_draws,
                    seed=self.seed, rng_state=self._rng.get_state().clone())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get('mode') != self.mode or int(state.get('batch_size', -1)) != self.batch_size:
            raise ValueError(f"ATop-k: the snapshot's k controller is mode={state.get('mode')!r}, "
                             f"batch={state.get('batch_size')!r}; this run is mode={self.mode!r}, batch={self.batch_size}")
        k = int(state['k'])
        if not 1 <= k <= self.batch_size:
            raise ValueError(f'ATop-k: snapshot k={k} outside [1, {self.batch_size}]')
        if self.mode in ('fixed', 'worst') and k != self._k:
            raise ValueError(f'ATop-k: the snapshot used --topk-k={k}, this run {self._k}')
        self._k = k
        self.num_draws = int(state.get('num_draws', 0))
        rng_state = state['rng_state']
        if not isinstance(rng_state, torch.Tensor):
            rng_state = torch.tensor(list(rng_state), dtype=torch.uint8)
        self._rng.set_state(rng_state.to(torch.uint8).cpu())


# ---------------------------------------------------------------------------------------------
# The bundle the training loop talks to.


class ATopk:
    """Tracker (own or shared) + k controller + reduction; the object a GAN loop holds.

    Args (plain, as ``train.py`` flags map onto them): ``mode`` ∈ adaptive | fixed | linear |
    worst; ``batch_size`` B (global); ``target``, ``interval``, ``kimg`` of the own tracker;
    ``k_interval`` (A1); ``p_source`` 'own' (a dedicated tracker fed through ``accumulate``) or
    'ada' (``shared_tracker``, e.g. the tracker that drives ``augment_pipe.p``, is read directly;
    its owner feeds and updates it — before ``end_iteration``, as docs/methods.md §9.7 orders);
    ``k`` for fixed / worst; ``gamma``, ``nu``, ``round`` for linear; ``seed`` of the k generator;
    ``clamp_p`` stores p in [0, 1] (A3 variant; own tracker only); ``report(name, value)`` receives
    ``ATopk/k``, ``ATopk/p``, ``ATopk/selected_fraction`` once per G step (default: none).
    The tracker runs in every mode, so p is reported for the ablations too.
    """

    def __init__(self, mode: str = 'adaptive', batch_size: int = 4, target: float = 0.6, interval: int = 4,
                 kimg: float = 500, k_interval: int = 1, p_source: str = 'own', k: Optional[int] = None,
                 gamma: float = 0.99, nu: float = 0.75, seed: int = 0, clamp_p: bool = False, round: str = 'ceil',
                 shared_tracker: Optional[OverfitTracker] = None,
                 report: Optional[Callable[[str, Any], Any]] = None):
        if p_source not in ('own', 'ada'):
            raise ValueError(f"ATop-k: p_source must be 'own' or 'ada', got {p_source!r}")
        self.controller = KController(mode=mode, batch_size=batch_size, k=k, k_interval=k_interval,
                                      gamma=gamma, nu=nu, round=round, seed=seed)
        self.p_source = p_source
        if p_source == 'ada':
            if shared_tracker is None:
                raise ValueError("ATop-k: p_source='ada' needs the ADA tracker (shared_tracker=...), i.e. --aug=ada")
            if clamp_p:
                raise ValueError("ATop-k: clamp_p would change ADA's own p; use it with p_source='own'")
            if shared_tracker.batch_size != batch_size:
                raise ValueError(f'ATop-k: the shared tracker uses batch {shared_tracker.batch_size}, ATop-k {batch_size}')
            self.tracker = shared_tracker
        else:
            if shared_tracker is not None:
                raise ValueError("ATop-k: shared_tracker is only used with p_source='ada'")
            self.tracker = OverfitTracker(batch_size=batch_size, target=target, interval=interval, kimg=kimg,
                                          max_p=1.0 if clamp_p else None)
        self.report = report if report is not None else _noop_report

    # ------------------------------------------------------------------ state accessors

    @property
    def mode(self) -> str:
        return self.controller.mode

    @property
    def batch_size(self) -> int:
        return self.controller.batch_size

    @property
    def k(self) -> int:
        return self.controller.k

    @property
    def p(self) -> float:
        return self.tracker.p

    @property
    def owns_tracker(self) -> bool:
        return self.p_source == 'own'

    # ------------------------------------------------------------------ hooks

    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Feed real logits to the own tracker (no-op with p_source='ada': ADA feeds its tracker)."""
        if self.owns_tracker:
            self.tracker.accumulate(real_logits)

    def reduce_generator_loss(self, per_sample_loss: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """ATop-k Eq. 12 over the global batch; reports k, p and the selected fraction.

        Needs the whole global batch in one call per rank (N·W = B, A5).
        """
        world = distributed.get_world_size()
        n = per_sample_loss.shape[0] if per_sample_loss.ndim >= 1 else 0
        if n * world != self.batch_size:
            raise ValueError(f'ATop-k selects over the whole batch of {self.batch_size} in one round, but got {n} '
                             f'samples on each of {world} process(es); make batch = per-GPU batch x GPUs')
        k = self.k
        loss, mask = topk_loss(per_sample_loss, scores, k, largest=self.controller.largest)
        self.report('ATopk/k', k)
        self.report('ATopk/p', self.tracker.p_tensor.detach().clone())  # a copy: p changes later
        fraction = mask.to(torch.float32).mean() if mask is not None else 1.0
        self.report('ATopk/selected_fraction', fraction)
        return loss

    __call__ = reduce_generator_loss

    def end_iteration(self, batch_idx: int, cur_nimg: int, dataset_size: Optional[int] = None) -> int:
        """docs/methods.md §9.7 tail for ATop-k (after ``batch_idx += 1``): own tracker update when due, then k.

        Records the trace entry (iteration batch_idx − 1, k its G step used, p after this
        iteration's tracker update — the p that drives the k update), whichever tracker is used.
        Collective when torch.distributed is initialised (the tracker all-reduces). Returns k.
        """
        if self.owns_tracker:
            self.tracker.update(batch_idx)
        return self.controller.step(batch_idx, p=self.p, cur_nimg=cur_nimg, dataset_size=dataset_size)

    def pop_history(self) -> list[dict[str, Any]]:
        """Per-iteration trace since the last call: [{'batch_idx', 'k', 'p'}] (Fig. 14)."""
        return self.controller.pop_history()

    # ------------------------------------------------------------------ snapshots

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the identical trajectory (A13, K8); plain data + uint8 tensor.

        The tracker's state is included only when it is ATop-k's own (ADA saves a shared one).
        """
        return dict(version=1, mode=self.mode, batch_size=self.batch_size, p_source=self.p_source,
                    controller=self.controller.state_dict(),
                    tracker=self.tracker.state_dict() if self.owns_tracker else None)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get('p_source') != self.p_source:
            raise ValueError(f"ATop-k: the snapshot used --atopk-p={state.get('p_source')}, this run {self.p_source}")
        self.controller.load_state_dict(state['controller'])
        if self.owns_tracker and state.get('tracker') is not None:
            self.tracker.load_state_dict(state['tracker'])

    def __repr__(self) -> str:
        return f'ATopk(mode={self.mode!r}, batch_size={self.batch_size}, k={self.k}, p={self.p:.4f}, p_source={self.p_source!r})'


# ---------------------------------------------------------------------------------------------
# Logging helpers (issue item 4).


def add_d_gap(stats: dict[str, dict[str, float]]) -> None:
    """Insert ``ATopk/D_gap`` = mean D(x) − mean D(G(z)) into a ``{name: {num, mean, std}}`` dict.

    Uses ``Loss/scores/real`` and ``Loss/scores/fake`` of the same tick (the fake scores of the
    G and D passes, as collected). A derived scalar: num = 1, std = 0. No-op when either is absent.
    """
    real, fake = stats.get('Loss/scores/real'), stats.get('Loss/scores/fake')
    if not real or not fake:
        return
    gap = float(real['mean']) - float(fake['mean'])
    if math.isfinite(gap):
        stats['ATopk/D_gap'] = dict(num=1, mean=gap, std=0.0)


def append_trace(run_dir: str, entries: Iterable[dict[str, Any]], file_name: str = TRACE_FILE) -> Optional[str]:
    """Append trace entries as JSON lines to ``<run_dir>/atopk-trace.jsonl``; returns the path."""
    entries = list(entries)
    if not entries:
        return None
    path = os.path.join(run_dir, file_name)
    with open(path, 'a', encoding='utf-8') as f:
        f.write(''.join(json.dumps(entry) + '\n' for entry in entries))
    return path
