"""FastGAN's losses and iteration (reference ``train.py`` of FastGAN and of CHAIN's FastGAN-D_big).

docs/fastgan.md §4. One iteration is two phases, D first:

* **Dmain** — G draws the iteration's fakes once, *with* a graph to G's parameters, and they
  are augmented once (each of G's two outputs on its own). D is trained on the augmented reals
  (label 'dreal', with the decoders on one random quarter ``part``) and then on the detached
  fakes ('dfake'), in two separate D passes whose gradients add up before one D step:

  - original D: random-margin hinge relu(r − D(x)) + relu(r + D(G(z))), r ~ U(0.8, 1) per
    logit, mean over the 50 logits of every image;
  - D_big: hinge with margin 1 (relu(1 − D(x)), relu(1 + D(G(z)))), plus CHAIN's 0MR per pass;
  - reconstruction: Σ over the batch of d(rec, target) for each decoder (big and small: the
    real image, nearest-resized to 128; part: that quarter of it, resized to 128), with d the
    LPIPS distance (or the labelled L1 fallback). Summed over the *global* batch: each
    process's sum is scaled by the number of processes, whose gradients are averaged.

* **Gmain** — the same augmented fakes (not re-drawn: the reference backpropagates through the
  one forward) through the updated D ('gfake'): −mean D(G(z)) per image, reduced by the ATop-k
  hook (:meth:`training.loss_base.GANLoss.reduce_generator_adv_loss`).

CHAIN's p is updated between the two phases (after the D step), as the official code does
(:attr:`backbones.base.Backbone.chain_update_after`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Union

import torch

from backbones.fastgan.layers import quarter, resize_nearest
from backbones.fastgan.networks import SMALL_SIZE
from torch_utils import training_stats
from training import losses
from training.loss_base import GANLoss, check_finite

Images = Union[torch.Tensor, list[torch.Tensor]]


@contextlib.contextmanager
def _trainable(module: torch.nn.Module) -> Iterator[None]:
    """Record a graph to ``module``'s parameters although the loop has them frozen in this phase."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


class FastGANLoss(GANLoss):
    """FastGAN's D and G objectives through degan's method hooks (module docstring).

    Args:
        device, G, D, augment_pipe: as every :class:`GANLoss`.
        recon: the reconstruction distance, ``recon(x, y) -> [N]`` (``training.lpips.LPIPS`` or
            the ``L1Distance`` fallback).
        margin: 'random' (original FastGAN) or 'one' (CHAIN's D_big).
        num_gpus: processes (the reconstruction is a sum over the global batch).
    """

    def __init__(self, device: torch.device, G: torch.nn.Module, D: torch.nn.Module,
                 augment_pipe: Optional[torch.nn.Module], recon: torch.nn.Module, margin: str = 'random',
                 num_gpus: int = 1):
        super().__init__(device, G, D, augment_pipe)
        if margin not in ('random', 'one'):
            raise ValueError(f"margin must be 'random' or 'one', got {margin!r}")
        self.recon = recon
        self.margin = margin
        self.num_gpus = num_gpus
        self._fakes: list[Images] = []  # augmented fakes of this iteration's Dmain rounds, for Gmain
        self._last_real = torch.zeros([], device=device)  # the real pass' adversarial loss, for Loss/D/loss

    # ------------------------------------------------------------------ the loop's interface

    def accumulate_gradients(self, phase: str, real_img: torch.Tensor, real_c: torch.Tensor,
                             gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float, cur_nimg: int = 0) -> None:
        if phase == 'Dmain':
            with _trainable(self.G):
                fakes = self.G(gen_z)
            real = self.augment(real_img)
            fakes = self._augment_fakes(fakes)
            self._fakes.append(fakes)
            self._discriminator_real(real, gain)
            self._discriminator_fake(_detach(fakes), gain)
        elif phase == 'Gmain':
            fakes = self._fakes.pop(0) if self._fakes else self._augment_fakes(self.G(gen_z))
            self._generator(fakes, gain)
        else:
            raise ValueError(f'FastGAN has phases Dmain and Gmain, not {phase!r}')

    # ------------------------------------------------------------------ pieces

    def _augment_fakes(self, fakes: Images) -> Images:
        """The D augmentation on each of G's outputs independently (reference ``train.py``)."""
        if isinstance(fakes, (list, tuple)):
            return [self.augment(f) for f in fakes]
        return self.augment(fakes)

    def _d(self, imgs: Images, label: str, part: Optional[int] = None):
        """D in a labelled pass (CHAIN's statistics and 0MR follow the label); returns (output, extra)."""
        with self.discriminator_pass(label):
            out = self.D(imgs, part=part) if part is not None else self.D(imgs)
            extra = self.discriminator_extra_loss()
        return out, extra

    def _discriminator_real(self, real: torch.Tensor, gain: float) -> None:
        part = int(torch.randint(4, ()))
        (logits, recs), extra = self._d(real, 'dreal', part=part)
        self.observe_real_logits(logits)
        adv = (losses.random_margin_hinge_real(logits) if self.margin == 'random'
               else losses.hinge_discriminator_real(logits)).mean()
        recon = self.reconstruction_loss(real, recs, part)
        training_stats.report('Loss/D/recon', recon.detach() / real.shape[0])
        loss = self.add_extra_loss(adv + recon, extra, 'real')
        check_finite('Dmain', 'Loss/D/loss (real)', loss)
        loss.mul(gain).backward()
        self._last_real = adv.detach()

    def _discriminator_fake(self, fakes: Images, gain: float) -> None:
        logits, extra = self._d(fakes, 'dfake')
        self.observe_fake_logits(logits)
        adv = (losses.random_margin_hinge_fake(logits) if self.margin == 'random'
               else losses.hinge_discriminator_fake(logits)).mean()
        training_stats.report('Loss/D/loss', self._last_real + adv.detach())
        loss = self.add_extra_loss(adv, extra, 'fake')
        check_finite('Dmain', 'Loss/D/loss (fake)', loss)
        loss.mul(gain).backward()

    def _generator(self, fakes: Images, gain: float) -> None:
        logits, _ = self._d(fakes, 'gfake')
        self.observe_fake_logits(logits)
        loss = self.generator_adversarial_loss(logits, losses.hinge_generator)
        check_finite('Gmain', 'Loss/G/loss', loss)
        loss.mul(gain).backward()

    def reconstruction_loss(self, real: torch.Tensor, recs: list[torch.Tensor], part: int) -> torch.Tensor:
        """Σ_batch d(rec, target) over the decoders, × processes (docs/fastgan.md §4).

        ``recs`` is [big, small, part] (original D) or [big, part] (D_big); big and small
        reconstruct the real image, part its quarter ``part``; targets nearest-resized to 128.
        """
        whole = resize_nearest(real, SMALL_SIZE)
        targets = [whole] * (len(recs) - 1) + [resize_nearest(quarter(real, part), SMALL_SIZE)]
        total = sum(self.recon(rec, target).sum() for rec, target in zip(recs, targets))
        return total * self.num_gpus


def _detach(images: Images) -> Images:
    if isinstance(images, (list, tuple)):
        return [x.detach() for x in images]
    return images.detach()
