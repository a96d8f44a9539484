"""Property tests P1–P5 of the overfitting tracker (docs/methods.md §9.2; ADA §3.1, ATop-k Eq. 10)."""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from patches.overfit import OverfitTracker
from torch_utils import training_stats


def _logits_with_mean_sign(n_pos: int, n_neg: int, n_zero: int = 0) -> torch.Tensor:
    return torch.cat([torch.full([n_pos, 1], 2.5), torch.full([n_neg, 1], -1.5), torch.zeros([n_zero, 1])])


def _emulate_f32(p: np.float32, r: float, target: float, step: float) -> np.float32:
    """Independent model of upstream's buffer arithmetic: float32 add of float32(adjust), clamp at 0."""
    adjust = np.float32(np.sign(r - target) * step)
    return max(np.float32(p + adjust), np.float32(0))


# ---------------------------------------------------------------------------------------------
# P1, P2, P3


def test_p1_linear_growth_and_never_negative():
    B, interval, kimg = 4, 4, 500
    tracker = OverfitTracker(batch_size=B, target=0.6, interval=interval, kimg=kimg)
    step = B * interval / (kimg * 1000)
    assert tracker.step_size == pytest.approx(step, rel=1e-15)
    expected = np.float32(0)
    for n in range(1, 201):
        for b in range(interval * (n - 1) + 1, interval * n + 1):
            tracker.accumulate(_logits_with_mean_sign(B, 0))      # r = 1 > 0.6
            updated = tracker.update(b)
            assert updated == (b % interval == 0)
        expected = _emulate_f32(expected, 1.0, 0.6, step)
        assert tracker.p == float(expected)
    assert tracker.p == pytest.approx(200 * step, rel=1e-5)
    assert tracker.num_updates == 200 and tracker.last_r == 1.0

    # Now r < target for longer than it takes to return to 0: p sticks at exactly 0.
    for b in range(801, 801 + 4 * 300):
        tracker.accumulate(_logits_with_mean_sign(1, 3))          # r = -0.5
        tracker.update(b)
        assert tracker.p >= 0
    assert tracker.p == 0.0


def test_p2_zero_to_one_takes_kimg_thousand_images():
    # Dyadic step (1/64) so float32 is exact: p reaches 1 after exactly kimg*1000 images.
    B, interval, kimg = 4, 4, 1.024
    tracker = OverfitTracker(batch_size=B, interval=interval, kimg=kimg)
    images = 0
    batch_idx = 0
    while tracker.p < 1.0:
        tracker.accumulate(_logits_with_mean_sign(B, 0))
        batch_idx += 1
        images += B
        tracker.update(batch_idx)
    assert images == round(kimg * 1000)
    assert tracker.p == 1.0

    # The paper's setting (B = 4, kimg = 500): 125 000 iterations in exact arithmetic; float32
    # rounding moves the crossing by well under 0.1 %.
    tracker = OverfitTracker(batch_size=4, interval=4, kimg=500)
    n = 0
    while tracker.p < 1.0:
        tracker.apply_adjustment(1.0)
        n += 1
    assert abs(n * 4 * 4 - 500_000) <= 0.001 * 500_000


def test_p3_r_equal_target_leaves_p_unchanged_and_sign_zero_counts():
    tracker = OverfitTracker(batch_size=4, target=0.5, interval=1, kimg=1, p=0.25)
    tracker.accumulate(_logits_with_mean_sign(3, 1))  # r = 0.5 exactly
    assert tracker.update(1)
    assert tracker.last_r == 0.5 and tracker.p == 0.25
    # sign(0) = 0 (A11): zeros count in the denominator only -> r = (2 - 1) / 4 = 0.25 < 0.5.
    tracker.accumulate(_logits_with_mean_sign(2, 1, n_zero=1))
    tracker.update(2)
    assert tracker.last_r == 0.25
    assert tracker.p == float(np.float32(np.float32(0.25) - np.float32(4 / 1000)))


def test_window_statistic_is_mean_over_all_elements_since_last_update():
    gen = torch.Generator().manual_seed(3)
    tracker = OverfitTracker(batch_size=8, interval=4)
    logits = [torch.randn([8, 3], generator=gen) for _ in range(4)]
    logits.append(torch.tensor([[float('nan')], [1.0]]))  # NaNs are ignored, like the collector
    for i, x in enumerate(logits[:3]):
        tracker.accumulate(x)
        assert not tracker.update(i + 1)
    tracker.accumulate(logits[3])
    tracker.accumulate(logits[4])
    assert tracker.update(4)
    signs = np.concatenate([np.sign(x.numpy().astype(np.float64)).ravel() for x in logits[:4]] + [np.array([1.0])])
    assert tracker.last_r == pytest.approx(signs.mean(), abs=1e-15)
    # The window was reset: an update without new data leaves everything as it was.
    p, r = tracker.p, tracker.last_r
    assert not tracker.update(8)
    assert tracker.p == p and tracker.last_r == r


# ---------------------------------------------------------------------------------------------
# P4: bound to an augment pipe's p buffer == own tracker == upstream's ADA arithmetic.


class _PipeWithP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer('p', torch.ones([]))


def test_p4_bound_tracker_equals_own_tracker_and_upstream_ada_bitwise():
    B, interval, kimg, target = 8, 4, 0.37, 0.6  # non-dyadic step: rounding matters
    pipe = _PipeWithP()
    pipe.p.copy_(torch.as_tensor(0.0))
    bound = OverfitTracker(batch_size=B, target=target, interval=interval, kimg=kimg).bind(pipe.p)
    own = OverfitTracker(batch_size=B, target=target, interval=interval, kimg=kimg)
    assert bound.p_tensor is pipe.p

    # Upstream ADA: the collector's mean of Loss/signs/real and the in-place buffer update.
    training_stats.reset()
    ada_stats = training_stats.Collector(regex='Loss/signs/real')
    ada_p = torch.zeros([])
    gen = torch.Generator().manual_seed(0)
    moved_down = moved_up = 0
    for batch_idx in range(1, 1201):
        drift = 0.8 * np.sin(batch_idx / 60.0)   # r wanders above and below the target
        logits = torch.randn([B, 1], generator=gen) + drift
        training_stats.report('Loss/signs/real', logits.sign())
        bound.accumulate(logits)
        own.accumulate(logits)
        before = float(ada_p)
        if batch_idx % interval == 0:
            ada_stats.update()
            adjust = np.sign(ada_stats['Loss/signs/real'] - target) * (B * interval) / (kimg * 1000)
            ada_p.copy_((ada_p + adjust).max(torch.zeros([])))
        moved_up += float(ada_p) > before
        moved_down += float(ada_p) < before
        bound.update(batch_idx)
        own.update(batch_idx)
        assert torch.equal(pipe.p, ada_p) and torch.equal(own.p_tensor, ada_p)
    training_stats.reset()
    assert moved_up > 10 and moved_down > 10 and float(ada_p) > 0


def test_bind_adopts_buffer_value_and_writes_in_place():
    pipe = _PipeWithP()
    pipe.p.fill_(0.3)
    tracker = OverfitTracker(batch_size=4, interval=1, kimg=1, p=0.9).bind(pipe.p)
    assert tracker.p == pytest.approx(0.3)
    tracker.accumulate(torch.ones([4]))
    tracker.update(1)
    assert float(pipe.p) == float(np.float32(np.float32(0.3) + np.float32(0.004)))
    tracker.p = 0.125
    assert float(pipe.p) == 0.125
    with pytest.raises(ValueError):
        tracker.bind(torch.zeros([2]))


def test_upper_clamp_variant_and_validation():
    tracker = OverfitTracker(batch_size=4, interval=1, kimg=0.004, max_p=1.0)  # step = 1
    for b in range(1, 4):
        tracker.accumulate(torch.ones([4]))
        tracker.update(b)
    assert tracker.p == 1.0
    unclamped = OverfitTracker(batch_size=4, interval=1, kimg=0.004)
    for b in range(1, 4):
        unclamped.accumulate(torch.ones([4]))
        unclamped.update(b)
    assert unclamped.p == 3.0  # ADA / ATop-k: lower clamp only (A3)
    for kwargs in (dict(batch_size=0), dict(batch_size=4, interval=0), dict(batch_size=4, kimg=0),
                   dict(batch_size=4, p=-0.1)):
        with pytest.raises(ValueError):
            OverfitTracker(**kwargs)


def test_state_dict_round_trip_weights_only():
    tracker = OverfitTracker(batch_size=4, interval=4, kimg=0.5)
    for b in range(1, 11):
        tracker.accumulate(torch.randn([4, 1], generator=torch.Generator().manual_seed(b)) + 0.5)
        tracker.update(b)
    buf = io.BytesIO()
    torch.save(tracker.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    clone = OverfitTracker(batch_size=4, interval=4, kimg=0.5)
    clone.load_state_dict(state)
    assert clone.state_dict() == tracker.state_dict()
    assert state['window_count'] == 8  # two iterations since the update at batch_idx 8
    for b in range(11, 41):
        x = torch.randn([4, 1], generator=torch.Generator().manual_seed(100 + b)) + 0.5
        for t in (tracker, clone):
            t.accumulate(x)
            t.update(b)
        assert tracker.p == clone.p and tracker.last_r == clone.last_r


# ---------------------------------------------------------------------------------------------
# P5: two gloo processes see the same all-reduced r and p.


def _p5_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world)
    try:
        tracker = OverfitTracker(batch_size=8, interval=2, kimg=0.1)
        results = []
        for batch_idx in range(1, 9):
            gen = torch.Generator().manual_seed(1000 * batch_idx + rank)
            # The ranks see very different statistics: rank 0 mostly positive, rank 1 mostly negative.
            tracker.accumulate(torch.randn([4, 1], generator=gen) + (1.5 if rank == 0 else -0.7))
            if tracker.update(batch_idx):
                results.append((tracker.last_r, tracker.p))
        torch.save(results, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_p5_all_reduced_statistic_identical_on_ranks():
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_p5_worker, args=(2, _free_port(), out_dir), nprocs=2, join=True)
        r0 = torch.load(os.path.join(out_dir, 'rank0.pt'), weights_only=True)
        r1 = torch.load(os.path.join(out_dir, 'rank1.pt'), weights_only=True)
    assert r0 == r1 and len(r0) == 4
    # Single-process reference over the concatenated statistics of both ranks.
    ref = OverfitTracker(batch_size=8, interval=2, kimg=0.1)
    expected = []
    for batch_idx in range(1, 9):
        for rank in range(2):
            gen = torch.Generator().manual_seed(1000 * batch_idx + rank)
            ref.accumulate(torch.randn([4, 1], generator=gen) + (1.5 if rank == 0 else -0.7))
        if ref.update(batch_idx):
            expected.append((ref.last_r, ref.p))
    assert r0 == expected
    assert any(r < 0.6 for r, _ in r0) or any(r > 0.6 for r, _ in r0)
