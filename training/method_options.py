"""Flag groups of the methods that work on every backbone: D augmentation, ATop-k, CHAIN.

Each group declares its flags once (:func:`training.options.flag`), checks the flags that need
each other in ``validate`` and turns itself into plain ``training_loop`` keyword arguments in
``configure`` (returning its part of the run name). Equations and defaults: docs/methods.md
§3 (ADA), §4 (DiffAugment), §9.3–9.4 (ATop-k), §9.5–9.6 (CHAIN).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

import click

import dnnlib
from dnnlib.util import UserError
from training.options import OptionGroup, flag

AUGPIPE_NAMES = ('blit', 'geom', 'color', 'filter', 'noise', 'cutout', 'bg', 'bgc', 'bgcf', 'bgcfn', 'bgcfnc')
CHAIN_PLACES = ('C1', 'C2', 'CS')

_Unit = click.FloatRange(0, 1)
_Positive = click.FloatRange(0, min_open=True)
_NonNegative = click.FloatRange(0)
_AtLeastOne = click.IntRange(1)


@dataclasses.dataclass
class AugmentOptions(OptionGroup):
    """ADA (``--aug``, ``--p``, ``--target``, ``--augpipe``) or DiffAugment (``--diffaugment``)."""
    title: ClassVar[str] = 'Discriminator augmentation'
    aug: Optional[str] = flag(None, 'Augmentation mode', type=click.Choice(['noaug', 'ada', 'fixed']),
                              show_default='ada')
    p: Optional[float] = flag(None, 'Augmentation probability for --aug=fixed', type=_Unit)
    target: Optional[float] = flag(None, 'ADA target value for --aug=ada', type=_Unit, show_default='0.6')
    augpipe: Optional[str] = flag(None, 'Augmentation pipeline', type=click.Choice(list(AUGPIPE_NAMES)),
                                  show_default='bgc')
    diffaugment: Optional[str] = flag(None, 'DiffAugment policy instead of ADA, e.g. color,translation,cutout',
                                      metavar='POLICY')
    _backbone_diffaugment: ClassVar[bool] = False  # set by configure: the backbone's DiffAugment is used

    def validate(self) -> None:
        if self.diffaugment:
            if self.aug not in (None, 'noaug'):
                raise UserError('--diffaugment replaces ADA: drop --aug, or use --aug=noaug with it')
            from training import diffaugment
            try:
                diffaugment.parse_policy(self.diffaugment)
            except ValueError as e:
                raise UserError(f'--diffaugment: {e}') from None
            if self.augpipe is not None or self.p is not None or self.target is not None:
                raise UserError('--augpipe/--p/--target belong to ADA; they cannot be used with --diffaugment')
            return
        aug = self.aug or 'ada'
        if aug == 'fixed' and self.p is None:
            raise UserError('--aug=fixed requires --p')
        if self.p is not None and aug != 'fixed':
            raise UserError('--p can only be used with --aug=fixed')
        if self.target is not None and aug != 'ada':
            raise UserError('--target can only be used with --aug=ada')
        if self.augpipe is not None and aug == 'noaug':
            raise UserError('--augpipe cannot be used with --aug=noaug')

    @property
    def mode(self) -> str:
        """'ada', 'fixed', 'noaug' (also with DiffAugment — given, or the backbone's — whose pipe has no p)."""
        return 'noaug' if self.diffaugment or self._backbone_diffaugment else (self.aug or 'ada')

    def configure(self, args: dnnlib.EasyDict, backbone_default: Optional[dict] = None) -> str:
        """``augment_kwargs`` (+ ``ada_target`` / ``augment_p``) for the loop; returns the run-name part.

        ``backbone_default``: the backbone's own DiffAugment (``BackboneConfig.diffaugment``, e.g.
        FastGAN's ``color,translation``), used when neither ``--aug`` nor ``--diffaugment`` is
        given; ``--diffaugment=POLICY`` replaces only its policy.
        """
        self._backbone_diffaugment = backbone_default is not None and self.aug is None
        if self.diffaugment or self._backbone_diffaugment:
            kwargs = dnnlib.EasyDict(backbone_default or {})
            if self.diffaugment:
                kwargs.policy = self.diffaugment
            args.augment_kwargs = dnnlib.EasyDict(class_name='training.diffaugment.DiffAugmentPipe', **kwargs)
            return '-diffaug-' + self.diffaugment.replace(',', '-') if self.diffaugment else ''
        desc = '' if self.aug is None else f'-{self.aug}'
        if self.mode == 'ada':
            args.ada_target = 0.6 if self.target is None else self.target
        if self.p is not None:
            desc += f'-p{self.p:g}'
            args.augment_p = self.p
        if self.target is not None:
            desc += f'-target{self.target:g}'
        if self.augpipe is not None:
            desc += f'-{self.augpipe}'
        if self.mode != 'noaug':
            from training.augment import AUGPIPE_SPECS
            args.augment_kwargs = dnnlib.EasyDict(class_name='training.augment.AugmentPipe',
                                                  **AUGPIPE_SPECS[self.augpipe or 'bgc'])
        return desc


@dataclasses.dataclass
class ATopkOptions(OptionGroup):
    """ATop-k and its ablations (patches/atopk.py; docs/methods.md §9.3–9.4)."""
    title: ClassVar[str] = 'ATop-k'
    atopk: bool = flag(False, 'Adaptive Top-k G updates', type=bool, metavar='BOOL')
    atopk_target: float = flag(0.6, 'Overfitting target t', type=_Unit)
    atopk_interval: int = flag(4, 'p update interval, minibatches', type=_AtLeastOne)
    atopk_kimg: float = flag(500, 'kimg for p to move by 1', type=_Positive)
    atopk_k_interval: int = flag(1, 'k update interval, iterations', type=_AtLeastOne)
    atopk_p: str = flag('own', "p source: own tracker or ADA's p", type=click.Choice(['own', 'ada']))
    topk_mode: Optional[str] = flag(None, 'Top-k schedule', type=click.Choice(['adaptive', 'fixed', 'linear', 'worst']),
                                    show_default='adaptive')
    topk_k: Optional[int] = flag(None, 'k for --topk-mode=fixed|worst', type=_AtLeastOne)
    topk_gamma: float = flag(0.99, 'Linear Top-k decay per epoch', type=click.FloatRange(0, 1, min_open=True))
    topk_nu: float = flag(0.75, 'Linear Top-k minimum fraction', type=click.FloatRange(0, 1, min_open=True))
    topk_round: str = flag('ceil', 'Linear Top-k rounding of gamma^e*B and nu*B', type=click.Choice(['ceil', 'floor']))
    atopk_clamp_p: bool = flag(False, "Keep ATop-k's own p in [0, 1] (ADA clamps only below)", type=bool, metavar='BOOL')

    @property
    def enabled(self) -> bool:
        return self.atopk or self.topk_mode is not None

    def validate(self) -> None:
        if not self.enabled:
            if self.topk_k is not None:
                raise UserError('--topk-k needs --atopk=1 (with --topk-mode=fixed or worst)')
            return
        mode = self.topk_mode or 'adaptive'
        if mode in ('fixed', 'worst') and self.topk_k is None:
            raise UserError(f'--topk-mode={mode} needs --topk-k')
        if mode not in ('fixed', 'worst') and self.topk_k is not None:
            raise UserError(f'--topk-k is only used with --topk-mode=fixed or worst (not {mode})')
        if self.atopk_clamp_p and self.atopk_p == 'ada':
            raise UserError("--atopk-clamp-p=1 would change ADA's own p; use it with --atopk-p=own")

    def configure(self, args: dnnlib.EasyDict, aug_mode: str, seed: int) -> str:
        """``atopk_kwargs`` for patches/atopk.py; needs the final batch (``args.batch_size``)."""
        if not self.enabled:
            return ''
        mode = self.topk_mode or 'adaptive'
        batch = args.batch_size
        if batch != args.batch_gpu * args.num_gpus:
            raise UserError(f'ATop-k selects over the whole batch in one round: batch {batch} must equal '
                            f'--gpus x per-GPU batch ({args.num_gpus} x {args.batch_gpu}); pass --batch to set it')
        if self.topk_k is not None and not 1 <= self.topk_k <= batch:
            raise UserError(f'--topk-k={self.topk_k} must be between 1 and the batch size {batch}')
        if self.atopk_p == 'ada' and aug_mode != 'ada':
            raise UserError("--atopk-p=ada needs --aug=ada (ADA's p); use --atopk-p=own otherwise")
        args.atopk_kwargs = dnnlib.EasyDict(
            mode=mode, batch_size=batch, target=self.atopk_target, interval=self.atopk_interval,
            kimg=self.atopk_kimg, k_interval=self.atopk_k_interval, p_source=self.atopk_p, k=self.topk_k,
            gamma=self.topk_gamma, nu=self.topk_nu, round=self.topk_round, clamp_p=self.atopk_clamp_p, seed=seed)
        return '-atopk' if mode == 'adaptive' else f'-topk{mode}{self.topk_k if self.topk_k is not None else ""}'


@dataclasses.dataclass
class ChainOptions(OptionGroup):
    """CHAIN in D (patches/chain.py; docs/methods.md §9.5–9.6); where its layers go is the backbone's choice."""
    title: ClassVar[str] = 'CHAIN'
    chain: bool = flag(False, 'CHAIN normalisation in D', type=bool, metavar='BOOL')
    chain_type: str = flag('chain', 'chain (cumulative) or chain_batch', type=click.Choice(['chain', 'chain_batch']))
    chain_res: Optional[list[int]] = flag(None, 'D block resolutions with CHAIN', type=dnnlib.util.IntList(),
                                          show_default='all >= 8')
    chain_place: str = flag('C1C2CS', 'Where in a block: concatenation of C1, C2, CS')
    chain_tau: float = flag(0.5, 'Target tau', type=_Unit)
    chain_lambda: float = flag(20.0, '0MR weight lambda', type=_NonNegative)
    chain_p0: float = flag(0.0, '0MR offset p0', type=_NonNegative)
    chain_dp: float = flag(0.001, 'p step per iteration', type=_Positive)
    chain_start: int = flag(5000, 'Iteration at which p starts adapting', type=click.IntRange(0))

    def validate(self) -> None:
        self.chain_place = self.chain_place.upper()
        parts = [self.chain_place[i:i + 2] for i in range(0, len(self.chain_place), 2)]
        if not parts or any(part not in CHAIN_PLACES for part in parts):
            raise UserError('--chain-place is a concatenation of C1, C2 and CS (e.g. C1C2CS)')

    def layer_kwargs(self) -> Optional[dnnlib.EasyDict]:
        """Keyword arguments of the CHAIN layers and their context for the backbone's D, or None."""
        if not self.chain:
            return None
        return dnnlib.EasyDict(variant=self.chain_type, resolutions=self.chain_res, place=self.chain_place,
                               tau=self.chain_tau, lambda_=self.chain_lambda, p0=self.chain_p0, dp=self.chain_dp,
                               start_iter=self.chain_start)

    def describe(self) -> str:
        if not self.chain:
            return ''
        return '-chain' if self.chain_type == 'chain' else '-chainbatch'


METHOD_GROUPS: tuple[type[OptionGroup], ...] = (AugmentOptions, ATopkOptions, ChainOptions)

