"""InsGen's loss: StyleGAN2's plus three instance-discrimination terms (Yang et al., NeurIPS 2021).

docs/insgen.md §3. Every contrastive term compares two ADA views of an image: the *query* is D's
feature of one view (with gradient), the *key* D_ema's feature of the other (no gradient):

* **real** (in Dmain's real pass, weight 1.0): DHead on (aug(x), aug′(x)); keys enqueued;
* **fake** (same place, weight 1.0): GHead on (aug(G(z)), aug′(G(z + 0.15·ε))) with the fakes of
  this round's fake pass; the momentum MLP of the *query* features is enqueued;
* **generator** (in Gmain, weight 0.1, ``cl_on_g``): GHead on (aug(G(z)), aug′(G(z))), loss
  only (no enqueue), GHead frozen — it rewards fakes that are distinguishable from past fakes.

The real and fake terms join D's real loss and are back-propagated with it; the heads' own
optimisers step right after that backward (once per accumulation round, as the reference). The
generator term is added to Gmain's loss *after* the ATop-k reduction of the adversarial term,
so ATop-k selects on D's scores and leaves the contrastive term untouched. D's contrastive
forwards run outside CHAIN's labelled passes (CHAIN then normalises with its expectation and
neither updates its statistics nor adds 0MR terms).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from backbones.insgen.heads import ContrastiveHead
from torch_utils import training_stats
from training.loss import StyleGAN2Loss
from training.phases import average_gradients

#: The reference's weights and latent perturbation (docs/insgen.md §3).
REAL_WEIGHT = 1.0
FAKE_WEIGHT = 1.0
GENERATOR_WEIGHT = 0.1
Z_PERTURBATION = 0.15


class InsGenLoss(StyleGAN2Loss):
    """StyleGAN2's loss with InsGen's contrastive terms (module docstring).

    ``attach`` hands over D_ema, the heads and their optimisers once they exist (``build``);
    ``num_gpus`` is needed to average the heads' gradients over processes.
    """

    def __init__(self, device: torch.device, G: torch.nn.Module, D: torch.nn.Module,
                 augment_pipe: Optional[torch.nn.Module] = None, cl_on_g: bool = True, num_gpus: int = 1,
                 **stylegan2_kwargs: Any):
        super().__init__(device, G, D, augment_pipe, **stylegan2_kwargs)
        if augment_pipe is None:
            raise ValueError('InsGen needs the ADA augmentation pipe for its two views')
        self.cl_on_g = bool(cl_on_g)
        self.num_gpus = int(num_gpus)
        self.D_ema: Optional[torch.nn.Module] = None
        self.heads: dict[str, ContrastiveHead] = {}
        self.head_opts: dict[str, torch.optim.Optimizer] = {}

    def attach(self, D_ema: torch.nn.Module, real_head: ContrastiveHead, fake_head: ContrastiveHead,
               real_opt: torch.optim.Optimizer, fake_opt: torch.optim.Optimizer) -> None:
        self.D_ema = D_ema
        self.heads = dict(DHead=real_head, GHead=fake_head)
        self.head_opts = dict(DHead=real_opt, GHead=fake_opt)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return dict(super().state_dict(), **{f'{name}_opt': opt.state_dict() for name, opt in self.head_opts.items()})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for name, opt in self.head_opts.items():
            if f'{name}_opt' in state:
                opt.load_state_dict(state[f'{name}_opt'])

    # ------------------------------------------------------------------ the contrastive term

    def contrastive(self, img: torch.Tensor, c: torch.Tensor, head: ContrastiveHead, name: str,
                    key_img: Optional[torch.Tensor] = None, loss_only: bool = False,
                    enqueue_query: bool = False) -> torch.Tensor:
        """InfoNCE of D(aug(img)) against D_ema(aug′(key_img or img)) through ``head`` (reported as Loss/<name>)."""
        query_view = self.augment(img)
        key_view = self.augment(img if key_img is None else key_img)
        _, query_features = self.D(query_view, c, return_feats=True)
        with torch.no_grad():
            _, key_features = self.D_ema(key_view, c, return_feats=True)
        loss = head(query_features, key_features, loss_only=loss_only, enqueue_query=enqueue_query)
        training_stats.report(f'Loss/{name}', loss)
        return loss

    # ------------------------------------------------------------------ StyleGAN2Loss extension points

    def generator_main_extra(self, gen_img: torch.Tensor, gen_c: torch.Tensor) -> Optional[torch.Tensor]:
        """0.1 · GHead's loss on two views of the same fakes (no enqueue, GHead frozen)."""
        if not self.cl_on_g:
            return None
        head = self.heads['GHead']
        head.requires_grad_(False)
        return GENERATOR_WEIGHT * self.contrastive(gen_img, gen_c, head, 'G_cl_on_g', loss_only=True)

    def discriminator_main_extra(self, real_img: torch.Tensor, real_c: torch.Tensor) -> Optional[torch.Tensor]:
        """1.0 · DHead's loss on two views of the reals + 1.0 · GHead's on the fakes and their perturbed twins."""
        for name, head in self.heads.items():
            head.requires_grad_(True)
            self.head_opts[name].zero_grad(set_to_none=True)
        real = self.contrastive(real_img.detach(), real_c, self.heads['DHead'], 'D_cl')
        gen_z, gen_c, gen_img = self.last_fakes  # type: ignore[misc]
        with torch.no_grad():
            twin, _ = self.run_G(gen_z + torch.randn_like(gen_z) * Z_PERTURBATION, gen_c)
        fake = self.contrastive(gen_img, gen_c, self.heads['GHead'], 'G_cl', key_img=twin, enqueue_query=True)
        return REAL_WEIGHT * real + FAKE_WEIGHT * fake

    def after_discriminator_main(self) -> None:
        """The heads' optimiser steps (gradients averaged over processes first)."""
        for name, head in self.heads.items():
            average_gradients(head, self.num_gpus)
            self.head_opts[name].step()
            head.requires_grad_(False)
