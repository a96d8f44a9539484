"""D forward+backward overhead of CHAIN vs no CHAIN (issue target ≤ 10 %).

Usage: ``python bench/chain_overhead.py [--res 64] [--batch 8] [--repeats 7] [--device auto]``

Times D(img) → loss → backward in training mode for a plain D and for the same D with CHAIN
after every conv0/conv1/skip (both variants), with p = 0.5 (masks drawn, ARMS applied) and the
0MR term in the loss. Runs are interleaved; the median of ``--repeats`` is reported.
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
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--cfg', default='low_shot')
    args = parser.parse_args()

    import torch

    import dnnlib

    device = common.pick_device(args.device)
    kw = common.network_kwargs(args.cfg, args.res, args.batch)
    chain_common = dict(resolutions=None, place='C1C2CS', tau=0.5, lambda_=20, p0=0, dp=0.001, start_iter=0)
    nets = {'none': None, 'chain': dict(chain_common, variant='chain'),
            'chain_batch': dict(chain_common, variant='chain_batch')}
    Ds = {}
    for name, chain_kwargs in nets.items():
        torch.manual_seed(0)
        D = dnnlib.util.construct_class_by_name(**kw.D_kwargs, c_dim=0, img_resolution=args.res, img_channels=3,
                                                chain_kwargs=chain_kwargs).train().requires_grad_(True).to(device)
        if chain_kwargs is not None:
            D.chain_ctx.set_p(0.5)
        Ds[name] = D
    img = torch.randn(args.batch, 3, args.res, args.res, device=device)
    c = torch.zeros(args.batch, 0, device=device)

    def step(D: torch.nn.Module) -> None:
        D.zero_grad(set_to_none=True)
        ctx = getattr(D, 'chain_ctx', None)
        if ctx is None:
            torch.nn.functional.softplus(-D(img, c)).mean().backward()
            return
        with ctx.pass_('dreal'):
            logits = D(img, c)
            extra = ctx.zero_mean_loss()
        (torch.nn.functional.softplus(-logits).mean() + extra).backward()

    for D in Ds.values():
        step(D)
    times = {name: [] for name in Ds}
    for _ in range(args.repeats):
        for name, D in Ds.items():
            common.synchronize(device)
            t0 = time.perf_counter()
            step(D)
            common.synchronize(device)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times['none'])
    print(f'# CHAIN overhead, D of cfg={args.cfg} {args.res}px batch {args.batch}, p=0.5: {common.machine_line(device)}')
    common.print_table([dict(D=name, fwd_bwd_ms=f'{statistics.median(t) * 1e3:.1f}',
                             overhead=f'{100 * (statistics.median(t) / base - 1):+.1f} %') for name, t in times.items()])


if __name__ == '__main__':
    main()
