"""Metric registry, evaluation records and the best-so-far summary (docs/stylegan2-ada.md §6, docs/methods.md §7, §9.8).

Registered names follow upstream StyleGAN2-ADA: ``*_full`` metrics compare against *all* real
images with x-flips off; the legacy names (``fid50k``, ``kid50k``, ``pr50k3``) use at most
50,000 reals with the dataset's mirror setting kept. ``fid5k_full`` / ``fid10k_full`` are the
low-shot protocol (docs/methods.md §7); ``fid10k_test`` is the CIFAR protocol: 10k generated images
against all images of a reference set given with ``--ref-data``.

A result record (``calc_metric``) has upstream's shape — ``results`` (dict of values),
``metric``, ``total_time``, ``total_time_str``, ``num_gpus`` — plus ``num_gen`` / ``num_real``
(how many generated and real images were used). A metric computed from *fewer* generated images
than its name says (``calc_metrics.py --num-gen=N``, or a ``--gen-data`` folder with fewer images)
is recorded under another name, ``<metric>@<count>`` (``fid5k_full@1k``: the metric's values are
keyed ``fid5k_full@1k``, it goes to ``metric-fid5k_full@1k.jsonl``), with ``base_metric``,
``num_gen_nominal`` and, for ``--num-gen``, ``num_gen_override``; it never counts as the named
metric (``update_best`` ignores it). ``report_metric`` adds ``snapshot_pkl``
(relative to the run directory) and ``timestamp`` and appends the record as one line to
``<run_dir>/metric-<name>.jsonl``. ``update_best`` keeps ``<run_dir>/best.json`` (the papers
report the best value over training, docs/methods.md §7).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Optional

import torch

import dnnlib
from dnnlib.util import UserError
from metrics import detectors, metric_utils
from metrics import frechet_inception_distance, inception_score, kernel_inception_distance, precision_recall
from torch_utils import distributed

MetricFn = Callable[[metric_utils.MetricOptions], dict]


class MetricSpec:
    """What a registered metric needs and how its headline value is read."""

    def __init__(self, fn: MetricFn, role: str, needs_reals: bool, needs_ref: bool, primary: str,
                 higher_is_better: bool, num_gen: int, min_gen: int):
        self.fn, self.role, self.needs_reals, self.needs_ref = fn, role, needs_reals, needs_ref
        self.primary, self.higher_is_better = primary, higher_is_better
        self.num_gen, self.min_gen = num_gen, min_gen


_metric_dict: dict[str, MetricSpec] = {}


def register_metric(fn: Optional[MetricFn] = None, *, num_gen: int, min_gen: int = 2,
                    role: str = detectors.ROLE_FEATURES, needs_reals: bool = True, needs_ref: bool = False,
                    primary: str = '', higher_is_better: bool = False) -> Any:
    """Register ``fn(opts) -> dict`` under its function name.

    ``num_gen``: the number of generated images the metric's name says (``fid5k_full`` → 5000);
    ``fn`` reads it as :func:`num_gen_of` (``opts.num_gen`` when lowered with ``--num-gen``).
    ``min_gen``: the fewest generated images the metric can be computed from. ``primary``: suffix
    of the result key used by :func:`update_best` (``''`` → the metric name itself, ``'_mean'`` →
    ``<name>_mean``); ``higher_is_better`` its direction.
    """
    def register(f: MetricFn) -> MetricFn:
        assert callable(f) and 1 <= min_gen <= num_gen
        _metric_dict[f.__name__] = MetricSpec(f, role, needs_reals, needs_ref, primary, higher_is_better,
                                              num_gen, min_gen)
        return f
    return register(fn) if fn is not None else register


def is_valid_metric(metric: str) -> bool:
    return metric in _metric_dict


def list_valid_metrics() -> list[str]:
    return list(_metric_dict.keys())


def check_metric_names(metrics: list[str]) -> None:
    """One-line UserError for the first name in ``--metrics`` that is not a registered metric."""
    for metric in metrics:
        if not is_valid_metric(metric):
            raise UserError(f'--metrics: unknown metric "{metric}"; valid: {", ".join(list_valid_metrics())}')


def nominal_num_gen(metric: str) -> int:
    """How many generated images ``metric`` uses (the count in its name: fid5k_full → 5000)."""
    return _metric_dict[metric].num_gen


def check_num_gen(metrics: list[str], num_gen: Optional[int]) -> None:
    """One-line UserError unless ``num_gen`` (``--num-gen``; None = each metric's own count) can
    replace the generated-image count of every metric in ``metrics``: at least the metric's
    minimum, at most its named count (the flag only lowers it)."""
    if num_gen is None:
        return
    if num_gen < 1:
        raise UserError(f'--num-gen={num_gen}: the number of generated images must be at least 1 '
                        f'(or leave --num-gen out to use the count in the metric\'s name)')
    for metric in metrics:
        spec = _metric_dict[metric]
        if num_gen > spec.num_gen:
            raise UserError(f'--num-gen={num_gen} is more than the {spec.num_gen} generated images of {metric}; '
                            f'--num-gen can only lower the count (pick a metric with more images, e.g. fid50k_full)')
        if num_gen < spec.min_gen:
            raise UserError(f'--num-gen={num_gen}: {metric} needs at least {spec.min_gen} generated images')


def reduced_metric_name(metric: str, num_gen: int) -> str:
    """The name of ``metric`` computed from only ``num_gen`` generated images: ``fid5k_full@1k``
    (``@<n>k`` for whole thousands, else ``@<n>``: ``is10k@250``)."""
    return f'{metric}@{num_gen // 1000}k' if num_gen % 1000 == 0 else f'{metric}@{num_gen}'


def num_gen_of(opts: metric_utils.MetricOptions, metric: str) -> int:
    """The number of generated images ``metric`` draws: ``opts.num_gen`` (``--num-gen``) or its own."""
    return opts.num_gen if opts.num_gen is not None else _metric_dict[metric].num_gen


def base_metric(result_dict: dict) -> str:
    """The registered metric a record was computed with (``fid5k_full`` for ``fid5k_full@1k``)."""
    return result_dict.get('base_metric') or result_dict['metric']


def is_reduced(result_dict: dict) -> bool:
    """True for a record computed from fewer generated images than its metric's name says."""
    return result_dict.get('base_metric') not in (None, result_dict['metric'])


def check_metric(metric: str, detector_path: Optional[str] = None, vgg16_path: Optional[str] = None,
                 dataset_kwargs: Optional[dict] = None, ref_dataset_kwargs: Optional[dict] = None,
                 device: torch.device | str = 'cpu') -> None:
    """Fail at once (UserError, one line) if ``metric`` cannot run with these inputs: unknown name,
    missing IS/VGG16 weights, missing reference set. Loads (and caches) the detector it needs."""
    if not is_valid_metric(metric):
        raise UserError(f'unknown metric "{metric}"; valid metrics: {", ".join(list_valid_metrics())}')
    spec = _metric_dict[metric]
    if spec.needs_ref and not ref_dataset_kwargs:
        raise UserError(f'{metric} compares against a reference set (e.g. the CIFAR-10 test split): '
                        f'pass --ref-data=PATH')
    if spec.needs_reals and not spec.needs_ref and not (dataset_kwargs or {}).get('path'):
        raise UserError(f'{metric} needs the real images: pass --data=PATH')
    detectors.resolve_detector(spec.role, detector_path, vgg16_path, metric, device)


def calc_metric(metric: str, **kwargs: Any) -> dnnlib.EasyDict:
    """Evaluate one metric; ``kwargs`` are :class:`metric_utils.MetricOptions` arguments.

    Every rank takes part; the values are computed on rank 0 and broadcast to all ranks.
    """
    opts = metric_utils.MetricOptions(**kwargs)
    opts.metric = metric
    check_metric(metric, opts.detector_path, opts.vgg16_path, opts.dataset_kwargs, opts.ref_dataset_kwargs,
                 opts.device)
    check_num_gen([metric], opts.num_gen)
    start = time.time()
    results = dict(_metric_dict[metric].fn(opts))
    total_time = time.time() - start

    for key, value in list(results.items()):
        if opts.num_gpus > 1 and distributed.is_initialized():
            t = torch.as_tensor(value, dtype=torch.float64, device=opts.device)
            distributed.broadcast_(t, src=0, what=f'metric result {key}')
            value = float(t.cpu())
        results[key] = float(value)

    record = dnnlib.EasyDict(results=dnnlib.EasyDict(results), metric=metric, total_time=total_time,
                             total_time_str=dnnlib.util.format_time(total_time), num_gpus=opts.num_gpus)
    record.update(opts.info)
    if opts.gen_dataset_kwargs is not None:
        record.gen_data = opts.gen_dataset_kwargs.get('path')
    if opts.num_gen is not None:
        record.num_gen_override = opts.num_gen
    nominal = _metric_dict[metric].num_gen
    used = record.get('num_gen')
    if used is not None and used < nominal:  # never passes for the named metric
        name = reduced_metric_name(metric, used)
        record.results = dnnlib.EasyDict({(name + k[len(metric):] if k.startswith(metric) else k): v
                                          for k, v in record.results.items()})
        record.update(metric=name, base_metric=metric, num_gen_nominal=nominal)
    return record


def reduced_note(result_dict: dict) -> Optional[str]:
    """The line printed before a reduced record (None for a record of the full metric)."""
    if not is_reduced(result_dict):
        return None
    base, used = result_dict['base_metric'], result_dict.get('num_gen')
    nominal = result_dict.get('num_gen_nominal', _metric_dict[base].num_gen)
    if result_dict.get('num_gen_override') is not None:
        why = f'--num-gen={result_dict["num_gen_override"]}'
    elif result_dict.get('gen_data') is not None:
        why = f'--gen-data holds only {used} images'
    else:
        why = 'fewer generated images were available'
    return (f'note: {result_dict["metric"]} is {base} computed from {used} generated images instead of {nominal} '
            f'({why}); it is recorded as {result_dict["metric"]} and is not comparable with {base}')


def report_metric(result_dict: dict, run_dir: Optional[str] = None, snapshot_pkl: Optional[str] = None) -> str:
    """Print the record and append it as one line to ``<run_dir>/metric-<name>.jsonl``; returns the line."""
    metric = result_dict['metric']
    assert is_valid_metric(base_metric(result_dict))
    if run_dir is not None and snapshot_pkl is not None:
        snapshot_pkl = os.path.relpath(snapshot_pkl, run_dir)
    line = json.dumps(dnnlib.util.to_jsonable(dict(result_dict, snapshot_pkl=snapshot_pkl, timestamp=time.time())))
    note = reduced_note(result_dict)
    if note is not None:
        print(note)
    print(line)
    if run_dir is not None and os.path.isdir(run_dir):
        path = os.path.join(run_dir, f'metric-{metric}.jsonl')
        try:
            _append_line(path, line)
        except OSError as e:
            raise UserError(f'cannot append the result to {path} ({e.strerror or e}); the result is printed '
                            f'above; make the run directory writable') from None
    return line


def _append_line(path: str, line: str) -> None:
    """One ``write`` of one complete line with O_APPEND: concurrent appenders never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + '\n').encode('utf-8'))
    finally:
        os.close(fd)


def primary_value(result_dict: dict) -> tuple[str, float, bool]:
    """(result key, value, higher_is_better) of a record's headline number."""
    spec = _metric_dict[base_metric(result_dict)]
    key = result_dict['metric'] + spec.primary
    return key, float(result_dict['results'][key]), spec.higher_is_better


def read_best(run_dir: str) -> dict[str, Any]:
    """``<run_dir>/best.json`` ({} when absent or unreadable)."""
    try:
        with open(os.path.join(run_dir, 'best.json'), encoding='utf-8') as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def update_best(run_dir: str, result_dict: dict, snapshot: Optional[str]) -> dict:
    """Keep ``<run_dir>/best.json`` current and return its content.

    Layout: ``metric``, ``value``, ``key``, ``higher_is_better``, ``snapshot`` (relative to the run
    directory), ``results``, ``timestamp`` for the *primary* metric (the first one recorded,
    i.e. the first of ``--metrics``), and ``per_metric``: the same fields for every metric.
    A NaN value is never a best. Lower is better for FID/KID, higher for IS/precision. A record
    computed from fewer generated images than its metric's name says (``fid5k_full@1k``) is not
    the named metric and changes nothing.
    """
    path = os.path.join(run_dir, 'best.json')
    best = read_best(run_dir)
    if is_reduced(result_dict):
        return best
    metric = result_dict['metric']
    key, value, higher = primary_value(result_dict)
    per_metric = dict(best.get('per_metric', {}))
    old = per_metric.get(metric)
    if not math.isnan(value) and (old is None or (value > old['value'] if higher else value < old['value'])):
        rel = os.path.relpath(snapshot, run_dir) if snapshot is not None else None
        per_metric[metric] = dict(metric=metric, key=key, value=value, higher_is_better=higher, snapshot=rel,
                                  results=dnnlib.util.to_jsonable(dict(result_dict['results'])),
                                  timestamp=time.time())
    primary = best.get('metric', metric)
    if primary not in per_metric:
        return best
    new_best = dict(per_metric[primary], per_metric=per_metric)
    if new_best != best:
        dnnlib.util.atomic_write_json(path, new_best)
    return new_best


# ---------------------------------------------------------------------------------------------
# Helpers for the registered metrics.


def _full(opts: metric_utils.MetricOptions) -> None:
    """'full' metrics: all real images, no x-flip (docs/stylegan2-ada.md §6)."""
    opts.dataset_kwargs.update(max_size=None, xflip=False)


def _fid(opts: metric_utils.MetricOptions, name: str, max_real: Optional[int], use_ref: bool = False) -> dict:
    return {name: frechet_inception_distance.compute_fid(opts, max_real=max_real, num_gen=num_gen_of(opts, name),
                                                         use_ref=use_ref)}


# ---------------------------------------------------------------------------------------------
# Registered metrics. ``num_gen`` is the count in the name; the functions draw num_gen_of(opts, …).

@register_metric(num_gen=50000)
def fid50k_full(opts: metric_utils.MetricOptions) -> dict:
    _full(opts)
    return _fid(opts, 'fid50k_full', None)


@register_metric(num_gen=10000)
def fid10k_full(opts: metric_utils.MetricOptions) -> dict:
    _full(opts)
    return _fid(opts, 'fid10k_full', None)


@register_metric(num_gen=5000)
def fid5k_full(opts: metric_utils.MetricOptions) -> dict:
    _full(opts)
    return _fid(opts, 'fid5k_full', None)


@register_metric(num_gen=10000, needs_ref=True)
def fid10k_test(opts: metric_utils.MetricOptions) -> dict:
    """CIFAR protocol: 10k generated vs every image of ``--ref-data`` (no x-flip)."""
    assert opts.ref_dataset_kwargs is not None
    opts.ref_dataset_kwargs.update(max_size=None, xflip=False)
    return _fid(opts, 'fid10k_test', None, use_ref=True)


@register_metric(num_gen=50000)
def kid50k_full(opts: metric_utils.MetricOptions) -> dict:
    _full(opts)
    kid = kernel_inception_distance.compute_kid(opts, max_real=1000000, num_gen=num_gen_of(opts, 'kid50k_full'),
                                                num_subsets=100, max_subset_size=1000)
    return dict(kid50k_full=kid)


@register_metric(num_gen=50000, min_gen=4, role=detectors.ROLE_VGG16, primary='_precision', higher_is_better=True)
def pr50k3_full(opts: metric_utils.MetricOptions) -> dict:
    _full(opts)
    precision, recall = precision_recall.compute_pr(opts, max_real=200000, num_gen=num_gen_of(opts, 'pr50k3_full'),
                                                    nhood_size=3, row_batch_size=10000, col_batch_size=10000)
    return dict(pr50k3_full_precision=precision, pr50k3_full_recall=recall)


@register_metric(num_gen=50000, min_gen=10, role=detectors.ROLE_PROBS, needs_reals=False, primary='_mean',
                 higher_is_better=True)
def is50k(opts: metric_utils.MetricOptions) -> dict:
    mean, std = inception_score.compute_is(opts, num_gen=num_gen_of(opts, 'is50k'), num_splits=10)
    return dict(is50k_mean=mean, is50k_std=std)


@register_metric(num_gen=10000, min_gen=10, role=detectors.ROLE_PROBS, needs_reals=False, primary='_mean',
                 higher_is_better=True)
def is10k(opts: metric_utils.MetricOptions) -> dict:
    """IS from 10k samples (the CIFAR / DiffAugment convention, docs/methods.md E2)."""
    mean, std = inception_score.compute_is(opts, num_gen=num_gen_of(opts, 'is10k'), num_splits=10)
    return dict(is10k_mean=mean, is10k_std=std)


# Legacy metrics: at most 50k reals, the dataset's mirror setting kept.

@register_metric(num_gen=50000)
def fid50k(opts: metric_utils.MetricOptions) -> dict:
    opts.dataset_kwargs.update(max_size=None)
    return _fid(opts, 'fid50k', 50000)


@register_metric(num_gen=50000)
def kid50k(opts: metric_utils.MetricOptions) -> dict:
    opts.dataset_kwargs.update(max_size=None)
    kid = kernel_inception_distance.compute_kid(opts, max_real=50000, num_gen=num_gen_of(opts, 'kid50k'),
                                                num_subsets=100, max_subset_size=1000)
    return dict(kid50k=kid)


@register_metric(num_gen=50000, min_gen=4, role=detectors.ROLE_VGG16, primary='_precision', higher_is_better=True)
def pr50k3(opts: metric_utils.MetricOptions) -> dict:
    opts.dataset_kwargs.update(max_size=None)
    precision, recall = precision_recall.compute_pr(opts, max_real=50000, num_gen=num_gen_of(opts, 'pr50k3'),
                                                    nhood_size=3, row_batch_size=10000, col_batch_size=10000)
    return dict(pr50k3_precision=precision, pr50k3_recall=recall)
