"""A toy second backbone, written only against the backbone registry (backbones/base.py).

A few-layer G and D with a hinge loss: nothing in the training loop, the snapshot code,
train.py, generate.py or calc_metrics.py knows it. Tests register it with
``DEGAN_BACKBONES=toy=tests.toy_backbone`` (subprocesses) or ``backbones.register`` (in
process). It exercises every part of the seam a real backbone uses:

* its own flag group (``--toy-width``, ``--toy-break``) and a preset for ``--cfg``;
* an extra module (``D_ema``, updated by a backbone controller's *pre-iteration* hook, like
  InsGen's) and an extra named state (the loss' running mean of real scores), both resumed;
* optimisers of two classes (Adam for G, SGD with momentum for D) built from their config;
* a fixed-β EMA on parameters only (``training.ema.ConstantEMA``);
* CHAIN after D's first convolution, ATop-k through the hinge G loss;
* ``--toy-break=reduction|dpass`` deliberately bypasses a method hook, for the fail-loud tests.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar, Optional

import click
import torch
import torch.nn.functional as F

import dnnlib
from backbones.base import (AUGMENT_CLASSES, Backbone, BackboneConfig, BuildContext, ConfigContext, TrainingSetup,
                            apply_length_and_batch, build_generator_and_discriminator, check_preset,
                            make_augment_pipe)
from patches.chain import Chain, ChainContext
from torch_utils import persistence, training_stats
from training import ema, losses
from training.controllers import Controller, IterationInfo
from training.loss_base import GANLoss, check_finite
from training.options import OptionGroup, flag
from training.phases import Phase, build_optimizer


@persistence.persistent_class
class ToyGenerator(torch.nn.Module):
    """z (and one-hot c) → 4×4 features → nearest upsampling → 3×3 conv → tanh."""

    def __init__(self, z_dim: int, c_dim: int, img_resolution: int, img_channels: int, width: int = 8):
        super().__init__()
        self.z_dim, self.c_dim, self.width = z_dim, c_dim, width
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.fc = torch.nn.Linear(z_dim + c_dim, width * 16)
        self.conv = torch.nn.Conv2d(width, img_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.fc(torch.cat([z.to(torch.float32), c.to(torch.float32)], dim=1)), 0.2)
        x = F.interpolate(x.view(-1, self.width, 4, 4), size=self.img_resolution, mode='nearest')
        return torch.tanh(self.conv(x))


@persistence.persistent_class
class ToyDiscriminator(torch.nn.Module):
    """conv (+ CHAIN) → lrelu → stride-2 conv → lrelu → linear; a projection term for labels."""

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int, width: int = 8,
                 chain_kwargs: Optional[dict] = None):
        super().__init__()
        self.c_dim = c_dim
        self.conv0 = torch.nn.Conv2d(img_channels, width, 3, padding=1)
        self.conv1 = torch.nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.out = torch.nn.Linear(width * (img_resolution // 2) ** 2, 1)
        torch.nn.init.constant_(self.out.bias, 0.5)  # D starts out "overfitting": ATop-k's and CHAIN's p move at once
        self.embed = torch.nn.Linear(c_dim, width * (img_resolution // 2) ** 2, bias=False) if c_dim else None
        self.chain0 = None
        if chain_kwargs is not None:
            kwargs = dict(chain_kwargs)
            variant = kwargs.pop('variant', 'chain')
            for placement in ('resolutions', 'place'):  # one CHAIN layer, after conv0: placement is fixed here
                kwargs.pop(placement, None)
            self.chain_ctx = ChainContext(**kwargs)
            self.chain0 = Chain(width, self.chain_ctx, variant=variant)

    def forward(self, img: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        y = self.conv0(img)
        if self.chain0 is not None:
            y = self.chain0(y)
        y = F.leaky_relu(self.conv1(F.leaky_relu(y, 0.2)), 0.2).flatten(1)
        logits = self.out(y)
        if self.embed is not None:
            logits = logits + (self.embed(c.to(y.dtype)) * y).sum(1, keepdim=True) / y.shape[1] ** 0.5
        return logits


class ToyHingeLoss(GANLoss):
    """Hinge G/D losses (training.losses) through the GANLoss hooks — or around them (``broken``)."""

    def __init__(self, device: torch.device, G: torch.nn.Module, D: torch.nn.Module,
                 augment_pipe: Optional[torch.nn.Module] = None, broken: str = 'none'):
        super().__init__(device, G, D, augment_pipe)
        self.broken = broken
        self.real_score_mean = torch.zeros([], device=device)  # a named state of the loss

    def state_dict(self) -> dict[str, Any]:
        return dict(real_score_mean=self.real_score_mean.detach().cpu().clone())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.real_score_mean.copy_(state['real_score_mean'])

    def accumulate_gradients(self, phase: str, real_img: torch.Tensor, real_c: torch.Tensor,
                             gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float, cur_nimg: int = 0) -> None:
        if phase == 'Gmain':
            self._generator(gen_z, gen_c, gain)
        elif phase == 'Dmain':
            self._discriminator(real_img, real_c, gen_z, gen_c, gain)
        else:
            raise ValueError(phase)

    def _generator(self, gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float) -> None:
        gen_logits, _ = self.run_D(self.G(gen_z, gen_c), gen_c, 'gfake')
        self.observe_fake_logits(gen_logits)
        if self.broken == 'reduction':  # bypasses the ATop-k hook
            loss = losses.hinge_generator(gen_logits).mean()
        else:
            loss = self.generator_adversarial_loss(gen_logits, losses.hinge_generator)
        check_finite('Gmain', 'Loss/G/loss', loss)
        loss.mul(gain).backward()

    def _discriminator(self, real_img: torch.Tensor, real_c: torch.Tensor, gen_z: torch.Tensor,
                       gen_c: torch.Tensor, gain: float) -> None:
        with torch.no_grad():
            gen_img = self.G(gen_z, gen_c)
        fake_logits, extra = self.run_D(gen_img, gen_c, 'dfake')
        self.observe_fake_logits(fake_logits)
        loss = self.add_extra_loss(losses.hinge_discriminator_fake(fake_logits).mean(), extra, 'fake')
        check_finite('Dmain', 'Loss/D/loss (fake)', loss)
        loss.mul(gain).backward()

        if self.broken == 'dpass':  # D on reals outside a labelled pass: CHAIN cannot act
            real_logits, extra = self.D(self.augment(real_img), real_c), None
        else:
            real_logits, extra = self.run_D(real_img, real_c, 'dreal')
        self.observe_real_logits(real_logits, main=True)
        with torch.no_grad():
            self.real_score_mean.lerp_(real_logits.detach().mean(), 0.1)
        loss = self.add_extra_loss(losses.hinge_discriminator_real(real_logits).mean(), extra, 'real')
        training_stats.report('Loss/D/loss', loss.detach())
        check_finite('Dmain', 'Loss/D/loss (real)', loss)
        loss.mul(gain).backward()


class DEmaController(Controller):
    """A backbone-owned controller with a pre-iteration hook: D_ema ← lerp(D, D_ema, β) before the phases."""
    name = 'toy_d_ema'

    def __init__(self, D: torch.nn.Module, D_ema: torch.nn.Module, beta: float = 0.5):
        self.D, self.D_ema, self.beta = D, D_ema, beta
        self.updates = 0

    def begin_iteration(self, info: IterationInfo) -> None:
        ema.lerp_parameters(self.D, self.D_ema, self.beta, buffers='copy')
        self.updates += 1

    def status_fields(self) -> list[str]:
        return [f'toy_d_ema {self.updates}']

    has_state = True

    def state_dict(self) -> dict[str, Any]:
        return dict(updates=self.updates)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state['updates'])


class ToySampler:
    def __init__(self, G: torch.nn.Module):
        self.G, self.z_dim, self.c_dim = G, G.z_dim, G.c_dim

    def __call__(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.G(z, c)


@dataclasses.dataclass
class ToyOptions(OptionGroup):
    title: ClassVar[str] = 'Toy backbone (tests only)'
    toy_width: int = flag(8, 'Channels of G and D', type=click.IntRange(1))
    toy_break: str = flag('none', 'Bypass a method hook (fail-loud tests)',
                          type=click.Choice(['none', 'reduction', 'dpass']))


class ToyBackbone(Backbone):
    name = 'toy'
    snapshot_classes = dict(G=('tests.toy_backbone.ToyGenerator',), G_ema=('tests.toy_backbone.ToyGenerator',),
                            D=('tests.toy_backbone.ToyDiscriminator',), D_ema=('tests.toy_backbone.ToyDiscriminator',),
                            augment_pipe=AUGMENT_CLASSES)
    summary = 'a few-layer hinge GAN (tests)'
    options = ToyOptions
    presets = ('tiny',)
    default_preset = 'tiny'

    def configure(self, ctx: ConfigContext) -> BackboneConfig:
        check_preset(self, ctx.cfg)
        opts: ToyOptions = ctx.options  # type: ignore[assignment]
        desc, total_kimg, batch, batch_gpu = apply_length_and_batch(ctx, 1.0, 4 * ctx.gpus, 4)
        D_kwargs = dnnlib.EasyDict(class_name='tests.toy_backbone.ToyDiscriminator', width=opts.toy_width)
        if ctx.chain is not None:
            D_kwargs.chain_kwargs = dnnlib.EasyDict(ctx.chain)
        kwargs = dnnlib.EasyDict(
            G_kwargs=dnnlib.EasyDict(class_name='tests.toy_backbone.ToyGenerator', z_dim=16, width=opts.toy_width),
            D_kwargs=D_kwargs,
            G_opt_kwargs=dnnlib.EasyDict(class_name='torch.optim.Adam', lr=ctx.glr or 2e-3, betas=[0.5, 0.99]),
            D_opt_kwargs=dnnlib.EasyDict(class_name='torch.optim.SGD', lr=ctx.dlr or 1e-2, momentum=0.9),
            ema_kwargs=dnnlib.EasyDict(class_name='training.ema.ConstantEMA', beta=0.9),
            broken=opts.toy_break)
        return BackboneConfig(kwargs=kwargs, total_kimg=total_kimg, batch_size=batch, batch_gpu=batch_gpu,
                              desc='-tiny' + desc + ('' if opts.toy_break == 'none' else f'-break{opts.toy_break}'))

    def build(self, ctx: BuildContext) -> TrainingSetup:
        kw = dnnlib.EasyDict(ctx.kwargs)
        G, D, G_ema = build_generator_and_discriminator(ctx, kw.G_kwargs, kw.D_kwargs)
        D_ema = copy.deepcopy(D).eval()
        augment_pipe = make_augment_pipe(ctx)
        loss = ToyHingeLoss(ctx.device, G, D, augment_pipe, broken=kw.broken)
        run_phases = [Phase('Dmain', D, build_optimizer(D.parameters(), kw.D_opt_kwargs)),
                      Phase('Gmain', G, build_optimizer(G.parameters(), kw.G_opt_kwargs))]
        return TrainingSetup(modules=dict(G=G, D=D, G_ema=G_ema, D_ema=D_ema, augment_pipe=augment_pipe),
                             loss=loss, phases=run_phases, ema=ema.build_ema(kw.ema_kwargs), states=dict(loss=loss),
                             controllers=[DEmaController(D, D_ema)])

    def sampler(self, G: torch.nn.Module, *, noise_mode: str = 'const', truncation_psi: float = 1.0) -> ToySampler:
        return ToySampler(G)


BACKBONE = ToyBackbone()
