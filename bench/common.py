"""Shared helpers for the bench/ scripts: timing, peak memory, tables, networks of a config."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dnnlib  # noqa: E402


def pick_device(name: str = 'auto') -> torch.device:
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_it(fn: Callable[[], Any], device: torch.device, warmup: int = 2, repeats: int = 5) -> tuple[float, float]:
    """Median and min wall time of ``fn`` in seconds (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak_gpu(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)


def peak_gpu_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else 0.0


def print_table(rows: list[dict[str, Any]], columns: Optional[list[str]] = None) -> None:
    """Plain-text table, one row per dict."""
    if not rows:
        return
    columns = columns or list(rows[0])
    cells = [[str(row.get(c, '')) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print('  '.join(c.ljust(w) for c, w in zip(columns, widths)))
    print('  '.join('-' * w for w in widths))
    for r in cells:
        print('  '.join(v.ljust(w) for v, w in zip(r, widths)))
    sys.stdout.flush()


def training_bench_args(doc: str, cases: dict, **extra: tuple[type, Any, str]) -> tuple[Any, list[str]]:
    """Parsed ``--iters --ticks --device --cases`` (+ ``extra`` name: (type, default, help)) of a
    training-speed script, and the case names to run."""
    import argparse
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, (kind, default, help_text) in extra.items():
        parser.add_argument(f'--{name}', type=kind, default=default, help=help_text)
    parser.add_argument('--iters', type=int, default=8, help='iterations per steady tick')
    parser.add_argument('--ticks', type=int, default=2, help='steady ticks per case')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--cases', default='all', help=f'comma list of {", ".join(cases)}')
    args = parser.parse_args()
    return args, list(cases) if args.cases == 'all' else args.cases.split(',')


def run_cases(target: Callable[..., None], names: list[str], *args: Any) -> list[dict[str, Any]]:
    """``target(queue, name, *args)`` for each case in its own spawned process (fresh memory and
    threads), printing each row as it arrives; returns the rows (one dict a case)."""
    import multiprocessing as mp
    ctx = mp.get_context('spawn')
    rows: list[dict[str, Any]] = []
    for name in names:
        queue = ctx.Queue()
        proc = ctx.Process(target=target, args=(queue, name, *args))
        proc.start()
        rows.append(_result_of(proc, queue, name))
        proc.join()
        print_table(rows[-1:])
    print()
    return rows


def _result_of(proc: Any, queue: Any, name: str) -> dict[str, Any]:
    """The row a case process puts on ``queue``; an error if the process dies without one."""
    import queue as queue_lib
    while True:
        try:
            return queue.get(timeout=5)
        except queue_lib.Empty:
            if not proc.is_alive():
                raise RuntimeError(f'bench case {name} failed (exit code {proc.exitcode}); see its traceback above')


def machine_line(device: torch.device) -> str:
    cpu = f'{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads'
    if device.type == 'cuda':
        return f'{torch.cuda.get_device_name(device)}; {cpu}'
    return f'CPU; {cpu}'


def network_kwargs(cfg: str, resolution: int, batch: int, fp32: bool = True, **overrides: Any) -> dnnlib.EasyDict:
    """The stylegan2 backbone's G/D/loss kwargs for ``cfg`` at ``resolution`` (no dataset needed).

    ``overrides``: flags of the stylegan2 group (``cbase``, ``cmax``, ``map``, …).
    """
    from backbones.base import ConfigContext
    from backbones.stylegan2 import BACKBONE
    ctx = ConfigContext(options=BACKBONE.options(fp32=fp32, **overrides), cfg=cfg, gpus=1, resolution=resolution,
                        kimg=None, batch=batch, glr=None, dlr=None, chain=None)
    return BACKBONE.configure(ctx).kwargs


def timed_training(flags: dict[str, Any], batch: int, iters: int, ticks: int, device: str
                   ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run ``training_loop`` for 1 warm-up iteration + ``ticks`` ticks of ``iters`` iterations with
    train.py ``flags`` (no snapshots, a 1×1 grid) in a temporary folder.

    Returns (the ``stats.jsonl`` lines of the steady ticks, tick ≥ 1; the loop's result).
    """
    import json
    import tempfile
    from training import config
    from training.training_loop import training_loop
    with tempfile.TemporaryDirectory() as tmp:
        opts = config.TrainOptions.from_flags(dict(
            dict(outdir=tmp, batch=batch, metrics=[], workers=1, snap=10**6, tick=iters * batch / 1000,
                 kimg=(1 + iters * ticks) * batch / 1000, device=device), **flags))
        _desc, args = config.build_training_args(opts)
        args.image_snapshot_ticks = args.network_snapshot_ticks = None
        args.grid_size = [1, 1]
        args.device = None if device == 'auto' else device
        result = training_loop(run_dir=tmp, rank=0, **dnnlib.EasyDict(args))
        stats = [json.loads(line) for line in open(os.path.join(tmp, 'stats.jsonl'))]
    return [s for s in stats if s['Progress/tick']['mean'] >= 1], result


def median_sec_per_kimg(steady: list[dict[str, Any]]) -> float:
    """The median ``Timing/sec_per_kimg`` (the status line's figure) of the steady ticks."""
    return statistics.median(s['Timing/sec_per_kimg']['mean'] for s in steady)
