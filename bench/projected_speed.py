"""Projected GAN / Diffusion-ProjectedGAN training speed and ATop-k's overhead (ATop-k Table 10).

Usage: ``python bench/projected_speed.py [--ngf 16] [--batch 8] [--iters 4] [--ticks 2] [--res 64,256]
[--cases all]``

Each case runs ``training_loop`` in its own process on the built-in dataset (Gmain + Dmain,
DiffAugment ``color,translation,cutout`` 0.2, G_ema) with the *faithful* D input rule (64-px data
is resized to 224 for EfficientNet-Lite0; 256 px is used as it is) and the package's Lite0
weights; the G width is reduced (``--pg-ngf``), the D is the reference's (its widths are fixed).
It reads ``Timing/sec_per_kimg`` of the steady ticks (tick ≥ 1) from ``stats.jsonl``. Cases:

* ``pg`` — Projected GAN (``--cfg=fastgan``);
* ``diffusion`` — Diffusion-ProjectedGAN (``--diffusion=1``; p starts at 0, so the noise is off
  until p moves: the feature diffusion's cost is its draws and one multiply-add per feature);
* ``diffusion_atopk`` — the same with ``--atopk=1``.

ATop-k's overhead is reported twice: as ``diffusion_atopk / diffusion − 1`` of whole runs (noisy:
two processes on a shared machine), and as the time measured *inside* ATop-k's two hooks (the
top-k reduction of the G loss and the k/p update) over the run's total — the figure to compare
with the paper's +0.3 % (Table 10).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CASES = {
    'pg': dict(),
    'diffusion': dict(diffusion=True),
    'diffusion_atopk': dict(diffusion=True, atopk=True),
}


def _time_atopk_hooks(box: dict) -> None:
    """Accumulate the seconds spent in ATop-k's G-loss reduction and its end-of-iteration update."""
    from patches import atopk
    box['sec'] = 0.0
    for name in ('reduce_generator_loss', 'end_iteration'):
        original = getattr(atopk.ATopk, name)

        def timed(self, *args, _original=original, **kwargs):
            start = time.perf_counter()
            try:
                return _original(self, *args, **kwargs)
            finally:
                box['sec'] += time.perf_counter() - start
        setattr(atopk.ATopk, name, timed)


def run_case(queue: Any, name: str, res: int, ngf: int, batch: int, iters: int, ticks: int, device: str) -> None:
    hook = {'sec': 0.0}
    if CASES[name].get('atopk'):
        _time_atopk_hooks(hook)
    start = time.perf_counter()
    steady, _ = common.timed_training(dict(data=f'builtin:{res}', backbone='projected', pg_ngf=ngf, **CASES[name]),
                                      batch, iters, ticks, device)
    total = time.perf_counter() - start
    sec_per_kimg = common.median_sec_per_kimg(steady)
    queue.put(dict(case=name, res=res, d_input=224 if res < 224 else res, ngf=ngf, batch=batch, ticks=len(steady),
                   iters_per_tick=iters, sec_per_kimg=f'{sec_per_kimg:.1f}',
                   sec_per_iter=f'{sec_per_kimg * batch / 1000:.3f}',
                   atopk_hooks_pct=f'{100 * hook["sec"] / total:.3f}' if CASES[name].get('atopk') else '',
                   peak_rss_GB=f'{common.peak_rss_gb():.2f}'))


def main() -> None:
    args, names = common.training_bench_args(__doc__, CASES, ngf=(int, 16, '--pg-ngf (G width)'),
                                             batch=(int, 8, 'global batch'), res=(str, '64,256', 'data resolutions'))
    device = common.pick_device(args.device)
    print(f'# Projected GAN training speed, faithful D input rule, no metrics: {common.machine_line(device)}')
    rows = []
    for res in (int(r) for r in args.res.split(',')):
        rows += common.run_cases(run_case, names, res, args.ngf, args.batch, args.iters, args.ticks, args.device)
    common.print_table(rows)
    for res in sorted({row['res'] for row in rows}):
        by_case = {row['case']: row for row in rows if row['res'] == res}
        if 'diffusion' in by_case and 'diffusion_atopk' in by_case:
            whole = float(by_case['diffusion_atopk']['sec_per_kimg']) / float(by_case['diffusion']['sec_per_kimg']) - 1
            print(f'# {res} px: ATop-k overhead, whole runs (diffusion_atopk / diffusion - 1): {100 * whole:+.1f} %; '
                  f'inside its hooks: {by_case["diffusion_atopk"]["atopk_hooks_pct"]} % of the run')


if __name__ == '__main__':
    main()
