"""Train a GAN (``--backbone``, StyleGAN2 by default) with optional ADA / DiffAugment, ATop-k, CHAIN — StyleGAN2-ADA's CLI.

Examples:

\b
  # Quick CPU run on the built-in generated dataset:
  python train.py --outdir=runs --data=builtin --cfg=low_shot --cbase=2048 --cmax=64 --kimg=2 --fp32=1 --metrics=none
\b
  # The papers' low-shot setting with both methods:
  python train.py --outdir=runs --data=obama.zip --cfg=low_shot --batch=4 --kimg=2000 --mirror=1 \\
      --atopk=1 --chain=1 --metrics=fid5k_full

Boolean flags take values (``--mirror=1``), as upstream. Run ``python train.py --help`` for all flags.
"""

from __future__ import annotations

import os

import dnnlib.util  # imports no torch

dnnlib.util.let_idle_openmp_threads_sleep()  # before torch is imported; a user's setting wins

import json  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from typing import Any, Optional  # noqa: E402

import click  # noqa: E402
import torch  # noqa: E402

import dnnlib  # noqa: E402
from dnnlib.util import UserError  # noqa: E402
from torch_utils import distributed, misc  # noqa: E402
from training import config  # noqa: E402
from training.options import GroupedCommand, click_options  # noqa: E402


def next_run_dir(outdir: str, desc: str) -> str:
    """``<outdir>/<NNNNN>-<desc>`` with NNNNN one past the highest existing id (upstream naming)."""
    prev_ids = []
    if os.path.isdir(outdir):
        for name in os.listdir(outdir):
            m = re.match(r'^\d+', name)
            if m and os.path.isdir(os.path.join(outdir, name)):
                prev_ids.append(int(m.group()))
    cur_id = max(prev_ids, default=-1) + 1
    return os.path.join(outdir, f'{cur_id:05d}-{desc}')


def training_device(device: Optional[str], rank: int) -> torch.device:
    """The rank's device: ``--device``, else its GPU when CUDA is present, else the CPU."""
    if device:
        return torch.device(device, rank) if device == 'cuda' else torch.device(device)
    return torch.device('cuda', rank) if torch.cuda.is_available() else torch.device('cpu')


def subprocess_fn(rank: int, args: dnnlib.EasyDict, temp_dir: Optional[str],
                  launched: Optional[distributed.LaunchedRank] = None) -> None:
    """One training process (rank). Logs to ``log.txt`` (stderr stays stderr); joins the process
    group when N > 1 (already joined when ``torchrun`` started it: ``launched``); CPU processes
    share the cores of their node (``misc.configure_cpu_threads``)."""
    from training import training_loop
    logger = dnnlib.util.Logger(file_name=os.path.join(args.run_dir, 'log.txt'), file_mode='a', should_flush=True)
    try:
        device = training_device(args.device, rank if launched is None else launched.local_rank)
        if device.type == 'cpu':
            misc.configure_cpu_threads(args.num_gpus if launched is None else launched.local_world_size)
        if args.num_gpus > 1 and not distributed.is_initialized():
            init_file = os.path.abspath(os.path.join(temp_dir, '.torch_distributed_init'))
            distributed.init_process_group(rank, args.num_gpus, device, init_method=f'file://{init_file}')
        kwargs = dict(args)
        kwargs['device'] = str(device)
        training_loop.training_loop(rank=rank, **kwargs)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(1) from None
    except Exception:  # a bug or a system error: the traceback goes to stderr and log.txt
        traceback.print_exc()
        raise SystemExit(1) from None
    finally:
        logger.close()
        if args.num_gpus > 1:
            distributed.destroy_process_group()


def spawn_processes(args: dnnlib.EasyDict, temp_dir: str) -> None:
    """``torch.multiprocessing.spawn`` of N ranks. Ctrl-C reaches every rank through the terminal's
    process group; a SIGTERM sent to this parent (a scheduler) is passed on to every rank, which
    then writes its final snapshot and exits as for Ctrl-C."""
    context = torch.multiprocessing.spawn(fn=subprocess_fn, args=(args, temp_dir), nprocs=args.num_gpus, join=False)

    def forward(signum: int, _frame: Any) -> None:
        for process in context.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}  # the ranks handle Ctrl-C
    try:
        while not context.join():
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def prepare_run(desc: str, args: dnnlib.EasyDict, outdir: str, dry_run: bool) -> Optional[str]:
    """Print the options, then (unless a dry run, which returns None) create the run directory
    with ``training_options.json``; returns its path."""
    args.run_dir = next_run_dir(outdir, desc)
    print()
    print('Training options:')
    print(json.dumps(args, indent=2))
    print()
    print(f'Output directory:   {args.run_dir}')
    print(f'Training data:      {args.training_set_kwargs.path}')
    print(f'Training duration:  {args.total_kimg} kimg')
    device = training_device(args.device, 0)
    if device.type == 'cuda':
        print(f'Number of GPUs:     {args.num_gpus}')
    else:
        n = misc.cpu_threads_per_process(args.num_gpus)
        threads = 'threads from OMP_NUM_THREADS' if os.environ.get('OMP_NUM_THREADS') else \
            f'{n} thread{"s" if n > 1 else ""}{" each" if args.num_gpus > 1 else ""}'
        procs = f'{args.num_gpus} CPU process{"es" if args.num_gpus > 1 else ""}'
        print(f'Number of GPUs:     none: {procs}, {threads}')
    print(f'Number of images:   {args.training_set_kwargs.max_size}')
    print(f'Image resolution:   {args.training_set_kwargs.resolution}')
    print(f'Conditional model:  {args.training_set_kwargs.use_labels}')
    print(f'Dataset x-flips:    {args.training_set_kwargs.xflip}')
    print()
    if dry_run:
        print('Dry run; exiting.')
        return None
    os.makedirs(args.run_dir)
    dnnlib.util.atomic_write_json(os.path.join(args.run_dir, 'training_options.json'), dnnlib.util.to_jsonable(args))
    return args.run_dir


def launch_training(desc: str, args: dnnlib.EasyDict, outdir: str, dry_run: bool) -> Optional[str]:
    """Prepare the run, then train in this process (1) or in N spawned processes."""
    if prepare_run(desc, args, outdir, dry_run) is None:
        return None
    print('Launching processes...')
    torch.multiprocessing.set_start_method('spawn', force=True)
    with tempfile.TemporaryDirectory() as temp_dir:
        if args.num_gpus == 1:
            subprocess_fn(rank=0, args=args, temp_dir=temp_dir)
        else:
            spawn_processes(args, temp_dir)
    return args.run_dir


def run_launched_rank(desc: str, args: dnnlib.EasyDict, outdir: str, dry_run: bool,
                      launched: distributed.LaunchedRank) -> Optional[str]:
    """One rank started by ``torchrun`` (any number of nodes): join the group through ``env://``,
    let rank 0 alone prepare the run directory and tell the others, then train as that rank."""
    device = training_device(args.device, launched.local_rank)
    distributed.init_process_group(launched.rank, launched.world_size, device, init_method='env://')
    outcome: tuple[str, Optional[str]] = ('ok', None)
    if launched.rank == 0:
        try:
            outcome = ('ok', prepare_run(desc, args, outdir, dry_run))
        except UserError as e:
            outcome = ('error', str(e))
    status, value = distributed.broadcast_object(outcome, what='the run directory')
    if status == 'error' or value is None:
        distributed.destroy_process_group()  # one process: no group was made, nothing to do
        if status == 'error':
            raise UserError(value if launched.rank == 0 else f'rank 0 stopped: {value}')
        return None
    args.run_dir = value
    subprocess_fn(launched.rank, args, temp_dir=None, launched=launched)
    return args.run_dir


@click.command(cls=GroupedCommand, context_settings=dict(max_content_width=110))
@click_options(config.option_groups())
@click.pass_context
def main(ctx: click.Context, **flags: Any) -> None:
    """Train a GAN using the techniques described in StyleGAN2-ADA, ATop-k and CHAIN.

    Flags come in groups: the common ones, one group per --backbone (only the selected
    backbone's may be given) and one per method.
    """
    given = {name for name in flags if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
    launched = distributed.launched_rank()
    if launched is not None:
        flags['gpus'] = distributed.launched_world_size(flags['gpus'] if 'gpus' in given else None, launched)
        given.add('gpus')
    opts = config.TrainOptions.from_flags(flags, given=given)
    desc, args = config.build_training_args(opts)
    if launched is None:
        launch_training(desc, args, opts.common.outdir, opts.common.dry_run)
    else:
        run_launched_rank(desc, args, opts.common.outdir, opts.common.dry_run, launched)


if __name__ == '__main__':
    dnnlib.util.run_cli(main)
