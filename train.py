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

import json
import os
import re
import sys
import tempfile
from typing import Any, Optional

import click
import torch

import dnnlib
from dnnlib.util import UserError
from training import config
from training.options import GroupedCommand, click_options


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


def subprocess_fn(rank: int, args: dnnlib.EasyDict, temp_dir: str) -> None:
    """One training process (rank). Logs to ``log.txt``; joins the process group when N > 1."""
    from torch_utils import distributed
    from training import training_loop
    logger = dnnlib.util.Logger(file_name=os.path.join(args.run_dir, 'log.txt'), file_mode='a', should_flush=True)
    try:
        if args.device:
            device = torch.device(args.device, rank) if args.device == 'cuda' else torch.device(args.device)
        else:
            device = torch.device('cuda', rank) if torch.cuda.is_available() else torch.device('cpu')
        if args.num_gpus > 1:
            init_file = os.path.abspath(os.path.join(temp_dir, '.torch_distributed_init'))
            distributed.init_process_group(rank, args.num_gpus, device, init_method=f'file://{init_file}')
        kwargs = dict(args)
        kwargs['device'] = str(device)
        training_loop.training_loop(rank=rank, **kwargs)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        logger.close()
        if args.num_gpus > 1 and distributed.is_initialized():
            distributed.barrier()
            torch.distributed.destroy_process_group()


def launch_training(desc: str, args: dnnlib.EasyDict, outdir: str, dry_run: bool) -> Optional[str]:
    args.run_dir = next_run_dir(outdir, desc)
    print()
    print('Training options:')
    print(json.dumps(args, indent=2))
    print()
    print(f'Output directory:   {args.run_dir}')
    print(f'Training data:      {args.training_set_kwargs.path}')
    print(f'Training duration:  {args.total_kimg} kimg')
    print(f'Number of GPUs:     {args.num_gpus}')
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
    print('Launching processes...')
    torch.multiprocessing.set_start_method('spawn', force=True)
    with tempfile.TemporaryDirectory() as temp_dir:
        if args.num_gpus == 1:
            subprocess_fn(rank=0, args=args, temp_dir=temp_dir)
        else:
            torch.multiprocessing.spawn(fn=subprocess_fn, args=(args, temp_dir), nprocs=args.num_gpus)
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
    opts = config.TrainOptions.from_flags(flags, given=given)
    desc, args = config.build_training_args(opts)
    launch_training(desc, args, opts.common.outdir, opts.common.dry_run)


if __name__ == '__main__':
    dnnlib.util.run_cli(main)
