"""Kernel Inception Distance (KID): docs/methods.md §7, docs/stylegan2-ada.md §6.

Unbiased MMD² with the cubic polynomial kernel k(x, y) = (xᵀy / d + 1)³ on Inception
features, averaged over ``num_subsets`` random subsets of size m = min(n_real, n_gen,
max_subset_size) drawn without replacement:

    MMD²_u = [Σ_{i≠j} k(x_i, x_j) + Σ_{i≠j} k(y_i, y_j)] / (m (m − 1)) − 2 Σ_{i,j} k(x_i, y_j) / m².

Its expectation is 0 when both samples come from one distribution (the estimator can be
negative); usually reported × 10³.
"""

from __future__ import annotations

import numpy as np

from metrics import detectors, metric_utils


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (xᵀy / d + 1)³ for all pairs of rows, float64."""
    d = x.shape[1]
    return (x @ y.T / d + 1) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² estimate between two equally sized samples (rows)."""
    m = x.shape[0]
    assert y.shape[0] == m and m >= 2
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.sum() / (m * m))


def kernel_inception_distance(real: np.ndarray, gen: np.ndarray, num_subsets: int = 100,
                              max_subset_size: int = 1000, seed: int = 0) -> float:
    """Mean unbiased MMD² over ``num_subsets`` random subsets (docs/stylegan2-ada.md §6 parameters)."""
    real, gen = np.asarray(real), np.asarray(gen)  # kept as given (float32); subsets go to float64
    m = min(real.shape[0], gen.shape[0], max_subset_size)
    if m < 2:
        raise ValueError('KID needs at least 2 real and 2 generated samples')
    rng = np.random.RandomState(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = gen[rng.choice(gen.shape[0], m, replace=False)].astype(np.float64)
        y = real[rng.choice(real.shape[0], m, replace=False)].astype(np.float64)
        total += mmd2_unbiased(x, y)
    return total / num_subsets


def compute_kid(opts: metric_utils.MetricOptions, max_real: int | None, num_gen: int,
                num_subsets: int = 100, max_subset_size: int = 1000) -> float:
    detector = detectors.resolve_detector(detectors.ROLE_FEATURES, opts.detector_path, opts.vgg16_path,
                                          opts.metric or 'KID', opts.device)
    real_stats, gen_stats = metric_utils.capture_all_features(opts, detector, max_real, num_gen)
    real, gen = real_stats.get_all(), gen_stats.get_all()
    if opts.rank != 0:
        return float('nan')
    return kernel_inception_distance(real, gen, num_subsets, max_subset_size, seed=opts.seed)
