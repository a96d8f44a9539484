"""The StyleGAN2 loss: non-saturating logistic G/D losses, R1, path-length regularisation.

Formulas and draw order: stylegan2-arithmetic.md §10 (verified against the reference there);
phase structure and defaults: stylegan2-ada.md §4.

Two hook points keep the paper methods out of this file:

* ``reduce_generator_adv_loss`` — the **one place** where the per-sample G adversarial loss
  ``softplus(-D(G(z)))`` becomes a scalar. By default the mean; ATop-k (``patches/atopk.py``)
  replaces it by its top-k reduction (ATop-k Eq. 12).
* ``discriminator_pass`` / ``discriminator_extra_loss`` — every D evaluation is labelled
  (``dreal`` / ``dfake`` / ``gfake``) and D's extra loss terms for that pass are added in one
  place. CHAIN (``patches/chain.py``) labels its statistics with it and contributes its 0MR term
  (CHAIN §9.6). Real and fake batches are never concatenated into one D call.

Statistics of real logits feed the overfitting controllers (ADA's p, ATop-k's p) through
``real_sign_listeners``; CHAIN's controller reads ``take_dmain_real_logits()`` once per iteration.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils import training_stats

PHASES = ('Gmain', 'Greg', 'Gboth', 'Dmain', 'Dreg', 'Dboth')


class RealLogitListener(Protocol):
    """Anything that consumes the logits of real images (the overfitting heuristic r_t)."""

    def accumulate(self, real_logits: torch.Tensor) -> None: ...


class Loss:
    """Interface used by the training loop."""

    def accumulate_gradients(self, phase: str, real_img: torch.Tensor, real_c: torch.Tensor,
                             gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float, cur_nimg: int) -> None:
        raise NotImplementedError


class StyleGAN2Loss(Loss):
    """StyleGAN2 loss with lazy regularisation phases (stylegan2-arithmetic.md §10)."""

    def __init__(self, device: torch.device, G: torch.nn.Module, D: torch.nn.Module,
                 augment_pipe: Optional[torch.nn.Module] = None, style_mixing_prob: float = 0.9,
                 r1_gamma: float = 10, pl_batch_shrink: int = 2, pl_decay: float = 0.01, pl_weight: float = 2):
        self.device = device
        self.G = G
        self.D = D
        self.augment_pipe = augment_pipe
        self.style_mixing_prob = style_mixing_prob
        self.r1_gamma = r1_gamma
        self.pl_batch_shrink = pl_batch_shrink
        self.pl_decay = pl_decay
        self.pl_weight = pl_weight
        self.pl_mean = torch.zeros([], device=device)
        #: Replaceable reduction of the per-sample G adversarial loss (ATop-k hooks in here).
        self.generator_loss_reducer: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None
        #: Objects fed with every real-image logit tensor (ADA tracker, ATop-k's own tracker).
        self.real_sign_listeners: list[RealLogitListener] = []
        #: Context for labelled D passes and D's extra loss terms (CHAIN hooks in here).
        self.d_pass_context: Optional[DiscriminatorPassContext] = None
        self._dmain_real_logits: list[torch.Tensor] = []
        self._last_loss_Dgen: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ hook points

    def reduce_generator_adv_loss(self, per_sample_loss: torch.Tensor, gen_logits: torch.Tensor) -> torch.Tensor:
        """Scalar G adversarial loss from per-sample losses [N] and D scores [N, ...] (hook point)."""
        if self.generator_loss_reducer is None:
            return per_sample_loss.mean()
        return self.generator_loss_reducer(per_sample_loss, gen_logits)

    def discriminator_pass(self, label: str, r1_only: bool = False) -> ContextManager[Any]:
        """Label one D evaluation: 'dreal', 'dfake' or 'gfake'; ``r1_only`` for the lazy R1 pass (hook point)."""
        if self.d_pass_context is None:
            return contextlib.nullcontext()
        return self.d_pass_context.pass_(label, r1=r1_only)

    def discriminator_extra_loss(self) -> Optional[torch.Tensor]:
        """D's extra loss terms for the pass that just ran (hook point; e.g. CHAIN's 0MR)."""
        if self.d_pass_context is None:
            return None
        return self.d_pass_context.extra_loss()

    def take_dmain_real_logits(self) -> Optional[torch.Tensor]:
        """Real logits of this iteration's Dmain pass(es), for per-iteration controllers."""
        if not self._dmain_real_logits:
            return None
        logits = torch.cat(self._dmain_real_logits)
        self._dmain_real_logits.clear()
        return logits

    def _report_extra(self, which: str, extra: torch.Tensor) -> None:
        name = getattr(self.d_pass_context, 'extra_loss_name', 'Loss/D/extra')
        training_stats.report(f'{name}/{which}', extra)

    # ------------------------------------------------------------------ networks

    def run_G(self, z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map, style-mix (prob 0.9, §10 run_G draw order), synthesise. Returns (img, ws)."""
        ws = self.G.mapping(z, c)
        if self.style_mixing_prob > 0:
            num_ws = ws.shape[1]
            cutoff = torch.empty([], dtype=torch.int64, device=ws.device).random_(1, num_ws)
            use_mixing = torch.rand([], device=ws.device) < self.style_mixing_prob
            cutoff = torch.where(use_mixing, cutoff, torch.full_like(cutoff, num_ws))
            mixed = self.G.mapping(torch.randn_like(z), c, skip_w_avg_update=True)
            ws[:, cutoff:] = mixed[:, cutoff:]
        img = self.G.synthesis(ws)
        return img, ws

    def run_D(self, img: torch.Tensor, c: torch.Tensor, label: str,
              r1_only: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Augment, evaluate D in a labelled pass. Returns (logits, extra D loss or None)."""
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        with self.discriminator_pass(label, r1_only):
            logits = self.D(img, c)
            extra = self.discriminator_extra_loss()
        return logits, extra

    # ------------------------------------------------------------------ phases

    def accumulate_gradients(self, phase: str, real_img: torch.Tensor, real_c: torch.Tensor,
                             gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float, cur_nimg: int = 0) -> None:
        """Run one phase on one round of samples and accumulate its gradients (× gain)."""
        assert phase in PHASES, phase
        do_Gmain = phase in ('Gmain', 'Gboth')
        do_Gpl = phase in ('Greg', 'Gboth') and self.pl_weight != 0
        do_Dmain = phase in ('Dmain', 'Dboth')
        do_Dr1 = phase in ('Dreg', 'Dboth') and self.r1_gamma != 0

        if do_Gmain:
            self._generator_main(gen_z, gen_c, gain)
        if do_Gpl:
            self._generator_path_length(gen_z, gen_c, gain)
        if do_Dmain:
            self._discriminator_fake(gen_z, gen_c, gain)
        if do_Dmain or do_Dr1:
            self._discriminator_real(real_img, real_c, gain, do_Dmain, do_Dr1, phase)

    def _generator_main(self, gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float) -> None:
        """L_G = E[softplus(-D(G(z)))] (non-saturating), reduced by the hook."""
        gen_img, _ = self.run_G(gen_z, gen_c)
        gen_logits, _ = self.run_D(gen_img, gen_c, 'gfake')
        training_stats.report('Loss/scores/fake', gen_logits)
        training_stats.report('Loss/signs/fake', gen_logits.sign())
        per_sample = F.softplus(-gen_logits).flatten(1).mean(1) if gen_logits.ndim > 1 else F.softplus(-gen_logits)
        training_stats.report('Loss/G/loss', per_sample)
        loss = self.reduce_generator_adv_loss(per_sample, gen_logits.detach())
        _check_finite('Gmain', 'Loss/G/loss', loss)
        loss.mul(gain).backward()

    def _generator_path_length(self, gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float) -> None:
        """Path-length regularisation (§10 Gpl): penalty (|J^T y| − ā)² with ā an EMA, decay 0.01."""
        batch = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
        gen_img, gen_ws = self.run_G(gen_z[:batch], gen_c[:batch])
        pl_noise = torch.randn_like(gen_img) / np.sqrt(gen_img.shape[2] * gen_img.shape[3])
        pl_grads, = torch.autograd.grad(outputs=[(gen_img * pl_noise).sum()], inputs=[gen_ws], create_graph=True)
        pl_lengths = pl_grads.square().sum(2).mean(1).sqrt()
        pl_mean = self.pl_mean.lerp(pl_lengths.mean(), self.pl_decay)
        self.pl_mean.copy_(pl_mean.detach())
        pl_penalty = (pl_lengths - pl_mean).square()
        training_stats.report('Loss/pl_penalty', pl_penalty)
        loss_Gpl = pl_penalty * self.pl_weight
        training_stats.report('Loss/G/reg', loss_Gpl)
        total = (gen_img[:, 0, 0, 0] * 0 + loss_Gpl).mean()
        _check_finite('Greg', 'Loss/G/reg', total)
        total.mul(gain).backward()

    def _discriminator_fake(self, gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float) -> None:
        """Fake half of L_D: E[softplus(D(G(z)))] (+ extra D terms of the fake pass)."""
        with torch.no_grad():
            gen_img, _ = self.run_G(gen_z, gen_c)
        gen_logits, extra = self.run_D(gen_img, gen_c, 'dfake')
        training_stats.report('Loss/scores/fake', gen_logits)
        training_stats.report('Loss/signs/fake', gen_logits.sign())
        loss_Dgen = F.softplus(gen_logits)
        self._last_loss_Dgen = loss_Dgen.detach()
        loss = loss_Dgen.mean()
        if extra is not None:
            self._report_extra('fake', extra)
            loss = loss + extra
        _check_finite('Dmain', 'Loss/D/loss (fake)', loss)
        loss.mul(gain).backward()

    def _discriminator_real(self, real_img: torch.Tensor, real_c: torch.Tensor, gain: float,
                            do_Dmain: bool, do_Dr1: bool, phase: str) -> None:
        """Real half of L_D: E[softplus(−D(x))] and/or R1 = γ/2·|∇_x D(x)|² on un-augmented x."""
        real_img_tmp = real_img.detach().requires_grad_(do_Dr1)
        real_logits, extra = self.run_D(real_img_tmp, real_c, 'dreal', r1_only=not do_Dmain)
        training_stats.report('Loss/scores/real', real_logits)
        training_stats.report('Loss/signs/real', real_logits.sign())
        for listener in self.real_sign_listeners:
            listener.accumulate(real_logits.detach())

        loss_Dreal = torch.zeros([], device=real_logits.device)
        if do_Dmain:
            self._dmain_real_logits.append(real_logits.detach())
            loss_Dreal = F.softplus(-real_logits)
            if self._last_loss_Dgen is not None and self._last_loss_Dgen.shape == loss_Dreal.shape:
                training_stats.report('Loss/D/loss', self._last_loss_Dgen + loss_Dreal.detach())
            self._last_loss_Dgen = None
        loss_Dr1 = torch.zeros([], device=real_logits.device)
        if do_Dr1:
            r1_grads, = torch.autograd.grad(outputs=[real_logits.sum()], inputs=[real_img_tmp], create_graph=True)
            r1_penalty = r1_grads.square().sum([1, 2, 3])
            loss_Dr1 = r1_penalty * (self.r1_gamma / 2)
            training_stats.report('Loss/r1_penalty', r1_penalty)
            training_stats.report('Loss/D/reg', loss_Dr1)
        loss = (real_logits * 0 + loss_Dreal + loss_Dr1).mean()
        if do_Dmain and extra is not None:  # the R1-only pass adds no extra D terms (CHAIN C4)
            self._report_extra('real', extra)
            loss = loss + extra
        _check_finite(phase, 'Loss/D/loss (real)' if do_Dmain else 'Loss/D/reg', loss)
        loss.mul(gain).backward()


class DiscriminatorPassContext(Protocol):
    """What a D-side method (e.g. CHAIN's context) provides to the loss."""

    def pass_(self, label: str, r1: bool = False) -> ContextManager[Any]: ...

    def extra_loss(self) -> Optional[torch.Tensor]: ...


def _check_finite(phase: str, name: str, loss: torch.Tensor) -> None:
    """Stop on a NaN/inf loss before it reaches the optimiser (the loop adds the snapshot hint)."""
    if not bool(torch.isfinite(loss.detach()).all()):
        from torch_utils.misc import NonFiniteError
        raise NonFiniteError(f'{name} is not finite in phase {phase}')

