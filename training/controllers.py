"""The adaptive controllers of a run: one statistic, an explicit ordered list, fail-loud checks.

docs/README.md decision 5: ADA's p (augmentation), ATop-k's p and k, CHAIN's p — and later
backbone-owned ones (Diffusion-ProjectedGAN's T, InsGen's schedules) — read the same statistic,
the signs of D's real logits, but keep their own rules and states. Here:

* one :class:`patches.overfit.RealSignCollector` is the loss' only real-logit listener; at the
  end of each iteration its moments (all real passes / Dmain passes only) are handed to every
  controller in :class:`IterationInfo`;
* :class:`ControllerList` runs the controllers in the fixed order of docs/training.md §3
  (``begin_iteration`` before the phases, ``end_iteration`` after G_ema and the counters), the
  order in which :func:`build_controllers` lists them;
* after the first iteration :meth:`ControllerList.verify_hooks` stops the run when a method is
  switched on but the backbone's loss never went through its hook (``MethodHookError``).

Controller states are saved in snapshots under the controller's name (CHAIN's live in D's buffers).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

from dnnlib.util import UserError
from patches.atopk import ATopk, add_d_gap, append_trace
from patches.overfit import OverfitTracker, RealSignCollector
from torch_utils import training_stats


class MethodHookError(UserError):
    """A method is switched on but the backbone's loss never used the hook it works through."""


@dataclasses.dataclass
class IterationInfo:
    """What a controller sees. ``batch_idx``/``cur_nimg``: iterations/images done *after* this
    iteration at ``end_iteration`` (before it at ``begin_iteration``); ``signs_all``/``signs_main``:
    this iteration's float64 [count, Σ sign] of all real passes / Dmain real passes (None at begin
    or when no real pass ran)."""
    batch_idx: int
    cur_nimg: int
    dataset_size: int
    signs_all: Optional[torch.Tensor] = None
    signs_main: Optional[torch.Tensor] = None


def require_real_logits(loss: Any, backbone: str, method: str, consumer: str) -> None:
    """``MethodHookError`` unless the loss reported real logits (the statistic ``consumer`` reads)."""
    if loss.hook_calls['observe_real_logits'] == 0:
        raise MethodHookError(f"backbone '{backbone}': {method} but no real logits reached {consumer}; "
                              'its loss must report them with GANLoss.observe_real_logits')


class Controller:
    """Base of a controller: every hook is optional. ``name`` keys its snapshot state;
    ``status_rank`` orders the status-line fields (upstream's augment first)."""
    name: str = ''
    status_rank: int = 10

    def begin_iteration(self, info: IterationInfo) -> None:
        """Before the phases of an iteration."""

    def after_phase(self, phase: str, info: IterationInfo) -> None:
        """Right after phase ``phase`` stepped its optimiser (``info``: counters before this
        iteration, moments of the real passes so far)."""

    def end_iteration(self, info: IterationInfo) -> None:
        """After G_ema and the counters of an iteration."""

    def verify_hooks(self, loss: Any, backbone: str) -> None:
        """Raise ``MethodHookError`` if the first iteration never reached this method's hook."""

    def status_fields(self) -> list[str]:
        return []

    def flush(self, run_dir: Optional[str]) -> None:
        """Tick maintenance (rank 0 passes run_dir, other ranks None)."""

    @property
    def has_state(self) -> bool:
        """Whether ``state_dict`` holds anything a snapshot must keep."""
        return False

    def state_dict(self) -> Optional[dict[str, Any]]:
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class AugmentUseCheck(Controller):
    """A D augmentation pipe without p (DiffAugment): nothing to adapt, but it must run."""
    name = 'augment'

    def verify_hooks(self, loss: Any, backbone: str) -> None:
        if loss.hook_calls['augment'] == 0:
            raise MethodHookError(f"backbone '{backbone}': the D augmentation pipe (--aug/--diffaugment) never ran; "
                                  'its loss must evaluate D through GANLoss.run_D (or call GANLoss.augment)')


class AugmentController(AugmentUseCheck):
    """The D augmentation pipe's p: ADA's tracker bound to ``augment_pipe.p`` (docs/methods.md §3.1), or fixed."""
    name = 'ada'
    status_rank = 0

    def __init__(self, augment_pipe: torch.nn.Module, tracker: Optional[OverfitTracker]):
        self.augment_pipe = augment_pipe
        self.tracker = tracker

    def end_iteration(self, info: IterationInfo) -> None:
        if self.tracker is None:
            return
        if info.signs_all is not None:
            self.tracker.add_moments(info.signs_all)
        self.tracker.update(info.batch_idx)

    def verify_hooks(self, loss: Any, backbone: str) -> None:
        super().verify_hooks(loss, backbone)
        if self.tracker is not None:
            require_real_logits(loss, backbone, '--aug=ada', "ADA's tracker")

    def status_fields(self) -> list[str]:
        return [f"augment {training_stats.report0('Progress/augment', float(self.augment_pipe.p.cpu())):.3f}"]

    @property
    def has_state(self) -> bool:
        return self.tracker is not None

    def state_dict(self) -> Optional[dict[str, Any]]:
        return self.tracker.state_dict() if self.tracker is not None else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.tracker is not None:
            self.tracker.load_state_dict(state)


class ATopkController(Controller):
    """ATop-k (patches/atopk.py): its reduction is the loss' ``generator_loss_reducer``."""
    name = 'atopk'
    status_rank = 1

    def __init__(self, atopk: ATopk):
        self.atopk = atopk

    def end_iteration(self, info: IterationInfo) -> None:
        if self.atopk.owns_tracker and info.signs_all is not None:
            self.atopk.tracker.add_moments(info.signs_all)
        self.atopk.end_iteration(info.batch_idx, info.cur_nimg, info.dataset_size)

    def verify_hooks(self, loss: Any, backbone: str) -> None:
        if loss.hook_calls['reduce_generator_adv_loss'] == 0:
            raise MethodHookError(f"backbone '{backbone}': --atopk=1 but its G step never reduced the per-sample G loss "
                                  'through GANLoss.reduce_generator_adv_loss (the ATop-k hook); ATop-k would do nothing')
        if self.atopk.owns_tracker:
            require_real_logits(loss, backbone, '--atopk=1', "ATop-k's tracker")

    def status_fields(self) -> list[str]:
        return [f'atopk_k {self.atopk.k:<3d}', f'atopk_p {self.atopk.p:.3f}']  # stats: reported per G step

    def flush(self, run_dir: Optional[str]) -> None:
        history = self.atopk.pop_history()
        if run_dir is not None:
            append_trace(run_dir, history)

    has_state = True

    def state_dict(self) -> Optional[dict[str, Any]]:
        return self.atopk.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.atopk.load_state_dict(state)


class ChainController(Controller):
    """CHAIN's p (patches/chain.py ``ChainContext``): every iteration from the Dmain real logits —
    at the end of the iteration, or right after phase ``update_after`` (FastGAN's official code
    updates p after the D step, before the G step: ``Backbone.chain_update_after``)."""
    name = 'chain'
    status_rank = 2

    def __init__(self, chain_ctx: Any, update_after: Optional[str] = None):
        self.chain_ctx = chain_ctx
        self.update_after = update_after

    def after_phase(self, phase: str, info: IterationInfo) -> None:
        if phase == self.update_after:
            self.chain_ctx.update_p_from_moments(info.signs_main, iteration=info.batch_idx)

    def end_iteration(self, info: IterationInfo) -> None:
        if self.update_after is None:
            self.chain_ctx.update_p_from_moments(info.signs_main, iteration=info.batch_idx - 1)

    def verify_hooks(self, loss: Any, backbone: str) -> None:
        if loss.hook_calls['pass:dreal'] == 0:
            raise MethodHookError(f"backbone '{backbone}': --chain=1 but its D never ran a labelled real pass; "
                                  "its loss must evaluate D on reals inside GANLoss.discriminator_pass('dreal') "
                                  '(GANLoss.run_D does)')
        if self.chain_ctx.layer_calls['dreal'] == 0:
            raise MethodHookError(f"backbone '{backbone}': --chain=1 but no CHAIN layer ran in the labelled real pass; "
                                  "the backbone must place CHAIN layers in the D its loss evaluates")
        require_real_logits(loss, backbone, '--chain=1', "CHAIN's p controller")

    def status_fields(self) -> list[str]:
        return [f"chain_p {training_stats.report0('CHAIN/p', self.chain_ctx.p_value):.3f}"]


class ControllerList:
    """The controllers of one run, in execution order, fed by one real-sign collector."""

    def __init__(self, controllers: list[Controller], collector: RealSignCollector):
        names = [c.name for c in controllers]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f'controller names must be unique and non-empty: {names}')
        self.controllers = list(controllers)
        self.collector = collector

    def __iter__(self):
        return iter(self.controllers)

    def get(self, name: str) -> Optional[Controller]:
        return next((c for c in self.controllers if c.name == name), None)

    def begin_iteration(self, batch_idx: int, cur_nimg: int, dataset_size: int) -> None:
        info = IterationInfo(batch_idx, cur_nimg, dataset_size)
        for controller in self.controllers:
            controller.begin_iteration(info)

    def after_phase(self, phase: str, batch_idx: int, cur_nimg: int, dataset_size: int) -> None:
        signs_all, signs_main = self.collector.peek()
        info = IterationInfo(batch_idx, cur_nimg, dataset_size, signs_all, signs_main)
        for controller in self.controllers:
            controller.after_phase(phase, info)

    def end_iteration(self, batch_idx: int, cur_nimg: int, dataset_size: int) -> None:
        signs_all, signs_main = self.collector.take()
        info = IterationInfo(batch_idx, cur_nimg, dataset_size, signs_all, signs_main)
        for controller in self.controllers:
            controller.end_iteration(info)

    def verify_hooks(self, loss: Any, backbone: str) -> None:
        for controller in self.controllers:
            controller.verify_hooks(loss, backbone)

    def status_fields(self) -> list[str]:
        ranked = sorted(self.controllers, key=lambda c: c.status_rank)  # stable: ties keep execution order
        return [field for c in ranked for field in c.status_fields()]

    def add_derived_stats(self, stats: dict) -> None:
        """Statistics computed from others at the end of a tick (the D gap of ATop-k Fig. 3a)."""
        add_d_gap(stats)

    def flush(self, run_dir: Optional[str]) -> None:
        for controller in self.controllers:
            controller.flush(run_dir)

    def states(self) -> dict[str, Any]:
        """Named states for snapshots (controllers without a state are skipped)."""
        return {c.name: c for c in self.controllers if c.has_state}


def build_controllers(*, loss: Any, chain_ctx: Any, augment_pipe: Optional[torch.nn.Module], batch_size: int,
                      ada_target: Optional[float], ada_interval: int, ada_kimg: float,
                      atopk_kwargs: Optional[dict], backbone_controllers: list[Controller],
                      backbone: str, chain_enabled: bool, chain_update_after: Optional[str] = None) -> ControllerList:
    """Create the enabled method controllers, hook them into ``loss`` and order them (§3 of docs/training.md)."""
    collector = RealSignCollector()
    loss.real_logit_listeners.append(collector)
    ordered: list[Controller] = []

    if chain_ctx is not None:
        loss.d_pass_context = chain_ctx
        ordered.append(ChainController(chain_ctx, update_after=chain_update_after))
    elif chain_enabled:
        raise UserError(f"--chain=1: backbone '{backbone}' placed no CHAIN layers in its discriminator")

    ada = None
    if augment_pipe is not None and hasattr(augment_pipe, 'p'):
        if ada_target is not None:
            ada = OverfitTracker(batch_size, target=ada_target, interval=ada_interval, kimg=ada_kimg).bind(augment_pipe.p)
        ordered.append(AugmentController(augment_pipe, ada))
    elif augment_pipe is not None:
        ordered.append(AugmentUseCheck())

    ordered += backbone_controllers

    if atopk_kwargs is not None:
        kwargs = dict(atopk_kwargs)
        if kwargs.get('p_source') == 'ada' and ada is None:
            raise UserError("--atopk-p=ada needs --aug=ada (ADA's p)")
        try:
            atopk = ATopk(**kwargs, shared_tracker=ada if kwargs.get('p_source') == 'ada' else None,
                          report=training_stats.report)
        except ValueError as e:
            raise UserError(f'ATop-k: {e}') from None
        loss.generator_loss_reducer = atopk
        ordered.append(ATopkController(atopk))
    return ControllerList(ordered, collector)
