"""Train a StyleGAN2 (with optional ADA / DiffAugment, ATop-k, CHAIN) — StyleGAN2-ADA's CLI.

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


@click.command(context_settings=dict(max_content_width=110))
# General options.
@click.option('--outdir', help='Where to save the results', required=True, metavar='DIR')
@click.option('--gpus', help='Number of processes (GPUs; CPU processes with --device=cpu) [default: 1]', type=int, default=1, metavar='INT')
@click.option('--snap', help='Snapshot interval [default: 50 ticks]', type=int, default=50, metavar='INT')
@click.option('--metrics', help='Comma-separated list or "none" [default: fid50k_full]', type=dnnlib.util.CommaSeparatedList())
@click.option('--detector', help='TorchScript Inception for metrics instead of default_1.pt (IS needs one with logits)', metavar='PATH')
@click.option('--vgg16', help="NVIDIA's TorchScript vgg16.pt, for pr50k3* metrics", metavar='PATH')
@click.option('--ref-data', help='Reference dataset for *_test metrics (e.g. the CIFAR-10 test split)', metavar='PATH')
@click.option('--seed', help='Random seed [default: 0]', type=int, default=0, metavar='INT')
@click.option('-n', '--dry-run', help='Print training options and exit', is_flag=True)
# Dataset.
@click.option('--data', help='Training data (directory, zip, or "builtin" / "builtin:RES")', metavar='PATH', required=True)
@click.option('--cond', help='Train conditional model based on dataset labels [default: false]', type=bool, default=False, metavar='BOOL')
@click.option('--subset', help='Train with only N images [default: all]', type=int, metavar='INT')
@click.option('--mirror', help='Enable dataset x-flips [default: false]', type=bool, default=False, metavar='BOOL')
# Base config.
@click.option('--cfg', help='Base config [default: auto]', type=click.Choice(list(config.CFG_SPECS)), default='auto')
@click.option('--gamma', help='Override R1 gamma', type=float)
@click.option('--kimg', help='Override training duration (kimg; fractions allowed for short runs)', type=float, metavar='KIMG')
@click.option('--batch', help='Override batch size', type=int, metavar='INT')
# Discriminator augmentation.
@click.option('--aug', help='Augmentation mode [default: ada]', type=click.Choice(['noaug', 'ada', 'fixed']))
@click.option('--p', help='Augmentation probability for --aug=fixed', type=float)
@click.option('--target', help='ADA target value for --aug=ada', type=float)
@click.option('--augpipe', help='Augmentation pipeline [default: bgc]', type=click.Choice(list(config.AUGPIPE_NAMES)))
@click.option('--diffaugment', help='DiffAugment policy instead of ADA, e.g. color,translation,cutout', metavar='POLICY')
# Transfer learning / resume.
@click.option('--resume', help='Resume from a degan snapshot (.pt): continues exactly', metavar='PATH')
@click.option('--freezed', help='Freeze-D [default: 0 layers]', type=int, default=0, metavar='INT')
# Performance options.
@click.option('--fp32', help='Disable mixed-precision training', type=bool, default=False, metavar='BOOL')
@click.option('--nhwc', help='Use NHWC memory format with FP16', type=bool, default=False, metavar='BOOL')
@click.option('--nobench', help='Disable cuDNN benchmarking', type=bool, default=False, metavar='BOOL')
@click.option('--allow-tf32', help='Allow PyTorch to use TF32 internally', type=bool, default=False, metavar='BOOL')
@click.option('--workers', help='Override number of DataLoader workers (capped at cores - 1)', type=int, default=3, metavar='INT')
@click.option('--device', help='cuda when present, else cpu [default: auto]', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto')
@click.option('--ops', help='Custom ops: ref, cuda, or auto (cuda when built and self-checked)', type=click.Choice(['ref', 'cuda', 'auto']), default='auto')
# StyleGAN3-style overrides.
@click.option('--cbase', help='Capacity multiplier (channel_base)', type=int, metavar='INT')
@click.option('--cmax', help='Max. feature maps', type=int, metavar='INT')
@click.option('--map', help='Mapping network depth', type=int, metavar='INT')
@click.option('--glr', help='G learning rate', type=float)
@click.option('--dlr', help='D learning rate', type=float)
@click.option('--mbstd-group', help='Minibatch std group size', type=int, metavar='INT')
@click.option('--tick', help='How often to print progress [default: 4 kimg]', type=float, metavar='KIMG')
@click.option('--grid', help='Snapshot image grid, columns x rows [default: upstream on GPU, 8x8 on CPU]', metavar='WxH')
# ATop-k.
@click.option('--atopk', help='Adaptive Top-k G updates [default: 0]', type=bool, default=False, metavar='BOOL')
@click.option('--atopk-target', help='Overfitting target t [default: 0.6]', type=float, default=0.6)
@click.option('--atopk-interval', help='p update interval, minibatches [default: 4]', type=int, default=4)
@click.option('--atopk-kimg', help='kimg for p to move by 1 [default: 500]', type=float, default=500)
@click.option('--atopk-k-interval', help='k update interval, iterations [default: 1]', type=int, default=1)
@click.option('--atopk-p', help='p source: own tracker or ADA\'s p [default: own]', type=click.Choice(['own', 'ada']), default='own')
@click.option('--topk-mode', help='Top-k schedule [default: adaptive]', type=click.Choice(['adaptive', 'fixed', 'linear', 'worst']))
@click.option('--topk-k', help='k for --topk-mode=fixed|worst', type=int)
@click.option('--topk-gamma', help='Linear Top-k decay per epoch [default: 0.99]', type=float, default=0.99)
@click.option('--topk-nu', help='Linear Top-k minimum fraction [default: 0.75]', type=float, default=0.75)
@click.option('--topk-round', help='Linear Top-k rounding of gamma^e*B and nu*B [default: ceil]', type=click.Choice(['ceil', 'floor']), default='ceil')
@click.option('--atopk-clamp-p', help='Keep ATop-k\'s own p in [0, 1] (ADA clamps only below) [default: 0]', type=bool, default=False, metavar='BOOL')
# CHAIN.
@click.option('--chain', help='CHAIN normalisation in D [default: 0]', type=bool, default=False, metavar='BOOL')
@click.option('--chain-type', help='chain (cumulative) or chain_batch [default: chain]', type=click.Choice(['chain', 'chain_batch']), default='chain')
@click.option('--chain-res', help='D block resolutions with CHAIN [default: all >= 8]', type=dnnlib.util.IntList())
@click.option('--chain-place', help='Where in a block: C1, C2, CS [default: C1C2CS]', default='C1C2CS')
@click.option('--chain-tau', help='Target tau [default: 0.5]', type=float, default=0.5)
@click.option('--chain-lambda', help='0MR weight lambda [default: 20]', type=float, default=20)
@click.option('--chain-p0', help='0MR offset p0 [default: 0]', type=float, default=0)
@click.option('--chain-dp', help='p step per iteration [default: 0.001]', type=float, default=0.001)
@click.option('--chain-start', help='Iteration at which p starts adapting [default: 5000]', type=int, default=5000)
def main(dry_run: bool, **kwargs: Any) -> None:
    """Train a GAN using the techniques described in StyleGAN2-ADA, ATop-k and CHAIN."""
    opts = config.TrainOptions(**kwargs)
    desc, args = config.build_training_args(opts)
    launch_training(desc, args, opts.outdir, dry_run)


if __name__ == '__main__':
    dnnlib.util.run_cli(main)
