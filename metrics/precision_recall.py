"""Improved precision and recall (Kynkäänniemi et al. 2019): docs/methods.md §7, docs/stylegan2-ada.md §6.

On 4096-d VGG16 features (NVIDIA's ``vgg16.pt`` given with ``--vgg16``): each point of a
manifold gets the radius of its k-th nearest neighbour within its own set (the (k+1)-th
smallest distance, the first being itself). Precision = fraction of generated samples inside
at least one real ball; recall = fraction of real samples inside at least one generated ball.
Features are rounded to float16 as upstream; distances are computed in blocks of
``col_batch_size`` columns, in float16 on CUDA (upstream) and float32 on the CPU (which has no
fast float16 ``cdist``).
"""

from __future__ import annotations

import torch

from metrics import detectors, metric_utils


def _distances(rows: torch.Tensor, cols: torch.Tensor, col_batch_size: int) -> torch.Tensor:
    """Euclidean distances [len(rows), len(cols)], computed block by block."""
    dtype = torch.float16 if rows.device.type == 'cuda' else torch.float32
    rows = rows.to(dtype)
    out = [torch.cdist(rows.unsqueeze(0), block.to(dtype).unsqueeze(0))[0] for block in cols.split(col_batch_size)]
    return torch.cat(out, dim=1).to(torch.float32)


def _round_fp16(x: torch.Tensor) -> torch.Tensor:
    """Features rounded to float16 as upstream (kept as float32 on the CPU)."""
    return x.half() if x.device.type == 'cuda' else x.to(torch.float16).to(torch.float32)


def manifold_radii(features: torch.Tensor, nhood_size: int, row_batch_size: int = 10000,
                   col_batch_size: int = 10000) -> torch.Tensor:
    """Distance from each point to its ``nhood_size``-th nearest other point of the same set."""
    if features.shape[0] <= nhood_size:
        raise ValueError(f'precision/recall with k={nhood_size} needs more than {nhood_size} samples per set')
    radii = [_distances(batch, features, col_batch_size).kthvalue(nhood_size + 1, dim=1).values
             for batch in features.split(row_batch_size)]
    return torch.cat(radii)


def coverage(probes: torch.Tensor, manifold: torch.Tensor, radii: torch.Tensor, row_batch_size: int = 10000,
             col_batch_size: int = 10000) -> float:
    """Fraction of ``probes`` within distance ``radii[j]`` of some ``manifold[j]``."""
    inside = [(_distances(batch, manifold, col_batch_size) <= radii.unsqueeze(0)).any(dim=1)
              for batch in probes.split(row_batch_size)]
    return float(torch.cat(inside).float().mean())


def precision_recall(real: torch.Tensor, gen: torch.Tensor, nhood_size: int = 3, row_batch_size: int = 10000,
                     col_batch_size: int = 10000) -> tuple[float, float]:
    """(precision, recall) of ``gen`` against ``real`` feature sets with k = ``nhood_size``."""
    real, gen = _round_fp16(torch.as_tensor(real)), _round_fp16(torch.as_tensor(gen))
    precision = coverage(gen, real, manifold_radii(real, nhood_size, row_batch_size, col_batch_size),
                         row_batch_size, col_batch_size)
    recall = coverage(real, gen, manifold_radii(gen, nhood_size, row_batch_size, col_batch_size),
                      row_batch_size, col_batch_size)
    return precision, recall


def compute_pr(opts: metric_utils.MetricOptions, max_real: int | None, num_gen: int, nhood_size: int = 3,
               row_batch_size: int = 10000, col_batch_size: int = 10000) -> tuple[float, float]:
    detector = detectors.resolve_detector(detectors.ROLE_VGG16, opts.detector_path, opts.vgg16_path,
                                          opts.metric or 'precision/recall', opts.device)
    real_stats, gen_stats = metric_utils.capture_all_features(opts, detector, max_real, num_gen)
    real, gen = real_stats.get_all_torch(), gen_stats.get_all_torch()
    if opts.rank != 0:
        return float('nan'), float('nan')
    real, gen = real.to(opts.device), gen.to(opts.device)
    return precision_recall(real, gen, nhood_size, row_batch_size, col_batch_size)
