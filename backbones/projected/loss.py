"""Projected GAN's loss (also Diffusion-ProjectedGAN's): hinge, no regularisers (docs/projected.md §5).

Phases in the reference's order, each with its own latents:

* **Gmain** — −mean D(G(z)) per image over its logits of all four mini-discriminators, reduced
  over the batch by the ATop-k hook (:meth:`training.loss_base.GANLoss.reduce_generator_adv_loss`;
  the per-sample score is the mean of that image's logits, docs/README.md decision 7);
* **Dmain** — fakes first, then reals, in separate D passes (BN statistics separate):
  mean relu(1 + D(G(z))) and mean relu(1 − D(x)), each backpropagated on its own.

Every D input goes through the D augmentation hook first (DiffAugment ``color,translation,cutout``
with cutout 0.2 by default: the reference applies it inside D.forward to every input, which is
the same thing), and every real-logit tensor reaches the one E[sign(D_real)] collector that
drives Diffusion-ProjectedGAN's p and ATop-k's p. The reference's ``Dreg``/``Greg`` phases do
nothing and are not run.
"""

from __future__ import annotations

import torch

from torch_utils import training_stats
from training import losses
from training.loss_base import GANLoss, check_finite


class ProjectedGANLoss(GANLoss):
    """Hinge G and D objectives of Projected GAN through degan's method hooks (module docstring)."""

    def accumulate_gradients(self, phase: str, real_img: torch.Tensor, real_c: torch.Tensor,
                             gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float, cur_nimg: int = 0) -> None:
        if phase == 'Gmain':
            self._generator(gen_z, gen_c, gain)
        elif phase == 'Dmain':
            self._discriminator(real_img, real_c, gen_z, gen_c, gain)
        else:
            raise ValueError(f'Projected GAN has phases Gmain and Dmain, not {phase!r}')

    def _generator(self, gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float) -> None:
        gen_img = self.G(gen_z, gen_c)
        logits, _ = self.run_D(gen_img, gen_c, 'gfake')
        self.observe_fake_logits(logits)
        loss = self.generator_adversarial_loss(logits, losses.hinge_generator)
        check_finite('Gmain', 'Loss/G/loss', loss)
        loss.mul(gain).backward()

    def _discriminator(self, real_img: torch.Tensor, real_c: torch.Tensor, gen_z: torch.Tensor,
                       gen_c: torch.Tensor, gain: float) -> None:
        with torch.no_grad():
            gen_img = self.G(gen_z, gen_c)
        fake_logits, _ = self.run_D(gen_img, gen_c, 'dfake')
        self.observe_fake_logits(fake_logits)
        loss_fake = losses.hinge_discriminator_fake(fake_logits).mean()
        check_finite('Dmain', 'Loss/D/loss (fake)', loss_fake)
        loss_fake.mul(gain).backward()

        real_logits, _ = self.run_D(real_img.detach(), real_c, 'dreal')
        self.observe_real_logits(real_logits)
        loss_real = losses.hinge_discriminator_real(real_logits).mean()
        training_stats.report('Loss/D/loss', loss_fake.detach() + loss_real.detach())
        check_finite('Dmain', 'Loss/D/loss (real)', loss_real)
        loss_real.mul(gain).backward()
