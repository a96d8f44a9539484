"""Fréchet Inception Distance (FID): docs/methods.md §7, docs/stylegan2-ada.md §6.

FID = ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^{1/2}) between Gaussians fitted to the 2048-d
pool3 Inception features of real and generated images (means and biased covariances, as
upstream StyleGAN2-ADA). For 100-shot sets Σ_r has rank ≤ 99; that is expected.

Only the trace of the matrix square root is needed. :func:`trace_sqrt_product` computes it
with two symmetric eigen-decompositions: Σ_r Σ_g is similar to the PSD matrix
Σ_r^{1/2} Σ_g Σ_r^{1/2} (AB and BA share eigenvalues), so Tr((Σ_r Σ_g)^{1/2}) = Σ_i √λ_i of
that matrix. In float64 with ``torch.linalg`` (MKL, honours ``torch.set_num_threads``) this takes
≈2 s on 2048×2048 against ≈10–90 s for ``scipy.linalg.sqrtm`` on a 2-core machine
(bench/metrics_speed.py); it is well defined for rank-deficient covariances (eigenvalues below
d·eps·max are round-off and set to 0) and equals upstream's ``real(trace(sqrtm(Σ_r Σ_g)))`` to
float64 round-off (tests/test_metrics.py). ``method='sqrtm'`` gives upstream's computation.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from metrics import detectors, metric_utils


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((Σ1 Σ2)^{1/2}) for symmetric PSD Σ1, Σ2 via Σ_i √λ_i(Σ1^{1/2} Σ2 Σ1^{1/2}) in float64."""
    s1 = torch.as_tensor(np.asarray(sigma1, dtype=np.float64))
    s2 = torch.as_tensor(np.asarray(sigma2, dtype=np.float64))
    w, v = torch.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * _drop_roundoff(w).sqrt()) @ v.T
    m = root1 @ s2 @ root1
    lam = torch.linalg.eigvalsh((m + m.T) / 2)
    return float(_drop_roundoff(lam).sqrt().sum())


def _drop_roundoff(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Zero the eigenvalues that are round-off (below d · eps · max, as in a numerical rank test)
    so that rank-deficient covariances do not pick up Σ √(noise) in the trace."""
    tol = eigenvalues.numel() * torch.finfo(torch.float64).eps * float(eigenvalues.abs().max().clamp(min=1e-300))
    return torch.where(eigenvalues > tol, eigenvalues, torch.zeros_like(eigenvalues))


def trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Upstream's route: ``real(trace(scipy.linalg.sqrtm(Σ1 Σ2)))``."""
    root, _ = scipy.linalg.sqrtm(np.dot(np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)), disp=False)
    return float(np.real(np.trace(root)))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     method: str = 'eigh') -> float:
    """‖μ1 − μ2‖² + Tr(Σ1) + Tr(Σ2) − 2 Tr((Σ1 Σ2)^{1/2}) (docs/methods.md §7); ``method`` ∈ {eigh, sqrtm}."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    assert mu1.shape == mu2.shape and sigma1.shape == sigma2.shape == (mu1.size, mu1.size)
    tr_root = {'eigh': trace_sqrt_product, 'sqrtm': trace_sqrt_product_sqrtm}[method](sigma1, sigma2)
    return float(np.square(mu1 - mu2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_root)


def compute_fid(opts: metric_utils.MetricOptions, max_real: int | None, num_gen: int,
                use_ref: bool = False) -> float:
    """FID of ``num_gen`` generated images against up to ``max_real`` reals (None = all).

    ``use_ref``: the reals come from ``opts.ref_dataset_kwargs`` (``--ref-data``) instead of the
    training set. Computed on every rank's gathered features; the value is taken from rank 0.
    """
    detector = detectors.resolve_detector(detectors.ROLE_FEATURES, opts.detector_path, opts.vgg16_path,
                                          opts.metric or 'FID', opts.device)
    ref_kwargs = opts.ref_dataset_kwargs if use_ref else None
    mu_real, sigma_real = metric_utils.compute_feature_stats_for_dataset(
        opts, detector, dataset_kwargs=ref_kwargs, capture_mean_cov=True, max_items=max_real).get_mean_cov()
    mu_gen, sigma_gen = metric_utils.compute_feature_stats_for_generator(
        opts, detector, capture_mean_cov=True, max_items=num_gen).get_mean_cov()
    if opts.rank != 0:
        return float('nan')
    return frechet_distance(mu_real, sigma_real, mu_gen, sigma_gen)
