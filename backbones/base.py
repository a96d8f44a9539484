"""What a backbone provides: the one interface between a GAN architecture and the rest of degan.

The training loop, ``train.py``'s common flags, the snapshot reader, ``generate.py`` and
``calc_metrics.py`` only ever talk to a :class:`Backbone` (chosen with ``--backbone``, looked
up in :mod:`backbones`); they never name an architecture. A backbone supplies

=====================  ========================================================================
``options``            its flag group (a :class:`training.options.OptionGroup`)
``presets``            the ``--cfg`` values it accepts; ``default_preset`` when none is given
``configure``          flags → plain ``backbone_kwargs`` (JSON-able; stored in
                       ``training_options.json``), batch, length, its part of the run name
``build``              ``backbone_kwargs`` → :class:`TrainingSetup`: its named modules
                       (networks, heads, …), its loss (a :class:`training.loss_base.GANLoss`),
                       phases and optimisers, EMA rule, named states and own controllers; CHAIN
                       layers are placed here (its D, its choice of layers)
``sampler``            how grids, metrics and ``generate.py`` draw images from G
``snapshot_classes``   per module slot, the classes ``build`` puts there: the only ones a
                       snapshot may name when ``generate.py`` / ``calc_metrics.py`` rebuild it
``print_summaries``    the module tables printed at start
``precision_use``      what computes in ``--precision``'s dtype (its reduced-precision blocks),
                       or why everything stays float32 (:class:`PrecisionUse`)
=====================  ========================================================================

The paper methods (ATop-k, CHAIN, ADA's p) are wired by the loop through the loss base class
and the controller list (docs/training.md); a backbone never wires them itself.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
from typing import Any, ClassVar, Mapping, Optional, Protocol

import torch

import dnnlib
from dnnlib.util import UserError
from training.options import OptionGroup


class GeneratorFn(Protocol):
    """Images from latents: ``fn(z [N, z_dim], c [N, c_dim]) -> [N, C, H, W]`` float in [-1, 1]."""
    z_dim: int
    c_dim: int

    def __call__(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor: ...


class Stateful(Protocol):
    """Anything whose training state a snapshot keeps (plain data + tensors)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclasses.dataclass
class ConfigContext:
    """What ``Backbone.configure`` sees: its own flags, the common flags it interprets, the data."""
    options: OptionGroup            # the backbone's own flag group
    cfg: Optional[str]              # --cfg (None: the backbone's default preset)
    gpus: int
    resolution: int
    kimg: Optional[float]           # --kimg override (None: the preset's)
    batch: Optional[int]            # --batch override (None: the preset's)
    glr: Optional[float]            # --glr / --dlr overrides
    dlr: Optional[float]
    chain: Optional[dict]           # CHAIN layer kwargs for the D (None: CHAIN off)
    dataset_size: int = 0           # images in the training set (after --subset; before x-flips)
    mirror: bool = False            # --mirror (x-flips double the data)
    transfer: bool = False          # --resume of a weights-only file (official pickle): fresh training state
    precision: str = 'auto'         # --precision as given (fp32, fp16, bf16, auto; torch_utils/precision.py)


@dataclasses.dataclass
class BackboneConfig:
    """What ``Backbone.configure`` returns (plain data only)."""
    kwargs: dict[str, Any]          # ``backbone_kwargs`` of training_loop, handed back to ``build``
    total_kimg: float
    batch_size: int                 # global batch
    batch_gpu: int                  # per-process batch of one accumulation round
    desc: str = ''                  # run-name part after the dataset's (preset and overrides)
    transfer_desc: str = ''         # run-name part after --resume's (transfer-learning flags)
    snapshot_ticks: Optional[int] = None  # the preset's snapshot interval, if it has one
    #: The D augmentation when neither --aug nor --diffaugment is given: DiffAugmentPipe kwargs
    #: (None: ADA, upstream's default). With --diffaugment=POLICY only the policy is replaced.
    diffaugment: Optional[dict] = None


@dataclasses.dataclass
class BuildContext:
    """What ``Backbone.build`` gets at run time."""
    kwargs: dict[str, Any]          # ``BackboneConfig.kwargs``
    device: torch.device
    c_dim: int                      # dataset label dimension (0: unconditional)
    img_resolution: int
    img_channels: int
    batch_size: int
    batch_gpu: int
    num_gpus: int
    random_seed: int
    augment_kwargs: Optional[dict]  # the D augmentation pipe's kwargs (ADA / DiffAugment), or None
    augment_p: float                # its initial p
    ada_target: Optional[float] = None  # ADA's target (None: p not adapted)
    ada_interval: int = 4           # ADA's p update interval (iterations)


@dataclasses.dataclass
class TrainingSetup:
    """Everything backbone-specific the loop drives (built by ``Backbone.build``).

    ``modules`` are saved in snapshots by name (a record each: class, kwargs, state dict) and
    must include 'G', 'D' and 'G_ema'; modules listed in ``optional_modules`` may be absent
    from a snapshot being resumed. ``states`` are other objects with a training state (e.g. the
    loss' path-length mean); their names must not collide with the controllers'.
    """
    modules: dict[str, Optional[torch.nn.Module]]
    loss: Any                       # training.loss_base.GANLoss
    phases: list                    # list[training.phases.Phase], in execution order
    ema: Any                        # training.ema rule: update(G, G_ema, cur_nimg=, batch_idx=, batch_size=)
    states: dict[str, Stateful] = dataclasses.field(default_factory=dict)
    controllers: list = dataclasses.field(default_factory=list)  # backbone-owned training.controllers.Controller
    optional_modules: frozenset[str] = frozenset({'augment_pipe'})

    @property
    def G(self) -> torch.nn.Module:
        return self.modules['G']  # type: ignore[return-value]

    @property
    def D(self) -> torch.nn.Module:
        return self.modules['D']  # type: ignore[return-value]

    @property
    def G_ema(self) -> torch.nn.Module:
        return self.modules['G_ema']  # type: ignore[return-value]

    @property
    def augment_pipe(self) -> Optional[torch.nn.Module]:
        return self.modules.get('augment_pipe')

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per name (phases that share one list it once)."""
        return {phase.opt_name: phase.opt for phase in self.phases}


@dataclasses.dataclass(frozen=True)
class PrecisionUse:
    """How a backbone's networks use ``--precision`` (torch_utils/precision.py), for one configuration.

    ``blocks``: what computes in the resolved dtype, named for the start line (StyleGAN2: 'the top
    3 resolutions of G and D, 8-32 px, conv_clamp 256'); None: nothing — everything computes in
    float32 and ``why`` says why (printed once at start, never silently ignored)."""
    blocks: Optional[str] = None
    why: str = ''


#: The D augmentation pipes a snapshot's ``augment_pipe`` slot may name (ADA, DiffAugment).
AUGMENT_CLASSES = ('training.augment.AugmentPipe', 'training.diffaugment.DiffAugmentPipe')


class Backbone(abc.ABC):
    """A GAN architecture as a plug-in (see the module docstring for the contract)."""

    name: ClassVar[str]
    summary: ClassVar[str] = ''
    options: ClassVar[type[OptionGroup]]
    presets: ClassVar[tuple[str, ...]] = ()
    default_preset: ClassVar[Optional[str]] = None
    #: The phase after which CHAIN's p is updated (None: at the end of the iteration, after
    #: G_ema — degan's StyleGAN2 order; FastGAN's official code: 'Dmain', before the G step).
    chain_update_after: ClassVar[Optional[str]] = None
    #: Keep ``best_model.pt`` (+ ``best_nimg.txt``) beside the snapshots: the snapshot with the best
    #: primary metric so far (Projected GAN's convention, with fid50k_full its default metric).
    writes_best_model: ClassVar[bool] = False
    #: The classes a snapshot's module record may name, per module slot (``G``, ``G_ema``, ``D``, …):
    #: what ``build`` constructs there. ``snapshot_io.load_module`` refuses any other name, so a
    #: file never chooses which class is built (issue 18 item 4).
    snapshot_classes: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    @abc.abstractmethod
    def configure(self, ctx: ConfigContext) -> BackboneConfig:
        """Validate the backbone's flags and turn them into plain ``backbone_kwargs``."""

    @abc.abstractmethod
    def build(self, ctx: BuildContext) -> TrainingSetup:
        """Construct the networks (CHAIN placed), loss, phases, EMA rule, states and controllers."""

    @abc.abstractmethod
    def sampler(self, G: torch.nn.Module, *, noise_mode: str = 'const', truncation_psi: float = 1.0) -> GeneratorFn:
        """How images are drawn from ``G`` (grids: const noise; metrics: ``noise_mode='random'``)."""

    def print_summaries(self, setup: TrainingSetup, batch_gpu: int, device: torch.device) -> None:
        """Print what the networks are (default: parameter and buffer counts per module)."""
        for name, module in setup.modules.items():
            if module is not None:
                params = sum(p.numel() for p in module.parameters())
                buffers = sum(b.numel() for b in module.buffers())
                print(f'{name:<14s} {params:>12,d} parameters {buffers:>10,d} buffer elements')
        print()

    def precision_use(self, kwargs: Mapping[str, Any], resolution: int) -> PrecisionUse:
        """Which of the networks ``kwargs`` (``BackboneConfig.kwargs``) builds at ``resolution`` compute
        in ``--precision``'s dtype. The blocks read the process-wide setting themselves
        (``torch_utils.precision.reduced_dtype``); parameters stay float32. Default: none."""
        return PrecisionUse(None, f'--backbone={self.name} has no reduced-precision blocks')

    def chain_context(self, setup: TrainingSetup) -> Any:
        """The ``patches.chain.ChainContext`` of the CHAIN layers this backbone placed (None: none)."""
        return getattr(setup.D, 'chain_ctx', None)


# ---------------------------------------------------------------------------------------------
# Helpers every backbone uses the same way.


def apply_length_and_batch(ctx: ConfigContext, total_kimg: float, batch_size: int, batch_gpu: int
                           ) -> tuple[str, float, int, int]:
    """Apply ``--kimg`` and ``--batch`` over a preset's values (upstream's rules and run-name parts).

    Returns (run-name part, total_kimg, batch_size, batch_gpu).
    """
    desc = ''  # --kimg > 0 and --batch >= 1 are the flags' own ranges (training/config.py)
    if ctx.kimg is not None:
        desc += f'-kimg{ctx.kimg:g}'
        total_kimg = ctx.kimg
    if ctx.batch is not None:
        if ctx.batch % ctx.gpus != 0:
            raise UserError('--batch must be divisible by --gpus')
        desc += f'-batch{ctx.batch}'
        batch_size, batch_gpu = ctx.batch, ctx.batch // ctx.gpus
    if batch_size % (batch_gpu * ctx.gpus) != 0:
        raise UserError(f'batch {batch_size} is not a multiple of {ctx.gpus} GPUs x {batch_gpu} per GPU')
    return desc, total_kimg, batch_size, batch_gpu


def check_preset(backbone: 'Backbone', cfg: Optional[str]) -> str:
    """The ``--cfg`` preset to use (the backbone's default when not given); one-line error otherwise."""
    cfg = backbone.default_preset if cfg is None else cfg
    if cfg not in backbone.presets:
        raise UserError(f'--cfg must be one of {", ".join(backbone.presets)} for --backbone={backbone.name}')
    return cfg


def build_generator_and_discriminator(ctx: BuildContext, G_kwargs: dict, D_kwargs: dict
                                      ) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """(G, D, G_ema) from their kwargs (``class_name`` + constructor arguments) and the dataset's
    ``c_dim``, ``img_resolution``, ``img_channels``: G and D in training mode without gradients
    (each phase switches its module's on), G_ema a copy of G in eval mode. Draw order: G, then D."""
    common = dict(c_dim=ctx.c_dim, img_resolution=ctx.img_resolution, img_channels=ctx.img_channels)
    G = dnnlib.util.construct_class_by_name(**G_kwargs, **common).train().requires_grad_(False).to(ctx.device)
    D = dnnlib.util.construct_class_by_name(**D_kwargs, **common).train().requires_grad_(False).to(ctx.device)
    return G, D, copy.deepcopy(G).eval()


def make_augment_pipe(ctx: BuildContext) -> Optional[torch.nn.Module]:
    """The D augmentation pipe of ``ctx.augment_kwargs`` (ADA / DiffAugment) with p = ``augment_p``."""
    if ctx.augment_kwargs is None:
        return None
    pipe = dnnlib.util.construct_class_by_name(**ctx.augment_kwargs).train().requires_grad_(False).to(ctx.device)
    if hasattr(pipe, 'p'):
        pipe.p.copy_(torch.as_tensor(ctx.augment_p))
    return pipe
