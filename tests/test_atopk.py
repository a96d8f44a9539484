"""Property tests K1–K9, L1–L2, W1, F1 of ATop-k and its ablations (docs/methods.md §9.3–9.4)."""

from __future__ import annotations

import io
import json
import math
import os
import socket
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from patches.atopk import (ATopk, KController, add_d_gap, append_trace, global_topk_mask, per_sample_scores,
                           select_topk, topk_loss)
from patches.overfit import OverfitTracker


def _walk(controller: KController, ps, start_batch_idx: int = 1) -> list[int]:
    """Run the controller over a p sequence; return k after each iteration."""
    ks = []
    for i, p in enumerate(ps):
        ks.append(controller.step(start_batch_idx + i, p=p, record=False))
    return ks


def _set_k(controller: KController, k: int) -> None:
    state = controller.state_dict()
    state['k'] = k
    controller.load_state_dict(state)


def _stationary(B: int, p: float) -> np.ndarray:
    """π(j) ∝ ((1 − p)/p)^(j−1), j = 1..B (detailed balance of the reflected walk, docs/methods.md §1.4)."""
    j = np.arange(1, B + 1, dtype=np.float64)
    w = ((1 - p) / p) ** (j - 1)
    return w / w.sum()


def _np_topk_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Independent reference: numpy stable argsort of −score (ties: lower index first)."""
    order = np.argsort(-scores, kind='stable')
    mask = np.zeros(len(scores), dtype=bool)
    mask[order[:k]] = True
    return mask


# ---------------------------------------------------------------------------------------------
# K1–K4: the random walk of Eq. 11.


def test_k1_bounds_for_any_p_sequence():
    gen = np.random.default_rng(0)
    for B in (1, 2, 4, 16):
        controller = KController('adaptive', B, seed=B)
        ps = gen.uniform(0, 3, size=3000)  # includes p > 1 (ADA only clamps below, A3)
        ps[::7] = 0.0
        ks = [B] + _walk(controller, ps)
        ks = np.array(ks)
        assert ks.min() >= 1 and ks.max() <= B
        steps = np.diff(ks)
        assert np.all(np.abs(steps) <= 1)
        stuck = steps == 0  # only possible when the clip held k at a boundary
        assert np.all((ks[:-1][stuck] == 1) | (ks[:-1][stuck] == B))


def test_k2_p_zero_keeps_k_at_batch_and_loss_bitwise_mean():
    B = 8
    atopk = ATopk(mode='adaptive', batch_size=B, seed=3, kimg=0.01)
    gen = torch.Generator().manual_seed(0)
    for batch_idx in range(1, 401):
        atopk.accumulate(-torch.rand([B, 1], generator=gen) - 0.1)  # r = −1 < t: p stays 0
        logits = torch.randn([B, 1], generator=gen)
        per_sample = F.softplus(-logits).flatten(1).mean(1)
        loss = atopk.reduce_generator_loss(per_sample, logits)
        assert torch.equal(loss, per_sample.mean())
        atopk.end_iteration(batch_idx, batch_idx * B, dataset_size=100)
        assert atopk.p == 0.0 and atopk.k == B


@pytest.mark.parametrize('p', [1.0, 1.0000001, 7.5])
@pytest.mark.parametrize('k_interval', [1, 3])
def test_k3_p_at_least_one_decreases_to_one(p, k_interval):
    B = 6
    controller = KController('adaptive', B, k_interval=k_interval, seed=11)
    ks = _walk(controller, [p] * (k_interval * (B + 5)))
    expected = [max(B - (t // k_interval), 1) for t in range(1, len(ks) + 1)]
    assert ks == expected


@pytest.mark.parametrize('p', [0.1, 0.35, 0.5, 0.62, 0.9, 1.3])
def test_k4_drift_is_one_minus_two_p(p):
    B, n = 100_000, 20_000
    controller = KController('adaptive', B, seed=int(p * 1000))
    _set_k(controller, B // 2)  # far from both boundaries for all n steps
    ks = _walk(controller, [p] * n)
    drift = (ks[-1] - B // 2) / n
    q = min(p, 1.0)
    expected = 1 - 2 * q
    sigma = 2 * math.sqrt(q * (1 - q) / n)
    assert abs(drift - expected) <= 3 * sigma + 1e-12
    if q not in (0.5,):  # a walk with p and 1 − p swapped is far outside the band
        assert abs(drift - (2 * q - 1)) > 10 * sigma


@pytest.mark.parametrize('B,p', [(4, 0.3), (4, 0.6), (8, 0.55), (4, 0.8)])
def test_k4_stationary_law(B, p):
    controller = KController('adaptive', B, seed=100 + B)
    ks = np.array(_walk(controller, [p] * 30_000)[500:])
    hist = np.bincount(ks, minlength=B + 1)[1:] / len(ks)
    tv = 0.5 * np.abs(hist - _stationary(B, p)).sum()
    tv_swapped = 0.5 * np.abs(hist - _stationary(B, 1 - p)).sum()
    assert tv < 0.03
    assert tv_swapped > 0.3  # swapping p and 1 − p is detected
    mean_k = float((np.arange(1, B + 1) * _stationary(B, p)).sum())
    assert abs(ks.mean() - mean_k) < 0.1


def test_k4_detects_a_broken_walk():
    """The stationary-law check rejects a walk that reflects at the boundaries instead of clipping."""
    B, p = 4, 0.6
    gen = torch.Generator().manual_seed(5)
    k, ks = B, []
    for _ in range(30_000):
        u = float(torch.rand([], generator=gen, dtype=torch.float64))
        k = k - 1 if u < p else k + 1
        k = 2 if k < 1 else (B - 1 if k > B else k)  # broken: reflection
        ks.append(k)
    hist = np.bincount(np.array(ks[500:]), minlength=B + 1)[1:] / len(ks[500:])
    assert 0.5 * np.abs(hist - _stationary(B, p)).sum() > 0.05


# ---------------------------------------------------------------------------------------------
# K5, K6: selection and reduction.


def test_k5_selection_is_k_largest_with_stable_tie_break_and_equivariant():
    gen = np.random.default_rng(1)
    for trial in range(50):
        n = int(gen.integers(1, 20))
        scores = np.round(gen.normal(size=n), 1).astype(np.float32)  # rounding creates ties
        k = int(gen.integers(1, n + 1))
        mask = select_topk(torch.from_numpy(scores), k)
        assert mask.dtype == torch.bool and int(mask.sum()) == k
        assert np.array_equal(mask.numpy(), _np_topk_mask(scores, k))
        if mask.sum() < n:  # every selected score >= every non-selected score
            assert scores[mask.numpy()].min() >= scores[~mask.numpy()].max()
        distinct = gen.permutation(n).astype(np.float32) + gen.uniform(0, 0.5, n).astype(np.float32)
        perm = gen.permutation(n)
        m = select_topk(torch.from_numpy(distinct), k).numpy()
        m_perm = select_topk(torch.from_numpy(distinct[perm]), k).numpy()
        assert np.array_equal(m_perm, m[perm])
    # [N, L] scores: per-sample mean of the L logits (A7).
    patch = torch.tensor([[3.0, -3.0], [0.5, 0.7], [-1.0, 0.0], [1.0, 1.0]])
    assert torch.equal(per_sample_scores(patch), torch.tensor([0.0, 0.6, -0.5, 1.0]))
    assert select_topk(patch, 2).tolist() == [False, True, False, True]


def test_k5_non_selected_get_exact_zero_gradient_and_do_not_change_loss():
    B, k = 10, 4
    atopk = ATopk(mode='fixed', batch_size=B, k=k)
    gen = torch.Generator().manual_seed(2)
    base = torch.randn([B, 1], generator=gen)
    logits = base.clone().requires_grad_(True)
    loss = atopk.reduce_generator_loss(F.softplus(-logits).flatten(1).mean(1), logits.detach())
    loss.backward()
    mask = _np_topk_mask(base.flatten().numpy(), k)
    grad = logits.grad.flatten()
    assert torch.equal(grad[torch.from_numpy(~mask)], torch.zeros(B - k))
    assert torch.all(grad[torch.from_numpy(mask)] < 0)  # pushes selected logits up
    # Moving the non-selected logits (while staying below the k-th) leaves the loss bitwise unchanged.
    threshold = base.flatten()[torch.from_numpy(mask)].min()
    moved = base.clone().flatten()
    moved[torch.from_numpy(~mask)] = threshold - 1 - torch.rand(B - k, generator=gen) * 50
    moved = moved.view(B, 1)
    loss2 = atopk.reduce_generator_loss(F.softplus(-moved).flatten(1).mean(1), moved)
    assert torch.equal(loss.detach(), loss2)


def test_k6_reduction_equals_mean_of_k_smallest_losses():
    gen = torch.Generator().manual_seed(4)
    B = 12
    for k in range(1, B + 1):
        logits = torch.randn([B], generator=gen) * 3
        per_sample = F.softplus(-logits)
        loss, mask = topk_loss(per_sample, logits, k)
        if k == B:
            assert mask is None and torch.equal(loss, per_sample.mean())
            continue
        ref = np.sort(np.logaddexp(0.0, -logits.numpy().astype(np.float64)))[:k].mean()
        assert abs(float(loss) - ref) < 1e-6 * max(1.0, abs(ref))
    # hinge / FastGAN form: per-sample loss −l, selection still on the scores.
    logits = torch.randn([B], generator=gen)
    loss, _ = topk_loss(-logits, logits, 5)
    assert abs(float(loss) + np.sort(logits.numpy().astype(np.float64))[::-1][:5].mean()) < 1e-6


# ---------------------------------------------------------------------------------------------
# K7: global selection across two gloo processes == the single-process gradient.


_K7_SCORES = [0.5, 2.0, 1.0, -1.0, 1.0, 0.3, 2.0, 1.0]  # ties inside and across ranks
_K7_CASES = [('fixed', 3), ('fixed', 4), ('fixed', 5), ('worst', 3), ('worst', 2), ('adaptive', None), ('linear', None)]


def _k7_loss_and_grads(per_rank: int, rank: int, mode: str, k, reports: list):
    B = 8
    w = torch.ones(B, dtype=torch.float64, requires_grad=True)   # per-sample parameters
    v = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)  # one parameter shared by all
    s = torch.tensor(_K7_SCORES, dtype=torch.float64)
    logits = (s * w * v)[rank * per_rank:(rank + 1) * per_rank]
    atopk = ATopk(mode=mode, batch_size=B, k=k, seed=0, report=lambda name, value: reports.append((name, value)))
    if mode == 'adaptive':
        _set_k(atopk.controller, 6)
    loss = atopk.reduce_generator_loss(F.softplus(-logits), logits.detach())
    loss.backward()
    return loss.detach(), w.grad.clone(), v.grad.clone()


def _k7_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world)
    try:
        results = {}
        for mode, k in _K7_CASES:
            reports: list = []
            loss, gw, gv = _k7_loss_and_grads(8 // world, rank, mode, k, reports)
            packed = torch.cat([loss.view(1), gw, gv.view(1)])
            dist.all_reduce(packed)
            packed /= world  # DDP-style gradient averaging
            fraction = [float(v) for name, v in reports if name == 'ATopk/selected_fraction']
            results[f'{mode}{k}'] = dict(packed=packed, fraction=fraction)
        # Unequal local batches are refused on every rank (no hang).
        try:
            global_topk_mask(torch.zeros(3 + rank), 2)
            results['unequal'] = 'no error'
        except ValueError as e:
            results['unequal'] = str(e)
        torch.save(results, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_k7_two_process_global_selection_equals_single_process():
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_k7_worker, args=(2, _free_port(), out_dir), nprocs=2, join=True)
        results = [torch.load(os.path.join(out_dir, f'rank{r}.pt'), weights_only=True) for r in range(2)]
    for mode, k in _K7_CASES:
        key = f'{mode}{k}'
        reports: list = []
        loss, gw, gv = _k7_loss_and_grads(8, 0, mode, k, reports)
        expected = torch.cat([loss.view(1), gw, gv.view(1)])
        for r in range(2):
            assert torch.allclose(results[r][key]['packed'], expected, rtol=0, atol=1e-12), (key, r)
        kk = {'adaptive': 6, 'linear': 8}.get(mode, k)
        fractions = [results[r][key]['fraction'][0] for r in range(2)]
        assert sum(fractions) / 2 == pytest.approx(kk / 8)
    # The tie-break is global: top-3 of the scores is {1, 6, 2} (value desc, global index asc).
    assert torch.equal(results[0]['fixed3']['packed'][1:9] != 0, torch.tensor(_np_topk_mask(np.array(_K7_SCORES), 3)))
    for r in range(2):
        assert 'equal per-rank batches' in results[r]['unequal']


# ---------------------------------------------------------------------------------------------
# K8: reproducible trajectories and exact resume.


def _drive(atopk: ATopk, start: int, stop: int, B: int) -> list[tuple[int, float]]:
    trajectory = []
    for batch_idx in range(start, stop):
        gen = torch.Generator().manual_seed(batch_idx)
        # r alternates between regimes so that p rises above 0.5 and falls again.
        offset = 2.0 if (batch_idx // 150) % 2 == 0 else -2.0
        atopk.accumulate(torch.randn([B, 1], generator=gen) + offset)
        atopk.end_iteration(batch_idx, batch_idx * B, dataset_size=50)
        trajectory.append((atopk.k, atopk.p))
    return trajectory


def test_k8_same_seed_same_trajectory_and_exact_resume():
    B = 8
    kwargs = dict(mode='adaptive', batch_size=B, kimg=0.2, seed=7)
    full = _drive(ATopk(**kwargs), 1, 601, B)
    assert full == _drive(ATopk(**kwargs), 1, 601, B)
    assert len({k for k, _ in full}) >= 4 and max(p for _, p in full) > 0.5  # a non-trivial walk
    other = _drive(ATopk(**dict(kwargs, seed=8)), 1, 601, B)
    assert [k for k, _ in other] != [k for k, _ in full]

    first = ATopk(**kwargs)
    head = _drive(first, 1, 303, B)  # stop mid-window (302 % 4 != 0): the window must be saved too
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = ATopk(**kwargs)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert head + _drive(resumed, 303, 601, B) == full

    # The half-filled tracker window is part of the state: r over 4 iterations is 0.75 > t,
    # over the last two alone it would be 0.5 < t.
    before = ATopk(mode='adaptive', batch_size=4, kimg=0.2)
    for b in (1, 2):
        before.accumulate(torch.ones([4, 1]))
        before.end_iteration(b, 4 * b)
    buf = io.BytesIO()
    torch.save(before.state_dict(), buf)
    buf.seek(0)
    after = ATopk(mode='adaptive', batch_size=4, kimg=0.2)
    after.load_state_dict(torch.load(buf, weights_only=True))
    for b in (3, 4):
        after.accumulate(torch.tensor([[1.0], [1.0], [1.0], [-1.0]]))
        after.end_iteration(b, 4 * b)
    assert after.tracker.last_r == 0.75 and after.p > 0


# ---------------------------------------------------------------------------------------------
# K9: --atopk-p=ada reads ADA's tracker object.


def test_k9_shared_ada_tracker():
    class Pipe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer('p', torch.zeros([]))

    pipe = Pipe()
    ada = OverfitTracker(batch_size=4, interval=4, kimg=500).bind(pipe.p)
    atopk = ATopk(mode='adaptive', batch_size=4, p_source='ada', shared_tracker=ada)
    assert atopk.tracker is ada and atopk.p == 0.0
    pipe.p.fill_(0.75)
    assert atopk.p == 0.75
    ada.p = 2.0
    assert atopk.p == 2.0
    atopk.accumulate(torch.ones([4, 1]))  # ADA's owner feeds its tracker; ATop-k must not count twice
    assert ada.state_dict()['window_count'] == 0
    ks = [atopk.end_iteration(b, 4 * b, 10) for b in range(1, 5)]
    assert ks == [3, 2, 1, 1] and float(pipe.p) == 2.0  # ATop-k does not update ADA's p
    assert atopk.state_dict()['tracker'] is None
    with pytest.raises(ValueError, match='shared_tracker'):
        ATopk(mode='adaptive', batch_size=4, p_source='ada')
    with pytest.raises(ValueError):
        ATopk(mode='adaptive', batch_size=4, p_source='ada', shared_tracker=ada, clamp_p=True)
    with pytest.raises(ValueError):
        ATopk(mode='adaptive', batch_size=8, p_source='ada', shared_tracker=ada)


def test_own_tracker_equals_ada_tracker_on_same_stats():
    """A2: with equal settings the own tracker's p is numerically ADA's p."""
    pipe_p = torch.zeros([])
    ada = OverfitTracker(batch_size=4, kimg=0.3).bind(pipe_p)
    atopk = ATopk(mode='adaptive', batch_size=4, kimg=0.3, seed=1)
    gen = torch.Generator().manual_seed(9)
    for b in range(1, 401):
        x = torch.randn([4, 1], generator=gen) + math.sin(b / 30)
        ada.accumulate(x)
        atopk.accumulate(x)
        ada.update(b)
        atopk.end_iteration(b, 4 * b)
        assert torch.equal(atopk.tracker.p_tensor, pipe_p)


def test_clamp_p_variant_stores_p_in_unit_interval():
    atopk = ATopk(mode='adaptive', batch_size=4, kimg=0.01, clamp_p=True)
    for b in range(1, 41):
        atopk.accumulate(torch.ones([4]))
        atopk.end_iteration(b, 4 * b)
    assert atopk.p == 1.0 and atopk.k == 1


# ---------------------------------------------------------------------------------------------
# L1, L2 (Linear Top-k), W1 (Worst-k), F1 (Fixed Top-k).


def _linear_reference(e: int, B: int, gamma: float, nu: float) -> int:
    return max(math.ceil(round(gamma ** e * B, 9)), math.ceil(round(nu * B, 9)))


@pytest.mark.parametrize('B', [4, 16, 64])
def test_l1_linear_schedule(B):
    N = 100
    controller = KController('linear', B, gamma=0.99, nu=0.75)
    assert controller.k == B
    ks = []
    for batch_idx in range(1, 4000):
        cur_nimg = batch_idx * B
        k = controller.step(batch_idx, cur_nimg=cur_nimg, dataset_size=N)
        assert k == _linear_reference(cur_nimg // N, B, 0.99, 0.75)
        ks.append(k)
    assert all(a >= b for a, b in zip(ks, ks[1:]))
    assert min(ks) == math.ceil(0.75 * B)


def test_l2_batch_four_only_takes_values_four_and_three():
    controller = KController('linear', 4, gamma=0.99, nu=0.75)
    seen = {}
    for epoch in range(0, 200):
        seen.setdefault(controller.step(epoch + 1, cur_nimg=epoch * 100, dataset_size=100), epoch)
    assert set(seen) == {4, 3}
    assert seen[3] == 29  # first epoch with 0.99^e·4 <= 3 (ceil rounding, A12)
    floor = KController('linear', 4, round='floor')
    assert floor.step(1, cur_nimg=100, dataset_size=100) == 3  # int(3.96) = 3, StudioGAN's truncation
    assert KController('linear', 10, nu=0.7).linear_k(10**7, 10) == 7  # ceil(0.7·10) is 7 despite float noise


def test_w1_worst_k_is_complement_of_top_k():
    gen = np.random.default_rng(6)
    for _ in range(40):
        B = int(gen.integers(2, 16))
        scores = torch.from_numpy(np.round(gen.normal(size=B), 1))  # with ties
        for K in range(1, B):
            worst = select_topk(scores, K, largest=False)
            assert torch.equal(worst, ~select_topk(scores, B - K, largest=True))
            assert scores[worst].max() <= scores[~worst].min()
    # Worst-k with K = B is the baseline, bitwise; with K < B it averages the K largest losses.
    B = 6
    logits = torch.randn([B], generator=torch.Generator().manual_seed(0))
    per_sample = F.softplus(-logits)
    assert torch.equal(ATopk(mode='worst', batch_size=B, k=B).reduce_generator_loss(per_sample, logits), per_sample.mean())
    loss = ATopk(mode='worst', batch_size=B, k=2).reduce_generator_loss(per_sample, logits)
    ref = np.sort(np.logaddexp(0, -logits.numpy().astype(np.float64)))[::-1][:2].mean()
    assert abs(float(loss) - ref) < 1e-6


def test_f1_fixed_k_equal_batch_is_baseline():
    B = 5
    atopk = ATopk(mode='fixed', batch_size=B, k=B, kimg=0.01)
    gen = torch.Generator().manual_seed(1)
    for b in range(1, 60):
        atopk.accumulate(torch.ones([B]))  # p grows quickly: fixed mode ignores it
        logits = torch.randn([B, 1], generator=gen)
        per_sample = F.softplus(-logits).flatten(1).mean(1)
        assert torch.equal(atopk.reduce_generator_loss(per_sample, logits), per_sample.mean())
        assert atopk.end_iteration(b, b * B) == B
    assert atopk.p > 1


# ---------------------------------------------------------------------------------------------
# Validation, reporting, history and logging helpers.


@pytest.mark.parametrize('kwargs,match', [
    (dict(mode='fixed', batch_size=4, k=5), 'between 1 and the batch size 4'),
    (dict(mode='fixed', batch_size=4, k=0), 'between 1 and the batch size'),
    (dict(mode='worst', batch_size=4), 'needs k'),
    (dict(mode='adaptive', batch_size=4, k=2), 'only given with mode fixed or worst'),
    (dict(mode='topk', batch_size=4), 'unknown mode'),
    (dict(mode='adaptive', batch_size=4, p_source='chain'), 'p_source'),
    (dict(mode='linear', batch_size=4, gamma=1.5), 'gamma'),
    (dict(mode='linear', batch_size=4, round='nearest'), 'round'),
    (dict(mode='adaptive', batch_size=4, k_interval=0), 'k_interval'),
    (dict(mode='adaptive', batch_size=4, seed=-1), 'seed'),
])
def test_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ATopk(**kwargs)


def test_resume_with_other_settings_is_an_error():
    state = ATopk(mode='fixed', batch_size=8, k=3).state_dict()
    with pytest.raises(ValueError, match='topk-k=3'):
        ATopk(mode='fixed', batch_size=8, k=5).load_state_dict(state)
    with pytest.raises(ValueError, match='batch'):
        ATopk(mode='fixed', batch_size=4, k=3).load_state_dict(state)
    with pytest.raises(ValueError, match='mode'):
        ATopk(mode='worst', batch_size=8, k=3).load_state_dict(state)
    with pytest.raises(ValueError, match='atopk-p'):
        ATopk(mode='fixed', batch_size=8, k=3, p_source='ada',
              shared_tracker=OverfitTracker(batch_size=8)).load_state_dict(state)


def test_batch_mismatch_and_linear_without_dataset_size_are_errors():
    atopk = ATopk(mode='fixed', batch_size=8, k=2)
    with pytest.raises(ValueError, match='whole batch of 8'):
        atopk.reduce_generator_loss(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match='dataset_size'):
        ATopk(mode='linear', batch_size=4).end_iteration(1, 4)


def test_reports_and_history_trace(tmp_path):
    reports = []
    B = 4
    atopk = ATopk(mode='adaptive', batch_size=B, kimg=0.01, seed=2, report=lambda n, v: reports.append((n, v)))
    for b in range(1, 13):
        atopk.accumulate(torch.ones([B]))
        logits = torch.arange(B, dtype=torch.float32)
        k_used = atopk.k
        atopk.reduce_generator_loss(F.softplus(-logits), logits)
        p_during = atopk.p
        atopk.end_iteration(b, b * B)
        entry = atopk.controller.history[-1]
        assert entry == (b - 1, k_used, atopk.p)  # p after this iteration's tracker update
        got = dict((n, v) for n, v in reports[-3:])
        assert got['ATopk/k'] == k_used
        assert float(got['ATopk/p']) == pytest.approx(p_during)
        assert float(got['ATopk/selected_fraction']) == pytest.approx(k_used / B)
    entries = atopk.pop_history()
    assert [e['batch_idx'] for e in entries] == list(range(12)) and atopk.pop_history() == []
    assert entries[0]['k'] == B and min(e['k'] for e in entries) < B
    path = append_trace(str(tmp_path), entries)
    append_trace(str(tmp_path), [dict(batch_idx=12, k=1, p=0.5)])
    lines = [json.loads(line) for line in open(path, encoding='utf-8')]
    assert lines[:12] == entries and lines[12]['batch_idx'] == 12
    assert append_trace(str(tmp_path), []) is None


def test_history_is_bounded():
    controller = KController('adaptive', 4, max_history=10)
    _ = [controller.step(b, p=0.5) for b in range(1, 101)]
    entries = controller.pop_history()
    assert len(entries) == 10 and entries[-1]['batch_idx'] == 99


def test_add_d_gap():
    stats = {'Loss/scores/real': dict(num=8, mean=1.25, std=0.1), 'Loss/scores/fake': dict(num=16, mean=-0.5, std=1)}
    add_d_gap(stats)
    assert stats['ATopk/D_gap']['mean'] == 1.75
    stats = {'Loss/scores/real': dict(num=8, mean=1.0, std=0.1)}
    add_d_gap(stats)
    assert 'ATopk/D_gap' not in stats
