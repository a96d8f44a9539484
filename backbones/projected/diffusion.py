"""Diffusion-ProjectedGAN's forward diffusion on the discriminator's feature maps (Wang et al., ICLR 2023).

docs/projected.md §6. The noise goes on the frozen feature network's outputs (``d_pos='first'``,
before CCM) or on the CSM outputs (``'last'``) — not on the images — and D is not told t:

* schedule (docs/projected.md §6.1): β linear from β_start to β_end over T steps, rebuilt whenever T changes;
  ᾱ_t = Π_{s≤t}(1 − β_s) with ᾱ_0 = 1 (float32, as the reference);
* q_sample (docs/projected.md §6.2, Diffusion-GAN Eq. 4 / DDPM's forward process):
  x_t = sqrt(ᾱ_t)·x + sqrt(1 − ᾱ_t)·σ·ε, ε ~ N(0, I), with one t per (sample, channel);
* adaptive T (docs/projected.md §6.3): T = clip(t_min + round(p·(t_max − t_min)), t_min, t_max), p driven by
  E[sign(D(x_real))] (:class:`DiffusionController`, the ADA rule with ada_kimg 100, clipped to
  [0, 1], every 4 iterations);
* priority t-bank (docs/projected.md §6.4): 64 slots, the first n = min(round(64p), 48) drawn from {1 … T} with
  P(t = k) ∝ k − 1 — the reference's weights ``arange(T)`` over values ``1 … T``, so t = 1 is
  never drawn (the paper's π(t) ∝ t is off by one there; degan reproduces the code) — the rest 0;
  every forward draws each (sample, channel)'s t uniformly from the bank.

p, T and the bank are buffers of :class:`FeatureDiffusion` (so D's state dict carries them into
snapshots); the bank is drawn from a private generator seeded by (seed, update count), the same
on every process, and the per-forward draws from the global torch RNG (saved in snapshots).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from patches.overfit import OverfitTracker
from torch_utils import persistence, training_stats
from training.controllers import Controller, IterationInfo, require_real_logits

BANK_SIZE = 64
MAX_NOISY_SLOTS = 48


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 1e-2) -> torch.Tensor:
    """β_1 … β_T, linear (float64 linspace, as the reference's numpy schedule)."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def alpha_bar(T: int, beta_start: float = 1e-4, beta_end: float = 1e-2) -> torch.Tensor:
    """[ᾱ_0 = 1, ᾱ_1, …, ᾱ_T] in float32 (β cast to float32 first, then the cumulative product)."""
    alphas = 1.0 - linear_betas(T, beta_start, beta_end).float()
    return torch.cat([torch.ones(1), alphas.cumprod(dim=0)])


def timesteps_for(p: float, t_min: int = 5, t_max: int = 500) -> int:
    """T(p) = clip(t_min + round(p·(t_max − t_min)), t_min, t_max) (Python's round, as the reference)."""
    return int(min(max(t_min + round(p * (t_max - t_min)), t_min), t_max))


def noisy_slots(p: float, bank_size: int = BANK_SIZE, max_noisy: int = MAX_NOISY_SLOTS) -> int:
    """Slots of the t-bank holding t > 0: min(round(p·64), 48)."""
    return int(min(round(p * bank_size), max_noisy))


def priority_weights(T: int) -> torch.Tensor:
    """P(t = k) for k = 1 … T: (k − 1) / Σ (the reference's off-by-one priority; t = 1 has weight 0)."""
    weights = torch.arange(T, dtype=torch.float64)
    return weights / weights.sum()


def draw_bank(T: int, p: float, generator: torch.Generator, bank_size: int = BANK_SIZE,
              max_noisy: int = MAX_NOISY_SLOTS) -> torch.Tensor:
    """The t-bank [bank_size] (int64): ``noisy_slots`` draws from the priority distribution, then zeros."""
    bank = torch.zeros(bank_size, dtype=torch.int64)
    n = noisy_slots(p, bank_size, max_noisy)
    if n > 0 and T > 1:
        bank[:n] = torch.multinomial(priority_weights(T), n, replacement=True, generator=generator) + 1
    return bank


def q_sample(x: torch.Tensor, t: torch.Tensor, alphas_bar: torch.Tensor, noise_std: float) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t)·x + sqrt(1 − ᾱ_t)·σ·ε with t [N·C] (one per sample and channel), ε ~ N(0, I)."""
    n, c = x.shape[:2]
    a = alphas_bar.to(x.device)[t].view(n, c, 1, 1)
    noise = torch.randn_like(x) * noise_std
    return a.sqrt().to(x.dtype) * x + (1 - a).sqrt().to(x.dtype) * noise


@persistence.persistent_class
class FeatureDiffusion(nn.Module):
    """The adaptive forward diffusion applied to each feature map (module docstring).

    Buffers (saved with D): ``p`` (float64), ``T`` (int64) and ``bank`` [64] (int64); ``updates``
    counts the T updates (it seeds the next bank). ``alphas_bar`` is derived from T and not saved.
    """

    def __init__(self, t_min: int = 5, t_max: int = 500, beta_start: float = 1e-4, beta_end: float = 1e-2,
                 noise_std: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        if not 1 <= t_min <= t_max:
            raise ValueError(f'need 1 <= t_min <= t_max, got {t_min}, {t_max}')
        self.t_min, self.t_max, self.beta_start, self.beta_end = int(t_min), int(t_max), beta_start, beta_end
        self.noise_std, self.seed = float(noise_std), int(seed)
        self.register_buffer('p', torch.zeros([], dtype=torch.float64))
        self.register_buffer('T', torch.tensor(self.t_min, dtype=torch.int64))
        self.register_buffer('bank', torch.zeros(BANK_SIZE, dtype=torch.int64))
        self.register_buffer('updates', torch.zeros([], dtype=torch.int64))
        self.register_buffer('alphas_bar', alpha_bar(self.t_min, beta_start, beta_end), persistent=False)
        self.update_T()

    def update_T(self) -> None:
        """T from p, the schedule rebuilt for it, a fresh bank (after every p update, docs/projected.md §6.3–6.4)."""
        p = float(self.p)
        T = timesteps_for(p, self.t_min, self.t_max)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.updates))
        self.T.fill_(T)
        self.bank.copy_(draw_bank(T, p, generator))
        self.updates.add_(1)
        self.alphas_bar = alpha_bar(T, self.beta_start, self.beta_end).to(self.p.device)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.alphas_bar = alpha_bar(int(self.T), self.beta_start, self.beta_end).to(self.p.device)

    def draw_t(self, count: int, device: torch.device) -> torch.Tensor:
        """``count`` timesteps drawn uniformly, with replacement, from the bank (global torch RNG)."""
        index = torch.randint(0, BANK_SIZE, [count], device=device)
        return self.bank.to(device)[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.draw_t(x.shape[0] * x.shape[1], x.device)
        return q_sample(x, t, self.alphas_bar, self.noise_std)

    def extra_repr(self) -> str:
        return (f't_min={self.t_min}, t_max={self.t_max}, beta=({self.beta_start}, {self.beta_end}), '
                f'noise_std={self.noise_std}')


class DiffusionController(Controller):
    """Diffusion-ProjectedGAN's p: ADA's rule on E[sign(D(x_real))] over every real logit (the one
    collector's moments), p ← clip(p ± B·4/(ada_kimg·1000), 0, 1) every ``interval`` iterations,
    then T and the bank follow (docs/projected.md §6.3). The tracker writes into the module's
    ``p`` buffer; its window (signs since the last update) is this controller's snapshot state."""
    name = 'diffusion'
    status_rank = 3

    def __init__(self, diffusion: FeatureDiffusion, batch_size: int, target: float = 0.6, interval: int = 4,
                 ada_kimg: float = 100):
        self.diffusion = diffusion
        self.tracker = OverfitTracker(batch_size, target=target, interval=interval, kimg=ada_kimg, max_p=1.0)
        self.tracker.bind(diffusion.p)

    def end_iteration(self, info: IterationInfo) -> None:
        if info.signs_all is not None:
            self.tracker.add_moments(info.signs_all)
        if self.tracker.update(info.batch_idx):
            self.diffusion.update_T()

    def verify_hooks(self, loss: Any, backbone: str) -> None:
        require_real_logits(loss, backbone, '--diffusion=1', "Diffusion-ProjectedGAN's p")

    def status_fields(self) -> list[str]:
        p = training_stats.report0('Progress/diffusion_p', float(self.diffusion.p))
        T = training_stats.report0('Progress/diffusion_T', int(self.diffusion.T))
        return [f'diffusion_p {p:.3f}', f'T {T:<3d}']

    has_state = True

    def state_dict(self) -> Optional[dict[str, Any]]:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state)
