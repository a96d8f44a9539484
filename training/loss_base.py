"""The base class of every backbone's loss: it owns the hooks the paper methods use.

A backbone's loss subclasses :class:`GANLoss`, implements ``accumulate_gradients`` with its
formulas (:mod:`training.losses`) and routes through these hooks — the only places where the
methods act (docs/training.md §2):

``reduce_generator_adv_loss(per_sample, scores)``
    The one place where the per-sample G adversarial loss [N] becomes a scalar. Default: the
    mean; ATop-k (patches/atopk.py) sets ``generator_loss_reducer`` to its top-k reduction
    (ATop-k Eq. 12). :meth:`generator_adversarial_loss` applies a formula and this hook.
``run_D(img, c, label, r1_only)``
    Augment (the D augmentation pipe; ADA / DiffAugment), then evaluate D in a *labelled*
    pass — 'dreal', 'dfake' or 'gfake' — and return D's extra loss terms for that pass. CHAIN
    (patches/chain.py) labels its statistics with the pass and contributes its 0MR term
    (docs/methods.md §9.6). Real and fake batches are never concatenated into one D call.
``observe_real_logits(logits, main)`` / ``observe_fake_logits(logits)``
    Report the scores and feed every real-logit tensor to ``real_logit_listeners`` — the one
    collector of E[sign(D_real)] (patches/overfit.py) that drives ADA's p, ATop-k's p and
    CHAIN's p (``main``: the logits of the D loss pass, not of an R1-only pass).

``hook_calls`` counts every hook use, so the loop can stop at the first iteration when a method
is switched on but the backbone's loss never went through its hook (fail loud,
``training.controllers``).
"""

from __future__ import annotations

import collections
import contextlib
from typing import Any, Callable, ContextManager, Optional, Protocol

import torch

from torch_utils import misc, training_stats
from training import losses

#: The loss phases the loop may ask for (backbones use a subset).
PHASES = ('Gmain', 'Greg', 'Gboth', 'Dmain', 'Dreg', 'Dboth')


class RealLogitListener(Protocol):
    """Anything fed with the logits of real images (``patches.overfit.RealSignCollector``)."""

    def accumulate(self, real_logits: torch.Tensor, main: bool = True) -> None: ...


class DiscriminatorPassContext(Protocol):
    """What a D-side method (CHAIN's ``ChainContext``) provides to the loss."""

    def pass_(self, label: str, r1: bool = False) -> ContextManager[Any]: ...

    def extra_loss(self) -> Optional[torch.Tensor]: ...


class GANLoss:
    """Hooks shared by every backbone's loss (see the module docstring)."""

    def __init__(self, device: torch.device, G: torch.nn.Module, D: torch.nn.Module,
                 augment_pipe: Optional[torch.nn.Module] = None):
        self.device = device
        self.G = G
        self.D = D
        self.augment_pipe = augment_pipe
        #: Replaceable reduction of the per-sample G adversarial loss (ATop-k hooks in here).
        self.generator_loss_reducer: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None
        #: Objects fed with every real-image logit tensor (the E[sign(D_real)] collector).
        self.real_logit_listeners: list[RealLogitListener] = []
        #: Context for labelled D passes and D's extra loss terms (CHAIN hooks in here).
        self.d_pass_context: Optional[DiscriminatorPassContext] = None
        #: How often each hook ran: 'reduce_generator_adv_loss', 'pass:dreal', 'augment', …
        self.hook_calls: collections.Counter[str] = collections.Counter()

    # ------------------------------------------------------------------ the interface of the loop

    def accumulate_gradients(self, phase: str, real_img: torch.Tensor, real_c: torch.Tensor,
                             gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float, cur_nimg: int = 0) -> None:
        """Run ``phase`` on one round of samples and accumulate its gradients (× gain)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The loss' training state for snapshots (e.g. StyleGAN2's path-length mean)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f'{type(self).__name__} holds no state, got {sorted(state)}')

    # ------------------------------------------------------------------ G side

    def reduce_generator_adv_loss(self, per_sample_loss: torch.Tensor, gen_logits: torch.Tensor) -> torch.Tensor:
        """Scalar G adversarial loss from per-sample losses [N] and D scores [N, ...] (ATop-k's hook)."""
        self.hook_calls['reduce_generator_adv_loss'] += 1
        if self.generator_loss_reducer is None:
            return per_sample_loss.mean()
        return self.generator_loss_reducer(per_sample_loss, gen_logits)

    def generator_adversarial_loss(self, gen_logits: torch.Tensor,
                                   formula: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``formula`` per element → per-sample mean (reported as Loss/G/loss) → the reduction hook."""
        per_sample = losses.per_sample_mean(formula(gen_logits))
        training_stats.report('Loss/G/loss', per_sample)
        return self.reduce_generator_adv_loss(per_sample, gen_logits.detach())

    # ------------------------------------------------------------------ D side

    def augment(self, img: torch.Tensor) -> torch.Tensor:
        """The D augmentation pipe (identity without one)."""
        if self.augment_pipe is None:
            return img
        self.hook_calls['augment'] += 1
        return self.augment_pipe(img)

    def discriminator_pass(self, label: str, r1_only: bool = False) -> ContextManager[Any]:
        """Label one D evaluation: 'dreal', 'dfake' or 'gfake'; ``r1_only`` for a lazy R1 pass."""
        self.hook_calls[f'pass:{label}' + (':r1' if r1_only else '')] += 1
        if self.d_pass_context is None:
            return contextlib.nullcontext()
        return self.d_pass_context.pass_(label, r1=r1_only)

    def discriminator_extra_loss(self) -> Optional[torch.Tensor]:
        """D's extra loss terms for the pass that just ran (CHAIN's 0MR), or None."""
        if self.d_pass_context is None:
            return None
        return self.d_pass_context.extra_loss()

    def run_D(self, img: torch.Tensor, c: torch.Tensor, label: str,
              r1_only: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Augment, evaluate ``D(img, c)`` in a labelled pass. Returns (logits, extra D loss or None)."""
        img = self.augment(img)
        with self.discriminator_pass(label, r1_only):
            logits = self.D(img, c)
            extra = self.discriminator_extra_loss()
        return logits, extra

    def add_extra_loss(self, loss: torch.Tensor, extra: Optional[torch.Tensor], which: str) -> torch.Tensor:
        """``loss + extra`` with the extra term reported as ``<name>/<which>`` (e.g. CHAIN/0MR/real)."""
        if extra is None:
            return loss
        name = getattr(self.d_pass_context, 'extra_loss_name', 'Loss/D/extra')
        training_stats.report(f'{name}/{which}', extra)
        return loss + extra

    # ------------------------------------------------------------------ statistics

    def observe_real_logits(self, real_logits: torch.Tensor, main: bool = True) -> None:
        """Report real scores/signs and feed the logits to the listeners (ADA / ATop-k / CHAIN p)."""
        self.hook_calls['observe_real_logits'] += 1
        training_stats.report('Loss/scores/real', real_logits)
        training_stats.report('Loss/signs/real', real_logits.sign())
        detached = real_logits.detach()
        for listener in self.real_logit_listeners:
            listener.accumulate(detached, main=main)

    def observe_fake_logits(self, fake_logits: torch.Tensor) -> None:
        """Report fake scores/signs (the D gap of ATop-k Fig. 3a reads them)."""
        training_stats.report('Loss/scores/fake', fake_logits)
        training_stats.report('Loss/signs/fake', fake_logits.sign())


def check_finite(phase: str, name: str, loss: torch.Tensor) -> None:
    """Stop on a NaN/inf loss before it reaches the optimiser (the loop adds the snapshot hint)."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise misc.NonFiniteError(f'{name} is not finite in phase {phase}')
