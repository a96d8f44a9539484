"""The training loop: one loop for every backbone — phases, G_ema, ticks, snapshots, resume.

The loop names no architecture: everything backbone-specific (networks, loss, phases and
optimisers, EMA rule, sampling, extra modules and states) comes from the ``--backbone``'s
:class:`backbones.base.TrainingSetup`; the paper methods act through the loss base class and
the controller list (:mod:`training.controllers`). The order of one iteration — pre-iteration
hooks, inputs, phases (then, once, the fail-loud checks), EMA, counters, controllers — is
written down in one place, docs/training.md §3, and :meth:`_Run.iteration` follows it.

Bookkeeping follows StyleGAN2-ADA (docs/stylegan2-ada.md §5). Differences from upstream, all
deliberate: snapshots are safe ``.pt`` files holding the *whole* training state (named modules
and named states), so ``--resume`` continues exactly; gradients are averaged across ranks with
one all-reduce per phase (no DDP wrapper, so double backward needs no special care); a NaN/inf
loss stops the run with a message naming the phase and the last good snapshot; Ctrl-C
finishes the current iteration and writes a final snapshot.
"""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any, Callable, Optional

import numpy as np
import torch

import backbones
import dnnlib
from backbones.base import BuildContext, TrainingSetup
from dnnlib import util
from torch_utils import distributed, misc, training_stats
from torch_utils import precision as precision_lib
from torch_utils.ops import _impl as ops_impl_lib
from training import controllers as controllers_lib
from training import image_grid, reporting, snapshot_io
from training.phases import Phase, average_gradients

#: Within a tick, a progress line at most this often (seconds).
PROGRESS_SECONDS = 60.0


def make_data_iterator(training_set: Any, rank: int, num_gpus: int, seed: int, start_index: int,
                       batch_per_gpu: int, data_loader_kwargs: dict):
    """Endless iterator of (uint8 images, labels) that resumes at ``start_index`` global samples."""
    sampler = misc.InfiniteSampler(dataset=training_set, rank=rank, num_replicas=num_gpus, seed=seed,
                                   start_index=start_index)
    generator = torch.Generator().manual_seed(seed)  # keeps the global RNG untouched by the loader
    if data_loader_kwargs.get('num_workers', 0) > 0:
        data_loader_kwargs = dict(data_loader_kwargs, worker_init_fn=ignore_stop_signals)
    loader = torch.utils.data.DataLoader(dataset=training_set, sampler=sampler, batch_size=batch_per_gpu,
                                         generator=generator, **data_loader_kwargs)
    return iter(loader)


def next_batch(data_iter: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Next real batch; a bad image found by a loader worker becomes a one-line UserError."""
    try:
        return next(data_iter)
    except util.UserError as e:  # re-raised by the DataLoader with the worker's traceback appended
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise util.UserError(lines[-1].split('UserError: ', 1)[-1] if lines else str(e)) from None


def draw_generator_inputs(training_set: Any, num_phases: int, batch_size: int, batch_gpu: int,
                          z_dim: int, device: torch.device):
    """Latents and labels for every phase of one iteration (upstream's draw order)."""
    all_gen_z = torch.randn([num_phases * batch_size, z_dim], device=device)
    all_gen_z = [phase_z.split(batch_gpu) for phase_z in all_gen_z.split(batch_size)]
    labels = [training_set.get_label(np.random.randint(len(training_set))) for _ in range(num_phases * batch_size)]
    all_gen_c = torch.from_numpy(np.stack(labels)).to(device)
    all_gen_c = [phase_c.split(batch_gpu) for phase_c in all_gen_c.split(batch_size)]
    return all_gen_z, all_gen_c


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C and SIGTERM reach the whole process group, loader
    workers too; only the training process acts on them (a worker that died of SIGINT would make
    the iteration being finished fail instead of ending with a snapshot)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class StopRequest:
    """Ctrl-C and SIGTERM: a clean stop after the current iteration, with a final snapshot.

    The first SIGINT (Ctrl-C) or SIGTERM (what a cluster scheduler sends before it preempts a
    job) asks to stop; every rank stops at the same iteration (:meth:`agreed`), the final
    snapshot is written, the process exits 0. A second Ctrl-C aborts at once; further SIGTERMs
    are ignored, so the snapshot in progress is finished."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: Optional[str] = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> 'StopRequest':
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        again = ' (Ctrl-C again to abort)' if signum == signal.SIGINT else ''
        print(f'\n{self.signal_name}: finishing this iteration and writing a final snapshot{again}.', flush=True)

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def agreed(self, device: torch.device) -> bool:
        """Whether any rank asked to stop (all ranks must stop at the same iteration)."""
        if distributed.get_world_size() == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        distributed.all_reduce_sum_(flag, what='stop request')
        return bool(flag.item() > 0)


# ---------------------------------------------------------------------------------------------
# The loop.


def training_loop(
    run_dir: str = '.',                          # Output directory.
    training_set_kwargs: dict = {},              # Options of the training set (class_name + kwargs).
    data_loader_kwargs: dict = {},               # Options of torch.utils.data.DataLoader.
    backbone: str = backbones.DEFAULT,           # Registry name of the backbone.
    backbone_kwargs: dict = {},                  # The backbone's plain config (its ``configure`` output).
    augment_kwargs: Optional[dict] = None,       # D augmentation pipe (ADA / DiffAugment), None = off.
    augment_p: float = 0,                        # Initial value of the augmentation probability.
    ada_target: Optional[float] = None,          # ADA target value; None = p not adapted.
    ada_interval: int = 4,                       # How often ADA's p is adjusted (iterations).
    ada_kimg: float = 500,                       # ADA's p can go 0 → 1 in this many kimg.
    atopk_kwargs: Optional[dict] = None,         # ATop-k settings (patches/atopk.py), None = off.
    chain_kwargs: Optional[dict] = None,         # CHAIN settings as requested (the backbone placed the layers).
    metrics: list[str] = [],                     # Metrics to evaluate at each network snapshot.
    metric_kwargs: dict = {},                    # Options of metric_main.calc_metric (weights, --ref-data).
    random_seed: int = 0,                        # Global random seed.
    num_gpus: int = 1,                           # Number of processes.
    rank: int = 0,                               # Rank of this process.
    batch_size: int = 4,                         # Global batch (all processes).
    batch_gpu: int = 4,                          # Samples per process per accumulation round.
    total_kimg: float = 25000,                   # Length of the run.
    kimg_per_tick: float = 4,                    # Progress-report interval.
    image_snapshot_ticks: Optional[int] = 50,    # Image-grid interval (ticks), None = off.
    network_snapshot_ticks: Optional[int] = 50,  # Snapshot interval (ticks), None = off.
    grid_size: Optional[tuple[int, int]] = None,  # Image grid (columns, rows); None = default.
    resume_pkl: Optional[str] = None,            # Snapshot to resume from.
    resume_fresh_methods: bool = False,          # Methods the snapshot and the flags disagree on start fresh.
    cudnn_benchmark: bool = True,                # torch.backends.cudnn.benchmark.
    allow_tf32: bool = False,                    # TF32 in matmul and convolutions.
    device: Optional[str] = None,                # 'cpu', 'cuda' (the rank's GPU) or None = auto.
    ops_impl: str = 'auto',                      # Custom ops: 'ref', 'cuda' or 'auto'.
    precision: Optional[dict] = None,            # --precision record (torch_utils/precision.py), None = as set.
    abort_fn: Optional[Callable[[], bool]] = None,            # Called each iteration; True stops.
    progress_fn: Optional[Callable[[int, int], None]] = None,  # Called at each tick with (kimg, total).
) -> dict[str, Any]:
    """Train; returns a summary (cur_nimg, last_snapshot, stop_reason) and the modules (G, D, G_ema, …)."""
    with precision_lib.applied(precision):  # this process' reduced-precision dtype, for the run only
        run = _Run(locals())
        return run.train()


class _Run:
    """One training run: set-up, the iteration of docs/training.md §3, tick maintenance."""

    def __init__(self, options: dict[str, Any]):
        self.o = dnnlib.EasyDict(options)
        self.start_time = time.time()
        self.dev = self._initialise_process()
        self.log = print if self.o.rank == 0 else (lambda *a, **k: None)
        for line in precision_lib.log_lines(self.o.precision):
            self.log(line)

        self.log('Loading training set...')
        self.training_set = dnnlib.util.construct_class_by_name(**self.o.training_set_kwargs)
        self.log(f'Num images: {len(self.training_set)}  Image shape: {self.training_set.image_shape}  '
                 f'Label shape: {self.training_set.label_shape}')

        self.log('Constructing networks...')
        self.backbone = backbones.get(self.o.backbone)
        self.setup: TrainingSetup = self.backbone.build(BuildContext(
            kwargs=self.o.backbone_kwargs, device=self.dev, c_dim=self.training_set.label_dim,
            img_resolution=self.training_set.resolution, img_channels=self.training_set.num_channels,
            batch_size=self.o.batch_size, batch_gpu=self.o.batch_gpu, num_gpus=self.o.num_gpus,
            random_seed=self.o.random_seed, augment_kwargs=self.o.augment_kwargs, augment_p=self.o.augment_p,
            ada_target=self.o.ada_target, ada_interval=self.o.ada_interval))
        self.ctl = controllers_lib.build_controllers(
            loss=self.setup.loss, chain_ctx=self.backbone.chain_context(self.setup),
            augment_pipe=self.setup.augment_pipe, batch_size=self.o.batch_size, ada_target=self.o.ada_target,
            ada_interval=self.o.ada_interval, ada_kimg=self.o.ada_kimg, atopk_kwargs=self.o.atopk_kwargs,
            backbone_controllers=self.setup.controllers, backbone=self.backbone.name,
            chain_enabled=self.o.chain_kwargs is not None, chain_update_after=self.backbone.chain_update_after)
        if self.o.rank == 0:
            self.backbone.print_summaries(self.setup, self.o.batch_gpu, self.dev)

        self.state = dnnlib.EasyDict(cur_nimg=0, cur_tick=0, batch_idx=0, tick_start_nimg=0)
        self.last_snapshot: Optional[str] = None
        self.written_names: set[str] = set()  # file names of this run's snapshots and grids
        resume_rng = self._resume()
        for name, module in self.setup.modules.items():
            if module is not None:
                distributed.broadcast_module_(module, what=f'initial {name}')
        self.data_iter = make_data_iterator(self.training_set, self.o.rank, self.o.num_gpus, self.o.random_seed,
                                            self.state.batch_idx * self.o.batch_size,
                                            self.o.batch_size // self.o.num_gpus, self.o.data_loader_kwargs)
        self._export_initial_grids()
        if resume_rng is not None:  # restore RNG last: set-up above drew random numbers
            misc.set_rng_state(resume_rng)
        self.unverified_optimizers = set(self.setup.optimizers)

    # ------------------------------------------------------------------ set-up

    def _initialise_process(self) -> torch.device:
        o = self.o
        dev = torch.device(o.device) if o.device else (
            torch.device('cuda', o.rank) if torch.cuda.is_available() else torch.device('cpu'))
        if dev.type == 'cuda':
            torch.cuda.set_device(dev)
        seed = o.random_seed * o.num_gpus + o.rank
        np.random.seed(seed)
        torch.manual_seed(seed)
        random.seed(seed)
        torch.backends.cudnn.benchmark = o.cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = o.allow_tf32
        torch.backends.cudnn.allow_tf32 = o.allow_tf32
        ops_impl_lib.set_default_impl(o.ops_impl)
        training_stats.init_multiprocessing(sync_device=dev if dev.type == 'cuda' else None)
        return dev

    def _named_states(self) -> dict[str, Any]:
        states = dict(self.setup.states)
        for name, controller in self.ctl.states().items():
            if name in states:
                raise ValueError(f'state name "{name}" is used by the backbone and by a controller')
            states[name] = controller
        return states

    def _resume(self) -> Optional[dict]:
        if self.o.resume_pkl is None:
            return None
        self.log(f'Resuming from "{self.o.resume_pkl}"')
        if self.o.rank == 0:  # kill -9 during a snapshot write leaves its temporary file behind
            stale = dnnlib.util.remove_stale_temp_files(os.path.dirname(os.path.abspath(self.o.resume_pkl)))
            if stale:
                self.log(f'Removed {len(stale)} temporary file(s) of interrupted writes: '
                         f'{dnnlib.util.format_names(stale, limit=3)}')
        resumed = snapshot_io.restore(
            self.o.resume_pkl, modules=self.setup.modules, optional_modules=self.setup.optional_modules,
            optimizers=self.setup.optimizers, states=self._named_states(), backbone=self.backbone.name,
            rank=self.o.rank, num_gpus=self.o.num_gpus, fresh_methods=self.o.resume_fresh_methods)
        self.last_snapshot = self.o.resume_pkl
        if resumed is None:
            self.log('Transfer: the file holds weights only; kimg, optimisers and controllers start fresh.')
            return None
        rng = resumed.pop('rng')
        self.state.update(resumed)
        other_precision = bool(self.o.precision) and precision_lib.resume_note(
            self.o.precision.get('resumed_from'), self.o.precision) is not None
        how = 'with the differing methods fresh' if self.o.resume_fresh_methods else \
            'with another precision (not bitwise)' if other_precision else 'exactly'
        self.log(f'Continuing {how} at kimg {self.state.cur_nimg / 1000:.1f}, tick {self.state.cur_tick}')
        return rng

    def _export_initial_grids(self) -> None:
        o = self.o
        self.grid_size = tuple(o.grid_size) if o.grid_size else image_grid.default_grid_size(
            self.training_set.resolution, self.dev)
        self.grid_sampler = self.backbone.sampler(self.setup.G_ema, noise_mode='const')
        self.grid_z = self.grid_c = None
        if o.rank != 0:
            return
        self.log('Exporting sample images...')
        grid_rng = torch.Generator().manual_seed(o.random_seed)
        images, labels = image_grid.setup_snapshot_image_grid(self.training_set, self.grid_size, o.random_seed)
        image_grid.save_image_grid(images, os.path.join(o.run_dir, 'reals.png'), drange=(0, 255),
                                   grid_size=self.grid_size)
        self.grid_z = torch.randn([labels.shape[0], self.grid_sampler.z_dim], generator=grid_rng).to(self.dev)
        self.grid_z = self.grid_z.split(o.batch_gpu)
        self.grid_c = torch.from_numpy(labels).to(self.dev).split(o.batch_gpu)
        if self.state.cur_nimg == 0:
            self._save_fakes('fakes_init.png')

    def _save_fakes(self, name: str) -> None:
        images = image_grid.generate_grid_images(self.grid_sampler, self.grid_z, self.grid_c)
        image_grid.save_image_grid(images, os.path.join(self.o.run_dir, name), drange=(-1, 1),
                                   grid_size=self.grid_size)

    # ------------------------------------------------------------------ one iteration (docs/training.md §3)

    def iteration(self) -> None:
        o, state, setup = self.o, self.state, self.setup
        self.ctl.begin_iteration(state.batch_idx, state.cur_nimg, len(self.training_set))
        real_img, real_c = next_batch(self.data_iter)
        real_img = (real_img.to(self.dev).to(torch.float32) / 127.5 - 1).split(o.batch_gpu)
        real_c = real_c.to(self.dev).split(o.batch_gpu)
        all_gen_z, all_gen_c = draw_generator_inputs(self.training_set, len(setup.phases), o.batch_size,
                                                     o.batch_gpu, setup.G.z_dim, self.dev)
        for phase, phase_gen_z, phase_gen_c in zip(setup.phases, all_gen_z, all_gen_c):
            if state.batch_idx % phase.interval == 0:
                self._run_phase(phase, real_img, real_c, phase_gen_z, phase_gen_c)
                self.ctl.after_phase(phase.name, state.batch_idx, state.cur_nimg, len(self.training_set))
        if self.unverified_optimizers:
            self.unverified_optimizers -= {p.opt_name for p in setup.phases if state.batch_idx % p.interval == 0}
            if not self.unverified_optimizers:
                self.ctl.verify_hooks(setup.loss, self.backbone.name)
        setup.ema.update(setup.G, setup.G_ema, cur_nimg=state.cur_nimg, batch_idx=state.batch_idx,
                         batch_size=o.batch_size)
        state.cur_nimg += o.batch_size
        state.batch_idx += 1
        self.ctl.end_iteration(state.batch_idx, state.cur_nimg, len(self.training_set))

    def _run_phase(self, phase: Phase, real_img: list, real_c: list, gen_z: list, gen_c: list) -> None:
        t0 = time.perf_counter()
        phase.module.requires_grad_(True)
        phase.opt.zero_grad(set_to_none=True)
        try:
            for r_img, r_c, g_z, g_c in zip(real_img, real_c, gen_z, gen_c):
                self.setup.loss.accumulate_gradients(phase=phase.name, real_img=r_img, real_c=r_c, gen_z=g_z,
                                                     gen_c=g_c, gain=phase.interval, cur_nimg=self.state.cur_nimg)
        except misc.NonFiniteError as e:
            raise misc.NonFiniteError(
                f'{e} at kimg {self.state.cur_nimg / 1000:.3f} (iteration {self.state.batch_idx}). Training stopped '
                f'before the optimiser step. Last good snapshot: {self.last_snapshot or "none yet"}. '
                f'Try a lower learning rate (--glr/--dlr) or a different --gamma, and --resume from it.') from None
        phase.module.requires_grad_(False)
        average_gradients(phase.module, self.o.num_gpus)
        phase.opt.step()
        if self.dev.type == 'cuda':
            torch.cuda.synchronize(self.dev)
        self.phase_times[phase.name] += time.perf_counter() - t0

    # ------------------------------------------------------------------ the loop and its ticks

    def train(self) -> dict[str, Any]:
        o, state = self.o, self.state
        self.writer = reporting.StatsWriter(o.run_dir) if o.rank == 0 else None
        self.stats_collector = training_stats.Collector(regex='.*')
        self.metric_runner = reporting.MetricRunner(o.metrics, o.metric_kwargs, o.training_set_kwargs, o.num_gpus,
                                                    o.rank, self.dev, o.run_dir,
                                                    best_model=self.backbone.writes_best_model)
        self.log(f'Training for {o.total_kimg} kimg...\n')
        self.tick_start_time = time.time()
        self.maintenance_time = self.tick_start_time - self.start_time
        self.phase_times = {phase.name: 0.0 for phase in self.setup.phases}
        if o.progress_fn is not None:
            o.progress_fn(state.cur_nimg // 1000, int(o.total_kimg))

        stop_reason = 'done'
        if state.cur_nimg >= o.total_kimg * 1000:  # a finished run resumed: not one iteration more
            self.log(f'Nothing to train: the run is at kimg {state.cur_nimg / 1000:g}, --kimg={o.total_kimg:g}.')
        else:
            stop_reason = self._loop()

        if self.writer is not None:
            self.writer.close()
        distributed.barrier('end of training')  # every rank leaves together (rank 0 may still be writing files)
        self.log(f'\nExiting ({stop_reason}). Last snapshot: {self.last_snapshot}')
        modules = {name: m for name, m in self.setup.modules.items() if m is not None}
        return dict(modules, cur_nimg=state.cur_nimg, last_snapshot=self.last_snapshot, stop_reason=stop_reason,
                    modules=modules)

    def _loop(self) -> str:
        """Iterate until --kimg, a stop signal or ``abort_fn``; returns the stop reason."""
        o, state = self.o, self.state
        stop_reason = 'done'
        self.last_progress_time = time.time()
        with StopRequest() as stop:
            while True:
                self.iteration()
                done = state.cur_nimg >= o.total_kimg * 1000
                if stop.agreed(self.dev):
                    done, stop_reason = True, 'terminated' if stop.signal_name == 'SIGTERM' else 'interrupted'
                if o.abort_fn is not None and o.abort_fn():
                    done, stop_reason = True, 'aborted'
                if not done and state.cur_tick != 0 and state.cur_nimg < state.tick_start_nimg + o.kimg_per_tick * 1000:
                    self._report_progress()
                    continue
                self.tick(done, run_metrics=stop_reason in ('done', 'aborted'))
                if done:
                    return stop_reason

    def _report_progress(self) -> None:
        """Within a long tick, a progress line at most every PROGRESS_SECONDS (a slow run is never
        silent for minutes)."""
        now = time.time()
        if self.o.rank != 0 or now - self.last_progress_time < PROGRESS_SECONDS:
            return
        self.last_progress_time = now
        self.log(' '.join(reporting.progress_fields(self.state, self.o.kimg_per_tick, self.o.total_kimg,
                                                    self.tick_start_time, now)))

    def tick(self, done: bool, run_metrics: bool = True) -> None:
        """Tick maintenance: status line, image grid, snapshot + metrics, statistics."""
        o, state = self.o, self.state
        tick_end_time = time.time()
        for name, seconds in self.phase_times.items():
            training_stats.report0(f'Timing/{name}', seconds)
            self.phase_times[name] = 0.0
        fields = reporting.status_fields(state, self.start_time, self.tick_start_time, tick_end_time,
                                         self.maintenance_time, self.dev, self.ctl.status_fields())
        self.log(' '.join(fields))
        if self.dev.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.dev)
        with dnnlib.util.disk_full_is_a_user_error(o.run_dir, self._disk_full_advice):
            self._write_tick_files(done, run_metrics)
        if o.progress_fn is not None:
            o.progress_fn(state.cur_nimg // 1000, int(o.total_kimg))

        state.cur_tick += 1
        state.tick_start_nimg = state.cur_nimg
        self.tick_start_time = time.time()
        self.maintenance_time = self.tick_start_time - tick_end_time

    def _write_tick_files(self, done: bool, run_metrics: bool) -> None:
        """The tick's files: image grid, snapshot + metrics, stats.jsonl, the controllers' traces."""
        o, state = self.o, self.state
        grid_due = o.image_snapshot_ticks is not None and (done or state.cur_tick % o.image_snapshot_ticks == 0)
        if o.rank == 0 and grid_due:
            self._save_fakes(self._unique_name('fakes', '.png'))
        if o.network_snapshot_ticks is not None and (done or state.cur_tick % o.network_snapshot_ticks == 0):
            self._snapshot(run_metrics)

        self.stats_collector.update()
        stats = self.stats_collector.as_dict()
        self.ctl.add_derived_stats(stats)
        if self.writer is not None:
            with dnnlib.util.disk_full_is_a_user_error(self.writer.path, self._disk_full_advice):
                self.writer.write(stats, state.cur_nimg, self.metric_runner.take_results())
        self.ctl.flush(o.run_dir if o.rank == 0 else None)

    def _disk_full_advice(self) -> str:
        """What a full disk during this tick's writes means: the snapshot to go on from (snapshots
        are written atomically, so the previous one is whole)."""
        if self.last_snapshot is None:
            return 'No snapshot of this run had been written yet; free some space and start the run again.'
        return (f'The previous snapshot {self.last_snapshot} is intact; free some space and continue with '
                f'--resume={self.last_snapshot}.')

    def _unique_name(self, stem: str, ext: str) -> str:
        """Upstream's ``<stem><kimg:06d><ext>`` (kimg rounded down); if this run already wrote that
        name (ticks shorter than 1 kimg), ``<stem><kimg:06d>_<images:03d><ext>`` — the exact image
        count (``_`` sorts after ``.``, so names stay in the order of the run), so that no snapshot or
        grid ever replaces another. The same on every rank."""
        nimg = self.state.cur_nimg
        name = f'{stem}{nimg // 1000:06d}{ext}'
        if name in self.written_names:
            name = f'{stem}{nimg // 1000:06d}_{nimg % 1000:03d}{ext}'
        self.written_names.add(name)
        return name

    def _snapshot(self, run_metrics: bool = True) -> None:
        o = self.o
        path = os.path.join(o.run_dir, self._unique_name('network-snapshot-', '.pt'))
        snapshot_io.save(path, backbone=self.backbone.name, training_set_kwargs=o.training_set_kwargs,
                         modules=self.setup.modules, optimizers=self.setup.optimizers, states=self._named_states(),
                         counters=self.state, rank=o.rank, num_gpus=o.num_gpus)
        self.last_snapshot = path
        if run_metrics:
            self.metric_runner.run(self.backbone.sampler(self.setup.G_ema, noise_mode='random'), path)
        elif o.metrics:
            self.log(f'Metrics skipped for this final snapshot (the run was stopped); evaluate it with '
                     f'calc_metrics.py --network={path}')
