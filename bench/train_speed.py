"""Training speed: sec/kimg and peak memory of full training iterations, as log.txt reports them.

Usage: ``python bench/train_speed.py [--iters 8] [--ticks 2] [--device auto] [--cases all]``

Each case runs ``training_loop`` in its own process on the built-in dataset (all four phases,
lazy regularisation, ADA, G_ema) with ticks of ``--iters`` iterations, and reads
``Timing/sec_per_kimg`` of the steady ticks (tick ≥ 1) from ``stats.jsonl`` — the same figure
as upstream's status line. Flags match the CPU figures measured for the official code on this
machine kind (``--fp32=1 --aug=ada --metrics=none``; docs/stylegan2-ada.md §12): 610 s/kimg at 32 px
``--cfg=auto``, 1249 s/kimg at 64 px ``--cfg=auto`` and 578 s/kimg at 32 px ``--cfg=cifar``,
all batch 16.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

# name: (cfg, resolution, batch, extra train.py options, official s/kimg on this machine kind or None)
CASES = {
    'cifar32_b16': ('cifar', 32, 16, {}, 577.5),
    'auto32_b16': ('auto', 32, 16, {}, 610.3),
    'auto64_b16': ('auto', 64, 16, {}, 1249.4),
    'low_shot64_b8': ('low_shot', 64, 8, {}, None),
    'low_shot64_b8_atopk_chain': ('low_shot', 64, 8, dict(atopk=True, chain=True, chain_start=0), None),
}


def run_case(queue: Any, name: str, iters: int, ticks: int, device: str) -> None:
    cfg, res, batch, extra, _official = CASES[name]
    steady, _ = common.timed_training(dict(data=f'builtin:{res}', cfg=cfg, fp32=True, aug='ada', **extra),
                                      batch, iters, ticks, device)
    sec_per_kimg = common.median_sec_per_kimg(steady)
    queue.put(dict(case=name, batch=batch, ticks=len(steady), iters_per_tick=iters,
                   sec_per_kimg=f'{sec_per_kimg:.1f}', sec_per_iter=f'{sec_per_kimg * batch / 1000:.2f}',
                   official_sec_per_kimg=_official if _official is not None else '-',
                   peak_rss_GB=f'{common.peak_rss_gb():.2f}',
                   peak_gpu_GB=f'{max(s["Resources/peak_gpu_mem_gb"]["mean"] for s in steady):.2f}'))


def main() -> None:
    args, names = common.training_bench_args(__doc__, CASES)
    device = common.pick_device(args.device)
    print(f'# training speed (fp32, ADA, no metrics): {common.machine_line(device)}')
    common.print_table(common.run_cases(run_case, names, args.iters, args.ticks, args.device))


if __name__ == '__main__':
    main()
