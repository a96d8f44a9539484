"""Inception Score (IS): docs/methods.md §7, docs/stylegan2-ada.md §6.

IS = exp(E_x KL(p(y|x) ‖ p(y))) with p(y|x) the Inception class probabilities (softmax of the
logits computed without the output-layer bias, NVIDIA's ``no_output_bias=True``) and p(y) their
mean over the split; computed on ``num_splits`` consecutive splits, reported as mean and
standard deviation over the splits. Needs NVIDIA's ``inception-2015-12-05.pt`` via
``--detector``; ``default_1.pt`` has no logits (docs/data-and-weights.md §2).
"""

from __future__ import annotations

import numpy as np
import scipy.special

from metrics import detectors, metric_utils


def inception_score(probs: np.ndarray, num_splits: int = 10) -> tuple[float, float]:
    """(mean, std) of exp(mean_x Σ_y p(y|x) (log p(y|x) − log p(y))) over ``num_splits`` splits.

    Terms with p(y|x) = 0 contribute 0 (x log x → 0).
    """
    probs = np.asarray(probs, dtype=np.float64)
    n = probs.shape[0]
    if n < num_splits:
        raise ValueError(f'IS needs at least {num_splits} samples for {num_splits} splits')
    scores = []
    for i in range(num_splits):
        part = probs[i * n // num_splits:(i + 1) * n // num_splits]
        marginal = part.mean(axis=0, keepdims=True)
        kl = scipy.special.xlogy(part, part) - scipy.special.xlogy(part, np.broadcast_to(marginal, part.shape))
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def compute_is(opts: metric_utils.MetricOptions, num_gen: int, num_splits: int = 10) -> tuple[float, float]:
    detector = detectors.resolve_detector(detectors.ROLE_PROBS, opts.detector_path, opts.vgg16_path,
                                          opts.metric or 'IS', opts.device)
    probs = metric_utils.compute_feature_stats_for_generator(opts, detector, capture_all=True,
                                                             max_items=num_gen, probs=True).get_all()
    if opts.rank != 0:
        return float('nan'), float('nan')
    return inception_score(probs, num_splits)
