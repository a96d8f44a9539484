"""``--backbone=projected``: Projected GAN (Sauer et al., NeurIPS 2021) and, with ``--diffusion=1``,
Diffusion-ProjectedGAN (Wang et al., ICLR 2023).

The plug-in (docs/projected.md; the contract: docs/training.md §6):

* networks: :mod:`backbones.projected.generator` (``fastgan`` / ``fastgan_lite`` G, ``--cfg``),
  :mod:`backbones.projected.discriminator` (frozen EfficientNet-Lite0 from
  :mod:`backbones.projected.efficientnet_lite0`, random frozen CCM/CSM from
  :mod:`backbones.projected.projector`, four mini-discriminators), official module names;
* Diffusion-ProjectedGAN: :mod:`backbones.projected.diffusion` — noise on D's feature maps, its
  p a backbone-owned controller fed by the one E[sign(D_real)] collector;
* loss: :mod:`backbones.projected.loss` — hinge, phases Gmain then Dmain, ATop-k through the
  reduction hook (per-sample score: the mean of the image's logits);
* optimisers: Adam 2e-4, β = (0, 0.99); D's lr and betas scaled by 16/17 as the reference's
  unused lazy regularisation does (``--pg-dreg-interval``);
* EMA: StyleGAN's half-life, batch·10/32 kimg with ramp-up 0.05, buffers copied; G_ema samples
  in eval mode; ``best_model.pt`` follows the best primary metric (fid50k_full by default).
"""

from __future__ import annotations

from typing import Optional

import torch

import dnnlib
from backbones.base import (AUGMENT_CLASSES, Backbone, BackboneConfig, BuildContext, ConfigContext, PrecisionUse,
                            TrainingSetup, apply_length_and_batch, build_generator_and_discriminator, check_preset,
                            make_augment_pipe)
from backbones.projected.options import REFERENCE_BATCH, REFERENCE_KIMG, ProjectedOptions
from dnnlib.util import UserError
from training import ema
from training.phases import Phase, build_optimizer

#: Projected GAN's D augmentation (inside its D in the reference): DiffAugment with cutout 0.2.
DIFFAUGMENT = dict(policy='color,translation,cutout', cutout_ratio=0.2)
SMALLEST_MAP = 4  # a mini-discriminator's 4×4 valid conv needs at least 4×4 inputs


class ProjectedSampler:
    """Images from Projected GAN's G in eval mode (BN running statistics, as the reference's G_ema).

    No truncation and no constant noise exist (the noise injections always draw fresh noise):
    ``noise_mode`` is ignored and ψ must be 1. Latents are cast to float32.
    """

    def __init__(self, G: torch.nn.Module):
        self.G = G
        self.z_dim, self.c_dim = G.z_dim, 0

    def __call__(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        was_training = self.G.training
        self.G.eval()
        try:
            return self.G(z.to(torch.float32), None)
        finally:
            self.G.train(was_training)


def check_disc_layout(input_size: int, disc_start: str) -> None:
    """One-line error when the mini-discriminators cannot judge the feature maps of this input size."""
    from backbones.projected.discriminator import END_SIZE, feature_sizes
    from backbones.projected.projector import REFERENCE_RESOLUTIONS
    sizes = feature_sizes(input_size)
    if disc_start == 'actual':
        if min(sizes) < SMALLEST_MAP:
            raise UserError(f'D inputs of {input_size} px give {min(sizes)}-px feature maps, smaller than a '
                            f'mini-discriminator\'s {SMALLEST_MAP}x{SMALLEST_MAP} head: use --pg-interp >= 64')
        return
    for size, start in zip(sizes, REFERENCE_RESOLUTIONS):
        if size * END_SIZE // start < SMALLEST_MAP:
            raise UserError(f'D inputs of {input_size} px give {size}-px feature maps, too small for the reference '
                            'mini-discriminators (laid out for 256 px); add the test knob --pg-disc-start=actual')


class ProjectedBackbone(Backbone):
    name = 'projected'
    snapshot_classes = dict(G=('backbones.projected.generator.Generator',),
                            G_ema=('backbones.projected.generator.Generator',),
                            D=('backbones.projected.discriminator.ProjectedDiscriminator',),
                            augment_pipe=AUGMENT_CLASSES)
    summary = 'Projected GAN (frozen EfficientNet-Lite0 features) and Diffusion-ProjectedGAN (--diffusion=1)'
    options = ProjectedOptions
    presets = ('fastgan', 'fastgan_lite')
    default_preset = 'fastgan'
    writes_best_model = True

    # ------------------------------------------------------------------ train.py

    def configure(self, ctx: ConfigContext) -> BackboneConfig:
        from backbones.projected.efficientnet_lite0 import weight_file
        from backbones.projected.generator import RESOLUTIONS
        from training.dataset import require_existing_paths
        cfg = check_preset(self, ctx.cfg)
        opts: ProjectedOptions = ctx.options  # type: ignore[assignment]
        if ctx.resolution not in RESOLUTIONS:
            raise UserError(f'--backbone=projected trains at {", ".join(map(str, RESOLUTIONS))} px; the data is '
                            f'{ctx.resolution} px (convert it with dataset_tool.py --resolution=256x256)')
        if ctx.chain is not None:
            raise UserError('--chain=1 is not available with --backbone=projected: CHAIN is placed in the '
                            'discriminators of --backbone=stylegan2 and --backbone=fastgan --fastgan-d=big')
        require_existing_paths([('--feature-net', opts.feature_net)])
        weight_file(opts.feature_net)  # the package's EfficientNet-Lite0 weights, or a one-line error now
        input_size = opts.pg_interp or (224 if ctx.resolution < 224 else ctx.resolution)
        check_disc_layout(input_size, opts.pg_disc_start)
        desc, total_kimg, batch, batch_gpu = apply_length_and_batch(
            ctx, REFERENCE_KIMG, REFERENCE_BATCH, max(REFERENCE_BATCH // ctx.gpus, 1))
        kwargs = dnnlib.EasyDict(
            G_kwargs=dnnlib.EasyDict(class_name='backbones.projected.generator.Generator', ngf=opts.pg_ngf,
                                     z_dim=256, cfg=cfg),
            D_kwargs=dnnlib.EasyDict(class_name='backbones.projected.discriminator.ProjectedDiscriminator',
                                     feature_net=opts.feature_net, separable=opts.pg_separable,
                                     interp_size=opts.pg_interp, disc_start=opts.pg_disc_start,
                                     diffusion=opts.diffusion_kwargs(), d_pos=opts.diffusion_pos),
            G_opt_kwargs=dnnlib.EasyDict(class_name='torch.optim.Adam', lr=ctx.glr or 2e-4, betas=[0.0, 0.99], eps=1e-8),
            D_opt_kwargs=self._discriminator_optimizer(ctx.dlr or 2e-4, opts.pg_dreg_interval),
            ema_kwargs=dnnlib.EasyDict(class_name='training.ema.HalfLifeEMA', ema_kimg=batch * 10 / 32,
                                       ema_rampup=0.05),
            diffusion_controller=None if not opts.diffusion else dnnlib.EasyDict(
                target=opts.diffusion_target, ada_kimg=opts.diffusion_kimg, interval=4))
        desc = self._describe(cfg, opts) + desc
        return BackboneConfig(kwargs=kwargs, total_kimg=total_kimg, batch_size=batch, batch_gpu=batch_gpu, desc=desc,
                              diffaugment=dict(DIFFAUGMENT))

    def precision_use(self, kwargs: dict, resolution: int) -> PrecisionUse:
        """None: Projected GAN's FastGAN generators, its frozen EfficientNet-Lite0, CCM/CSM and
        mini-discriminators compute in float32 in the reference (its ``--fp32`` reaches only its
        StyleGAN2 generator, which degan does not build)."""
        return PrecisionUse(None, "--backbone=projected computes in float32, as Projected GAN's reference code "
                                  'for its FastGAN generators and its discriminator (no reduced-precision blocks)')

    @staticmethod
    def _discriminator_optimizer(lr: float, reg_interval: int) -> dnnlib.EasyDict:
        """Adam (0, 0.99); with ``reg_interval`` N > 0, lr·N/(N+1) and β^(N/(N+1)) (the reference's quirk)."""
        ratio = reg_interval / (reg_interval + 1) if reg_interval > 0 else 1.0
        return dnnlib.EasyDict(class_name='torch.optim.Adam', lr=lr * ratio, betas=[0.0, 0.99 ** ratio], eps=1e-8)

    @staticmethod
    def _describe(cfg: str, opts: ProjectedOptions) -> str:
        desc = f'-{cfg}'
        if opts.diffusion:
            desc += f'-diffusion-{opts.diffusion_pos}-target{opts.diffusion_target:g}'
        if opts.pg_ngf != 128:
            desc += f'-ngf{opts.pg_ngf}'
        if opts.pg_separable:
            desc += '-separable'
        if opts.pg_dreg_interval != 16:
            desc += f'-dreg{opts.pg_dreg_interval}'
        knobs = [f'--pg-interp={opts.pg_interp}'] * (opts.pg_interp is not None)
        knobs += ['--pg-disc-start=actual'] * (opts.pg_disc_start == 'actual')
        if knobs:
            desc += '-testknobs'
            print(f'WARNING: {" ".join(knobs)} are test knobs, not the reference Projected GAN; '
                  'results are not comparable with the papers')
        return desc

    # ------------------------------------------------------------------ run time

    def build(self, ctx: BuildContext) -> TrainingSetup:
        from backbones.projected.diffusion import DiffusionController
        from backbones.projected.loss import ProjectedGANLoss
        kw = dnnlib.EasyDict(ctx.kwargs)
        if ctx.c_dim:
            raise UserError('--backbone=projected is unconditional here: train without --cond')
        D_kwargs = dnnlib.EasyDict(kw.D_kwargs)
        if D_kwargs.diffusion is not None:
            D_kwargs.diffusion = dict(D_kwargs.diffusion, seed=ctx.random_seed)
        G, D, G_ema = build_generator_and_discriminator(ctx, kw.G_kwargs, D_kwargs)
        augment_pipe = make_augment_pipe(ctx)
        loss = ProjectedGANLoss(ctx.device, G, D, augment_pipe)
        run_phases = [Phase('Gmain', G, build_optimizer(G.parameters(), kw.G_opt_kwargs)),
                      Phase('Dmain', D, build_optimizer(D.trainable_parameters(), kw.D_opt_kwargs))]
        controllers = []
        if kw.get('diffusion_controller') is not None:
            controllers.append(DiffusionController(D.diffusion, ctx.batch_size, **kw.diffusion_controller))
        return TrainingSetup(modules=dict(G=G, D=D, G_ema=G_ema, augment_pipe=augment_pipe), loss=loss,
                             phases=run_phases, ema=ema.build_ema(kw.ema_kwargs), controllers=controllers)

    def sampler(self, G: torch.nn.Module, *, noise_mode: str = 'const', truncation_psi: float = 1.0) -> ProjectedSampler:
        if truncation_psi != 1:
            raise UserError('Projected GAN has no truncation trick: use --trunc=1')
        return ProjectedSampler(G)


BACKBONE = ProjectedBackbone()
