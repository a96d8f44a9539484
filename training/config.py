"""From train.py's flags to the keyword arguments of ``training_loop`` (and the run's name).

Flags come in groups (:mod:`training.options`): the common flags here (:class:`CommonOptions`),
one group per backbone (e.g. ``backbones.stylegan2.options``) and one per method
(:mod:`training.method_options`). :class:`TrainOptions` holds one instance of each — the
selected backbone's only — and :func:`build_training_args` turns them into plain data (stored
as ``training_options.json``): the common part here, ``backbone_kwargs`` from the backbone's
``configure``, the methods' kwargs from their groups. Flag semantics and run-directory naming
follow StyleGAN2-ADA (docs/stylegan2-ada.md §2).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar, Optional

import click

import backbones
import dnnlib
from backbones.base import ConfigContext
from dnnlib.util import UserError
from training.dataset import image_folder_kwargs, reference_dataset_kwargs, require_existing_paths
from training.method_options import METHOD_GROUPS, ATopkOptions, AugmentOptions, ChainOptions
from torch_utils import precision as precision_lib
from training.options import OptionGroup, flag, flag_name, group_fields
from training import resume_check, snapshot_io
from training.resume_check import DataFacts


@dataclasses.dataclass
class CommonOptions(OptionGroup):
    """Flags every backbone shares (upstream StyleGAN2-ADA names and meanings)."""
    title: ClassVar[str] = 'General'
    outdir: str = flag('runs', 'Where to save the results', metavar='DIR', required=True)
    data: str = flag('', 'Training data (directory, zip, or "builtin" / "builtin:RES")', metavar='PATH',
                     required=True)
    backbone: str = flag(backbones.DEFAULT, 'GAN backbone (registered in backbones/__init__.py)', metavar='NAME')
    cfg: Optional[str] = flag(None, "Base config: a preset of the backbone (stylegan2: auto, stylegan2, paper256, "
                                    "paper512, paper1024, cifar, low_shot)", metavar='NAME',
                              show_default="the backbone's, auto for stylegan2")
    gpus: int = flag(1, 'Number of processes (GPUs; CPU processes with --device=cpu)', type=click.IntRange(1))
    snap: int = flag(50, 'Snapshot interval in ticks', type=click.IntRange(1))
    metrics: Optional[list[str]] = flag(None, 'Comma-separated list or "none"', type=dnnlib.util.CommaSeparatedList(),
                                        show_default='fid50k_full')
    detector: Optional[str] = flag(None, 'TorchScript Inception for metrics instead of default_1.pt (IS needs one '
                                         'with logits)', metavar='PATH')
    vgg16: Optional[str] = flag(None, "NVIDIA's TorchScript vgg16.pt, for pr50k3* metrics", metavar='PATH')
    ref_data: Optional[str] = flag(None, 'Reference dataset for *_test metrics (e.g. the CIFAR-10 test split)',
                                   metavar='PATH')
    seed: int = flag(0, 'Random seed', type=int)
    dry_run: bool = flag(False, 'Print training options and exit', is_flag=True, short='-n')
    cond: bool = flag(False, 'Train conditional model based on dataset labels', type=bool, metavar='BOOL')
    subset: Optional[int] = flag(None, 'Train with only N images', type=click.IntRange(1), show_default='all')
    mirror: bool = flag(False, 'Enable dataset x-flips', type=bool, metavar='BOOL')
    kimg: Optional[float] = flag(None, 'Override training duration (kimg; fractions allowed for short runs)',
                                 type=click.FloatRange(0, min_open=True), metavar='KIMG', show_default='from --cfg')
    batch: Optional[int] = flag(None, 'Override batch size', type=click.IntRange(1), show_default='from --cfg')
    glr: Optional[float] = flag(None, 'G learning rate', type=click.FloatRange(0, min_open=True),
                                show_default='from --cfg')
    dlr: Optional[float] = flag(None, 'D learning rate', type=click.FloatRange(0, min_open=True),
                                show_default='from --cfg')
    tick: Optional[float] = flag(None, 'How often to print progress (kimg)', type=click.FloatRange(0, min_open=True),
                                 metavar='KIMG', show_default='4')
    resume: Optional[str] = flag(
        None, 'Resume from a degan snapshot (.pt: continues exactly), or start from the weights of an official '
        'network pickle (.pkl: transfer)', metavar='PATH')
    fresh_methods: bool = flag(False, 'With --resume: start the methods on which the flags and the snapshot disagree '
                                      '(ATop-k, ADA, CHAIN, augmentation) fresh instead of stopping', type=bool,
                               metavar='BOOL')
    grid: Optional[str] = flag(None, 'Snapshot image grid, columns x rows', metavar='WxH',
                               show_default='upstream on GPU, 8x8 on CPU')
    workers: int = flag(3, 'DataLoader workers (capped at cores - 1)', type=click.IntRange(0))
    device: str = flag('auto', 'cuda when present, else cpu', type=click.Choice(['auto', 'cpu', 'cuda']))
    ops: str = flag('auto', 'Custom ops: ref, cuda, or auto (cuda when built and self-checked)',
                    type=click.Choice(['ref', 'cuda', 'auto']))
    nobench: bool = flag(False, 'Disable cuDNN benchmarking', type=bool, metavar='BOOL')
    allow_tf32: bool = flag(False, 'Allow PyTorch to use TF32 internally', type=bool, metavar='BOOL')
    precision: str = flag('auto', "Compute dtype of the backbone's reduced-precision blocks (StyleGAN2: the top 4 "
                                  'resolutions of G and D): fp32, fp16, bf16, or auto = float16 on CUDA, bfloat16 on '
                                  'CPUs with AMX, else float32', type=click.Choice(list(precision_lib.NAMES)))

    def validate(self) -> None:
        if self.gpus & (self.gpus - 1) != 0:
            raise UserError('--gpus must be a power of two (1, 2, 4, 8, ...)')
        if self.backbone not in backbones.names():
            raise UserError(f'--backbone={self.backbone}: unknown backbone; registered: {", ".join(backbones.names())}')
        if self.grid is not None:
            self.grid_size()

    def grid_size(self) -> Optional[list[int]]:
        if self.grid is None:
            return None
        try:
            gw, gh = (int(v) for v in self.grid.lower().split('x'))
        except ValueError:
            raise UserError('--grid must look like 8x8 (columns x rows)') from None
        if gw < 1 or gh < 1:
            raise UserError('--grid needs at least one column and one row')
        return [gw, gh]


def option_groups() -> list[type[OptionGroup]]:
    """Every flag group of train.py: common, each registered backbone's, each method's."""
    return [CommonOptions] + [b.options for b in backbones.all_backbones()] + list(METHOD_GROUPS)


@dataclasses.dataclass
class TrainOptions:
    """All of train.py's flags, by group (the selected backbone's group only)."""
    common: CommonOptions
    backbone: OptionGroup
    augment: AugmentOptions
    atopk: ATopkOptions
    chain: ChainOptions

    @classmethod
    def from_flags(cls, flags: dict[str, Any], given: Optional[set[str]] = None) -> 'TrainOptions':
        """Sort flat flags (``{'data': ..., 'cbase': ..., 'atopk': True}``) into their groups.

        ``given``: the flags set explicitly (default: all of ``flags``); a flag of a backbone other
        than ``--backbone`` may not be given. Unknown names raise, naming the flag.
        """
        given = set(flags) if given is None else set(given)
        common = _take(CommonOptions, flags)
        backbone = backbones.get(common.backbone)
        unknown = sorted(set(flags) - set().union(*map(_fields, option_groups())))
        if unknown:
            raise UserError(f'unknown option {flag_name(unknown[0])}')
        for other in backbones.all_backbones():
            foreign = sorted(_fields(other.options) & given - _fields(backbone.options))
            if foreign:
                raise UserError(f'{flag_name(foreign[0])} belongs to --backbone={other.name}, '
                                f'not --backbone={backbone.name}')
        return cls(common=common, backbone=_take(backbone.options, flags), augment=_take(AugmentOptions, flags),
                   atopk=_take(ATopkOptions, flags), chain=_take(ChainOptions, flags))


def _fields(group: type[OptionGroup]) -> set[str]:
    return {f.name for f in group_fields(group)}


def _take(group: type[OptionGroup], flags: dict[str, Any]) -> Any:
    return group(**{name: flags[name] for name in _fields(group) if name in flags})


# ---------------------------------------------------------------------------------------------
# Building the training_loop kwargs.


def open_training_set(data: str) -> tuple[dnnlib.EasyDict, Any]:
    """Open --data once to learn resolution, labels and size; bad data → one-line UserError."""
    kwargs = image_folder_kwargs(data, use_labels=True, max_size=None, xflip=False)
    try:
        training_set = dnnlib.util.construct_class_by_name(**kwargs)
    except UserError:
        raise
    except (IOError, OSError, ValueError) as e:
        raise UserError(f'--data={data}: {e}') from None
    kwargs.resolution = training_set.resolution
    kwargs.use_labels = training_set.has_labels
    kwargs.max_size = len(training_set)
    return kwargs, training_set


def build_training_args(opts: TrainOptions) -> tuple[str, dnnlib.EasyDict]:
    """Validate flags and build (run description, training_loop kwargs)."""
    common = opts.common
    backbone = backbones.get(common.backbone)
    args = dnnlib.EasyDict(num_gpus=common.gpus, image_snapshot_ticks=common.snap, network_snapshot_ticks=common.snap,
                           random_seed=common.seed, device=None if common.device == 'auto' else common.device,
                           ops_impl=common.ops, backbone=backbone.name)
    args.metrics = ['fid50k_full'] if common.metrics is None else list(common.metrics)
    args.metric_kwargs = _metric_kwargs(common, args.metrics)
    desc, facts, dataset_size = _dataset_config(common, args)
    resolution = facts.resolution
    args.chain_kwargs = opts.chain.layer_kwargs()

    resume_desc, resumed = _resume_config(common, args)
    transfer = resumed is not None and snapshot_io.is_transfer(resumed)
    configured = backbone.configure(ConfigContext(
        options=opts.backbone, cfg=common.cfg, gpus=common.gpus, resolution=resolution, kimg=common.kimg,
        batch=common.batch, glr=common.glr, dlr=common.dlr, chain=args.chain_kwargs, dataset_size=dataset_size,
        mirror=bool(common.mirror), transfer=transfer, precision=common.precision))
    _precision_config(common, backbone, configured, resolution, args)
    desc += ('' if backbone.name == backbones.DEFAULT else f'-{backbone.name}') + configured.desc
    args.backbone_kwargs = configured.kwargs
    args.total_kimg = configured.total_kimg
    args.batch_size, args.batch_gpu = configured.batch_size, configured.batch_gpu
    if configured.snapshot_ticks is not None:
        args.image_snapshot_ticks = args.network_snapshot_ticks = min(common.snap, configured.snapshot_ticks)
    if common.tick is not None:
        args.kimg_per_tick = common.tick

    desc += opts.augment.configure(args, configured.diffaugment)
    desc += resume_desc + configured.transfer_desc
    _performance_config(common, args)
    desc += opts.atopk.configure(args, opts.augment.mode, common.seed)
    desc += opts.chain.describe()
    if resumed is not None:
        _check_resume(common, args, resumed, facts, transfer)
    elif common.fresh_methods:
        raise UserError('--fresh-methods=1 applies to --resume only')
    return desc, args


def _dataset_config(common: CommonOptions, args: dnnlib.EasyDict) -> tuple[str, DataFacts, int]:
    """--data, --cond, --subset, --mirror, --workers → ``training_set_kwargs``; (run name, the
    dataset's shape facts, number of images used)."""
    if not common.data:
        raise UserError('--data is required: a folder or zip of images, or "builtin"')
    args.training_set_kwargs, training_set = open_training_set(common.data)
    desc = training_set.name
    dataset_size = len(training_set)
    facts = DataFacts(path=common.data, resolution=training_set.resolution, channels=training_set.num_channels,
                      label_dim=training_set.label_dim if common.cond else 0)
    del training_set
    args.data_loader_kwargs = data_loader_kwargs(common.workers)
    if common.cond:
        if not args.training_set_kwargs.use_labels:
            raise UserError('--cond=1 needs labels in dataset.json (see dataset_tool.py)')
        desc += '-cond'
    else:
        args.training_set_kwargs.use_labels = False
    if common.subset is not None:
        if not 1 <= common.subset <= dataset_size:
            raise UserError(f'--subset must be between 1 and {dataset_size}')
        desc += f'-subset{common.subset}'
        if common.subset < dataset_size:
            args.training_set_kwargs.max_size = common.subset
            args.training_set_kwargs.random_seed = common.seed
            dataset_size = common.subset
    if common.mirror:
        desc += '-mirror'
        args.training_set_kwargs.xflip = True
    return desc, facts, dataset_size


def data_loader_kwargs(workers: int) -> dnnlib.EasyDict:
    """DataLoader settings: ``workers`` loader processes, capped at (cores − 1).

    On a 2-core machine upstream's 3 workers compete with the training process itself; one
    loader process keeps up with small images. 0 means loading in the training process.
    """
    num_workers = min(workers, max((os.cpu_count() or 1) - 1, 0))
    if num_workers == 0:
        return dnnlib.EasyDict(num_workers=0)
    return dnnlib.EasyDict(num_workers=num_workers, prefetch_factor=2, persistent_workers=True)


def _metric_kwargs(common: CommonOptions, metrics: list[str]) -> dnnlib.EasyDict:
    """Validate --metrics (and the weight files they need) at start; kwargs for ``calc_metric``."""
    from metrics import metric_main
    metric_main.check_metric_names(metrics)
    require_existing_paths([('--detector', common.detector), ('--vgg16', common.vgg16), ('--ref-data', common.ref_data)])
    kwargs = dnnlib.EasyDict(detector_path=common.detector, vgg16_path=common.vgg16,
                             ref_dataset_kwargs=reference_dataset_kwargs(common.ref_data))
    for metric in metrics:  # e.g. is10k without an Inception that has logits: fail now, not after hours
        metric_main.check_metric(metric, common.detector, common.vgg16, dict(path=common.data),
                                 kwargs.ref_dataset_kwargs, device='cpu')
    return kwargs


def _resume_config(common: CommonOptions, args: dnnlib.EasyDict) -> tuple[str, Optional[dict[str, Any]]]:
    """--resume → ``resume_pkl``; (run-name part, the snapshot read memory-mapped or None).

    The file is read now, so a bad one is an error before the run directory exists. A
    weights-only file (an official ``.pkl``, a converted checkpoint) is a transfer: the run starts
    at kimg 0 with fresh optimisers and, as upstream's resume, ADA's p moves 0 → 1 in 100 kimg
    (``ada_kimg=100``) and G_ema has no ramp-up. A degan snapshot with its training state
    continues exactly, with the flags it was started with (:func:`_check_resume`).
    """
    if common.resume is None:
        return '', None
    if common.resume == 'noresume':
        return '-noresume', None
    if common.resume.startswith(('http://', 'https://')) or common.resume in (
            'ffhq256', 'ffhq512', 'ffhq1024', 'celebahq256', 'lsundog256'):
        raise UserError(f'--resume={common.resume}: degan never downloads; pass the path of a degan snapshot (.pt) '
                        'or of a network pickle (.pkl) you downloaded')
    data = snapshot_io.read(common.resume, mmap=True)  # checked now, loaded by the loop
    args.resume_pkl = common.resume
    if snapshot_io.is_transfer(data):
        args.ada_kimg = 100
    return '-resumecustom', data


def _check_resume(common: CommonOptions, args: dnnlib.EasyDict, data: dict[str, Any], facts: DataFacts,
                  transfer: bool) -> None:
    """The snapshot agrees with --data, is not finished and has the flags' methods
    (training/resume_check.py); accepted method differences go to the loop as ``resume_fresh_methods``."""
    resume_check.check_dataset(common.resume, data, facts)
    if transfer:
        return
    resume_check.check_not_finished(common.resume, data, args.total_kimg)
    saved_precision = snapshot_precision(common.resume, data)
    if saved_precision is not None:
        args.precision.resumed_from = saved_precision
    differences = resume_check.check_methods(common.resume, data, args, common.fresh_methods)
    if differences:
        args.resume_fresh_methods = True
        print('Note: --fresh-methods=1: ' + '; '.join(differences) + ' — those methods start fresh.')


def run_device_type(device: str) -> str:
    """'cuda' or 'cpu': the device kind --device gives the training processes (train.py's rule)."""
    import torch
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    return device


def _precision_config(common: CommonOptions, backbone: Any, configured: Any, resolution: int,
                      args: dnnlib.EasyDict) -> None:
    """--precision → ``args.precision``: the resolved dtype, why, and what of the backbone computes in it
    (torch_utils/precision.py; printed by each run at start, kept in training_options.json)."""
    use = backbone.precision_use(configured.kwargs, resolution)
    args.precision = dnnlib.EasyDict(precision_lib.plan(common.precision, run_device_type(common.device),
                                                        blocks=use.blocks, float32_why=use.why))


def snapshot_precision(path: str, data: dict[str, Any]) -> Optional[str]:
    """What the reduced-precision blocks of the run that wrote a snapshot computed in ('float32',
    'float16', 'bfloat16'), None where nothing says: the snapshot's ``metadata.precision`` if it has
    one, else the ``precision`` record of the ``training_options.json`` beside it."""
    saved = (data.get('metadata') or {}).get('precision')
    if isinstance(saved, str):
        return saved
    options_path = os.path.join(os.path.dirname(os.path.abspath(path)), 'training_options.json')
    try:
        with open(options_path, encoding='utf-8') as f:
            record = json.load(f).get('precision')
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(record, dict) or record.get('dtype') not in precision_lib.DTYPE_NAMES.values():
        return None
    return precision_lib.compute_dtype_name(record)


def _performance_config(common: CommonOptions, args: dnnlib.EasyDict) -> None:
    if common.nobench:
        args.cudnn_benchmark = False
    if common.allow_tf32:
        args.allow_tf32 = True
    grid = common.grid_size()
    if grid is not None:
        args.grid_size = grid
