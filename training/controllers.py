"""The three adaptive controllers of a run and where they plug into the StyleGAN2 loop.

Spec README decision 5: ADA's p (augmentation), ATop-k's p and k, CHAIN's p. They read the
same statistic — the signs of D's real logits — but keep their own rules and states:

* ADA: ``patches.overfit.OverfitTracker`` bound to ``augment_pipe.p`` (ADA §3.1);
* ATop-k: ``patches.atopk.ATopk`` (own tracker, or ADA's with ``--atopk-p=ada``), hooked into
  ``StyleGAN2Loss.generator_loss_reducer`` (ATop-k Eq. 10–12);
* CHAIN: the ``ChainContext`` owned by the discriminator (``patches.chain``), hooked into the
  loss's labelled D passes; its p is updated every iteration from the Dmain real logits.

``end_iteration`` runs them in the order of methods.md §9.7. All states round-trip through
snapshots (CHAIN's as D buffers, the others via ``state_dict``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from dnnlib.util import UserError
from patches.atopk import ATopk, add_d_gap, append_trace
from patches.overfit import OverfitTracker
from torch_utils import training_stats


class Controllers:
    """ADA tracker, ATop-k and CHAIN of one run (each optional)."""

    def __init__(self, loss: Any, ada: Optional[OverfitTracker], atopk: Optional[ATopk], chain_ctx: Any):
        self.loss = loss
        self.ada = ada
        self.atopk = atopk
        self.chain_ctx = chain_ctx

    @classmethod
    def build(cls, *, loss: Any, D: torch.nn.Module, augment_pipe: Optional[torch.nn.Module], batch_size: int,
              random_seed: int, ada_target: Optional[float], ada_interval: int, ada_kimg: float,
              atopk_kwargs: Optional[dict], chain_kwargs: Optional[dict] = None) -> 'Controllers':
        """Create the enabled controllers and hook them into ``loss``."""
        ada = None
        if ada_target is not None and augment_pipe is not None and hasattr(augment_pipe, 'p'):
            ada = OverfitTracker(batch_size, target=ada_target, interval=ada_interval, kimg=ada_kimg).bind(augment_pipe.p)
            loss.real_sign_listeners.append(ada)

        atopk = None
        if atopk_kwargs is not None:
            kwargs = dict(atopk_kwargs)
            if kwargs.get('p_source') == 'ada' and ada is None:
                raise UserError('--atopk-p=ada needs --aug=ada (ADA\'s p)')
            try:
                atopk = ATopk(**kwargs, shared_tracker=ada if kwargs.get('p_source') == 'ada' else None,
                              report=training_stats.report)
            except ValueError as e:
                raise UserError(f'ATop-k: {e}') from None
            loss.generator_loss_reducer = atopk
            if atopk.owns_tracker:
                loss.real_sign_listeners.append(atopk)

        chain_ctx = getattr(D, 'chain_ctx', None)
        if chain_ctx is not None:
            loss.d_pass_context = chain_ctx
        return cls(loss, ada, atopk, chain_ctx)

    def end_iteration(self, batch_idx: int, cur_nimg: int, dataset_size: int) -> None:
        """After G_ema and the counters: CHAIN p → ADA p → ATop-k p and k (methods.md §9.7)."""
        real_logits = self.loss.take_dmain_real_logits()
        if self.chain_ctx is not None and real_logits is not None:
            self.chain_ctx.update_p(real_logits, iteration=batch_idx - 1)
        if self.ada is not None:
            self.ada.update(batch_idx)
        if self.atopk is not None:
            self.atopk.end_iteration(batch_idx, cur_nimg, dataset_size)

    def status_fields(self) -> list[str]:
        """Extra status-line fields (also reported as stats)."""
        fields = []
        report0 = training_stats.report0
        if self.atopk is not None:  # ATopk/k and ATopk/p are reported by every Gmain step
            fields.append(f'atopk_k {self.atopk.k:<3d}')
            fields.append(f'atopk_p {self.atopk.p:.3f}')
        if self.chain_ctx is not None:
            fields.append(f"chain_p {report0('CHAIN/p', self.chain_ctx.p_value):.3f}")
        return fields

    def add_derived_stats(self, stats: dict) -> None:
        """Statistics computed from others at the end of a tick (the D gap of ATop-k Fig. 3a)."""
        add_d_gap(stats)

    def flush_trace(self, run_dir: Optional[str]) -> None:
        """Append this tick's per-iteration k trace to ``atopk-trace.jsonl`` (rank 0 passes run_dir)."""
        if self.atopk is None:
            return
        history = self.atopk.pop_history()
        if run_dir is not None:
            append_trace(run_dir, history)

    def state_dict(self) -> dict[str, Any]:
        return dict(ada=self.ada.state_dict() if self.ada is not None else None,
                    atopk=self.atopk.state_dict() if self.atopk is not None else None)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ('ada', 'atopk'):
            controller = getattr(self, name)
            saved = state.get(name)
            if controller is not None and saved is not None:
                try:
                    controller.load_state_dict(saved)
                except ValueError as e:
                    raise UserError(f'cannot resume the {name} state: {e}') from None
            elif controller is not None:
                print(f'Note: the snapshot holds no {name} state; it starts fresh.')
