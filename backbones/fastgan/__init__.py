"""``--backbone=fastgan``: FastGAN (Liu et al., ICLR 2021) and CHAIN's FastGAN-D_big.

The plug-in (docs/fastgan.md; the contract: docs/training.md §6):

* networks: :mod:`backbones.fastgan.networks` (G, the original D) and
  :mod:`backbones.fastgan.d_big` (CHAIN's D, ``--fastgan-d=big``; CHAIN layers placed there),
  official names, so official state dicts load 1:1;
* loss and iteration: :mod:`backbones.fastgan.loss` — phases Dmain then Gmain, one G forward
  per iteration, Adam 2e-4 with β = (0.5, 0.999); CHAIN's p moves after the D step;
* EMA: β = 0.999 per step on parameters (:class:`training.ema.ConstantEMA`); G_ema carries G's
  buffers (spectral-norm vectors, BN statistics) unaveraged, as the reference samples the
  averaged parameters inside G;
* D augmentation: DiffAugment ``color,translation`` unless ``--aug``/``--diffaugment`` say
  otherwise (random op order with D_big, as CHAIN's code);
* sampling (docs/fastgan.md §6): G_ema with **batch-statistics BN** (the reference never calls
  ``.eval()``), at least 8 images per forward; ``--fastgan-sample=eval`` uses running statistics.
"""

from __future__ import annotations

from typing import Optional

import torch

import dnnlib
from backbones.base import (AUGMENT_CLASSES, Backbone, BackboneConfig, BuildContext, ConfigContext, PrecisionUse,
                            TrainingSetup, apply_length_and_batch, build_generator_and_discriminator, check_preset,
                            make_augment_pipe)
from backbones.fastgan.options import REFERENCE_BATCH, REFERENCE_KIMG, FastGANOptions
from dnnlib.util import UserError
from training import ema
from training.phases import Phase, build_optimizer

#: Fewest images per G forward when sampling with batch-statistics BN (CHAIN's code samples 8).
MIN_SAMPLE_BATCH = 8


class FastGANSampler:
    """Images from FastGAN's G: its main output, BN on batch statistics ('train') or running ones ('eval').

    A call with fewer than :data:`MIN_SAMPLE_BATCH` latents is padded with the same latents every
    time (a private generator re-seeded per call; the global RNG is not touched), so BN always
    sees ≥ 8 images and an image depends only on its own latent and the call's other latents.
    Latents are cast to float32 (``generate.py`` draws them in float64).
    FastGAN has no truncation and no constant noise: ``noise_mode`` is ignored (its noise
    injection always draws fresh noise) and ψ must be 1.
    """

    def __init__(self, G: torch.nn.Module, bn: str = 'train', min_batch: int = MIN_SAMPLE_BATCH):
        if bn not in ('train', 'eval'):
            raise ValueError(f"bn must be 'train' or 'eval', got {bn!r}")
        self.G, self.bn, self.min_batch = G, bn, min_batch
        self.z_dim, self.c_dim = G.z_dim, 0

    def __call__(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        z = z.to(torch.float32)
        n = z.shape[0]
        if n < self.min_batch:
            padding = torch.Generator().manual_seed(0)
            extra = torch.randn([self.min_batch - n, self.z_dim], generator=padding).to(z.device)
            z = torch.cat([z, extra])
        was_training = self.G.training
        self.G.train(self.bn == 'train')
        try:
            out = self.G(z)
        finally:
            self.G.train(was_training)
        img = out[0] if isinstance(out, (list, tuple)) else out
        return img[:n]


class FastGANBackbone(Backbone):
    name = 'fastgan'
    snapshot_classes = dict(G=('backbones.fastgan.networks.Generator',),
                            G_ema=('backbones.fastgan.networks.Generator',),
                            D=('backbones.fastgan.networks.Discriminator', 'backbones.fastgan.d_big.DiscriminatorBig'),
                            augment_pipe=AUGMENT_CLASSES)
    summary = "FastGAN (SLE generator, self-supervised D) and CHAIN's FastGAN-D_big"
    options = FastGANOptions
    presets = ('fastgan',)
    default_preset = 'fastgan'
    chain_update_after = 'Dmain'

    # ------------------------------------------------------------------ train.py

    def configure(self, ctx: ConfigContext) -> BackboneConfig:
        check_preset(self, ctx.cfg)
        opts: FastGANOptions = ctx.options  # type: ignore[assignment]
        if ctx.resolution not in (256, 512, 1024):
            raise UserError(f'--backbone=fastgan trains at 256, 512 or 1024 px; the data is {ctx.resolution} px '
                            '(convert it with dataset_tool.py --resolution=256x256)')
        big = opts.fastgan_d == 'big'
        if ctx.chain is not None and not big:
            raise UserError("--chain=1 with --backbone=fastgan needs --fastgan-d=big (CHAIN's discriminator; "
                            'the original D normalises with BatchNorm, which CHAIN replaces)')
        desc, total_kimg, batch, batch_gpu = apply_length_and_batch(
            ctx, REFERENCE_KIMG[opts.fastgan_d], REFERENCE_BATCH, max(REFERENCE_BATCH // ctx.gpus, 1))
        kwargs = dnnlib.EasyDict(
            G_kwargs=dnnlib.EasyDict(class_name='backbones.fastgan.networks.Generator', ngf=opts.ngf, z_dim=256,
                                     small_output=not big, sample_bn=opts.fastgan_sample),
            D_kwargs=self._discriminator_kwargs(opts, ctx.chain),
            G_opt_kwargs=dnnlib.EasyDict(class_name='torch.optim.Adam', lr=ctx.glr or 2e-4, betas=[0.5, 0.999]),
            D_opt_kwargs=dnnlib.EasyDict(class_name='torch.optim.Adam', lr=ctx.dlr or 2e-4, betas=[0.5, 0.999]),
            ema_kwargs=dnnlib.EasyDict(class_name='training.ema.ConstantEMA', beta=0.999, buffers='copy'),
            margin='one' if big else 'random',
            recon=self._recon_kwargs(opts))
        desc = f'-d{opts.fastgan_d}' + desc
        if (opts.ngf, opts.ndf) != (64, 64):
            desc += f'-ngf{opts.ngf}-ndf{opts.ndf}'
        if opts.recon_loss != 'lpips':
            desc += f'-recon{opts.recon_loss}'
            print(f'WARNING: --recon-loss={opts.recon_loss} is not the reference FastGAN loss (LPIPS); '
                  'results are not comparable with the papers')
        if opts.fastgan_sample != 'train':
            desc += f'-sample{opts.fastgan_sample}'
        return BackboneConfig(kwargs=kwargs, total_kimg=total_kimg, batch_size=batch, batch_gpu=batch_gpu, desc=desc,
                              snapshot_ticks=10, diffaugment=dict(policy='color,translation', random_order=big))

    def precision_use(self, kwargs: dict, resolution: int) -> PrecisionUse:
        """None: FastGAN's reference code (G, both Ds) trains in float32, so these networks have no
        reduced-precision blocks (``--precision`` other than float32 prints so at start)."""
        return PrecisionUse(None, "--backbone=fastgan computes in float32, as FastGAN's reference code "
                                  '(no reduced-precision blocks)')

    @staticmethod
    def _discriminator_kwargs(opts: FastGANOptions, chain: Optional[dict]) -> dnnlib.EasyDict:
        if opts.fastgan_d == 'orig':
            return dnnlib.EasyDict(class_name='backbones.fastgan.networks.Discriminator', ndf=opts.ndf)
        return dnnlib.EasyDict(class_name='backbones.fastgan.d_big.DiscriminatorBig', ndf=opts.ndf,
                               chain_kwargs=None if chain is None else dnnlib.EasyDict(chain))

    @staticmethod
    def _recon_kwargs(opts: FastGANOptions) -> dnnlib.EasyDict:
        from training import lpips
        from training.dataset import require_existing_paths
        if opts.recon_loss == 'l1':
            return dnnlib.EasyDict(kind='l1')
        require_existing_paths([('--lpips-vgg16', opts.lpips_vgg16), ('--lpips-lin', opts.lpips_lin)])
        lin = opts.lpips_lin or lpips.find_lin_weights()
        if lin is None:
            raise UserError(f'LPIPS linear weights not found: {lpips.LIN_HINT}')
        return dnnlib.EasyDict(kind='lpips', vgg16=opts.lpips_vgg16, lin=lin)

    # ------------------------------------------------------------------ run time

    def build(self, ctx: BuildContext) -> TrainingSetup:
        from backbones.fastgan.loss import FastGANLoss
        kw = dnnlib.EasyDict(ctx.kwargs)
        if ctx.c_dim:
            raise UserError('--backbone=fastgan is unconditional: train without --cond')
        G, D, G_ema = build_generator_and_discriminator(ctx, kw.G_kwargs, kw.D_kwargs)
        augment_pipe = make_augment_pipe(ctx)
        loss = FastGANLoss(ctx.device, G, D, augment_pipe, recon=build_recon(kw.recon, ctx.device),
                           margin=kw.margin, num_gpus=ctx.num_gpus)
        run_phases = [Phase('Dmain', D, build_optimizer(D.parameters(), kw.D_opt_kwargs)),
                      Phase('Gmain', G, build_optimizer(G.parameters(), kw.G_opt_kwargs))]
        return TrainingSetup(modules=dict(G=G, D=D, G_ema=G_ema, augment_pipe=augment_pipe), loss=loss,
                             phases=run_phases, ema=ema.build_ema(kw.ema_kwargs))

    def sampler(self, G: torch.nn.Module, *, noise_mode: str = 'const', truncation_psi: float = 1.0,
                bn: Optional[str] = None) -> FastGANSampler:
        if truncation_psi != 1:
            raise UserError('FastGAN has no truncation trick: use --trunc=1')
        return FastGANSampler(G, bn=bn or getattr(G, 'sample_bn', 'train'))


def build_recon(recon: dict, device: torch.device) -> torch.nn.Module:
    """The reconstruction distance of ``backbone_kwargs.recon``: LPIPS from its files, or L1."""
    from training import lpips
    if recon['kind'] == 'l1':
        return lpips.L1Distance().to(device)
    return lpips.load_lpips(recon['vgg16'], recon['lin'], device=device)


BACKBONE = FastGANBackbone()
