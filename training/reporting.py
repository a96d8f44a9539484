"""What a run writes per tick: the status line, ``stats.jsonl`` (+ TensorBoard), the metrics.

Upstream's formats (docs/stylegan2-ada.md §5): the status line ``tick … kimg … sec/kimg …``
followed by the controllers' fields (augment p, ATop-k k/p, CHAIN p), every field also
reported as a statistic; ``stats.jsonl`` holds ``{name: {num, mean, std}, …, timestamp}`` per
tick; each network snapshot is evaluated on the requested metrics (``metric-<name>.jsonl``,
``best.json``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import psutil
import torch

import dnnlib
from dnnlib import util
from torch_utils import training_stats


def status_fields(state: dnnlib.EasyDict, start_time: float, tick_start_time: float, tick_end_time: float,
                  maintenance_time: float, dev: torch.device, controller_fields: list[str]) -> list[str]:
    """Upstream's status-line fields (then the controllers'), each reported as a statistic too."""
    tick_kimg = (state.cur_nimg - state.tick_start_nimg) / 1000
    sec_per_tick = tick_end_time - tick_start_time
    sec_per_kimg = sec_per_tick / max(tick_kimg, 1e-8)
    total_sec = tick_end_time - start_time
    cpu_mem = psutil.Process(os.getpid()).memory_info().rss / 2**30
    gpu_mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == 'cuda' else 0.0
    report0 = training_stats.report0
    fields = [
        f"tick {report0('Progress/tick', state.cur_tick):<5d}",
        f"kimg {report0('Progress/kimg', state.cur_nimg / 1e3):<8.1f}",
        f"time {util.format_time(report0('Timing/total_sec', total_sec)):<12s}",
        f"sec/tick {report0('Timing/sec_per_tick', sec_per_tick):<7.1f}",
        f"sec/kimg {report0('Timing/sec_per_kimg', sec_per_kimg):<7.2f}",
        f"maintenance {report0('Timing/maintenance_sec', maintenance_time):<6.1f}",
        f"cpumem {report0('Resources/cpu_mem_gb', cpu_mem):<6.2f}",
        f"gpumem {report0('Resources/peak_gpu_mem_gb', gpu_mem):<6.2f}",
    ]
    report0('Timing/total_hours', total_sec / 3600)
    report0('Timing/total_days', total_sec / 86400)
    return fields + controller_fields


def progress_fields(state: dnnlib.EasyDict, kimg_per_tick: float, total_kimg: float, tick_start_time: float,
                    now: float) -> list[str]:
    """A progress line inside a long tick: where the tick stands and when it and the run end
    (estimated from this tick's speed so far). Printed only, never reported as statistics."""
    done_kimg = (state.cur_nimg - state.tick_start_nimg) / 1000
    sec_per_kimg = (now - tick_start_time) / max(done_kimg, 1e-8)
    tick_end_kimg = min(state.tick_start_nimg / 1000 + kimg_per_tick, total_kimg)
    tick_left = max(tick_end_kimg - state.cur_nimg / 1000, 0) * sec_per_kimg
    run_left = max(total_kimg - state.cur_nimg / 1000, 0) * sec_per_kimg
    return [f'  ... tick {state.cur_tick}', f'kimg {state.cur_nimg / 1000:.3f} of {tick_end_kimg:g}',
            f'sec/kimg {sec_per_kimg:.1f}', f'tick ends in {util.format_time(tick_left)}',
            f'run ends in {util.format_time(run_left)}']


class StatsWriter:
    """``stats.jsonl`` lines ({name: {num, mean, std}, ..., timestamp}) and optional TensorBoard."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, 'stats.jsonl')
        self.stats_jsonl = open(self.path, 'at', encoding='utf-8')
        self.tfevents = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency
            self.tfevents = SummaryWriter(run_dir)
        except Exception:  # noqa: BLE001 - tensorboard is optional
            print('Skipping tfevents export: install the "tensorboard" package to enable it.')

    def write(self, stats: dict, cur_nimg: int, metric_results: list[dict]) -> None:
        timestamp = time.time()
        self.stats_jsonl.write(json.dumps(dict(stats, timestamp=timestamp)) + '\n')
        self.stats_jsonl.flush()
        if self.tfevents is not None:
            global_step = int(cur_nimg / 1e3)
            walltime = timestamp
            for name, value in stats.items():
                self.tfevents.add_scalar(name, value['mean'], global_step=global_step, walltime=walltime)
            for result in metric_results:
                for name, value in result['results'].items():
                    self.tfevents.add_scalar(f'Metrics/{name}', value, global_step=global_step, walltime=walltime)
            self.tfevents.flush()

    def close(self) -> None:
        self.stats_jsonl.close()
        if self.tfevents is not None:
            self.tfevents.close()


class MetricRunner:
    """Evaluates the requested metrics on each network snapshot and keeps ``best.json`` current."""

    def __init__(self, metrics: list[str], metric_kwargs: dict, dataset_kwargs: dict, num_gpus: int,
                 rank: int, device: torch.device, run_dir: str, best_model: bool = False):
        self.best_model = best_model
        self.metrics = list(metrics)
        self.metric_kwargs = dict(metric_kwargs)
        self.dataset_kwargs = dataset_kwargs
        self.num_gpus = num_gpus
        self.rank = rank
        self.device = device
        self.run_dir = run_dir
        self._results: list[dict] = []

    def run(self, sampler: Any, snapshot_path: str) -> None:
        """Evaluate every metric on ``sampler`` (the backbone's G_ema sampler, G's default noise)."""
        if not self.metrics:
            return
        from metrics import metric_main
        if self.rank == 0:
            print(f'Evaluating metrics {", ".join(self.metrics)}...')
        for metric in self.metrics:
            result = metric_main.calc_metric(metric=metric, G=sampler, dataset_kwargs=self.dataset_kwargs,
                                             num_gpus=self.num_gpus, rank=self.rank, device=self.device,
                                             **self.metric_kwargs)
            if self.rank == 0:
                metric_main.report_metric(result, run_dir=self.run_dir, snapshot_pkl=snapshot_path)
                previous = metric_main.read_best(self.run_dir)
                best = metric_main.update_best(self.run_dir, result, snapshot_path)
                improved = best.get('timestamp') != previous.get('timestamp')
                if self.best_model and improved and result['metric'] == best.get('metric'):
                    keep_best_model(self.run_dir, best, snapshot_path)
            self._results.append(result)

    def take_results(self) -> list[dict]:
        results, self._results = self._results, []
        return results


BEST_MODEL = 'best_model.pt'
BEST_NIMG = 'best_nimg.txt'


def keep_best_model(run_dir: str, best: dict, snapshot_path: str) -> bool:
    """Point ``best_model.pt`` at ``snapshot_path``, which just set the best primary metric (``best``
    from ``metric_main.update_best``); ``best_nimg.txt`` says which. Projected GAN's convention
    (docs/projected.md §9), with degan's safe snapshot format. A hard link when the file system
    allows (no copy), else a copy; replaced atomically. Returns True when it was updated."""
    if best.get('snapshot') != os.path.relpath(snapshot_path, run_dir):
        return False
    target = os.path.join(run_dir, BEST_MODEL)
    tmp = target + '.tmp'
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        os.link(snapshot_path, tmp)
    except OSError:
        shutil.copyfile(snapshot_path, tmp)
    os.replace(tmp, target)
    util.atomic_write_text(os.path.join(run_dir, BEST_NIMG),
                           f"snapshot: {best['snapshot']} {best['key']}: {best['value']:g}\n")
    return True
