"""The training loop: phases, G_ema, ticks, status lines, grids, snapshots, metrics, resume.

Structure and bookkeeping follow StyleGAN2-ADA (stylegan2-ada.md §5); the order of one
iteration is methods.md §9.7: Gmain → Greg → Dmain → Dreg → G_ema → counters → controllers
(CHAIN p every iteration, ADA / ATop-k p every 4, ATop-k k). Differences from upstream, all
deliberate: snapshots are safe ``.pt`` files holding the *whole* training state, so
``--resume`` continues exactly; gradients are averaged across ranks with one all-reduce per
phase (no DDP wrapper, so double backward needs no special care); a NaN/inf loss stops the run
with a message naming the phase and the last good snapshot; Ctrl-C finishes the current
iteration and writes a final snapshot.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from typing import Any, Callable, Optional

import numpy as np
import PIL.Image
import psutil
import torch

import dnnlib
from dnnlib import util
from torch_utils import distributed, misc, persistence, training_stats
from training import controllers as controllers_lib
from training import snapshot_io

# ---------------------------------------------------------------------------------------------
# Image grids.


def default_grid_size(resolution: int, device: torch.device) -> tuple[int, int]:
    """Upstream's grid (≈ a 7680×4320 canvas, 7–32 × 4–32 cells) on GPUs; 8×8 on a CPU.

    The 1024-image upstream grid costs minutes per snapshot on a CPU; 64 cells show the same.
    """
    if device.type != 'cuda':
        return 8, 8
    gw = int(np.clip(7680 // resolution, 7, 32))
    gh = int(np.clip(4320 // resolution, 4, 32))
    return gw, gh


def setup_snapshot_image_grid(training_set: Any, grid_size: tuple[int, int], random_seed: int = 0):
    """Pick reals for the grid (grouped by label when conditional). Returns (images, labels)."""
    rnd = np.random.RandomState(random_seed)
    gw, gh = grid_size
    if not training_set.has_labels:
        all_indices = list(range(len(training_set)))
        rnd.shuffle(all_indices)
        grid_indices = [all_indices[i % len(all_indices)] for i in range(gw * gh)]
    else:
        label_groups: dict[tuple, list[int]] = {}
        for idx in range(len(training_set)):
            label = tuple(training_set.get_details(idx).raw_label.flat[::-1])
            label_groups.setdefault(label, []).append(idx)
        label_order = sorted(label_groups.keys())
        for label in label_order:
            rnd.shuffle(label_groups[label])
        grid_indices = []
        for y in range(gh):
            indices = label_groups[label_order[y % len(label_order)]]
            grid_indices += [indices[x % len(indices)] for x in range(gw)]
    images, labels = zip(*[training_set[i] for i in grid_indices])
    return np.stack(images), np.stack(labels)


def save_image_grid(img: np.ndarray, fname: str, drange: tuple[float, float], grid_size: tuple[int, int]) -> None:
    """Tile an [N, C, H, W] batch into one PNG (written atomically)."""
    lo, hi = drange
    img = np.asarray(img, dtype=np.float32)
    img = (img - lo) * (255 / (hi - lo))
    img = np.rint(img).clip(0, 255).astype(np.uint8)
    gw, gh = grid_size
    _N, C, H, W = img.shape
    img = img.reshape(gh, gw, C, H, W).transpose(0, 3, 1, 4, 2).reshape(gh * H, gw * W, C)
    mode = 'L' if C == 1 else 'RGB'
    with util.atomic_path(fname, suffix='.png') as tmp:
        PIL.Image.fromarray(img[:, :, 0] if C == 1 else img, mode).save(tmp, format='PNG')


@torch.no_grad()
def generate_grid_images(G_ema: torch.nn.Module, grid_z: list[torch.Tensor], grid_c: list[torch.Tensor]) -> np.ndarray:
    return torch.cat([G_ema(z=z, c=c, noise_mode='const').cpu() for z, c in zip(grid_z, grid_c)]).numpy()


# ---------------------------------------------------------------------------------------------
# Construction.


def build_phases(G: torch.nn.Module, D: torch.nn.Module, G_opt_kwargs: dict, D_opt_kwargs: dict,
                 G_reg_interval: Optional[int], D_reg_interval: Optional[int]) -> list[dnnlib.EasyDict]:
    """Gmain/Greg/Dmain/Dreg (or Gboth/Dboth) with lazy-regularisation lr and beta rescaling."""
    phases = []
    for name, module, opt_kwargs, reg_interval in [('G', G, G_opt_kwargs, G_reg_interval),
                                                   ('D', D, D_opt_kwargs, D_reg_interval)]:
        opt_kwargs = dnnlib.EasyDict(opt_kwargs)
        opt_kwargs.pop('class_name', None)
        params = [p for p in module.parameters()]
        if reg_interval is None:
            opt = torch.optim.Adam(params, **opt_kwargs)
            phases.append(dnnlib.EasyDict(name=name + 'both', module=module, opt=opt, interval=1))
        else:
            mb_ratio = reg_interval / (reg_interval + 1)
            opt_kwargs.lr = opt_kwargs.lr * mb_ratio
            opt_kwargs.betas = [beta ** mb_ratio for beta in opt_kwargs.betas]
            opt = torch.optim.Adam(params, **opt_kwargs)
            phases.append(dnnlib.EasyDict(name=name + 'main', module=module, opt=opt, interval=1))
            phases.append(dnnlib.EasyDict(name=name + 'reg', module=module, opt=opt, interval=reg_interval))
    return phases


def make_data_iterator(training_set: Any, rank: int, num_gpus: int, seed: int, start_index: int,
                       batch_per_gpu: int, data_loader_kwargs: dict):
    """Endless iterator of (uint8 images, labels) that resumes at ``start_index`` global samples."""
    sampler = misc.InfiniteSampler(dataset=training_set, rank=rank, num_replicas=num_gpus, seed=seed,
                                   start_index=start_index)
    generator = torch.Generator().manual_seed(seed)  # keeps the global RNG untouched by the loader
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


def average_gradients(module: torch.nn.Module, num_gpus: int) -> list[torch.nn.Parameter]:
    """All-reduce-average the gradients of ``module`` over ranks; clean NaN/inf like upstream."""
    params = [p for p in module.parameters() if p.grad is not None]
    if num_gpus > 1 and params:
        flat = torch.cat([p.grad.flatten() for p in params])
        distributed.all_reduce_sum_(flat)
        flat /= num_gpus
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n
    misc.nan_to_num_grads(params)
    return params


@torch.no_grad()
def update_ema(G: torch.nn.Module, G_ema: torch.nn.Module, cur_nimg: int, batch_size: int,
               ema_kimg: float, ema_rampup: Optional[float]) -> None:
    """G_ema ← lerp(G, G_ema, β), β = 0.5^(batch / ema_nimg) with optional ramp-up (§10)."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    ema_beta = 0.5 ** (batch_size / max(ema_nimg, 1e-8))
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.lerp(p_ema, ema_beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def print_network_summaries(G: torch.nn.Module, D: torch.nn.Module, batch_gpu: int, dev: torch.device) -> None:
    """Upstream's module tables, leaving every buffer (w_avg, CHAIN statistics) as it was."""
    saved = [copy.deepcopy(module.state_dict()) for module in (G, D)]
    z = torch.zeros([batch_gpu, G.z_dim], device=dev)
    c = torch.zeros([batch_gpu, G.c_dim], device=dev)
    img = misc.print_module_summary(G, [z, c])
    misc.print_module_summary(D, [img, c])
    for module, state_dict in zip((G, D), saved):
        module.load_state_dict(state_dict)
    training_stats.reset()


class StopRequest:
    """Ctrl-C handling: the first SIGINT asks for a clean stop after the current iteration."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> 'StopRequest':
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not in the main thread
            self._previous = None
        return self

    def _handle(self, _signum: int, _frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print('\nInterrupted: finishing this iteration and writing a final snapshot (Ctrl-C again to abort).', flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def agreed(self, device: torch.device) -> bool:
        """Whether any rank asked to stop (all ranks must stop at the same iteration)."""
        if distributed.get_world_size() == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        distributed.all_reduce_sum_(flag)
        return bool(flag.item() > 0)


# ---------------------------------------------------------------------------------------------
# The loop.


def training_loop(
    run_dir: str = '.',
    training_set_kwargs: dict = {},
    data_loader_kwargs: dict = {},
    G_kwargs: dict = {},
    D_kwargs: dict = {},
    G_opt_kwargs: dict = {},
    D_opt_kwargs: dict = {},
    augment_kwargs: Optional[dict] = None,
    loss_kwargs: dict = {},
    metrics: list[str] = [],
    metric_kwargs: dict = {},
    random_seed: int = 0,
    num_gpus: int = 1,
    rank: int = 0,
    batch_size: int = 4,
    batch_gpu: int = 4,
    ema_kimg: float = 10,
    ema_rampup: Optional[float] = 0.05,
    G_reg_interval: Optional[int] = 4,
    D_reg_interval: Optional[int] = 16,
    augment_p: float = 0,
    ada_target: Optional[float] = None,
    ada_interval: int = 4,
    ada_kimg: float = 500,
    atopk_kwargs: Optional[dict] = None,
    chain_kwargs: Optional[dict] = None,
    total_kimg: float = 25000,
    kimg_per_tick: float = 4,
    image_snapshot_ticks: Optional[int] = 50,
    network_snapshot_ticks: Optional[int] = 50,
    grid_size: Optional[tuple[int, int]] = None,
    resume_pkl: Optional[str] = None,
    cudnn_benchmark: bool = True,
    allow_tf32: bool = False,
    device: Optional[str] = None,
    ops_impl: str = 'auto',
    abort_fn: Optional[Callable[[], bool]] = None,
    progress_fn: Optional[Callable[[int, int], None]] = None,
    **_unused: Any,
) -> dict[str, Any]:
    """Train G and D; returns a summary (cur_nimg, last_snapshot, stop_reason) and the networks."""
    from torch_utils.ops import _impl as ops_impl_lib
    from training import augment as augment_lib

    # -------------------------------------------------------------- initialise
    start_time = time.time()
    dev = torch.device(device) if device else (torch.device('cuda', rank) if torch.cuda.is_available() else torch.device('cpu'))
    if dev.type == 'cuda':
        torch.cuda.set_device(dev)
    np.random.seed(random_seed * num_gpus + rank)
    torch.manual_seed(random_seed * num_gpus + rank)
    import random as _random
    _random.seed(random_seed * num_gpus + rank)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    ops_impl_lib.set_default_impl(ops_impl)
    training_stats.init_multiprocessing(sync_device=dev if dev.type == 'cuda' else None)
    log = print if rank == 0 else (lambda *a, **k: None)

    log('Loading training set...')
    training_set = dnnlib.util.construct_class_by_name(**training_set_kwargs)
    log(f'Num images: {len(training_set)}  Image shape: {training_set.image_shape}  Label shape: {training_set.label_shape}')

    log('Constructing networks...')
    common_kwargs = dict(c_dim=training_set.label_dim, img_resolution=training_set.resolution,
                         img_channels=training_set.num_channels)
    G = dnnlib.util.construct_class_by_name(**G_kwargs, **common_kwargs).train().requires_grad_(False).to(dev)
    D = dnnlib.util.construct_class_by_name(**D_kwargs, **common_kwargs).train().requires_grad_(False).to(dev)
    G_ema = copy.deepcopy(G).eval()

    augment_pipe = None
    if augment_kwargs is not None:
        augment_pipe = dnnlib.util.construct_class_by_name(**augment_kwargs).train().requires_grad_(False).to(dev)
        if hasattr(augment_pipe, 'p'):
            augment_pipe.p.copy_(torch.as_tensor(augment_p))

    loss = dnnlib.util.construct_class_by_name(device=dev, G=G, D=D, augment_pipe=augment_pipe, **loss_kwargs)
    phases = build_phases(G, D, G_opt_kwargs, D_opt_kwargs, G_reg_interval, D_reg_interval)
    ctl = controllers_lib.Controllers.build(
        loss=loss, D=D, augment_pipe=augment_pipe, batch_size=batch_size, random_seed=random_seed,
        ada_target=ada_target, ada_interval=ada_interval, ada_kimg=ada_kimg,
        atopk_kwargs=atopk_kwargs, chain_kwargs=chain_kwargs)

    if rank == 0:
        print_network_summaries(G, D, batch_gpu, dev)

    state = dnnlib.EasyDict(cur_nimg=0, cur_tick=0, batch_idx=0, tick_start_nimg=0)
    resume_rng = None
    last_snapshot: Optional[str] = None
    if resume_pkl is not None:
        log(f'Resuming from "{resume_pkl}"')
        resumed = snapshot_io.restore(resume_pkl, G=G, D=D, G_ema=G_ema, augment_pipe=augment_pipe,
                                      phases=phases, loss=loss, controllers=ctl, rank=rank, num_gpus=num_gpus)
        if resumed is not None:
            resume_rng = resumed.pop('rng')
            state.update(resumed)
            log(f'Continuing exactly at kimg {state.cur_nimg / 1000:.1f}, tick {state.cur_tick}')
        else:
            log('The snapshot holds weights only: training state starts fresh.')
        last_snapshot = resume_pkl
    distributed.broadcast_module_(G)
    distributed.broadcast_module_(D)
    distributed.broadcast_module_(G_ema)


    batch_per_gpu = batch_size // num_gpus
    data_iter = make_data_iterator(training_set, rank, num_gpus, random_seed, state.batch_idx * batch_size,
                                   batch_per_gpu, data_loader_kwargs)

    grid_size = tuple(grid_size) if grid_size else default_grid_size(training_set.resolution, dev)
    grid_z = grid_c = None
    if rank == 0:
        log('Exporting sample images...')
        grid_rng = torch.Generator().manual_seed(random_seed)
        images, labels = setup_snapshot_image_grid(training_set, grid_size, random_seed)
        save_image_grid(images, os.path.join(run_dir, 'reals.png'), drange=(0, 255), grid_size=grid_size)
        grid_z = torch.randn([labels.shape[0], G.z_dim], generator=grid_rng).to(dev).split(batch_gpu)
        grid_c = torch.from_numpy(labels).to(dev).split(batch_gpu)
        if state.cur_nimg == 0:
            save_image_grid(generate_grid_images(G_ema, grid_z, grid_c), os.path.join(run_dir, 'fakes_init.png'),
                            drange=(-1, 1), grid_size=grid_size)

    if resume_rng is not None:  # restore RNG last: set-up above drew random numbers
        misc.set_rng_state(resume_rng)

    writer = StatsWriter(run_dir) if rank == 0 else None
    stats_collector = training_stats.Collector(regex='.*')
    metric_runner = MetricRunner(metrics, metric_kwargs, training_set_kwargs, num_gpus, rank, dev, run_dir)

    log(f'Training for {total_kimg} kimg...\n')
    tick_start_time = time.time()
    maintenance_time = tick_start_time - start_time
    phase_times = {phase.name: 0.0 for phase in phases}
    if progress_fn is not None:
        progress_fn(state.cur_nimg // 1000, int(total_kimg))

    stop_reason = 'done'
    with StopRequest() as stop:
        while True:
            # ---------------------------------------------------------- one iteration
            real_img, real_c = next_batch(data_iter)
            real_img = (real_img.to(dev).to(torch.float32) / 127.5 - 1).split(batch_gpu)
            real_c = real_c.to(dev).split(batch_gpu)
            all_gen_z, all_gen_c = draw_generator_inputs(training_set, len(phases), batch_size, batch_gpu, G.z_dim, dev)

            for phase, phase_gen_z, phase_gen_c in zip(phases, all_gen_z, all_gen_c):
                if state.batch_idx % phase.interval != 0:
                    continue
                t0 = time.perf_counter()
                phase.module.requires_grad_(True)
                phase.opt.zero_grad(set_to_none=True)
                try:
                    for r_img, r_c, g_z, g_c in zip(real_img, real_c, phase_gen_z, phase_gen_c):
                        loss.accumulate_gradients(phase=phase.name, real_img=r_img, real_c=r_c, gen_z=g_z,
                                                  gen_c=g_c, gain=phase.interval, cur_nimg=state.cur_nimg)
                except misc.NonFiniteError as e:
                    raise misc.NonFiniteError(
                        f'{e} at kimg {state.cur_nimg / 1000:.3f} (iteration {state.batch_idx}). Training stopped '
                        f'before the optimiser step. Last good snapshot: {last_snapshot or "none yet"}. '
                        f'Try a lower learning rate (--glr/--dlr) or a different --gamma, and --resume from it.') from None
                phase.module.requires_grad_(False)
                average_gradients(phase.module, num_gpus)
                phase.opt.step()
                if dev.type == 'cuda':
                    torch.cuda.synchronize(dev)
                phase_times[phase.name] += time.perf_counter() - t0

            update_ema(G, G_ema, state.cur_nimg, batch_size, ema_kimg, ema_rampup)
            state.cur_nimg += batch_size
            state.batch_idx += 1
            ctl.end_iteration(batch_idx=state.batch_idx, cur_nimg=state.cur_nimg, dataset_size=len(training_set))

            # ---------------------------------------------------------- tick?
            done = state.cur_nimg >= total_kimg * 1000
            if stop.agreed(dev):
                done, stop_reason = True, 'interrupted'
            if abort_fn is not None and abort_fn():
                done, stop_reason = True, 'aborted'
            if not done and state.cur_tick != 0 and state.cur_nimg < state.tick_start_nimg + kimg_per_tick * 1000:
                continue

            # ---------------------------------------------------------- tick maintenance
            tick_end_time = time.time()
            for name, seconds in phase_times.items():
                training_stats.report0(f'Timing/{name}', seconds)
                phase_times[name] = 0.0
            fields = status_fields(state, start_time, tick_start_time, tick_end_time, maintenance_time, dev,
                                   augment_pipe, ctl)
            log(' '.join(fields))
            if dev.type == 'cuda':
                torch.cuda.reset_peak_memory_stats(dev)

            if rank == 0 and image_snapshot_ticks is not None and (done or state.cur_tick % image_snapshot_ticks == 0):
                images = generate_grid_images(G_ema, grid_z, grid_c)
                save_image_grid(images, os.path.join(run_dir, f'fakes{state.cur_nimg // 1000:06d}.png'),
                                drange=(-1, 1), grid_size=grid_size)

            snapshot_path = None
            if network_snapshot_ticks is not None and (done or state.cur_tick % network_snapshot_ticks == 0):
                snapshot_path = os.path.join(run_dir, f'network-snapshot-{state.cur_nimg // 1000:06d}.pt')
                snapshot_io.save(snapshot_path, training_set_kwargs=training_set_kwargs, G=G, D=D, G_ema=G_ema,
                                 augment_pipe=augment_pipe, phases=phases, loss=loss, controllers=ctl,
                                 state=state, rank=rank, num_gpus=num_gpus)
                last_snapshot = snapshot_path
                metric_runner.run(G_ema, snapshot_path)

            stats_collector.update()
            stats = stats_collector.as_dict()
            ctl.add_derived_stats(stats)
            if writer is not None:
                writer.write(stats, state.cur_nimg, metric_runner.take_results())
                ctl.flush_trace(run_dir)
            else:
                ctl.flush_trace(None)
            if progress_fn is not None:
                progress_fn(state.cur_nimg // 1000, int(total_kimg))

            state.cur_tick += 1
            state.tick_start_nimg = state.cur_nimg
            tick_start_time = time.time()
            maintenance_time = tick_start_time - tick_end_time
            if done:
                break

    if writer is not None:
        writer.close()
    distributed.barrier()  # every rank leaves together (rank 0 may still be writing files)
    log(f'\nExiting ({stop_reason}). Last snapshot: {last_snapshot}')
    return dict(cur_nimg=state.cur_nimg, last_snapshot=last_snapshot, stop_reason=stop_reason, G=G, D=D, G_ema=G_ema)


def status_fields(state: dnnlib.EasyDict, start_time: float, tick_start_time: float, tick_end_time: float,
                  maintenance_time: float, dev: torch.device, augment_pipe: Optional[torch.nn.Module],
                  ctl: 'controllers_lib.Controllers') -> list[str]:
    """Upstream's status-line fields (+ ATop-k k/p and CHAIN p when enabled), reported as stats too."""
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
    if augment_pipe is not None and hasattr(augment_pipe, 'p'):
        fields.append(f"augment {report0('Progress/augment', float(augment_pipe.p.cpu())):.3f}")
    fields += ctl.status_fields()
    return fields


class StatsWriter:
    """``stats.jsonl`` lines ({name: {num, mean, std}, ..., timestamp}) and optional TensorBoard."""

    def __init__(self, run_dir: str):
        self.stats_jsonl = open(os.path.join(run_dir, 'stats.jsonl'), 'at', encoding='utf-8')
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
                 rank: int, device: torch.device, run_dir: str):
        self.metrics = list(metrics)
        self.metric_kwargs = dict(metric_kwargs)
        self.dataset_kwargs = dataset_kwargs
        self.num_gpus = num_gpus
        self.rank = rank
        self.device = device
        self.run_dir = run_dir
        self._results: list[dict] = []

    def run(self, G_ema: torch.nn.Module, snapshot_path: str) -> None:
        if not self.metrics:
            return
        from metrics import metric_main
        if self.rank == 0:
            print(f'Evaluating metrics {", ".join(self.metrics)}...')
        for metric in self.metrics:
            result = metric_main.calc_metric(metric=metric, G=G_ema, dataset_kwargs=self.dataset_kwargs,
                                             num_gpus=self.num_gpus, rank=self.rank, device=self.device,
                                             **self.metric_kwargs)
            if self.rank == 0:
                metric_main.report_metric(result, run_dir=self.run_dir, snapshot_pkl=snapshot_path)
                metric_main.update_best(self.run_dir, result, snapshot_path)
            self._results.append(result)

    def take_results(self) -> list[dict]:
        results, self._results = self._results, []
        return results
