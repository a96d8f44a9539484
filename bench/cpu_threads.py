"""CPU training on a quiet and on a busy machine: OpenMP's wait policy and threads per process.

Usage: ``python bench/cpu_threads.py [--iters 8] [--ticks 2] [--res 32] [--cases all]``

Issue 18 item 1: with another job on the cores, idle OpenMP threads that spin-wait for work
take the CPU from the threads that have work, and a training tick ran 15-30x slower. train.py,
generate.py and calc_metrics.py now set ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep)
unless the user set it, and split the cores between CPU processes
(``torch_utils.misc.configure_cpu_threads``).

Each case runs ``training_loop`` in its own process (the low-shot StyleGAN2 networks on the
built-in dataset, ``--fp32=1``, ADA) with ``OMP_WAIT_POLICY`` set as the case says before torch
is imported — ``default`` leaves it unset (libgomp's own spin-then-sleep, what train.py did
before); ``spin10k`` keeps libgomp's policy with a short spin (``GOMP_SPINCOUNT=10000``) — and reports the median ``Timing/sec_per_kimg`` of the steady ticks. ``busy`` cases
run a second job beside it: another process doing float32 matrix products on every core (what
a second training or a test suite does to the machine). ``2procs`` cases run two trainings at
once, as ``--gpus=2`` on a CPU does, with all cores each (before) or half each (after).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CORES = os.cpu_count() or 1

# name: (OpenMP environment of the training processes ({} = unset), threads per training process,
#        a background job, trainings at once)
PASSIVE = {'OMP_WAIT_POLICY': 'PASSIVE'}
SHORT_SPIN = {'GOMP_SPINCOUNT': '10000'}
CASES = {
    'quiet_default': ({}, CORES, False, 1),
    'quiet_active': ({'OMP_WAIT_POLICY': 'ACTIVE'}, CORES, False, 1),
    'quiet_passive': (PASSIVE, CORES, False, 1),
    'quiet_spin10k': (SHORT_SPIN, CORES, False, 1),
    'busy_default': ({}, CORES, True, 1),
    'busy_active': ({'OMP_WAIT_POLICY': 'ACTIVE'}, CORES, True, 1),
    'busy_passive': (PASSIVE, CORES, True, 1),
    'busy_spin10k': (SHORT_SPIN, CORES, True, 1),
    '2procs_default_all_cores': ({}, CORES, False, 2),
    '2procs_passive_split': (PASSIVE, max(CORES // 2, 1), False, 2),
}
OPENMP_VARIABLES = ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')


def _train(queue: Any, threads: int, res: int, iters: int, ticks: int) -> None:
    import torch
    torch.set_num_threads(threads)
    steady, _ = common.timed_training(dict(data=f'builtin:{res}', cfg='low_shot', fp32=True, aug='ada', map=2,
                                           cbase=4096, cmax=128, workers=0), 8, iters, ticks, 'cpu')
    queue.put(common.median_sec_per_kimg(steady))


def _busy(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    a = torch.randn(512, 512)
    while True:
        a = torch.tanh(a @ a) * 0.5


def _set_openmp_environment(env: dict[str, str]) -> None:
    for name in OPENMP_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(env)


def run_case(name: str, res: int, iters: int, ticks: int) -> dict[str, Any]:
    env, threads, busy, procs = CASES[name]
    ctx = mp.get_context('spawn')
    saved = {name: os.environ[name] for name in OPENMP_VARIABLES if name in os.environ}
    background = None
    try:
        if busy:  # the other job keeps libgomp's defaults, as a user's other job would
            _set_openmp_environment({})
            background = ctx.Process(target=_busy, args=(CORES,), daemon=True)
            background.start()
        _set_openmp_environment(env)  # read by libgomp when the spawned process imports torch
        queue = ctx.Queue()
        workers = [ctx.Process(target=_train, args=(queue, threads, res, iters, ticks)) for _ in range(procs)]
        for w in workers:
            w.start()
        results = [queue.get(timeout=3600) for _ in workers]
        for w in workers:
            w.join()
    finally:
        if background is not None:
            background.terminate()
            background.join()
        _set_openmp_environment(saved)
    return dict(case=name, openmp=' '.join(f'{k}={v}' for k, v in env.items()) or '(libgomp defaults)',
                threads_per_process=threads, trainings=procs, background_job='yes' if busy else 'no',
                sec_per_kimg=f'{max(results):.1f}')


def main() -> None:
    args, names = common.training_bench_args(__doc__, CASES, res=(int, 32, 'resolution of the built-in dataset'))
    print(f'# CPU training, quiet vs busy machine: {CORES} cores; low_shot StyleGAN2 cbase 4096 cmax 128 at '
          f'{args.res} px, batch 8, fp32, ADA; sec/kimg = the slowest of the trainings running at once')
    rows = []
    for name in names:
        rows.append(run_case(name, args.res, args.iters, args.ticks))
        common.print_table(rows[-1:])
    print()
    common.print_table(rows)


if __name__ == '__main__':
    main()
