"""Training phases and the optimisers they step, built from their configured class.

A :class:`Phase` is one optimiser step per ``interval`` iterations: the loss accumulates the
gradients of ``name`` (e.g. 'Gmain', 'Dreg') over the rounds of the batch, the loop averages
them over processes and steps ``opt``. A backbone returns its phases in execution order.

:func:`lazy_regularization_phases` is StyleGAN2's scheme (docs/stylegan2-ada.md §4): a main
phase every iteration and a regularisation phase every ``reg_interval`` iterations sharing one
optimiser whose learning rate and betas are rescaled by ``c = reg_interval / (reg_interval + 1)``
(lr·c, β^c); ``reg_interval=None`` gives one 'both' phase instead.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

import torch

import dnnlib
from torch_utils import distributed, misc


@dataclasses.dataclass
class Phase:
    """One optimiser step of the loop: which loss phase, which module's parameters, how often."""
    name: str                        # the loss phase (GANLoss.accumulate_gradients' ``phase``)
    module: torch.nn.Module          # its parameters are trained (requires_grad on during the phase)
    opt: torch.optim.Optimizer
    interval: int = 1                # run when batch_idx % interval == 0; the gain of the loss
    opt_name: str = ''               # the optimiser's name in snapshots (phases may share one)

    def __post_init__(self) -> None:
        if not self.opt_name:
            self.opt_name = self.name[0]


def build_optimizer(params: Iterable[torch.nn.Parameter], opt_kwargs: dict) -> torch.optim.Optimizer:
    """``class_name(params, **kwargs)``, e.g. ``{'class_name': 'torch.optim.Adam', 'lr': 2e-3, 'betas': [0, 0.99]}``."""
    kwargs = dnnlib.EasyDict(opt_kwargs)
    class_name = kwargs.pop('class_name', 'torch.optim.Adam')
    return dnnlib.util.construct_class_by_name(list(params), class_name=class_name, **kwargs)


def lazy_regularization_phases(prefix: str, module: torch.nn.Module, opt_kwargs: dict,
                               reg_interval: Optional[int]) -> list[Phase]:
    """``[prefix+'main', prefix+'reg']`` sharing one optimiser with lr·c and β^c, or ``[prefix+'both']``."""
    opt_kwargs = dnnlib.EasyDict(opt_kwargs)
    params = list(module.parameters())
    if reg_interval is None:
        return [Phase(prefix + 'both', module, build_optimizer(params, opt_kwargs), 1, prefix)]
    mb_ratio = reg_interval / (reg_interval + 1)
    opt_kwargs.lr = opt_kwargs.lr * mb_ratio
    if 'betas' in opt_kwargs:
        opt_kwargs.betas = [beta ** mb_ratio for beta in opt_kwargs.betas]
    opt = build_optimizer(params, opt_kwargs)
    return [Phase(prefix + 'main', module, opt, 1, prefix), Phase(prefix + 'reg', module, opt, reg_interval, prefix)]


def average_gradients(module: torch.nn.Module, num_gpus: int) -> list[torch.nn.Parameter]:
    """All-reduce-average the gradients of ``module`` over ranks; clean NaN/inf like upstream."""
    params = [p for p in module.parameters() if p.grad is not None]
    if num_gpus > 1 and params:
        flat = torch.cat([p.grad.flatten() for p in params])
        distributed.all_reduce_sum_(flat, what=f"gradients of {module.__class__.__name__}")
        flat /= num_gpus
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n
    misc.nan_to_num_grads(params)
    return params
