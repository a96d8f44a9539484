"""GAN loss formulas as small pure functions: logits in, per-element losses out.

Each backbone's loss (a :class:`training.loss_base.GANLoss`) picks its formulas from here; the
base class turns per-sample G losses into a scalar through the ATop-k hook. Every function
maps D logits (any shape) to a tensor of the same shape; the caller reduces.

==========================  ================================  ===================================
formula                     G (fakes)                          D (reals / fakes)
==========================  ================================  ===================================
non-saturating logistic     softplus(−l)                       softplus(−l) / softplus(l)
hinge                       −l                                 relu(1 − l) / relu(1 + l)
random-margin hinge         −l                                 relu(r − l) / relu(r + l),
(FastGAN)                                                      r ~ U(0.8, 1) per logit
==========================  ================================  ===================================

(docs/stylegan2-arithmetic.md §10 for the StyleGAN2 terms, including R1 and path length.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ns_generator(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating G loss softplus(−D(G(z)))."""
    return F.softplus(-fake_logits)


def ns_discriminator_real(real_logits: torch.Tensor) -> torch.Tensor:
    """Logistic D loss on reals softplus(−D(x))."""
    return F.softplus(-real_logits)


def ns_discriminator_fake(fake_logits: torch.Tensor) -> torch.Tensor:
    """Logistic D loss on fakes softplus(D(G(z)))."""
    return F.softplus(fake_logits)


def hinge_generator(fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge G loss −D(G(z))."""
    return -fake_logits


def hinge_discriminator_real(real_logits: torch.Tensor) -> torch.Tensor:
    """Hinge D loss on reals relu(1 − D(x))."""
    return F.relu(1 - real_logits)


def hinge_discriminator_fake(fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge D loss on fakes relu(1 + D(G(z)))."""
    return F.relu(1 + fake_logits)


def random_margins(logits: torch.Tensor, low: float = 0.8, high: float = 1.0) -> torch.Tensor:
    """Margins r ~ U(low, high), one per logit, from the global torch RNG (FastGAN: U(0.8, 1))."""
    return torch.rand_like(logits) * (high - low) + low


def random_margin_hinge_real(real_logits: torch.Tensor, low: float = 0.8, high: float = 1.0) -> torch.Tensor:
    """FastGAN's D loss on reals relu(r − D(x)), r ~ U(low, high) drawn per logit (docs/fastgan.md §4)."""
    return F.relu(random_margins(real_logits, low, high) - real_logits)


def random_margin_hinge_fake(fake_logits: torch.Tensor, low: float = 0.8, high: float = 1.0) -> torch.Tensor:
    """FastGAN's D loss on fakes relu(r + D(G(z))), r ~ U(low, high) drawn per logit (docs/fastgan.md §4)."""
    return F.relu(random_margins(fake_logits, low, high) + fake_logits)


def per_sample_mean(per_element: torch.Tensor) -> torch.Tensor:
    """[N, ...] → [N]: the mean over each sample's logits (one logit per sample: unchanged values)."""
    return per_element.flatten(1).mean(1) if per_element.ndim > 1 else per_element


def r1_penalty(real_img: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """‖∇_x D(x)‖² per sample (R1 before its γ/2 weight), differentiable (create_graph)."""
    grads, = torch.autograd.grad(outputs=[real_logits.sum()], inputs=[real_img], create_graph=True)
    return grads.square().sum([1, 2, 3])
