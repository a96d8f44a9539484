"""``--backbone=insgen``: InsGen (Yang et al., "Data-Efficient Instance Generation from Instance
Discrimination", NeurIPS 2021) on StyleGAN2-ADA's networks.

The plug-in (docs/insgen.md; the contract: docs/training.md §1) is StyleGAN2's
(:mod:`backbones.stylegan2`: presets, networks, phases, EMA, sampler) plus

* modules ``D_ema`` (a momentum copy of D, θ ← 0.999·θ + 0.001·θ_D once per iteration before the
  phases: :class:`DEmaController`), ``DHead`` and ``GHead`` (:mod:`backbones.insgen.heads`);
* the loss :class:`backbones.insgen.loss.InsGenLoss` — the three contrastive terms; the heads'
  Adam optimisers use the lazy-regularisation ratios (GHead: G's settings, lr·4/5, β^(4/5);
  DHead: D's, lr·16/17, β^(16/17)) and are saved with the loss' state;
* ``--ada-linear``: ADA's p set to target·kimg/total_kimg every ADA interval
  (:class:`AdaLinearController`, after ADA's own controller);
* ADA is required (the contrastive views are ADA's augmentations).
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch

import dnnlib
from backbones.base import BackboneConfig, BuildContext, ConfigContext, TrainingSetup
from backbones.insgen.heads import ContrastiveHead
from backbones.insgen.options import InsGenOptions
from backbones.stylegan2 import StyleGAN2Backbone
from dnnlib.util import UserError
from torch_utils import training_stats
from training.controllers import Controller, IterationInfo
from training.phases import build_optimizer

D_EMA_MOMENTUM = 0.999
QUEUE_FRACTION = 0.05
G_REG_RATIO = 4 / 5     # GHead's optimiser: G's lazy-regularisation ratio (G_reg_interval 4)
D_REG_RATIO = 16 / 17   # DHead's: D's (D_reg_interval 16)


def queue_size(dataset_size: int, mirror: bool, override: Optional[int]) -> int:
    """K = int(0.05 · images), doubled with x-flips (at least 1), unless ``--rqs``/``--fqs`` give it."""
    if override is not None:
        return override
    return max(int(QUEUE_FRACTION * dataset_size) * (2 if mirror else 1), 1)


def feature_channels(D_kwargs: dict) -> int:
    """D's channels at 4×4 (the contrastive feature width): min(channel_base / 4, channel_max)."""
    return min(int(D_kwargs['channel_base'] // 4), int(D_kwargs['channel_max']))


def head_optimizer_kwargs(opt_kwargs: dict, ratio: float) -> dnnlib.EasyDict:
    """Adam settings of a head: lr·ratio, β^ratio (the reference's lazy-regularisation scaling)."""
    kwargs = dnnlib.EasyDict(opt_kwargs)
    kwargs.lr = kwargs.lr * ratio
    kwargs.betas = [float(beta) ** ratio for beta in kwargs.betas]
    return kwargs


class DEmaController(Controller):
    """D_ema ← lerp(D, D_ema, 0.999) on parameters, buffers copied, before each iteration's phases."""
    name = 'insgen_d_ema'

    def __init__(self, D: torch.nn.Module, D_ema: torch.nn.Module, momentum: float = D_EMA_MOMENTUM):
        self.D, self.D_ema, self.momentum = D, D_ema, momentum

    @torch.no_grad()
    def begin_iteration(self, info: IterationInfo) -> None:
        for p_ema, p in zip(self.D_ema.parameters(), self.D.parameters()):
            p_ema.copy_(p_ema * self.momentum + p * (1 - self.momentum))
        for b_ema, b in zip(self.D_ema.buffers(), self.D.buffers()):
            b_ema.copy_(b)


class AdaLinearController(Controller):
    """``--ada-linear``: p = target · (cur_nimg / 1000) / total_kimg every ``interval`` iterations."""
    name = 'insgen_ada_linear'

    def __init__(self, augment_pipe: torch.nn.Module, target: float, total_kimg: float, interval: int = 4):
        self.augment_pipe, self.target, self.total_kimg, self.interval = augment_pipe, target, total_kimg, interval

    def end_iteration(self, info: IterationInfo) -> None:
        if info.batch_idx % self.interval == 0:
            p = self.target * (info.cur_nimg / 1000) / self.total_kimg
            self.augment_pipe.p.copy_(torch.as_tensor(p, dtype=self.augment_pipe.p.dtype))

    def status_fields(self) -> list[str]:
        training_stats.report0('InsGen/ada_linear_p', float(self.augment_pipe.p))
        return []


class InsGenBackbone(StyleGAN2Backbone):
    name = 'insgen'
    snapshot_classes = dict(StyleGAN2Backbone.snapshot_classes, D_ema=('training.networks.Discriminator',),
                            DHead=('backbones.insgen.heads.ContrastiveHead',),
                            GHead=('backbones.insgen.heads.ContrastiveHead',))
    summary = "InsGen: StyleGAN2-ADA with contrastive instance discrimination (D_ema, DHead, GHead)"
    options = InsGenOptions
    default_preset = 'paper256'

    def configure(self, ctx: ConfigContext) -> BackboneConfig:
        opts: InsGenOptions = ctx.options  # type: ignore[assignment]
        configured = super().configure(ctx)
        kw = configured.kwargs
        kw.loss_kwargs.class_name = 'backbones.insgen.loss.InsGenLoss'
        kw.loss_kwargs.cl_on_g = not opts.no_cl_on_g
        sizes = dict(DHead=queue_size(ctx.dataset_size, ctx.mirror, opts.rqs),
                     GHead=queue_size(ctx.dataset_size, ctx.mirror, opts.fqs))
        kw.insgen = dnnlib.EasyDict(inplanes=feature_channels(kw.D_kwargs), queue_sizes=sizes,
                                    ada_linear=opts.ada_linear, total_kimg=configured.total_kimg)
        for name, size in sizes.items():
            if size < configured.batch_size:
                print(f'WARNING: InsGen {name} queue holds {size} keys, fewer than the batch {configured.batch_size}: '
                      f'every enqueue overwrites it (--{"rqs" if name == "DHead" else "fqs"} sets its size)')
        configured.desc += ''.join(part for part, on in [(f'-rqs{opts.rqs}', opts.rqs is not None),
                                                         (f'-fqs{opts.fqs}', opts.fqs is not None),
                                                         ('-noclg', opts.no_cl_on_g),
                                                         ('-adalinear', opts.ada_linear)] if on)
        return configured

    def build(self, ctx: BuildContext) -> TrainingSetup:
        if not ctx.augment_kwargs or ctx.augment_kwargs.get('class_name') != 'training.augment.AugmentPipe':
            raise UserError('--backbone=insgen needs ADA (--aug=ada, the default, or --aug=fixed): its contrastive '
                            'views are ADA augmentations')
        kw = dnnlib.EasyDict(ctx.kwargs)
        kw.loss_kwargs = dict(kw.loss_kwargs, num_gpus=ctx.num_gpus)
        setup = super().build(BuildContext(**dict(vars(ctx), kwargs=kw)))
        D, loss = setup.D, setup.loss
        D_ema = copy.deepcopy(D).eval().requires_grad_(False)
        ins = kw.insgen
        heads = {name: ContrastiveHead(ins.inplanes, size).to(ctx.device).requires_grad_(False)
                 for name, size in ins.queue_sizes.items()}
        opts = dict(DHead=build_optimizer(heads['DHead'].mlp.parameters(),
                                          head_optimizer_kwargs(kw.D_opt_kwargs, D_REG_RATIO)),
                    GHead=build_optimizer(heads['GHead'].mlp.parameters(),
                                          head_optimizer_kwargs(kw.G_opt_kwargs, G_REG_RATIO)))
        loss.attach(D_ema, heads['DHead'], heads['GHead'], opts['DHead'], opts['GHead'])
        setup.modules.update(D_ema=D_ema, **heads)
        setup.controllers.append(DEmaController(D, D_ema))
        if ins.ada_linear:
            target = 0.6 if ctx.ada_target is None else ctx.ada_target
            setup.controllers.append(AdaLinearController(setup.augment_pipe, target, ins.total_kimg, ctx.ada_interval))
        return setup

    def print_summaries(self, setup: TrainingSetup, batch_gpu: int, device: torch.device) -> None:
        super().print_summaries(setup, batch_gpu, device)
        for name in ('DHead', 'GHead'):
            head: Any = setup.modules[name]
            print(f'{name}: {sum(p.numel() for p in head.mlp.parameters()):,d} parameters, queue {head.queue_size} keys')
        print()


BACKBONE = InsGenBackbone()
