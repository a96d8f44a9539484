"""``--backbone=stylegan2``: NVIDIA's StyleGAN2-ADA networks, loss, presets and EMA.

The networks and the loss keep their upstream-style class paths (``training.networks``,
``training.loss``) so existing snapshots and configs keep loading; this package is the plug-in
that configures and assembles them:

* flags and ``--cfg`` presets: :mod:`backbones.stylegan2.options` (docs/stylegan2-ada.md §2);
* networks G, D (CHAIN after conv0, conv1 and skip of D's blocks, patches/README.md decision
  18), G_ema, and the D augmentation pipe before D;
* loss :class:`training.loss.StyleGAN2Loss` with lazy regularisation (Gmain, Greg every 4,
  Dmain, Dreg every 16; docs/stylegan2-ada.md §4), Adam(β = (0, 0.99), ε = 1e-8);
* EMA: half-life ``ema_kimg`` with ramp-up (:class:`training.ema.HalfLifeEMA`);
* sampling: ``G(z, c, truncation_psi, noise_mode)``; grids use constant noise, metrics G's
  defaults (random noise, ψ = 1), as upstream;
* precision: the top ``num_fp16_res`` = 4 resolutions of G and D (upstream's float16 blocks,
  conv_clamp 256) compute in ``--precision``'s dtype (torch_utils/precision.py); ``--fp32=1``
  removes those blocks and the clamp, as upstream, and cannot be combined with
  ``--precision=fp16|bf16``.
"""

from __future__ import annotations

import copy
import math

import torch

import dnnlib
from backbones.base import (AUGMENT_CLASSES, Backbone, BackboneConfig, BuildContext, ConfigContext, PrecisionUse,
                            TrainingSetup, apply_length_and_batch, build_generator_and_discriminator, check_preset,
                            make_augment_pipe)
from backbones.stylegan2.options import CFG_SPECS, StyleGAN2Options
from dnnlib.util import UserError
from torch_utils import misc, training_stats
from training import ema, networks, phases


class StyleGAN2Sampler:
    """Draws ``G(z, c, truncation_psi, noise_mode)`` (z [N, z_dim], one-hot c [N, c_dim])."""

    def __init__(self, G: torch.nn.Module, noise_mode: str = 'const', truncation_psi: float = 1.0):
        self.G, self.noise_mode, self.truncation_psi = G, noise_mode, truncation_psi
        self.z_dim, self.c_dim = G.z_dim, G.c_dim

    def __call__(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.G(z=z, c=c, truncation_psi=self.truncation_psi, noise_mode=self.noise_mode)


class StyleGAN2Backbone(Backbone):
    name = 'stylegan2'
    summary = "NVIDIA's StyleGAN2-ADA networks and loss"
    options = StyleGAN2Options
    presets = tuple(CFG_SPECS)
    default_preset = 'auto'
    snapshot_classes = dict(G=('training.networks.Generator',), G_ema=('training.networks.Generator',),
                            D=('training.networks.Discriminator',), augment_pipe=AUGMENT_CLASSES)

    # ------------------------------------------------------------------ train.py

    def configure(self, ctx: ConfigContext) -> BackboneConfig:
        opts: StyleGAN2Options = ctx.options  # type: ignore[assignment]
        if opts.fp32 and ctx.precision in ('fp16', 'bf16'):
            raise UserError(f'--fp32=1 removes the reduced-precision blocks that --precision={ctx.precision} would '
                            'compute in; give one of the two')
        cfg = check_preset(self, ctx.cfg)
        spec, desc = self._preset(cfg, ctx.gpus, ctx.resolution)
        kwargs = self._networks(cfg, spec, opts, ctx)
        snapshot_ticks = 10 if cfg == 'low_shot' else None
        if opts.gamma is not None:
            desc += f'-gamma{opts.gamma:g}'
            kwargs.loss_kwargs.r1_gamma = opts.gamma
        more, total_kimg, batch_size, batch_gpu = apply_length_and_batch(
            ctx, spec.kimg, spec.mb, max(spec.mb // spec.ref_gpus, 1))
        desc += more
        mbstd = kwargs.D_kwargs.epilogue_kwargs.mbstd_group_size
        if mbstd is not None and mbstd > 0 and batch_gpu % min(mbstd, batch_gpu) != 0:
            raise UserError(f'--mbstd-group={mbstd} must divide the per-GPU batch {batch_gpu}')
        if ctx.transfer:  # upstream's resume: no EMA ramp-up
            kwargs.ema_kwargs.ema_rampup = None
        transfer_desc = ''
        if opts.freezed:
            transfer_desc = f'-freezed{opts.freezed:d}'
            kwargs.D_kwargs.block_kwargs.freeze_layers = opts.freezed
        return BackboneConfig(kwargs=kwargs, total_kimg=total_kimg, batch_size=batch_size, batch_gpu=batch_gpu,
                              desc=desc, transfer_desc=transfer_desc, snapshot_ticks=snapshot_ticks)

    @staticmethod
    def _preset(cfg: str, gpus: int, resolution: int) -> tuple[dnnlib.EasyDict, str]:
        """The preset's values, with upstream's ``auto`` formulas; returns (spec, run-name part)."""
        desc = f'-{cfg}'
        spec = dnnlib.EasyDict(CFG_SPECS[cfg])
        if cfg == 'auto':
            desc += f'{gpus:d}'
            spec.ref_gpus = gpus
            spec.mb = max(min(gpus * min(4096 // resolution, 32), 64), gpus)
            spec.mbstd = min(spec.mb // gpus, 4)
            spec.fmaps = 1 if resolution >= 512 else 0.5
            spec.lrate = 0.002 if resolution >= 1024 else 0.0025
            spec.gamma = 0.0002 * (resolution ** 2) / spec.mb
            spec.ema = spec.mb * 10 / 32
        if spec.ref_gpus < 0:
            spec.ref_gpus = gpus
        return spec, desc

    @staticmethod
    def _networks(cfg: str, spec: dnnlib.EasyDict, opts: StyleGAN2Options, ctx: ConfigContext) -> dnnlib.EasyDict:
        """G/D/optimiser/loss/EMA kwargs of a preset and the network flags."""
        channel_base = int(spec.fmaps * 32768) if opts.cbase is None else opts.cbase
        channel_max = 512 if opts.cmax is None else opts.cmax
        fp16_res, conv_clamp = (0, None) if opts.fp32 else (4, 256)
        G_kwargs = dnnlib.EasyDict(
            class_name='training.networks.Generator', z_dim=512, w_dim=512,
            mapping_kwargs=dnnlib.EasyDict(num_layers=spec.map if opts.map is None else opts.map),
            synthesis_kwargs=dnnlib.EasyDict(channel_base=channel_base, channel_max=channel_max,
                                             num_fp16_res=fp16_res, conv_clamp=conv_clamp))
        mbstd = spec.mbstd if opts.mbstd_group is None else opts.mbstd_group
        D_kwargs = dnnlib.EasyDict(
            class_name='training.networks.Discriminator', channel_base=channel_base, channel_max=channel_max,
            num_fp16_res=fp16_res, conv_clamp=conv_clamp, block_kwargs=dnnlib.EasyDict(),
            mapping_kwargs=dnnlib.EasyDict(), epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=mbstd))
        if opts.nhwc:
            G_kwargs.synthesis_kwargs.fp16_channels_last = True
            D_kwargs.block_kwargs.fp16_channels_last = True
        if ctx.chain is not None:
            D_kwargs.chain_kwargs = dnnlib.EasyDict(ctx.chain)
        adam = dict(class_name='torch.optim.Adam', betas=[0, 0.99], eps=1e-8)
        kwargs = dnnlib.EasyDict(
            G_kwargs=G_kwargs, D_kwargs=D_kwargs,
            G_opt_kwargs=dnnlib.EasyDict(adam, lr=spec.lrate if ctx.glr is None else ctx.glr),
            D_opt_kwargs=dnnlib.EasyDict(adam, lr=spec.lrate if ctx.dlr is None else ctx.dlr),
            loss_kwargs=dnnlib.EasyDict(class_name='training.loss.StyleGAN2Loss', r1_gamma=spec.gamma),
            G_reg_interval=4, D_reg_interval=16,
            ema_kwargs=dnnlib.EasyDict(class_name='training.ema.HalfLifeEMA', ema_kimg=spec.ema, ema_rampup=spec.ramp))
        if cfg == 'cifar':
            kwargs.loss_kwargs.update(pl_weight=0, style_mixing_prob=0)
            D_kwargs.architecture = 'orig'
        return kwargs

    def precision_use(self, kwargs: dict, resolution: int) -> PrecisionUse:
        """The blocks built with ``use_fp16`` (the top ``num_fp16_res`` resolutions of G and D, at
        least 8 px; docs/stylegan2-arithmetic.md §7.4), with their conv_clamp; none with ``--fp32=1``."""
        num_res = max(kwargs['G_kwargs']['synthesis_kwargs'].get('num_fp16_res', 0),
                      kwargs['D_kwargs'].get('num_fp16_res', 0))
        if num_res == 0:
            return PrecisionUse(None, '--fp32=1 (no reduced-precision blocks, no conv_clamp)')
        log2 = int(round(math.log2(resolution)))
        lowest = networks._fp16_resolution(log2, num_res)
        count = log2 - int(round(math.log2(lowest))) + 1
        if count <= 0:
            return PrecisionUse(None, f'at {resolution} px no block is above 8 px (num_fp16_res={num_res})')
        clamp = kwargs['D_kwargs'].get('conv_clamp')
        span = f'{lowest} px' if lowest == resolution else f'{lowest}-{resolution} px'
        which = 'the top resolution' if count == 1 else f'the top {count} resolutions'
        return PrecisionUse(f'{which} of G and D, {span}, conv_clamp {"none" if clamp is None else f"{clamp:g}"}')

    # ------------------------------------------------------------------ run time

    def build(self, ctx: BuildContext) -> TrainingSetup:
        kw = dnnlib.EasyDict(ctx.kwargs)
        G, D, G_ema = build_generator_and_discriminator(ctx, kw.G_kwargs, kw.D_kwargs)
        augment_pipe = make_augment_pipe(ctx)
        loss = dnnlib.util.construct_class_by_name(device=ctx.device, G=G, D=D, augment_pipe=augment_pipe,
                                                   **kw.loss_kwargs)
        run_phases = (phases.lazy_regularization_phases('G', G, kw.G_opt_kwargs, kw.G_reg_interval)
                      + phases.lazy_regularization_phases('D', D, kw.D_opt_kwargs, kw.D_reg_interval))
        return TrainingSetup(modules=dict(G=G, D=D, G_ema=G_ema, augment_pipe=augment_pipe), loss=loss,
                             phases=run_phases, ema=ema.build_ema(kw.ema_kwargs), states=dict(loss=loss))

    def sampler(self, G: torch.nn.Module, *, noise_mode: str = 'const',
                truncation_psi: float = 1.0) -> StyleGAN2Sampler:
        return StyleGAN2Sampler(G, noise_mode=noise_mode, truncation_psi=truncation_psi)

    def print_summaries(self, setup: TrainingSetup, batch_gpu: int, device: torch.device) -> None:
        """Upstream's module tables, leaving every buffer (w_avg, CHAIN statistics) as it was."""
        G, D = setup.G, setup.D
        saved = [copy.deepcopy(module.state_dict()) for module in (G, D)]
        z = torch.zeros([batch_gpu, G.z_dim], device=device)
        c = torch.zeros([batch_gpu, G.c_dim], device=device)
        img = misc.print_module_summary(G, [z, c])
        misc.print_module_summary(D, [img, c])
        for module, state_dict in zip((G, D), saved):
            module.load_state_dict(state_dict)
        training_stats.reset()


BACKBONE = StyleGAN2Backbone()
