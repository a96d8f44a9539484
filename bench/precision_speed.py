"""--precision: sec/kimg and peak memory of float32 against bfloat16 reduced-precision blocks.

Usage: ``python bench/precision_speed.py [--iters 4] [--ticks 2] [--precisions fp32,bf16]
[--cases auto32,auto64,main] [--batch 16] [--cbase N --cmax N] [--workers 0] [--device auto]``

Each (case, precision) is one fresh ``python train.py`` process on the built-in dataset: a first
tick of one iteration (warm-up), then ``--ticks`` ticks of ``--iters`` iterations; its
``stats.jsonl`` gives the median ``Timing/sec_per_kimg`` of the steady ticks (tick ≥ 1, the status
line's figure) and ``Resources/peak_gpu_mem_gb``; the peak resident memory is the process's own
``ru_maxrss`` (``os.wait4``; ``--workers=0`` by default, so data loading is inside that process).
No snapshot before the last, no metrics, a 1×1 grid.

Cases:

* ``auto32`` / ``auto64``: ``--cfg=auto`` at 32 / 64 px, ``--batch`` (default 16, as
  bench/train_speed.py); full width unless ``--cbase`` / ``--cmax`` reduce it (printed with the table);
* ``main``: the README's first command (32 px, ``--cbase=1024 --cmax=64 --batch=8 --glr=0.005
  --dlr=0.005 --mirror=1 --atopk=1 --atopk-kimg=5 --chain=1 --chain-start=0``), its ``--kimg``,
  ``--tick`` and ``--snap`` replaced by the bench's.

``--precision=fp32`` keeps the blocks and their conv_clamp (the reduced-precision blocks in
float32), so the pairs differ in the compute dtype only; both are given explicitly (``auto`` would
pick one of them on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN_JOB = ['--data=builtin:32', '--cbase=1024', '--cmax=64', '--glr=0.005', '--dlr=0.005', '--mirror=1',
            '--atopk=1', '--atopk-kimg=5', '--chain=1', '--chain-start=0']
MAIN_BATCH = 8


def case_flags(name: str, args: argparse.Namespace) -> tuple[list[str], int]:
    """train.py flags of a case (without length, precision and output) and its batch."""
    if name == 'main':
        return list(MAIN_JOB), MAIN_BATCH
    resolution = {'auto32': 32, 'auto64': 64}[name]
    flags = [f'--data=builtin:{resolution}', '--cfg=auto']
    flags += [f'--cbase={args.cbase}'] * (args.cbase is not None) + [f'--cmax={args.cmax}'] * (args.cmax is not None)
    return flags, args.batch


def run_train(flags: list[str], batch: int, precision: str, args: argparse.Namespace) -> dict[str, Any]:
    """One train.py process; its steady-tick sec/kimg, peak RSS and peak GPU memory."""
    with tempfile.TemporaryDirectory() as outdir:
        iters_kimg = args.iters * batch / 1000
        command = [sys.executable, os.path.join(REPO, 'train.py'), f'--outdir={outdir}', *flags, f'--batch={batch}',
                   f'--precision={precision}', f'--kimg={(1 + args.iters * args.ticks) * batch / 1000:g}',
                   f'--tick={iters_kimg:g}', '--snap=1000000', '--grid=1x1', '--metrics=none',
                   f'--workers={args.workers}', f'--device={args.device}']
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = proc.stdout.read() if proc.stdout is not None else ''
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f'train.py failed ({proc.returncode}):\n{output[-3000:]}')
        run_dirs = [os.path.join(outdir, d) for d in os.listdir(outdir)]
        stats = [json.loads(line) for line in open(os.path.join(run_dirs[0], 'stats.jsonl'))]
    steady = [s for s in stats if s['Progress/tick']['mean'] >= 1]
    line = next((ln for ln in output.splitlines() if ln.startswith('precision:')), '')
    return dict(sec_per_kimg=statistics.median(s['Timing/sec_per_kimg']['mean'] for s in steady),
                peak_rss_gb=usage.ru_maxrss / 2**20,  # Linux: KiB
                peak_gpu_gb=max((s.get('Resources/peak_gpu_mem_gb', {}).get('mean', 0.0) for s in steady), default=0.0),
                ticks=len(steady), wall_s=wall, line=line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--iters', type=int, default=4, help='iterations per steady tick')
    parser.add_argument('--ticks', type=int, default=2, help='steady ticks per run')
    parser.add_argument('--precisions', default='fp32,bf16', help='comma list of --precision values')
    parser.add_argument('--cases', default='auto32,auto64,main', help='comma list of auto32, auto64, main')
    parser.add_argument('--batch', type=int, default=16, help='batch of the auto cases (main: the README\'s 8)')
    parser.add_argument('--cbase', type=int, default=None, help='reduce the auto cases\' width (default: --cfg=auto\'s)')
    parser.add_argument('--cmax', type=int, default=None, help='reduce the auto cases\' width (default: 512)')
    parser.add_argument('--workers', type=int, default=0, help='train.py --workers (0: loading in the measured process)')
    parser.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    args = parser.parse_args()
    device = common.pick_device(args.device)
    width = 'full width' if args.cbase is None and args.cmax is None else f'--cbase={args.cbase} --cmax={args.cmax}'
    print(f'# precision speed ({args.ticks} ticks of {args.iters} iterations after 1 warm-up; auto cases: batch '
          f'{args.batch}, {width}): {common.machine_line(device)}')
    rows = []
    for name in args.cases.split(','):
        flags, batch = case_flags(name, args)
        reference = None
        for precision in args.precisions.split(','):
            result = run_train(flags, batch, precision, args)
            reference = result['sec_per_kimg'] if reference is None else reference
            rows.append(dict(case=name, precision=precision, batch=batch, ticks=result['ticks'],
                             sec_per_kimg=f'{result["sec_per_kimg"]:.1f}',
                             sec_per_iter=f'{result["sec_per_kimg"] * batch / 1000:.2f}',
                             vs_first=f'{result["sec_per_kimg"] / reference:.2f}x',
                             peak_rss_GB=f'{result["peak_rss_gb"]:.2f}', peak_gpu_GB=f'{result["peak_gpu_gb"]:.2f}',
                             wall_s=f'{result["wall_s"]:.0f}'))
            common.print_table(rows[-1:])
            print(f'  {result["line"]}')
    print()
    common.print_table(rows)


if __name__ == '__main__':
    main()
