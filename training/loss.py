"""The StyleGAN2 loss: non-saturating logistic G/D losses, R1, path-length regularisation.

Formulas and draw order: docs/stylegan2-arithmetic.md §10; phase structure and defaults:
docs/stylegan2-ada.md §4. The paper methods act only through the hooks of the base class
(:class:`training.loss_base.GANLoss`): the G adversarial loss goes through
``generator_adversarial_loss`` (ATop-k), every D evaluation through ``run_D`` in a labelled
pass (CHAIN), and every real-logit tensor through ``observe_real_logits`` (ADA / ATop-k /
CHAIN p). The class path ``training.loss.StyleGAN2Loss`` is kept for existing configs.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from torch_utils import training_stats
from training import losses
from training.loss_base import PHASES, GANLoss, check_finite

__all__ = ['StyleGAN2Loss', 'PHASES']


class StyleGAN2Loss(GANLoss):
    """StyleGAN2 loss with lazy regularisation phases (docs/stylegan2-arithmetic.md §10)."""

    def __init__(self, device: torch.device, G: torch.nn.Module, D: torch.nn.Module,
                 augment_pipe: Optional[torch.nn.Module] = None, style_mixing_prob: float = 0.9,
                 r1_gamma: float = 10, pl_batch_shrink: int = 2, pl_decay: float = 0.01, pl_weight: float = 2):
        super().__init__(device, G, D, augment_pipe)
        self.style_mixing_prob = style_mixing_prob
        self.r1_gamma = r1_gamma
        self.pl_batch_shrink = pl_batch_shrink
        self.pl_decay = pl_decay
        self.pl_weight = pl_weight
        self.pl_mean = torch.zeros([], device=device)
        self._last_loss_Dgen: Optional[torch.Tensor] = None
        self.last_fakes: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None

    def state_dict(self) -> dict[str, Any]:
        return dict(pl_mean=self.pl_mean.detach().cpu().clone())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pl_mean.copy_(state['pl_mean'])

    # ------------------------------------------------------------------ networks

    def run_G(self, z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map, style-mix (prob 0.9, docs/stylegan2-arithmetic.md §10 run_G draw order), synthesise. Returns (img, ws)."""
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
        """L_G = E[softplus(-D(G(z)))] (non-saturating), reduced by the ATop-k hook."""
        gen_img, _ = self.run_G(gen_z, gen_c)
        gen_logits, _ = self.run_D(gen_img, gen_c, 'gfake')
        self.observe_fake_logits(gen_logits)
        loss = self.generator_adversarial_loss(gen_logits, losses.ns_generator)
        extra = self.generator_main_extra(gen_img, gen_c)
        if extra is not None:
            loss = loss + extra
        check_finite('Gmain', 'Loss/G/loss', loss)
        loss.mul(gain).backward()

    def _generator_path_length(self, gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float) -> None:
        """Path-length regularisation (docs/stylegan2-arithmetic.md §10 Gpl): penalty (|J^T y| − ā)² with ā an EMA, decay 0.01."""
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
        check_finite('Greg', 'Loss/G/reg', total)
        total.mul(gain).backward()

    def _discriminator_fake(self, gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float) -> None:
        """Fake half of L_D: E[softplus(D(G(z)))] (+ extra D terms of the fake pass)."""
        with torch.no_grad():
            gen_img, _ = self.run_G(gen_z, gen_c)
        self.last_fakes = (gen_z, gen_c, gen_img)
        gen_logits, extra = self.run_D(gen_img, gen_c, 'dfake')
        self.observe_fake_logits(gen_logits)
        loss_Dgen = losses.ns_discriminator_fake(gen_logits)
        self._last_loss_Dgen = loss_Dgen.detach()
        loss = self.add_extra_loss(loss_Dgen.mean(), extra, 'fake')
        check_finite('Dmain', 'Loss/D/loss (fake)', loss)
        loss.mul(gain).backward()

    def _discriminator_real(self, real_img: torch.Tensor, real_c: torch.Tensor, gain: float,
                            do_Dmain: bool, do_Dr1: bool, phase: str) -> None:
        """Real half of L_D: E[softplus(−D(x))] and/or R1 = γ/2·|∇_x D(x)|² on un-augmented x."""
        real_img_tmp = real_img.detach().requires_grad_(do_Dr1)
        real_logits, extra = self.run_D(real_img_tmp, real_c, 'dreal', r1_only=not do_Dmain)
        self.observe_real_logits(real_logits, main=do_Dmain)

        loss_Dreal = torch.zeros([], device=real_logits.device)
        if do_Dmain:
            loss_Dreal = losses.ns_discriminator_real(real_logits)
            if self._last_loss_Dgen is not None and self._last_loss_Dgen.shape == loss_Dreal.shape:
                training_stats.report('Loss/D/loss', self._last_loss_Dgen + loss_Dreal.detach())
            self._last_loss_Dgen = None
        loss_Dr1 = torch.zeros([], device=real_logits.device)
        if do_Dr1:
            r1_penalty = losses.r1_penalty(real_img_tmp, real_logits)
            loss_Dr1 = r1_penalty * (self.r1_gamma / 2)
            training_stats.report('Loss/r1_penalty', r1_penalty)
            training_stats.report('Loss/D/reg', loss_Dr1)
        loss = (real_logits * 0 + loss_Dreal + loss_Dr1).mean()
        if do_Dmain:  # the R1-only pass adds no extra D terms (CHAIN C4)
            loss = self.add_extra_loss(loss, extra, 'real')
            terms = self.discriminator_main_extra(real_img_tmp, real_c)
            if terms is not None:
                loss = loss + terms
        check_finite(phase, 'Loss/D/loss (real)' if do_Dmain else 'Loss/D/reg', loss)
        loss.mul(gain).backward()
        if do_Dmain:
            self.after_discriminator_main()
        self.last_fakes = None

    # ------------------------------------------------------------------ extension points (InsGen)

    def generator_main_extra(self, gen_img: torch.Tensor, gen_c: torch.Tensor) -> Optional[torch.Tensor]:
        """A scalar added to Gmain's loss *after* the ATop-k reduction (None: nothing)."""
        return None

    def discriminator_main_extra(self, real_img: torch.Tensor, real_c: torch.Tensor) -> Optional[torch.Tensor]:
        """A scalar added to Dmain's real-pass loss, back-propagated with it (None: nothing);
        ``self.last_fakes`` holds this round's (z, c, fake images) of the fake pass."""
        return None

    def after_discriminator_main(self) -> None:
        """Called right after Dmain's real-pass backward of every round."""
