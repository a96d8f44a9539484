"""G and D forward+backward time and peak memory at 32 and 64 px (the ``auto`` config networks).

Usage: ``python bench/networks_speed.py [--batch 16] [--device auto] [--repeats 5]``

Each case runs in its own process so that the peak-memory figure belongs to that case alone.
G is timed in training mode (non-fused modulated conv, as in the G phases), D on G's output.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def run_case(queue: 'mp.Queue', cfg: str, resolution: int, batch: int, device_name: str, repeats: int) -> None:
    import torch

    import dnnlib
    device = common.pick_device(device_name)
    args = common.network_kwargs(cfg, resolution, batch)
    G = dnnlib.util.construct_class_by_name(**args.G_kwargs, c_dim=0, img_resolution=resolution,
                                            img_channels=3).train().to(device)
    D = dnnlib.util.construct_class_by_name(**args.D_kwargs, c_dim=0, img_resolution=resolution,
                                            img_channels=3).train().to(device)
    z = torch.randn(batch, G.z_dim, device=device)
    c = torch.zeros(batch, 0, device=device)
    rss_before = common.peak_rss_gb()

    def g_step() -> None:
        G.zero_grad(set_to_none=True)
        G(z, c).square().mean().backward()

    img = G(z, c).detach()

    def d_step() -> None:
        D.zero_grad(set_to_none=True)
        D(img, c).sum().backward()

    common.reset_peak_gpu(device)
    g_med, g_min = common.time_it(g_step, device, warmup=1, repeats=repeats)
    g_gpu = common.peak_gpu_gb(device)
    common.reset_peak_gpu(device)
    d_med, d_min = common.time_it(d_step, device, warmup=1, repeats=repeats)
    d_gpu = common.peak_gpu_gb(device)
    queue.put(dict(cfg=cfg, res=resolution, batch=batch,
                   G_params_M=f'{sum(p.numel() for p in G.parameters()) / 1e6:.1f}',
                   D_params_M=f'{sum(p.numel() for p in D.parameters()) / 1e6:.1f}',
                   G_fwd_bwd_s=f'{g_med:.3f}', D_fwd_bwd_s=f'{d_med:.3f}',
                   peak_rss_GB=f'{common.peak_rss_gb():.2f}', rss_before_GB=f'{rss_before:.2f}',
                   peak_gpu_GB=f'{max(g_gpu, d_gpu):.2f}'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--resolutions', default='32,64')
    parser.add_argument('--cfg', default='auto')
    args = parser.parse_args()
    device = common.pick_device(args.device)
    print(f'# G/D forward+backward, cfg={args.cfg}, fp32, batch {args.batch}: {common.machine_line(device)}')
    rows = []
    ctx = mp.get_context('spawn')
    for res in [int(r) for r in args.resolutions.split(',')]:
        queue = ctx.Queue()
        proc = ctx.Process(target=run_case, args=(queue, args.cfg, res, args.batch, args.device, args.repeats))
        proc.start()
        rows.append(queue.get())
        proc.join()
    common.print_table(rows)


if __name__ == '__main__':
    main()
