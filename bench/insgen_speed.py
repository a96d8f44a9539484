"""InsGen vs plain StyleGAN2-ADA: sec/kimg at the same small config on this machine (the overhead of InsGen).

Usage: ``python bench/insgen_speed.py [--res 32] [--batch 16] [--iters 4] [--ticks 2] [--cases all]``

Each case runs ``training_loop`` in its own process on the built-in dataset (all phases, lazy
regularisation, ADA, G_ema; fp32, no metrics) with ``--cfg=paper256``'s settings at a CPU-sized
width (``--cbase 4096 --cmax 128``: D's 4×4 features have 128 channels) and reads
``Timing/sec_per_kimg`` of the steady ticks (tick ≥ 1) from ``stats.jsonl``. Cases:

* ``stylegan2_ada`` — ``--backbone=stylegan2``;
* ``insgen`` — ``--backbone=insgen``: D_ema, two heads, the three contrastive terms (each adds
  two D evaluations: D on one ADA view, D_ema on another; the fake term one more G forward);
* ``insgen_atopk`` — the same with ``--atopk=1``.

InsGen's overhead is ``insgen / stylegan2_ada − 1``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CASES = {
    'stylegan2_ada': dict(backbone='stylegan2'),
    'insgen': dict(backbone='insgen'),
    'insgen_atopk': dict(backbone='insgen', atopk=True),
}


def run_case(queue: Any, name: str, res: int, batch: int, iters: int, ticks: int, device: str) -> None:
    steady, _ = common.timed_training(dict(data=f'builtin:{res}', cfg='paper256', cbase=4096, cmax=128, fp32=True,
                                           **CASES[name]), batch, iters, ticks, device)
    sec_per_kimg = common.median_sec_per_kimg(steady)
    queue.put(dict(case=name, res=res, batch=batch, ticks=len(steady), iters_per_tick=iters,
                   sec_per_kimg=f'{sec_per_kimg:.1f}', sec_per_iter=f'{sec_per_kimg * batch / 1000:.3f}',
                   peak_rss_GB=f'{common.peak_rss_gb():.2f}'))


def main() -> None:
    args, names = common.training_bench_args(__doc__, CASES, res=(int, 32, 'data resolution'),
                                             batch=(int, 16, 'global batch'))
    device = common.pick_device(args.device)
    print(f'# InsGen vs StyleGAN2-ADA training speed, paper256 settings, cbase 4096, cmax 128, fp32, no metrics: '
          f'{common.machine_line(device)}')
    rows = common.run_cases(run_case, names, args.res, args.batch, args.iters, args.ticks, args.device)
    common.print_table(rows)
    by_case = {row['case']: float(row['sec_per_kimg']) for row in rows}
    if 'stylegan2_ada' in by_case and 'insgen' in by_case:
        print(f'# InsGen overhead (insgen / stylegan2_ada - 1): {100 * (by_case["insgen"] / by_case["stylegan2_ada"] - 1):+.1f} %')


if __name__ == '__main__':
    main()
