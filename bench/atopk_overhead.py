"""Per-step overhead of ATop-k vs the baseline G update (issue target ≤ 0.5 %; paper: 0.3 %).

Usage: ``python bench/atopk_overhead.py [--res 64] [--batch 4] [--repeats 9] [--device auto]``

Two measurements on the low-shot StyleGAN2 networks:

1. *Isolated cost*: the work ATop-k adds to one training iteration — the top-k reduction of
   the per-sample G losses (``reduce_generator_loss``), its share of the backward, the tracker
   accumulation and the end-of-iteration p/k update — timed over many calls, divided by the
   time of one full iteration (Gmain + Dmain phases; the lazy reg phases make it longer still,
   so this is an upper bound on the relative overhead).
2. *A/B*: the Gmain phase with and without ATop-k, interleaved, median of ``--repeats``. Noise of
   a shared CPU easily exceeds 0.5 %, so (1) is the figure to quote; (2) shows no hidden cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--res', type=int, default=64)
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--repeats', type=int, default=9)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--cfg', default='low_shot')
    args = parser.parse_args()

    import torch

    import dnnlib
    from patches.atopk import ATopk
    from training.loss import StyleGAN2Loss

    device = common.pick_device(args.device)
    kw = common.network_kwargs(args.cfg, args.res, args.batch)
    G = dnnlib.util.construct_class_by_name(**kw.G_kwargs, c_dim=0, img_resolution=args.res, img_channels=3).train().to(device)
    D = dnnlib.util.construct_class_by_name(**kw.D_kwargs, c_dim=0, img_resolution=args.res, img_channels=3).train().to(device)
    loss = StyleGAN2Loss(device, G, D, r1_gamma=kw.loss_kwargs.r1_gamma)
    atopk = ATopk(mode='adaptive', batch_size=args.batch, seed=0)
    atopk.tracker.p = 0.7  # k walks below B, so selection is really exercised
    real = torch.rand(args.batch, 3, args.res, args.res, device=device) * 2 - 1
    c = torch.zeros(args.batch, 0, device=device)

    def gmain(with_atopk: bool) -> None:
        loss.generator_loss_reducer = atopk if with_atopk else None
        G.requires_grad_(True)
        G.zero_grad(set_to_none=True)
        loss.accumulate_gradients('Gmain', real, c, torch.randn(args.batch, G.z_dim, device=device), c, gain=1)
        G.requires_grad_(False)
        if with_atopk:
            atopk.end_iteration(batch_idx=1, cur_nimg=args.batch, dataset_size=100)

    def dmain() -> None:
        D.requires_grad_(True)
        D.zero_grad(set_to_none=True)
        loss.accumulate_gradients('Dmain', real, c, torch.randn(args.batch, G.z_dim, device=device), c, gain=1)
        D.requires_grad_(False)

    # (1) isolated cost of ATop-k's own operations.
    logits = torch.randn(args.batch, 1, device=device)
    per_sample = torch.randn(args.batch, device=device, requires_grad=True)

    def atopk_ops() -> None:
        atopk.accumulate(logits)
        atopk.reduce_generator_loss(per_sample, logits).backward()
        atopk.end_iteration(batch_idx=4, cur_nimg=4 * args.batch, dataset_size=100)

    n = 2000
    atopk_ops()
    common.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(n):
        atopk_ops()
    common.synchronize(device)
    isolated = (time.perf_counter() - t0) / n
    baseline_loss_ops = time.perf_counter()
    for _ in range(n):
        per_sample.mean().backward()
    common.synchronize(device)
    baseline_loss_ops = (time.perf_counter() - baseline_loss_ops) / n

    # Full iteration time (Gmain + Dmain) and the A/B on Gmain.
    gmain(False), gmain(True), dmain()
    base_times, atopk_times, iteration_times = [], [], []
    for _ in range(args.repeats):
        for with_atopk, sink in ((False, base_times), (True, atopk_times)):
            common.synchronize(device)
            t0 = time.perf_counter()
            gmain(with_atopk)
            common.synchronize(device)
            sink.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        dmain()
        common.synchronize(device)
        iteration_times.append(time.perf_counter() - t0 + base_times[-1])
    step = statistics.median(iteration_times)
    added = isolated - baseline_loss_ops
    print(f'# ATop-k overhead, cfg={args.cfg} {args.res}px batch {args.batch}: {common.machine_line(device)}')
    common.print_table([
        dict(measure='ATop-k ops per iteration (reduce+backward+tracker+k step)', value=f'{isolated * 1e6:.0f} us'),
        dict(measure='baseline mean()+backward it replaces', value=f'{baseline_loss_ops * 1e6:.0f} us'),
        dict(measure='iteration time (Gmain + Dmain)', value=f'{step * 1e3:.1f} ms'),
        dict(measure='isolated overhead / iteration', value=f'{100 * added / step:.3f} %'),
        dict(measure='A/B Gmain median: baseline', value=f'{statistics.median(base_times) * 1e3:.1f} ms'),
        dict(measure='A/B Gmain median: ATop-k', value=f'{statistics.median(atopk_times) * 1e3:.1f} ms'),
        dict(measure='A/B difference / iteration', value=f'{100 * (statistics.median(atopk_times) - statistics.median(base_times)) / step:+.2f} % (noise-limited)'),
    ], columns=['measure', 'value'])


if __name__ == '__main__':
    main()
