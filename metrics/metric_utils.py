"""Shared machinery of the metrics: options, feature statistics, the dataset-statistics cache,
feature extraction for real images, generator samples and image folders (docs/stylegan2-ada.md §6).

Conventions (docs/stylegan2-ada.md §6, docs/methods.md §7):

* Generated images come from ``G(z, c)`` (a :class:`Generator`: the backbone's sampler, which
  for StyleGAN2 uses G's defaults, truncation 1 and random noise, in eval mode), ``z ~ N(0, I)``,
  labels drawn from the dataset; they are quantised
  to uint8 as ``clamp(x · 127.5 + 128, 0, 255)`` before the detector and never re-encoded.
  Grayscale images are repeated to 3 channels.
* Multi-process: item ``i`` of a set is handled by rank ``i mod W``; each batch is gathered
  from all ranks (``torch.distributed.all_gather``) and re-interleaved, so every rank holds the
  same features in the single-process order. Results are computed on rank 0.
* Datasets are injected, never chosen here (upstream's protocol): every ``*dataset_kwargs``
  names its class in ``class_name`` plus the constructor arguments, and :func:`open_dataset`
  constructs it. The training loop passes its ``training_set_kwargs``; ``calc_metrics.py``
  builds them for ``--data``, ``--ref-data`` and ``--gen-data``. :class:`MetricDataset` lists
  what the metrics use of the object. ``metrics/`` imports nothing from ``training/`` and names
  none of its classes; the dataset classes and their kwargs helpers live with the callers.
* Real-image statistics are cached on disk under ``make_cache_dir_path('gan-metrics')``,
  keyed by the dataset's ``content_digest()`` (its files' content, not its path), the other
  dataset options (class, resolution, x-flip, subset), the detector file's SHA-1 and the
  statistics options; written atomically as ``.npz`` (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from typing import Any, Iterator, Optional, Protocol

import numpy as np
import torch

import dnnlib
from dnnlib.util import UserError
from metrics import detectors
from torch_utils import distributed

CACHE_FORMAT = 'degan-feature-stats-v1'

# ---------------------------------------------------------------------------------------------
# Options.


class MetricOptions:
    """Everything a metric function needs (upstream's ``MetricOptions`` plus degan's offline paths).

    ``G`` or ``gen_dataset_kwargs`` (generated images, e.g. a folder/zip given with ``--gen-data``)
    gives the generated set; ``dataset_kwargs`` the training set; ``ref_dataset_kwargs`` a
    separate reference set (``--ref-data``, e.g. a test split). Each ``*dataset_kwargs`` is
    ``dict(class_name=..., path=..., **constructor_kwargs)`` naming a :class:`MetricDataset`.
    ``detector_path`` replaces the default Inception file; ``vgg16_path`` names NVIDIA's
    ``vgg16.pt``. ``seed`` fixes the latents and labels of generated samples. ``progress``: a
    :class:`ProgressMonitor` or None.
    """

    def __init__(self, G: Optional['Generator'] = None,
                 dataset_kwargs: Optional[dict] = None, num_gpus: int = 1, rank: int = 0,
                 device: Optional[torch.device | str] = None, progress: Optional['ProgressMonitor'] = None,
                 cache: bool = True, detector_path: Optional[str] = None, vgg16_path: Optional[str] = None,
                 ref_dataset_kwargs: Optional[dict] = None, gen_dataset_kwargs: Optional[dict] = None,
                 batch_size: Optional[int] = None, seed: int = 0, num_workers: Optional[int] = None,
                 num_gen: Optional[int] = None):
        assert 0 <= rank < num_gpus
        self.G = G
        self.dataset_kwargs = dnnlib.EasyDict(dataset_kwargs or {})
        self.num_gpus = int(num_gpus)
        self.rank = int(rank)
        self.device = torch.device(device) if device is not None else torch.device('cpu')
        self.progress = progress.sub() if progress is not None and rank == 0 else ProgressMonitor()
        self.cache = bool(cache)
        self.detector_path = detector_path
        self.vgg16_path = vgg16_path
        self.ref_dataset_kwargs = dnnlib.EasyDict(ref_dataset_kwargs) if ref_dataset_kwargs else None
        self.gen_dataset_kwargs = dnnlib.EasyDict(gen_dataset_kwargs) if gen_dataset_kwargs else None
        self.batch_size = batch_size or default_batch_size(self.device)
        self.seed = int(seed)
        self.num_workers = default_num_workers(self.device) if num_workers is None else int(num_workers)
        self.num_gen = None if num_gen is None else int(num_gen)
        self.metric = ''  # set by metric_main.calc_metric (used in error messages)
        self.info: dict[str, Any] = {}  # extra record fields a metric reports (num_gen, num_real)


def default_batch_size(device: torch.device) -> int:
    """64 images per detector call on CUDA (upstream), 32 on the CPU (bench/metrics_speed.py)."""
    return 64 if device.type == 'cuda' else 32


def default_num_workers(device: torch.device) -> int:
    """DataLoader workers for real images: 3 on CUDA (upstream); on the CPU decoding is cheap next
    to the Inception forward and a worker would compete for the cores, so none."""
    return 3 if device.type == 'cuda' else 0


# ---------------------------------------------------------------------------------------------
# Progress bars (images/s) — tqdm on rank 0 when verbose.


class ProgressMonitor:
    """A progress reporter; ``verbose=False`` (the default) prints nothing.

    ``stage(tag, total)`` yields a callable ``update(n_new)``; with ``verbose`` it is a tqdm bar
    whose rate is shown in images/s.
    """

    def __init__(self, verbose: bool = False):
        self.verbose = bool(verbose)

    def sub(self) -> 'ProgressMonitor':
        return ProgressMonitor(self.verbose)

    def stage(self, tag: str, total: Optional[int]) -> '_Stage':
        return _Stage(tag, total, self.verbose)


class _Stage:
    def __init__(self, tag: str, total: Optional[int], verbose: bool):
        self.bar = None
        if verbose:
            import tqdm
            self.bar = tqdm.tqdm(total=total, desc=tag, unit='img', dynamic_ncols=True, leave=True, smoothing=0.1)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> '_Stage':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Feature statistics.


class FeatureStats:
    """Accumulates detector features: all of them (``capture_all``) and/or their running sums
    for the mean and covariance (``capture_mean_cov``, float64), up to ``max_items``.

    ``get_mean_cov`` returns the mean and the *biased* covariance ``E[xxᵀ] − μμᵀ`` (divide by N),
    as upstream StyleGAN2-ADA computes it for FID.
    """

    def __init__(self, capture_all: bool = False, capture_mean_cov: bool = False, max_items: Optional[int] = None):
        self.capture_all = capture_all
        self.capture_mean_cov = capture_mean_cov
        self.max_items = max_items
        self.num_items = 0
        self.num_features: Optional[int] = None
        self.all_features: list[np.ndarray] = []
        self.raw_mean: Optional[np.ndarray] = None
        self.raw_cov: Optional[np.ndarray] = None

    def set_num_features(self, num_features: int) -> None:
        if self.num_features is not None:
            assert num_features == self.num_features, 'feature dimension changed between batches'
            return
        self.num_features = num_features
        if self.capture_mean_cov:
            self.raw_mean = np.zeros([num_features], dtype=np.float64)
            self.raw_cov = np.zeros([num_features, num_features], dtype=np.float64)

    def is_full(self) -> bool:
        return self.max_items is not None and self.num_items >= self.max_items

    def append(self, x: np.ndarray) -> None:
        """Add features [N, D]; rows past ``max_items`` are dropped."""
        x = np.asarray(x, dtype=np.float32)
        assert x.ndim == 2
        if self.max_items is not None:
            x = x[:max(self.max_items - self.num_items, 0)]
        self.set_num_features(x.shape[1])
        if x.shape[0] == 0:
            return
        self.num_items += x.shape[0]
        if self.capture_all:
            self.all_features.append(x)
        if self.capture_mean_cov:
            x64 = x.astype(np.float64)
            self.raw_mean += x64.sum(axis=0)
            self.raw_cov += x64.T @ x64

    def append_torch(self, x: torch.Tensor, num_gpus: int = 1, rank: int = 0) -> None:
        """Add this rank's features of one batch, gathered from all ranks in interleaved order."""
        assert x.ndim == 2 and 0 <= rank < num_gpus
        if num_gpus > 1 and distributed.is_initialized():
            gathered = distributed.all_gather_cat(x.contiguous(), what='metric features')  # [W·N, D], rank-major
            x = gathered.reshape(num_gpus, x.shape[0], x.shape[1]).transpose(0, 1).reshape(-1, x.shape[1])
        self.append(x.detach().float().cpu().numpy())

    def get_all(self) -> np.ndarray:
        assert self.capture_all
        if not self.all_features:
            return np.zeros([0, self.num_features or 0], dtype=np.float32)
        return np.concatenate(self.all_features, axis=0)

    def get_all_torch(self) -> torch.Tensor:
        return torch.from_numpy(self.get_all())

    def get_mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.capture_mean_cov and self.num_items > 0
        mean = self.raw_mean / self.num_items
        cov = self.raw_cov / self.num_items - np.outer(mean, mean)
        return mean, cov

    # Safe on-disk form: an .npz of plain arrays (loaded with allow_pickle=False).
    def save(self, path: str) -> None:
        arrays: dict[str, np.ndarray] = dict(
            meta=np.frombuffer(json.dumps(dict(format=CACHE_FORMAT, capture_all=self.capture_all,
                                               capture_mean_cov=self.capture_mean_cov, max_items=self.max_items,
                                               num_items=self.num_items, num_features=self.num_features)).encode(),
                               dtype=np.uint8))
        if self.capture_all:
            arrays['all_features'] = self.get_all()
        if self.capture_mean_cov:
            arrays['raw_mean'], arrays['raw_cov'] = self.raw_mean, self.raw_cov
        with dnnlib.util.atomic_path(path) as tmp:
            with open(tmp, 'wb') as f:
                np.savez(f, **arrays)

    @staticmethod
    def load(path: str) -> 'FeatureStats':
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data['meta']).decode())
            if meta.get('format') != CACHE_FORMAT:
                raise ValueError(f'{path}: not a degan feature-statistics file')
            stats = FeatureStats(meta['capture_all'], meta['capture_mean_cov'], meta['max_items'])
            stats.num_items = meta['num_items']
            stats.num_features = meta['num_features']
            if stats.capture_all:
                stats.all_features = [np.array(data['all_features'], dtype=np.float32)]
            if stats.capture_mean_cov:
                stats.raw_mean = np.array(data['raw_mean'], dtype=np.float64)
                stats.raw_cov = np.array(data['raw_cov'], dtype=np.float64)
        return stats


# ---------------------------------------------------------------------------------------------
# Datasets (injected by the caller) and the statistics-cache path.


class MetricDataset(Protocol):
    """What the metrics use of a dataset; the caller names its class in ``dataset_kwargs``.

    Metrics construct datasets only through :func:`open_dataset`, from
    ``dict(class_name='package.module.Class', path=..., **kwargs)`` (upstream's ``dataset_kwargs``);
    they never pick or import a dataset class. An object that a metric reads must provide:

    * ``len(ds)`` and ``ds[i] -> (image, label)``: ``image`` uint8 [C, H, W] with C ∈ {1, 3}
      (generated sets may mix sizes; the detector resizes), ``label`` float32 [label_dim];
      read in index order 0…N−1, split across ranks; may be read in DataLoader workers.
    * ``has_labels``, ``label_dim``, ``get_label(i)``: the training set's labels, drawn for a
      conditional G (``c_dim > 0``).
    * ``content_digest() -> str``: names the *content* of the images and labels, independent of
      the path (equal content → equal string, any change → another string). With the
      ``dataset_kwargs`` other than ``path``/``name`` it keys the real-image statistics cache.

    The training code's image-folder dataset (training set, ``--data``, ``--ref-data``) and its
    generated-images dataset (``--gen-data``) implement it.
    """

    def __len__(self) -> int: ...

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]: ...

    @property
    def has_labels(self) -> bool: ...

    @property
    def label_dim(self) -> int: ...

    def get_label(self, idx: int) -> np.ndarray: ...

    def content_digest(self) -> str: ...


def open_dataset(dataset_kwargs: dict) -> MetricDataset:
    """Construct the :class:`MetricDataset` that ``dataset_kwargs['class_name']`` names."""
    kwargs = dict(dataset_kwargs)
    if not kwargs.get('path'):
        raise UserError('no dataset given: pass --data=PATH (the training set) or --ref-data=PATH')
    if not kwargs.get('class_name'):
        raise ValueError(f'dataset_kwargs {kwargs} name no class_name: the caller must name the dataset class')
    return dnnlib.util.construct_class_by_name(**kwargs)


def stats_cache_path(detector: detectors.Detector, key: dict) -> str:
    """``<cache>/gan-metrics/<detector>-<sha1 of the key>.npz``; the key holds the dataset's content
    digest, so a renamed or moved dataset with the same images hits the same file."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return dnnlib.util.make_cache_dir_path('gan-metrics', f'{detector.name}-{digest}.npz')


# ---------------------------------------------------------------------------------------------
# Feature extraction helpers.


def to_rgb_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] with C ∈ {1, 3} → [N, 3, H, W] (grayscale repeated)."""
    if images.shape[1] == 1:
        images = images.repeat([1, 3, 1, 1])
    if images.shape[1] != 3:
        raise UserError(f'images with {images.shape[1]} channels cannot be fed to the detector (need 1 or 3)')
    return images


def quantize_generated(img: torch.Tensor) -> torch.Tensor:
    """G output in [−1, 1] → uint8 as upstream: ``clamp(x · 127.5 + 128, 0, 255)`` then truncation."""
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def run_detector(detector: detectors.Detector, images: torch.Tensor, probs: bool = False) -> torch.Tensor:
    images = to_rgb_uint8(images)
    return detector.probabilities(images) if probs else detector.features(images)


def rank_subset(num_items: int, num_gpus: int, rank: int) -> list[int]:
    """Items of this rank: ``i·W + r`` (wrapping past the end so every rank has the same count)."""
    if num_items == 0:
        return []
    return [(i * num_gpus + rank) % num_items for i in range((num_items - 1) // num_gpus + 1)]


def _collate_list(batch: list) -> list:
    return batch


def _stack_groups(images: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Consecutive runs of same-shaped images stacked into batches (folders of mixed sizes)."""
    start = 0
    while start < len(images):
        end = start + 1
        while end < len(images) and images[end].shape == images[start].shape:
            end += 1
        yield torch.stack(images[start:end])
        start = end


def _features_of_list(detector: detectors.Detector, images: list[torch.Tensor], probs: bool) -> torch.Tensor:
    return torch.cat([run_detector(detector, batch, probs) for batch in _stack_groups(images)])


def _loader(dataset: MetricDataset, indices: list[int], opts: MetricOptions) -> torch.utils.data.DataLoader:
    kwargs: dict[str, Any] = dict(num_workers=opts.num_workers)
    if opts.num_workers > 0:
        kwargs['prefetch_factor'] = 2
    return torch.utils.data.DataLoader(dataset, sampler=indices, batch_size=opts.batch_size,
                                       collate_fn=_collate_list, **kwargs)


def _extract_from_dataset(dataset: MetricDataset, num_items: int, detector: detectors.Detector,
                          stats: FeatureStats, opts: MetricOptions, tag: str, probs: bool = False) -> FeatureStats:
    """Run the detector over items 0…num_items−1 of ``dataset`` (split across ranks)."""
    indices = rank_subset(num_items, opts.num_gpus, opts.rank)
    with opts.progress.stage(tag, num_items) as bar:
        for batch in _loader(dataset, indices, opts):
            images = [torch.as_tensor(np.asarray(item[0])) for item in batch]
            feats = _features_of_list(detector, images, probs)
            before = stats.num_items
            stats.append_torch(feats, opts.num_gpus, opts.rank)
            bar.update(stats.num_items - before)
            if stats.is_full():
                break
    return stats


# ---------------------------------------------------------------------------------------------
# Real images (cached).


def compute_feature_stats_for_dataset(opts: MetricOptions, detector: detectors.Detector, *,
                                      dataset_kwargs: Optional[dict] = None, capture_all: bool = False,
                                      capture_mean_cov: bool = False, max_items: Optional[int] = None,
                                      probs: bool = False) -> FeatureStats:
    """Features of the real images (``dataset_kwargs`` or ``opts.dataset_kwargs``), cached on disk."""
    dataset_kwargs = dnnlib.EasyDict(opts.dataset_kwargs if dataset_kwargs is None else dataset_kwargs)
    dataset = open_dataset(dataset_kwargs)
    num_items = len(dataset) if max_items is None else min(len(dataset), max_items)
    opts.info['num_real'] = num_items

    cache_file = None
    if opts.cache:
        key_kwargs = {k: v for k, v in dataset_kwargs.items() if k not in ('path', 'name')}
        key = dict(format=CACHE_FORMAT, content=dataset.content_digest(),
                   dataset_kwargs=key_kwargs, detector=detector.identity, probs=probs,
                   capture_all=capture_all, capture_mean_cov=capture_mean_cov, max_items=max_items)
        cache_file = stats_cache_path(detector, key)
        found = torch.as_tensor(os.path.isfile(cache_file) if opts.rank == 0 else False, dtype=torch.float32,
                                device=opts.device if opts.device.type == 'cuda' else 'cpu')
        if opts.num_gpus > 1:
            distributed.broadcast_(found, src=0, what='whether the dataset statistics are cached')
        if bool(found):
            try:
                return FeatureStats.load(cache_file)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                pass  # unreadable cache: recompute and overwrite it

    stats = FeatureStats(capture_all=capture_all, capture_mean_cov=capture_mean_cov, max_items=num_items)
    _extract_from_dataset(dataset, num_items, detector, stats, opts, tag='dataset features', probs=probs)
    if cache_file is not None and opts.rank == 0:
        try:
            stats.save(cache_file)
        except OSError as e:  # the statistics are computed; only their reuse is lost
            print(f'warning: cannot write the statistics cache {cache_file} ({e.strerror or e}); continuing '
                  f'without it (set DEGAN_CACHE_DIR to a writable folder, or pass --cache=0)', file=sys.stderr)
    return stats


# ---------------------------------------------------------------------------------------------
# Generated images: from G or from an injected dataset of images.


def compute_feature_stats_for_generator(opts: MetricOptions, detector: detectors.Detector, *,
                                        capture_all: bool = False, capture_mean_cov: bool = False,
                                        max_items: int, probs: bool = False, batch_gen: Optional[int] = None
                                        ) -> FeatureStats:
    """Features of ``max_items`` generated images: from ``opts.G``, or the first ``max_items`` items of
    the dataset ``opts.gen_dataset_kwargs`` names (all of them if fewer). ``opts.info['num_gen']``
    records the count."""
    if opts.gen_dataset_kwargs is not None:
        dataset = open_dataset(opts.gen_dataset_kwargs)
        num_items = min(len(dataset), max_items)
        stats = FeatureStats(capture_all=capture_all, capture_mean_cov=capture_mean_cov, max_items=num_items)
        _extract_from_dataset(dataset, num_items, detector, stats, opts, tag='generated-image features', probs=probs)
        opts.info['num_gen'] = stats.num_items
        return stats
    if opts.G is None:
        raise UserError('no generated images: give a network (--network) or a folder of images (--gen-data)')
    stats = FeatureStats(capture_all=capture_all, capture_mean_cov=capture_mean_cov, max_items=max_items)
    sampler = GeneratorSampler(opts)
    with opts.progress.stage('generator features', max_items) as bar:
        while not stats.is_full():
            images = sampler.sample(opts.batch_size, batch_gen)
            feats = run_detector(detector, images, probs)
            before = stats.num_items
            stats.append_torch(feats, opts.num_gpus, opts.rank)
            bar.update(stats.num_items - before)
    opts.info['num_gen'] = stats.num_items
    return stats


def capture_all_features(opts: MetricOptions, detector: detectors.Detector, max_real: Optional[int],
                         num_gen: int) -> tuple[FeatureStats, FeatureStats]:
    """Every feature vector of the real set (up to ``max_real``) and of ``num_gen`` generated images
    (KID and precision/recall work on the samples, not on mean/covariance)."""
    real = compute_feature_stats_for_dataset(opts, detector, capture_all=True, max_items=max_real)
    gen = compute_feature_stats_for_generator(opts, detector, capture_all=True, max_items=num_gen)
    return real, gen


class Generator(Protocol):
    """What the metrics sample: ``G(z [N, z_dim], c [N, c_dim]) -> [N, C, H, W]`` float in [−1, 1].

    A backbone's sampler (``backbones.base.GeneratorFn``, which decides noise, truncation and
    eval/train modes) or a plain generator module called with its defaults (put in eval mode
    while sampling, like upstream).
    """
    z_dim: int
    c_dim: int

    def __call__(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor: ...


class GeneratorSampler:
    """Draws uint8 images from ``opts.G`` with seeded latents/labels (seed, rank)."""

    def __init__(self, opts: MetricOptions):
        self.G: Generator = opts.G
        self.opts = opts
        self.device = opts.device
        seed = (opts.seed * 1_000_003 + opts.rank) % (2 ** 63)
        self.torch_gen = torch.Generator(device=self.device).manual_seed(seed)
        self.np_rng = np.random.RandomState(seed % (2 ** 32))
        self.noise_seed, self.calls = seed ^ 0x5EED, 0  # G's own random draws (noise inputs)
        self.labels: Optional[np.ndarray] = None
        if getattr(self.G, 'c_dim', 0) > 0:
            dataset = open_dataset(opts.dataset_kwargs)
            if not dataset.has_labels or dataset.label_dim != self.G.c_dim:
                raise UserError(f'the network is conditional (c_dim={self.G.c_dim}) but the dataset has '
                                f'{dataset.label_dim if dataset.has_labels else "no"} labels; pass a labelled --data')
            self.labels = np.stack([dataset.get_label(i) for i in range(len(dataset))])

    def sample(self, batch_size: int, batch_gen: Optional[int] = None) -> torch.Tensor:
        batch_gen = batch_gen or min(batch_size, 4 if self.device.type == 'cuda' else batch_size)
        G = self.G
        module = G if isinstance(G, torch.nn.Module) else None
        was_training = module.training if module is not None else False
        if module is not None:
            module.eval()
        try:
            out = []
            with torch.inference_mode():
                for start in range(0, batch_size, batch_gen):
                    n = min(batch_gen, batch_size - start)
                    z = torch.randn([n, G.z_dim], generator=self.torch_gen, device=self.device)
                    c = self._labels(n)
                    out.append(quantize_generated(self._call_seeded(G, z, c)))
        finally:
            if module is not None:
                module.train(was_training)
        return torch.cat(out)

    def _call_seeded(self, G: Generator, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """G(z, c) with the global RNG (G's noise inputs) seeded per call and restored after, so
        that a metric repeats exactly and never moves the caller's random stream."""
        devices = [self.device.index or 0] if self.device.type == 'cuda' else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed((self.noise_seed + self.calls) % (2 ** 63))
            self.calls += 1
            return G(z, c)

    def _labels(self, n: int) -> torch.Tensor:
        if self.labels is None:
            return torch.zeros([n, getattr(self.G, 'c_dim', 0)], device=self.device)
        idx = self.np_rng.randint(len(self.labels), size=n)
        return torch.from_numpy(self.labels[idx]).to(self.device)
