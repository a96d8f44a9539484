"""FastGAN training speed: sec/kimg of full training iterations at 256 px with reduced widths.

Usage: ``python bench/fastgan_speed.py [--width 16] [--iters 8] [--ticks 2] [--cases all]``

Each case runs ``training_loop`` in its own process on the built-in dataset at 256 px (Dmain +
Gmain, DiffAugment ``color,translation``, G_ema; batch 8, the reference's) with ticks of
``--iters`` iterations and reads ``Timing/sec_per_kimg`` of the steady ticks (tick ≥ 1) from
``stats.jsonl``, the status line's figure. The reconstruction distance is ``--recon-loss=l1``
(LPIPS needs VGG16 weights; compare the reference without LPIPS). Cases:

* ``orig`` — FastGAN's original D; ``big`` — CHAIN's D_big without CHAIN;
* ``big_chain_p0`` — D_big with ``--chain=1`` before p starts moving (p = 0: the 0MR terms only);
* ``big_chain`` — D_big with ``--chain=1 --chain-start=0`` and p set to 0.5 when the D is built
  (this script patches ``ChainContext``; p then moves by ±Δp per iteration): every CHAIN layer
  runs its full ARMS with a mask, the cost of CHAIN once it acts.

The CHAIN overhead is ``big_chain / big − 1``. The table prints one row per case.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

BATCH = 8
CASES = {
    'orig': dict(fastgan_d='orig'),
    'big': dict(fastgan_d='big'),
    'big_chain_p0': dict(fastgan_d='big', chain=True),
    'big_chain': dict(fastgan_d='big', chain=True, chain_start=0),
}
P_INIT = {'big_chain': 0.5}  # CHAIN's p at the start of the run (default 0)


def _start_chain_at(p: float) -> None:
    """Make every ChainContext of this process start at ``p`` (bench only: time CHAIN acting)."""
    from patches import chain
    init = chain.ChainContext.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.set_p(p)
    chain.ChainContext.__init__ = patched


def run_case(queue: Any, name: str, width: int, iters: int, ticks: int, device: str) -> None:
    if name in P_INIT:
        _start_chain_at(P_INIT[name])
    steady, result = common.timed_training(dict(data='builtin:256', backbone='fastgan', ngf=width, ndf=width,
                                                recon_loss='l1', **CASES[name]), BATCH, iters, ticks, device)
    context = getattr(result['D'], 'chain_shared_context', None)
    p_end = float('nan') if context is None else float(context.p)
    sec_per_kimg = common.median_sec_per_kimg(steady)
    queue.put(dict(case=name, width=width, batch=BATCH, ticks=len(steady), iters_per_tick=iters,
                   sec_per_kimg=f'{sec_per_kimg:.1f}', sec_per_iter=f'{sec_per_kimg * BATCH / 1000:.3f}',
                   chain_p_end=f'{p_end:.3f}', peak_rss_GB=f'{common.peak_rss_gb():.2f}'))


def main() -> None:
    args, names = common.training_bench_args(__doc__, CASES, width=(int, 16, '--ngf and --ndf'))
    device = common.pick_device(args.device)
    print(f'# FastGAN training speed, 256 px, recon l1, no metrics: {common.machine_line(device)}')
    rows = common.run_cases(run_case, names, args.width, args.iters, args.ticks, args.device)
    common.print_table(rows)
    by_case = {row['case']: float(row['sec_per_kimg']) for row in rows}
    if 'big' in by_case and 'big_chain' in by_case:
        print(f'# CHAIN overhead (big_chain / big - 1): {100 * (by_case["big_chain"] / by_case["big"] - 1):+.1f} %')
    if 'big' in by_case and 'big_chain_p0' in by_case:
        print(f'# CHAIN overhead at p = 0 (big_chain_p0 / big - 1): '
              f'{100 * (by_case["big_chain_p0"] / by_case["big"] - 1):+.1f} %')


if __name__ == '__main__':
    main()
