"""What a table row runs at each ``--scale`` (docs/reproducing.md, "Scales").

* ``paper`` — the paper's settings (GPUs): the row's preset, batch, length and flags; the
  paper's metric computed by ``train.py`` at every snapshot; best value over training.
* ``cpu`` — the CPU-scale protocol, one fixed reduction of every row decided before any result
  (docs/reproducing.md, "The CPU-scale protocol", gives the reasons and the timing it rests on):
  32-px data, width 64 (``--cbase=2048 --cmax=64``), :data:`CPU_KIMG` kimg, every controller's
  speed scaled by the factor f = CPU_KIMG / row.kimg by which the length shrinks (ADA's and
  ATop-k's kimg, CHAIN's Δp and start, Linear Top-k's decay, Diffusion-PG's kimg), R1 γ scaled
  with the pixel count (upstream's γ ∝ res² heuristic), G_ema with upstream's ramp-up; the batch
  stays the row's (docs/README.md decision 11). Metric: the row's metric from 1k generated
  images (``fid5k_full@1k``), best of evaluations at 50 % and 100 % of training.
* ``smoke`` — every row on the built-in dataset (``builtin:16``) with tiny networks, a few
  iterations and a 32-image metric: checks the machinery, never the numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from dnnlib.util import UserError
from repro import datasets
from repro.rows import Row

SCALES = ('paper', 'cpu', 'smoke')

#: CPU-scale protocol (docs/reproducing.md, "The CPU-scale protocol").
CPU_RESOLUTION = 32
CPU_CBASE = 2048
CPU_CMAX = 64
CPU_KIMG = 7.2
CPU_TICKS = 4                   # snapshots (for --resume) every CPU_KIMG / 4
CPU_EVAL_FRACTIONS = (0.5, 1.0)
CPU_NUM_GEN = 1000
CPU_FASTGAN = dict(resolution=256, ngf=16, ndf=16)   # FastGAN trains at >= 256 px only
CPU_PROJECTED = dict(resolution=32, pg_ngf=16)

#: Smoke scale: the machinery only.
SMOKE_ITERATIONS = 4
SMOKE_NUM_GEN = 32

#: Controller defaults the CPU scale scales when a row does not set them (train.py's defaults).
ATOPK_KIMG, ADA_KIMG, CHAIN_DP, CHAIN_START, TOPK_GAMMA, DIFFUSION_KIMG = 500.0, 500.0, 0.001, 5000, 0.99, 100.0

STYLEGAN2_FAMILY = ('stylegan2', 'insgen')


@dataclasses.dataclass(frozen=True)
class MetricPlan:
    """How a run's metric is measured: by ``train.py`` at each snapshot (``inline``) or by
    ``calc_metrics.py`` afterwards (``posthoc``, with ``--num-gen`` and evaluation points)."""
    mode: str
    metrics: tuple[str, ...]
    num_gen: Optional[int] = None
    fractions: tuple[float, ...] = ()
    label: str = ''

    def recorded_name(self, metric: str) -> str:
        """The name the metric's records carry (``fid5k_full@1k`` for a reduced count)."""
        if self.num_gen is None:
            return metric
        from metrics import metric_main
        if self.num_gen >= metric_main.nominal_num_gen(metric):
            return metric
        return metric_main.reduced_metric_name(metric, self.num_gen)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A row at one scale: the data it trains on, its train.py flags (without --outdir, --data,
    --seed, --gpus and the user's file paths) and its metric plan."""
    row: Row
    scale: str
    dataset: Optional[datasets.Dataset]  # None: the built-in dataset (smoke)
    data: str                             # 'builtin:16' or a dataset's prepared resolution 'res:32'
    resolution: int
    flags: tuple[str, ...]
    metric: MetricPlan
    total_kimg: float
    factor: float
    notes: tuple[str, ...] = ()

    @property
    def ref_dataset(self) -> Optional[datasets.Dataset]:
        if self.scale == 'smoke' or self.dataset is None or not any(m.endswith('_test') for m in self.metric.metrics):
            return None
        return datasets.get(self.dataset.ref) if self.dataset.ref else None


def fmt(value: Any) -> str:
    """A flag value as train.py reads it (booleans as 1/0, floats without noise)."""
    if isinstance(value, bool):
        return '1' if value else '0'
    if isinstance(value, float):
        return f'{value:.6g}'
    return str(value)


def flag_args(flags: dict[str, Any]) -> list[str]:
    return [f'--{name.replace("_", "-")}={fmt(value)}' for name, value in flags.items() if value is not None]


def _atopk_on(flags: dict[str, Any]) -> bool:
    return bool(flags.get('atopk')) or flags.get('topk_mode') is not None


def _ada_on(row: Row, flags: dict[str, Any]) -> bool:
    return row.backbone in STYLEGAN2_FAMILY and not flags.get('diffaugment') and flags.get('aug', 'ada') == 'ada'


def train_flag_available(group: str, name: str) -> bool:
    """Whether train.py has a flag (some of the CPU protocol's needs are not flags yet)."""
    from training import config, method_options
    from training.options import group_fields
    cls = dict(common=config.CommonOptions, augment=method_options.AugmentOptions)[group]
    return name in {f.name for f in group_fields(cls)}


def scale_controllers(row: Row, flags: dict[str, Any], f: float) -> tuple[dict[str, Any], list[str]]:
    """Every controller's speed scaled by the length factor ``f`` (iterations and kimg alike: the
    batch is kept, so both shrink by ``f``); returns (flags to add, blockers)."""
    out: dict[str, Any] = {}
    blockers = []
    if _atopk_on(flags):
        if flags.get('topk_mode') in (None, 'adaptive'):
            out['atopk_kimg'] = float(flags.get('atopk_kimg', ATOPK_KIMG)) * f
        if flags.get('topk_mode') == 'linear':
            # γ^(1/f); kept above 0 (train.py's range) where it underflows: k is at its minimum after
            # the first epoch either way
            out['topk_gamma'] = max(float(flags.get('topk_gamma', TOPK_GAMMA)) ** (1 / f), 1e-6)
    if _ada_on(row, flags) and not flags.get('ada_linear'):
        if train_flag_available('augment', 'ada_kimg'):
            out['ada_kimg'] = float(flags.get('ada_kimg', ADA_KIMG)) * f
        else:
            blockers.append('train.py --ada-kimg (ADA\'s speed must shrink with the length at cpu scale)')
    if flags.get('chain'):
        out['chain_dp'] = float(flags.get('chain_dp', CHAIN_DP)) / f
        out['chain_start'] = int(round(float(flags.get('chain_start', CHAIN_START)) * f))
    if flags.get('diffusion'):
        out['diffusion_kimg'] = float(flags.get('diffusion_kimg', DIFFUSION_KIMG)) * f
    return out, blockers


def _stylegan2_cpu_preset(row: Row, paper_resolution: int) -> dict[str, Any]:
    """The row's preset at 32 px: a preset with a fixed G_ema half-life (ramp None: low_shot,
    paper256, …) becomes ``auto`` with the preset's learning rate, mapping depth and mbstd group
    pinned, so that only the EMA gains upstream's ramp-up; R1 γ scales with the pixel count."""
    from backbones.stylegan2.options import CFG_SPECS
    cfg = row.cfg or ('paper256' if row.backbone == 'insgen' else 'auto')
    spec = CFG_SPECS[cfg]
    gamma = float(row.flags.get('gamma', spec['gamma'])) * (CPU_RESOLUTION / paper_resolution) ** 2
    out: dict[str, Any] = dict(cfg=cfg)
    if spec['ramp'] is None:
        out.update(cfg='auto', glr=spec['lrate'], dlr=spec['lrate'], map=spec['map'], mbstd_group=spec['mbstd'])
    out.update(gamma=gamma, cbase=CPU_CBASE, cmax=CPU_CMAX)
    return out


def resolve(row: Row, scale: str) -> RunSpec:
    """The row at ``scale``; raises UserError for a row that cannot run (cited, waiting)."""
    if scale not in SCALES:
        raise UserError(f'--scale={scale}: choose one of {", ".join(SCALES)}')
    blocker = row.blocker()
    if blocker:
        raise UserError(blocker)
    ds = datasets.get(row.dataset)
    metrics = (row.metric,) + tuple(row.secondary)
    if scale == 'paper':
        return _paper(row, ds, metrics)
    if scale == 'cpu':
        return _cpu(row, ds, metrics)
    return _smoke(row)


def _common(row: Row, ds: Optional[datasets.Dataset], kimg: float, batch: Optional[int]) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    if row.backbone != 'stylegan2':
        flags['backbone'] = row.backbone
    flags['cfg'] = row.cfg
    flags['batch'] = batch
    flags['kimg'] = kimg
    flags['mirror'] = bool(row.mirror)
    if ds is not None and ds.subset is not None:
        flags['subset'] = ds.subset
    if ds is not None and row.cond:
        flags['cond'] = True
    return flags


def _paper(row: Row, ds: datasets.Dataset, metrics: tuple[str, ...]) -> RunSpec:
    flags = _common(row, ds, row.kimg, row.batch)
    flags.update(row.flags)
    flags.update(row.paper_flags)
    flags['metrics'] = ','.join(metrics)
    label = f'{row.metric} (the paper\'s metric), best over training'
    return RunSpec(row, 'paper', ds, f'res:{ds.resolution}', ds.resolution, tuple(flag_args(flags)),
                   MetricPlan('inline', metrics, label=label), float(row.kimg), 1.0)


def _cpu(row: Row, ds: datasets.Dataset, metrics: tuple[str, ...]) -> RunSpec:
    f = CPU_KIMG / float(row.kimg)
    flags = _common(row, ds, CPU_KIMG, row.batch)
    flags.update(row.flags)
    notes = []
    if row.backbone in STYLEGAN2_FAMILY:
        res = CPU_RESOLUTION
        flags.update(_stylegan2_cpu_preset(row, ds.resolution))
    elif row.backbone == 'fastgan':
        res = CPU_FASTGAN['resolution']
        flags.update(ngf=CPU_FASTGAN['ngf'], ndf=CPU_FASTGAN['ndf'])
        notes.append('exploratory at cpu scale: FastGAN trains at >= 256 px and its G_ema decay (0.999 per step) '
                     'is not a flag, so it is not scaled with the length')
    elif row.backbone == 'projected':
        res = CPU_PROJECTED['resolution']
        flags.update(pg_ngf=CPU_PROJECTED['pg_ngf'])
        notes.append('exploratory at cpu scale: the EfficientNet-Lite0 features still see 224-px inputs')
    else:
        raise UserError(f'no cpu-scale reduction for --backbone={row.backbone}')
    added, blockers = scale_controllers(row, row.flags, f)
    if blockers:
        raise UserError(f'{row.id} at --scale=cpu waits for ' + '; '.join(blockers))
    flags.update(added)
    if train_flag_available('common', 'precision'):
        flags['precision'] = 'fp32'
    flags.update(tick=CPU_KIMG / CPU_TICKS, snap=1, metrics='none')
    plan = MetricPlan('posthoc', metrics, num_gen=CPU_NUM_GEN, fractions=CPU_EVAL_FRACTIONS,
                      label=f'{row.metric}@1k: {row.metric} of 1k generated images at {res} px, best of the '
                            f'evaluations at 50 % and 100 % of {CPU_KIMG:g} kimg; NOT comparable with the paper\'s '
                            f'values (compare the differences)')
    return RunSpec(row, 'cpu', ds, f'res:{res}', res, tuple(flag_args(flags)), plan, CPU_KIMG, f, tuple(notes))


def _smoke(row: Row) -> RunSpec:
    batch = row.batch or {'fastgan': 8}.get(row.backbone, 64)
    kimg = SMOKE_ITERATIONS * batch / 1000
    flags = _common(row, None, kimg, batch)
    flags.update(row.flags)
    if row.backbone in STYLEGAN2_FAMILY:
        res = 16
        flags.update(cbase=256, cmax=16, map=2, fp32=True)
    elif row.backbone == 'fastgan':
        res = 256
        flags.update(ngf=8, ndf=8, recon_loss='l1')
    else:
        res = 32
        flags.update(pg_ngf=8, pg_interp=64, pg_disc_start='actual')
    f = kimg / float(row.kimg or kimg)
    added, _ = scale_controllers(row, row.flags, f)
    flags.update({k: v for k, v in added.items() if k != 'ada_kimg' or train_flag_available('augment', 'ada_kimg')})
    flags.update(tick=kimg, snap=1, metrics='none', workers=0)
    plan = MetricPlan('posthoc', ('fid5k_full',), num_gen=SMOKE_NUM_GEN, fractions=(1.0,),
                      label=f'fid5k_full@{SMOKE_NUM_GEN} on the built-in dataset (smoke: checks the machinery only)')
    return RunSpec(row, 'smoke', None, f'builtin:{res}', res, tuple(flag_args(flags)), plan, kimg, f)


def describe_factor(spec: RunSpec) -> str:
    if spec.scale == 'paper':
        return 'paper settings'
    return f'length x{spec.factor:.3g} ({spec.total_kimg:g} of {spec.row.kimg:g} kimg); controllers scaled alike'


def seeds_default(scale: str, row: Row) -> int:
    """``--seeds`` when not given: the paper's number of runs at paper scale, 2 at cpu scale, 1 smoke."""
    if scale == 'paper':
        return row.runs or 1
    return 2 if scale == 'cpu' else 1

