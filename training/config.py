"""From train.py's flags to the keyword arguments of ``training_loop`` (and the run's name).

Presets, ``auto`` formulas, flag semantics and run-directory naming follow StyleGAN2-ADA
(stylegan2-ada.md §2); ``low_shot`` is DiffAugment's low-shot StyleGAN2 preset (methods.md §4).
Method flags (ATop-k, CHAIN, DiffAugment) are validated here so a bad combination fails at
start with one line. Everything returned is plain data (stored as ``training_options.json``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import dnnlib
from dnnlib.util import UserError

# ref_gpus, kimg, mb (batch), mbstd, fmaps, lrate, gamma, ema (kimg), ramp, map; -1 = derived.
CFG_SPECS: dict[str, dict[str, Any]] = {
    'auto':      dict(ref_gpus=-1, kimg=25000,  mb=-1, mbstd=-1, fmaps=-1,  lrate=-1,     gamma=-1,   ema=-1,  ramp=0.05, map=2),
    'stylegan2': dict(ref_gpus=8,  kimg=25000,  mb=32, mbstd=4,  fmaps=1,   lrate=0.002,  gamma=10,   ema=10,  ramp=None, map=8),
    'paper256':  dict(ref_gpus=8,  kimg=25000,  mb=64, mbstd=8,  fmaps=0.5, lrate=0.0025, gamma=1,    ema=20,  ramp=None, map=8),
    'paper512':  dict(ref_gpus=8,  kimg=25000,  mb=64, mbstd=8,  fmaps=1,   lrate=0.0025, gamma=0.5,  ema=20,  ramp=None, map=8),
    'paper1024': dict(ref_gpus=8,  kimg=25000,  mb=32, mbstd=4,  fmaps=1,   lrate=0.002,  gamma=2,    ema=10,  ramp=None, map=8),
    'cifar':     dict(ref_gpus=2,  kimg=100000, mb=64, mbstd=32, fmaps=1,   lrate=0.0025, gamma=0.01, ema=500, ramp=0.05, map=2),
    'low_shot':  dict(ref_gpus=-1, kimg=300,    mb=8,  mbstd=4,  fmaps=1,   lrate=0.002,  gamma=10,   ema=10,  ramp=None, map=2),
}

AUGPIPE_NAMES = ('blit', 'geom', 'color', 'filter', 'noise', 'cutout', 'bg', 'bgc', 'bgcf', 'bgcfn', 'bgcfnc')


@dataclasses.dataclass
class TrainOptions:
    """Every train.py flag; None means "not given" (defaults and run names depend on that)."""
    outdir: str = 'runs'
    gpus: int = 1
    snap: int = 50
    metrics: Optional[list[str]] = None
    detector: Optional[str] = None
    vgg16: Optional[str] = None
    ref_data: Optional[str] = None
    seed: int = 0
    data: str = ''
    cond: bool = False
    subset: Optional[int] = None
    mirror: bool = False
    cfg: str = 'auto'
    gamma: Optional[float] = None
    kimg: Optional[float] = None
    batch: Optional[int] = None
    aug: Optional[str] = None
    p: Optional[float] = None
    target: Optional[float] = None
    augpipe: Optional[str] = None
    diffaugment: Optional[str] = None
    resume: Optional[str] = None
    freezed: int = 0
    fp32: bool = False
    nhwc: bool = False
    allow_tf32: bool = False
    nobench: bool = False
    workers: int = 3
    cbase: Optional[int] = None
    cmax: Optional[int] = None
    map: Optional[int] = None
    glr: Optional[float] = None
    dlr: Optional[float] = None
    mbstd_group: Optional[int] = None
    tick: Optional[float] = None
    device: str = 'auto'
    ops: str = 'auto'
    grid: Optional[str] = None
    # ATop-k (patches/atopk.py)
    atopk: bool = False
    atopk_target: float = 0.6
    atopk_interval: int = 4
    atopk_kimg: float = 500
    atopk_k_interval: int = 1
    atopk_p: str = 'own'
    topk_mode: Optional[str] = None
    topk_k: Optional[int] = None
    topk_gamma: float = 0.99
    topk_nu: float = 0.75
    topk_round: str = 'ceil'
    atopk_clamp_p: bool = False
    # CHAIN (patches/chain.py)
    chain: bool = False
    chain_type: str = 'chain'
    chain_res: Optional[list[int]] = None
    chain_place: str = 'C1C2CS'
    chain_tau: float = 0.5
    chain_lambda: float = 20
    chain_p0: float = 0
    chain_dp: float = 0.001
    chain_start: int = 5000


def _positive(name: str, value: Optional[float], minimum: float = 1) -> None:
    if value is not None and not value >= minimum:
        raise UserError(f'--{name} must be at least {minimum:g} (got {value:g})')


def open_training_set(opts: TrainOptions) -> tuple[dnnlib.EasyDict, Any]:
    """Open --data once to learn resolution, labels and size; bad data → one-line UserError."""
    kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=opts.data,
                             use_labels=True, max_size=None, xflip=False)
    try:
        training_set = dnnlib.util.construct_class_by_name(**kwargs)
    except UserError:
        raise
    except (IOError, OSError, ValueError) as e:
        raise UserError(f'--data={opts.data}: {e}') from None
    kwargs.resolution = training_set.resolution
    kwargs.use_labels = training_set.has_labels
    kwargs.max_size = len(training_set)
    return kwargs, training_set


def build_training_args(opts: TrainOptions) -> tuple[str, dnnlib.EasyDict]:
    """Validate flags and build (run description, training_loop kwargs)."""
    if opts.gpus < 1 or (opts.gpus & (opts.gpus - 1)) != 0:
        raise UserError('--gpus must be a power of two (1, 2, 4, 8, ...)')
    _positive('snap', opts.snap)
    args = dnnlib.EasyDict(num_gpus=opts.gpus, image_snapshot_ticks=opts.snap, network_snapshot_ticks=opts.snap,
                           random_seed=opts.seed, device=None if opts.device == 'auto' else opts.device,
                           ops_impl=opts.ops)
    args.metrics = ['fid50k_full'] if opts.metrics is None else list(opts.metrics)
    args.metric_kwargs = _metric_kwargs(opts, args.metrics)

    # Dataset: data, cond, subset, mirror.
    args.training_set_kwargs, training_set = open_training_set(opts)
    desc = training_set.name
    dataset_size = len(training_set)
    resolution = training_set.resolution
    del training_set
    _positive('workers', opts.workers)
    args.data_loader_kwargs = data_loader_kwargs(opts.workers)
    if opts.cond:
        if not args.training_set_kwargs.use_labels:
            raise UserError('--cond=1 needs labels in dataset.json (see dataset_tool.py)')
        desc += '-cond'
    else:
        args.training_set_kwargs.use_labels = False
    if opts.subset is not None:
        if not 1 <= opts.subset <= dataset_size:
            raise UserError(f'--subset must be between 1 and {dataset_size}')
        desc += f'-subset{opts.subset}'
        if opts.subset < dataset_size:
            args.training_set_kwargs.max_size = opts.subset
            args.training_set_kwargs.random_seed = opts.seed
    if opts.mirror:
        desc += '-mirror'
        args.training_set_kwargs.xflip = True

    desc += _base_config(opts, args, resolution)
    desc += _augmentation_config(opts, args)
    desc += _transfer_config(opts, args)
    _performance_config(opts, args)
    desc += _atopk_config(opts, args)
    desc += _chain_config(opts, args)
    return desc, args


def data_loader_kwargs(workers: int) -> dnnlib.EasyDict:
    """DataLoader settings: ``workers`` loader processes, capped at (cores − 1).

    On a 2-core machine upstream's 3 workers compete with the training process itself; one
    loader process keeps up with small images. 0 means loading in the training process.
    """
    import os
    num_workers = min(workers, max((os.cpu_count() or 1) - 1, 0))
    if num_workers == 0:
        return dnnlib.EasyDict(num_workers=0)
    return dnnlib.EasyDict(num_workers=num_workers, prefetch_factor=2, persistent_workers=True)


def _metric_kwargs(opts: TrainOptions, metrics: list[str]) -> dnnlib.EasyDict:
    """Validate --metrics (and the weight files they need) at start; kwargs for ``calc_metric``."""
    from metrics import metric_main, metric_utils
    from training.dataset import require_existing_paths
    metric_main.check_metric_names(metrics)
    require_existing_paths([('--detector', opts.detector), ('--vgg16', opts.vgg16), ('--ref-data', opts.ref_data)])
    kwargs = dnnlib.EasyDict(detector_path=opts.detector, vgg16_path=opts.vgg16,
                             ref_dataset_kwargs=metric_utils.reference_dataset_kwargs(opts.ref_data))
    for metric in metrics:  # e.g. is10k without an Inception that has logits: fail now, not after hours
        metric_main.check_metric(metric, opts.detector, opts.vgg16, dict(path=opts.data),
                                 kwargs.ref_dataset_kwargs, device='cpu')
    return kwargs


def _base_config(opts: TrainOptions, args: dnnlib.EasyDict, resolution: int) -> str:
    if opts.cfg not in CFG_SPECS:
        raise UserError(f'--cfg must be one of {", ".join(CFG_SPECS)}')
    desc = f'-{opts.cfg}'
    spec = dnnlib.EasyDict(CFG_SPECS[opts.cfg])
    gpus = opts.gpus
    if opts.cfg == 'auto':
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

    channel_base = int(spec.fmaps * 32768) if opts.cbase is None else opts.cbase
    channel_max = 512 if opts.cmax is None else opts.cmax
    _positive('cbase', opts.cbase)
    _positive('cmax', opts.cmax)
    _positive('map', opts.map)
    args.G_kwargs = dnnlib.EasyDict(
        class_name='training.networks.Generator', z_dim=512, w_dim=512,
        mapping_kwargs=dnnlib.EasyDict(num_layers=spec.map if opts.map is None else opts.map),
        synthesis_kwargs=dnnlib.EasyDict(channel_base=channel_base, channel_max=channel_max,
                                         num_fp16_res=4, conv_clamp=256))
    args.D_kwargs = dnnlib.EasyDict(
        class_name='training.networks.Discriminator', channel_base=channel_base, channel_max=channel_max,
        num_fp16_res=4, conv_clamp=256, block_kwargs=dnnlib.EasyDict(), mapping_kwargs=dnnlib.EasyDict(),
        epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=spec.mbstd if opts.mbstd_group is None else opts.mbstd_group))
    glr = spec.lrate if opts.glr is None else opts.glr
    dlr = spec.lrate if opts.dlr is None else opts.dlr
    args.G_opt_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=glr, betas=[0, 0.99], eps=1e-8)
    args.D_opt_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=dlr, betas=[0, 0.99], eps=1e-8)
    args.loss_kwargs = dnnlib.EasyDict(class_name='training.loss.StyleGAN2Loss', r1_gamma=spec.gamma)
    args.total_kimg = spec.kimg
    args.batch_size = spec.mb
    args.batch_gpu = max(spec.mb // spec.ref_gpus, 1)
    args.ema_kimg = spec.ema
    args.ema_rampup = spec.ramp
    if opts.tick is not None:
        if not opts.tick > 0:
            raise UserError('--tick must be positive (kimg per tick)')
        args.kimg_per_tick = opts.tick

    if opts.cfg == 'cifar':
        args.loss_kwargs.pl_weight = 0
        args.loss_kwargs.style_mixing_prob = 0
        args.D_kwargs.architecture = 'orig'
    if opts.cfg == 'low_shot':
        args.image_snapshot_ticks = args.network_snapshot_ticks = min(opts.snap, 10)

    if opts.gamma is not None:
        if not opts.gamma >= 0:
            raise UserError('--gamma must be non-negative')
        desc += f'-gamma{opts.gamma:g}'
        args.loss_kwargs.r1_gamma = opts.gamma
    if opts.kimg is not None:
        if not opts.kimg > 0:
            raise UserError('--kimg must be positive')
        desc += f'-kimg{opts.kimg:g}'
        args.total_kimg = opts.kimg
    if opts.batch is not None:
        if not (opts.batch >= 1 and opts.batch % gpus == 0):
            raise UserError('--batch must be at least 1 and divisible by --gpus')
        desc += f'-batch{opts.batch}'
        args.batch_size = opts.batch
        args.batch_gpu = opts.batch // gpus
    if args.batch_size % (args.batch_gpu * gpus) != 0:
        raise UserError(f'batch {args.batch_size} is not a multiple of {gpus} GPUs x {args.batch_gpu} per GPU')
    mbstd = args.D_kwargs.epilogue_kwargs.mbstd_group_size
    if mbstd is not None and mbstd > 0 and args.batch_gpu % min(mbstd, args.batch_gpu) != 0:
        raise UserError(f'--mbstd-group={mbstd} must divide the per-GPU batch {args.batch_gpu}')
    return desc


def _augmentation_config(opts: TrainOptions, args: dnnlib.EasyDict) -> str:
    desc = ''
    aug = opts.aug
    if opts.diffaugment:
        if aug not in (None, 'noaug'):
            raise UserError('--diffaugment replaces ADA: drop --aug, or use --aug=noaug with it')
        from training import diffaugment
        try:
            diffaugment.parse_policy(opts.diffaugment)
        except ValueError as e:
            raise UserError(f'--diffaugment: {e}') from None
        args.augment_kwargs = dnnlib.EasyDict(class_name='training.diffaugment.DiffAugmentPipe', policy=opts.diffaugment)
        desc += '-diffaug-' + opts.diffaugment.replace(',', '-')
        aug = 'noaug'
        if opts.augpipe is not None or opts.p is not None or opts.target is not None:
            raise UserError('--augpipe/--p/--target belong to ADA; they cannot be used with --diffaugment')
        return desc
    if aug is None:
        aug = 'ada'
    else:
        if aug not in ('noaug', 'ada', 'fixed'):
            raise UserError('--aug must be noaug, ada or fixed')
        desc += f'-{aug}'
    if aug == 'ada':
        args.ada_target = 0.6
    elif aug == 'fixed' and opts.p is None:
        raise UserError('--aug=fixed requires --p')
    if opts.p is not None:
        if aug != 'fixed':
            raise UserError('--p can only be used with --aug=fixed')
        if not 0 <= opts.p <= 1:
            raise UserError('--p must be between 0 and 1')
        desc += f'-p{opts.p:g}'
        args.augment_p = opts.p
    if opts.target is not None:
        if aug != 'ada':
            raise UserError('--target can only be used with --aug=ada')
        if not 0 <= opts.target <= 1:
            raise UserError('--target must be between 0 and 1')
        desc += f'-target{opts.target:g}'
        args.ada_target = opts.target
    augpipe = opts.augpipe
    if augpipe is None:
        augpipe = 'bgc'
    else:
        if aug == 'noaug':
            raise UserError('--augpipe cannot be used with --aug=noaug')
        if augpipe not in AUGPIPE_NAMES:
            raise UserError(f'--augpipe must be one of {", ".join(AUGPIPE_NAMES)}')
        desc += f'-{augpipe}'
    if aug != 'noaug':
        from training.augment import AUGPIPE_SPECS
        args.augment_kwargs = dnnlib.EasyDict(class_name='training.augment.AugmentPipe', **AUGPIPE_SPECS[augpipe])
    args.aug = aug
    return desc


def _transfer_config(opts: TrainOptions, args: dnnlib.EasyDict) -> str:
    desc = ''
    if opts.resume is not None and opts.resume != 'noresume':
        if opts.resume.startswith(('http://', 'https://')) or opts.resume in (
                'ffhq256', 'ffhq512', 'ffhq1024', 'celebahq256', 'lsundog256'):
            raise UserError(f'--resume={opts.resume}: degan never downloads; pass the path of a degan snapshot (.pt)')
        desc += '-resumecustom'
        args.resume_pkl = opts.resume
    elif opts.resume == 'noresume':
        desc += '-noresume'
    if opts.freezed:
        if opts.freezed < 0:
            raise UserError('--freezed must be non-negative')
        desc += f'-freezed{opts.freezed:d}'
        args.D_kwargs.block_kwargs.freeze_layers = opts.freezed
    return desc


def _performance_config(opts: TrainOptions, args: dnnlib.EasyDict) -> None:
    if opts.fp32:
        args.G_kwargs.synthesis_kwargs.num_fp16_res = args.D_kwargs.num_fp16_res = 0
        args.G_kwargs.synthesis_kwargs.conv_clamp = args.D_kwargs.conv_clamp = None
    if opts.nhwc:
        args.G_kwargs.synthesis_kwargs.fp16_channels_last = True
        args.D_kwargs.block_kwargs.fp16_channels_last = True
    if opts.nobench:
        args.cudnn_benchmark = False
    if opts.allow_tf32:
        args.allow_tf32 = True
    if opts.ops not in ('ref', 'cuda', 'auto'):
        raise UserError('--ops must be ref, cuda or auto')
    if opts.device not in ('auto', 'cpu', 'cuda'):
        raise UserError('--device must be auto, cpu or cuda')
    if opts.grid is not None:
        try:
            gw, gh = (int(v) for v in opts.grid.lower().split('x'))
        except ValueError:
            raise UserError('--grid must look like 8x8 (columns x rows)') from None
        if gw < 1 or gh < 1:
            raise UserError('--grid needs at least one column and one row')
        args.grid_size = [gw, gh]


def _atopk_config(opts: TrainOptions, args: dnnlib.EasyDict) -> str:
    """ATop-k flags → ``atopk_kwargs`` for patches/atopk.py (methods.md §9.3–9.4)."""
    if not opts.atopk and opts.topk_mode is None:
        if opts.topk_k is not None:
            raise UserError('--topk-k needs --atopk=1 (with --topk-mode=fixed or worst)')
        return ''
    mode = opts.topk_mode or 'adaptive'
    if mode not in ('adaptive', 'fixed', 'linear', 'worst'):
        raise UserError('--topk-mode must be adaptive, fixed, linear or worst')
    batch = args.batch_size
    if args.batch_size != args.batch_gpu * args.num_gpus:
        raise UserError(f'ATop-k selects over the whole batch in one round: batch {batch} must equal '
                        f'--gpus x per-GPU batch ({args.num_gpus} x {args.batch_gpu}); pass --batch to set it')
    k = opts.topk_k
    if mode in ('fixed', 'worst'):
        if k is None:
            raise UserError(f'--topk-mode={mode} needs --topk-k')
    elif k is not None:
        raise UserError(f'--topk-k is only used with --topk-mode=fixed or worst (not {mode})')
    if k is not None and not 1 <= k <= batch:
        raise UserError(f'--topk-k={k} must be between 1 and the batch size {batch}')
    if opts.topk_round not in ('ceil', 'floor'):
        raise UserError('--topk-round must be ceil or floor')
    if opts.atopk_clamp_p and opts.atopk_p == 'ada':
        raise UserError('--atopk-clamp-p=1 would change ADA\'s own p; use it with --atopk-p=own')
    if opts.atopk_p not in ('own', 'ada'):
        raise UserError('--atopk-p must be own or ada')
    if opts.atopk_p == 'ada' and args.get('aug') != 'ada':
        raise UserError('--atopk-p=ada needs --aug=ada (ADA\'s p); use --atopk-p=own otherwise')
    for name, value in (('atopk-interval', opts.atopk_interval), ('atopk-k-interval', opts.atopk_k_interval)):
        _positive(name, value)
    if not opts.atopk_kimg > 0:
        raise UserError('--atopk-kimg must be positive')
    if not 0 < opts.topk_gamma <= 1 or not 0 < opts.topk_nu <= 1:
        raise UserError('--topk-gamma and --topk-nu must be in (0, 1]')
    args.atopk_kwargs = dnnlib.EasyDict(
        mode=mode, batch_size=batch, target=opts.atopk_target, interval=opts.atopk_interval,
        kimg=opts.atopk_kimg, k_interval=opts.atopk_k_interval, p_source=opts.atopk_p, k=k,
        gamma=opts.topk_gamma, nu=opts.topk_nu, round=opts.topk_round, clamp_p=opts.atopk_clamp_p, seed=opts.seed)
    return '-atopk' if mode == 'adaptive' else f'-topk{mode}{k if k is not None else ""}'


def _chain_config(opts: TrainOptions, args: dnnlib.EasyDict) -> str:
    """CHAIN flags → ``D_kwargs.chain_kwargs`` for patches/chain.py (methods.md §9.5–9.6)."""
    if not opts.chain:
        return ''
    if opts.chain_type not in ('chain', 'chain_batch'):
        raise UserError('--chain-type must be chain or chain_batch')
    place = opts.chain_place.upper()
    if not place or any(part not in ('C1', 'C2', 'CS') for part in (place[i:i + 2] for i in range(0, len(place), 2))):
        raise UserError('--chain-place is a concatenation of C1, C2 and CS (e.g. C1C2CS)')
    if not 0 <= opts.chain_tau <= 1:
        raise UserError('--chain-tau must be between 0 and 1')
    if opts.chain_lambda < 0 or opts.chain_p0 < 0 or opts.chain_dp <= 0 or opts.chain_start < 0:
        raise UserError('--chain-lambda/--chain-p0 must be >= 0, --chain-dp > 0, --chain-start >= 0')
    args.D_kwargs.chain_kwargs = dnnlib.EasyDict(
        variant=opts.chain_type, resolutions=opts.chain_res, place=place, tau=opts.chain_tau,
        lambda_=opts.chain_lambda, p0=opts.chain_p0, dp=opts.chain_dp, start_iter=opts.chain_start)
    return '-chain' if opts.chain_type == 'chain' else '-chainbatch'
