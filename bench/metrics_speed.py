"""Speed of the metric feature extractor and of the Fréchet distance (issue "Metrics", item 6).

Prints images/s of the Inception feature extractor (default_1.pt, 256² images resized to 299²):

* ``naive``: the TorchScript module as shipped, batch 16, ``torch.no_grad``, default threads;
* ``fast``: :class:`metrics.detectors.Detector` (folded batch-norm, fused conv+ReLU, channels-last,
  ``inference_mode``), batch ``--batch``, for each thread count in ``--threads``;

measured in alternation (``--reps`` rounds, median reported) because the machine may be shared,
plus the largest feature difference and the FID difference between the two paths, and the
seconds one 2048-d Fréchet distance takes with the eigen-decomposition route and with
``scipy.linalg.sqrtm``.

    python bench/metrics_speed.py                 # ~2 min on 2 cores
    python bench/metrics_speed.py --images=64 --reps=5 --threads=1,2
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from metrics import detectors, frechet_inception_distance  # noqa: E402


def naive_features(module: torch.jit.ScriptModule, images: torch.Tensor, batch: int = 16) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch):
            out.append(module(detectors.to_inception_input(images[i:i + batch])))
    return torch.cat(out)


def fast_features(det: detectors.Detector, images: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([det.features(images[i:i + batch]) for i in range(0, images.shape[0], batch)])


def timed(fn, *args) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def fid_of_halves(feats: torch.Tensor) -> float:
    f = feats.double().numpy()
    half = f.shape[0] // 2
    a, b = f[:half], f[half:]
    return frechet_inception_distance.frechet_distance(a.mean(0), np.cov(a, rowvar=False, ddof=0),
                                                       b.mean(0), np.cov(b, rowvar=False, ddof=0))


@click.command()
@click.option('--images', type=int, default=32, show_default=True, help='Images per measurement')
@click.option('--reps', type=int, default=3, show_default=True, help='Alternating rounds')
@click.option('--batch', type=int, default=32, show_default=True, help='Batch of the fast path')
@click.option('--threads', default='', help='Comma-separated thread counts for the fast path [default: torch default]')
@click.option('--fd-dim', type=int, default=2048, show_default=True, help='Feature dimension of the Fréchet timing')
def main(images: int, reps: int, batch: int, threads: str, fd_dim: int) -> None:
    default_threads = torch.get_num_threads()
    thread_counts = [int(t) for t in threads.split(',') if t.strip()] or [default_threads]
    print(f'torch {torch.__version__}, {os.cpu_count()} CPUs, default threads {default_threads}, '
          f'load average {os.getloadavg()[0]:.2f}')
    det = detectors.load_detector(None, 'cpu')
    print(f'detector {det.path} (sha1 {det.sha1[:12]}), fast path: {det.fast_module is not None}')
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, [images, 3, 256, 256], generator=gen, dtype=torch.uint8)

    rates: dict[str, list[float]] = {'naive (batch 16)': []}
    rates.update({f'fast (batch {batch}, {t} threads)': [] for t in thread_counts})
    ref = fast = None
    naive_fn = lambda x: naive_features(det.module, x)  # noqa: E731
    naive_features(det.module, imgs[:2])  # warm-up both paths
    fast_features(det, imgs[:2], batch)
    for rep in range(reps):
        torch.set_num_threads(default_threads)
        ref, dt = timed(naive_fn, imgs)
        rates['naive (batch 16)'].append(images / dt)
        for t in thread_counts:
            torch.set_num_threads(t)
            fast, dt = timed(fast_features, det, imgs, batch)
            rates[f'fast (batch {batch}, {t} threads)'].append(images / dt)
        torch.set_num_threads(default_threads)
        print(f'  round {rep + 1}: ' + ', '.join(f'{k} {v[-1]:.2f} img/s' for k, v in rates.items()), flush=True)

    base = statistics.median(rates['naive (batch 16)'])
    print()
    print(f'{"extractor":<36} {"median img/s":>12} {"speed-up":>9}')
    for name, values in rates.items():
        med = statistics.median(values)
        print(f'{name:<36} {med:>12.2f} {med / base:>8.2f}x')
    rel = float((fast - ref).abs().max() / ref.abs().max())
    fid_naive, fid_fast = fid_of_halves(ref), fid_of_halves(fast)
    print(f'max |feature difference| / max |feature|: {rel:.2e}')
    print(f'FID of the two halves: naive {fid_naive:.6f}, fast {fid_fast:.6f}, '
          f'relative difference {abs(fid_fast - fid_naive) / abs(fid_naive):.2e}')

    rng = np.random.default_rng(0)
    for n in (100, 3 * fd_dim // 2):
        x = rng.standard_normal((n, fd_dim)) * rng.uniform(0.1, 2, fd_dim)
        y = rng.standard_normal((n, fd_dim)) + 0.1
        stats = [(v.mean(0), np.cov(v, rowvar=False, ddof=0)) for v in (x, y)]
        times = {}
        values = {}
        for method in ('eigh', 'sqrtm'):
            start = time.perf_counter()
            values[method] = frechet_inception_distance.frechet_distance(*stats[0], *stats[1], method=method)
            times[method] = time.perf_counter() - start
        print(f'Fréchet distance {fd_dim}-d from {n} samples: eigh {times["eigh"]:.2f} s, '
              f'sqrtm {times["sqrtm"]:.2f} s, '
              f'values {values["eigh"]:.6f} / {values["sqrtm"]:.6f}')


if __name__ == '__main__':
    main()
